"""The training-free decomposer: a photo into background, shadow and object layers with the tools.

    proposals -> alpha matting (+ straight colour) -> cast shadows -> background (objects removed,
    shadows lifted, holes inpainted) -> colours reconciled so that the layers recompose to the photo

It is the weight-free default of `liwi decompose` until a trained checkpoint beats it.
"""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np

from ..layers import LayeredImage, reconcile_with_image
from ._utils import as_rgb, mask_box, resize, scale_for
from .inpainting import Inpainter, OpenCVInpainter
from .matting import AlphaMatter, ClosedFormMatter, Matte
from .proposals import ObjectProposer, SaliencyProposer
from .shadows import DarkeningShadowExtractor, ShadowExtractor, remove_attached_shadow

__all__ = ["ToolChainDecomposer"]


class ToolChainDecomposer:
    """Decompose a photo into layers with weight-free tools (or any tools passed in).

    Args:
        proposer: finds objects (default `SaliencyProposer`).
        matter: soft alpha and straight colour per object (default `ClosedFormMatter`, pymatting).
        inpainter: fills the background behind objects (default `OpenCVInpainter`).
        shadow_extractor: each object's cast shadow (default `DarkeningShadowExtractor`); ``None``
            with ``extract_shadows=False`` gives shadow-free layers.
        max_objects: object layers when ``num_layers`` is not given (automatic mode).
        max_resolution: the tools run with the long side at most this many pixels; layers are
            brought back to the input's full resolution.
        extract_shadows: whether to look for cast shadows at all.
        trim_shadows: cut a swallowed cast shadow out of each proposal's mask before matting (see
            `remove_attached_shadow`), so that it becomes the object's shadow layer instead.

    Default tools are built on first use, so constructing the decomposer is cheap; pymatting (and its
    one-off numba compile) loads on the first call.

    Example:
        >>> from liwi_diffusers.tools import ToolChainDecomposer
        >>> layered = ToolChainDecomposer()(photo)           # PIL RGB or (H, W, 3) floats in [0, 1]
        >>> layered.check(photo).mean_abs_error < 1 / 255
        True
    """

    def __init__(
        self,
        proposer: ObjectProposer | None = None,
        matter: AlphaMatter | None = None,
        inpainter: Inpainter | None = None,
        shadow_extractor: ShadowExtractor | None = None,
        max_objects: int = 4,
        max_resolution: int = 1024,
        extract_shadows: bool = True,
        trim_shadows: bool = True,
    ) -> None:
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}")
        if max_resolution < 16:
            raise ValueError(f"max_resolution must be at least 16 pixels, got {max_resolution}")
        self._proposer = proposer
        self._matter = matter
        self._inpainter = inpainter
        self._shadow_extractor = shadow_extractor
        self.max_objects = max_objects
        self.max_resolution = max_resolution
        self.extract_shadows = extract_shadows
        self.trim_shadows = trim_shadows

    # ------------------------------------------------------------------ tools (built lazily)
    @property
    def proposer(self) -> ObjectProposer:
        if self._proposer is None:
            self._proposer = SaliencyProposer(max_objects=self.max_objects)
        return self._proposer

    @property
    def matter(self) -> AlphaMatter:
        if self._matter is None:
            self._matter = ClosedFormMatter()
        return self._matter

    @property
    def inpainter(self) -> Inpainter:
        if self._inpainter is None:
            self._inpainter = OpenCVInpainter()
        return self._inpainter

    @property
    def shadow_extractor(self) -> ShadowExtractor:
        if self._shadow_extractor is None:
            self._shadow_extractor = DarkeningShadowExtractor()
        return self._shadow_extractor

    def tool_names(self) -> dict[str, str]:
        """Class names of the tools in use (for provenance records)."""
        return {
            "proposer": type(self.proposer).__name__,
            "matter": type(self.matter).__name__,
            "inpainter": type(self.inpainter).__name__,
            "shadow_extractor": type(self.shadow_extractor).__name__ if self.extract_shadows else "none",
        }

    # ------------------------------------------------------------------ the decomposition
    def __call__(self, image: Any, num_layers: int | None = None) -> LayeredImage:
        """Layers of ``image`` (PIL RGB or ``(H, W, 3)`` array in [0, 1]), objects back to front.

        ``num_layers`` is the number of object layers wanted (``None``: as many as the proposer
        finds, at most ``max_objects``; ``0``: only the background). When the photo has fewer
        separable objects than asked for, fewer come back, with a warning. The result recomposes
        to ``image`` (see `LayeredImage.check`).
        """
        rgb = as_rgb(image)
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer))):
            raise TypeError(f"num_layers must be an int or None, got {type(num_layers).__name__}")
        if num_layers is not None and num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        wanted = self.max_objects if num_layers is None else int(num_layers)
        height, width = rgb.shape[:2]
        scale = scale_for(rgb.shape, self.max_resolution)
        work = resize(rgb, (max(1, round(height * scale)), max(1, round(width * scale)))) if scale < 1 else rgb

        proposals = self.proposer(work, max_objects=wanted) if wanted > 0 else []
        mattes: list[tuple[Matte, str]] = []
        for proposal in proposals[:wanted]:
            mask = proposal.mask
            if self.extract_shadows and self.trim_shadows:
                mask = remove_attached_shadow(work, mask)
            matte = self.matter(work, mask)
            if float(matte.alpha.max()) >= 0.5:
                mattes.append((matte, proposal.label))
        if num_layers is not None and len(mattes) < num_layers:
            warnings.warn(
                f"asked for {num_layers} object layers but found {len(mattes)} separable objects",
                UserWarning,
                stacklevel=2,
            )
        mattes.sort(key=lambda item: _depth_key(item[0].alpha))  # back to front

        alphas = [matte.alpha for matte, _ in mattes]
        occupied = np.max(alphas, axis=0) if alphas else np.zeros(work.shape[:2], np.float32)
        shadows = self._shadows(work, alphas, occupied)

        if scale < 1:  # back to full resolution
            alphas = [np.clip(resize(a, (height, width), cv2.INTER_LINEAR), 0, 1) for a in alphas]
            shadows = [np.clip(resize(s, (height, width), cv2.INTER_LINEAR), 0, 1) for s in shadows]
            colors = [np.clip(resize(m.foreground, (height, width), cv2.INTER_LINEAR), 0, 1) for m, _ in mattes]
            occupied = np.max(alphas, axis=0) if alphas else np.zeros((height, width), np.float32)
            if shadows:  # keep lifting within [0, 1] at full resolution too
                limit = 1.0 - rgb.max(axis=2)
                shadows = [np.minimum(s, limit) for s in shadows]
        else:
            colors = [matte.foreground for matte, _ in mattes]

        lift = 1.0 - np.sum(shadows, axis=0) if shadows else np.ones((height, width), np.float32)
        shadow_free = np.clip(rgb / np.maximum(lift, 1e-3)[:, :, None], 0.0, 1.0)
        background = self.inpainter(shadow_free, occupied > 0.01) if alphas else shadow_free
        layered = LayeredImage(
            background,
            [np.concatenate([c, a[:, :, None]], axis=2) for c, a in zip(colors, alphas)],
            shadows,
            [label for _, label in mattes],
        )
        return _reconcile(layered, rgb)

    def _shadows(self, image: np.ndarray, alphas: list[np.ndarray], occupied: np.ndarray) -> list[np.ndarray]:
        """Per object shadow alpha; where shadows overlap, the strongest one owns the pixel."""
        if not alphas:
            return []
        if not self.extract_shadows:
            return [np.zeros(image.shape[:2], np.float32) for _ in alphas]
        shadows = np.stack([self.shadow_extractor(image, alpha, occupied) for alpha in alphas])
        owner = np.argmax(shadows, axis=0)
        shadows = np.where(np.arange(len(alphas))[:, None, None] == owner[None], shadows, 0.0)
        return [s.astype(np.float32) for s in shadows]


def _depth_key(alpha: np.ndarray) -> tuple[int, float]:
    """Sort key, back to front: lower in the frame is nearer (bottom edge), then smaller is nearer."""
    box = mask_box(alpha >= 0.5)
    bottom = box[3] if box is not None else 0
    return bottom, -float(alpha.sum())


def _reconcile(layered: LayeredImage, image: np.ndarray) -> LayeredImage:
    """`reconcile_with_image`, run only on the box where the layers differ from the photo.

    Outside that box the background is the photo itself and nothing covers or darkens it, so the
    layers already recompose exactly there; restricting the work keeps big photos with small
    objects fast.
    """
    support = np.any(layered.background != image, axis=2)
    for foreground, shadow in zip(layered.foregrounds, layered.shadows):
        support |= (foreground[:, :, 3] > 0) | (shadow > 0)
    box = mask_box(support)
    if box is None:
        return layered
    left, top, right, bottom = box
    if (right - left) * (bottom - top) > 0.8 * support.size:
        return reconcile_with_image(layered, image)
    window = (slice(top, bottom), slice(left, right))
    crop = LayeredImage(
        layered.background[window],
        [fg[window] for fg in layered.foregrounds],
        [s[window] for s in layered.shadows],
        list(layered.labels),
    )
    fixed = reconcile_with_image(crop, image[window])
    result = layered.copy()
    result.background[window] = fixed.background
    for whole, part in zip(result.foregrounds, fixed.foregrounds):
        whole[window] = part
    return result
