"""The learned shadow extractor: the LiWi shadow head (trained with shadow-guided learning) as a `ShadowExtractor`.

`LearnedShadowExtractor` runs a `ShadowHead` (the module the LiWi pipeline uses as its ``shadow_head``) on the photo
and the object's matte at the scale it was trained at (the photo's shorter side at 192 px), either alone or refining
the classical estimate of `DarkeningShadowExtractor` (a head with 4 image channels takes that estimate as its fourth
channel; the shipped head was trained both ways, with the estimate zeroed for half of its samples).

    >>> from liwi_diffusers.tools import LearnedShadowExtractor, ToolChainDecomposer
    >>> shadows = LearnedShadowExtractor.from_pretrained("shadow-guided")              # the shipped weights
    >>> sigma = shadows(photo, alpha, occupied)                                        # (H, W) float32
    >>> layered = ToolChainDecomposer(shadow_extractor=shadows)(photo)                 # liwi decompose --shadow-head

torch is imported when an extractor is built, not when `liwi_diffusers.tools` is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ._utils import as_mask, as_rgb, resize
from .shadows import DarkeningShadowExtractor

__all__ = ["SHIPPED_SHADOW_HEADS", "LearnedShadowExtractor", "ShadowHeadError", "shipped_shadow_head_path"]

_SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "checkpoints" / "shadow-head"
SHIPPED_SHADOW_HEADS: dict[str, str] = {
    "shadow-guided": "trained with shadow-guided learning (supervised shadow alpha + recomposition) on composites "
    "of real cut-outs with synthesized hard and soft shadows; works alone or refining the classical estimate",
}
MODES = ("alone", "refine")


class ShadowHeadError(ValueError):
    """A shadow head that cannot be loaded or used."""


def shipped_shadow_head_path(name: str) -> Path:
    """The folder of shipped shadow-head weights ``name`` (``"shadow-guided"``)."""
    if name not in SHIPPED_SHADOW_HEADS:
        raise ShadowHeadError(f"no shipped shadow head named {name!r}; shipped: {', '.join(SHIPPED_SHADOW_HEADS)}")
    path = _SHIPPED_ROOT / name
    if not (path / "config.json").is_file():
        raise ShadowHeadError(f"shipped shadow head {name!r} is missing from {path}: reinstall liwi-diffusers")
    return path


class LearnedShadowExtractor:
    """Each object's cast shadow from a trained `ShadowHead` (a `ShadowExtractor`).

    Args:
        head: the trained `ShadowHead` (``image_channels`` 3: RGB; 4: RGB + the classical estimate).
        mode: ``"alone"`` (the head sees the photo and the mattes) or ``"refine"`` (it also sees the classical
            estimate; needs a 4-channel head).
        classical: the classical extractor whose estimate ``"refine"`` starts from (default
            `DarkeningShadowExtractor()`).
        working_side: the head runs with the photo's shorter side resized to this many pixels, down or up (the
            head was trained on 192 px squares and is sensitive to scale: a small photo is enlarged); the longer side
            is kept within 4 times this.
        min_sigma: smaller predicted sigma is set to 0 (a faint haze is no shadow).
        max_sigma: the largest sigma given (lifting the shadow divides by ``1 - sigma``).
        device: where the head runs.
    """

    def __init__(
        self,
        head: Any,
        mode: str = "alone",
        classical: Any = None,
        working_side: int = 192,
        min_sigma: float = 0.02,
        max_sigma: float = 0.9,
        device: str = "cpu",
    ) -> None:
        from ..models.shadow_head import ShadowHead

        if not isinstance(head, ShadowHead):
            raise ShadowHeadError(f"head must be a ShadowHead, got {type(head).__name__}")
        channels = head.config.image_channels
        if channels not in (3, 4):
            raise ShadowHeadError(
                f"the shadow head takes 3 (RGB) or 4 (RGB + classical estimate) image channels, this one {channels}"
            )
        if mode not in MODES:
            raise ShadowHeadError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "refine" and channels != 4:
            raise ShadowHeadError(
                "this shadow head was trained without the classical estimate (3 image channels): it cannot refine "
                "it; use mode 'alone'"
            )
        if working_side < 16 or not 0.0 <= min_sigma < max_sigma <= 1.0:
            raise ShadowHeadError(
                f"need working_side >= 16 and 0 <= min_sigma < max_sigma <= 1; got {working_side}, {min_sigma}, "
                f"{max_sigma}"
            )
        self.head = head.eval().to(device)
        self.mode = mode
        self.classical = classical if classical is not None else DarkeningShadowExtractor()
        self.working_side, self.min_sigma, self.max_sigma = working_side, min_sigma, max_sigma
        self.device = device

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str] = "shadow-guided", **kwargs: Any
    ) -> LearnedShadowExtractor:
        """Load shipped weights by name (``"shadow-guided"``) or a `ShadowHead` folder (``save_pretrained``).

        Raises `ShadowHeadError` (one line) for a missing folder or weights that do not match their config.
        """
        from ..models.shadow_head import ShadowHead

        text = os.fspath(name_or_path)
        path = shipped_shadow_head_path(text) if text in SHIPPED_SHADOW_HEADS else Path(text).expanduser()
        if not (path / "config.json").is_file():
            raise ShadowHeadError(
                f"{text}: not a shadow-head folder (no config.json); use {', '.join(SHIPPED_SHADOW_HEADS)} or a "
                f"folder written by ShadowHead.save_pretrained"
            )
        try:
            head = ShadowHead.from_pretrained(path, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ShadowHeadError(
                f"{path}: the weights do not load into the ShadowHead its config describes ({first})"
            ) from None
        return cls(head, **kwargs)

    def __call__(self, image: Any, alpha: Any, occupied: Any = None) -> np.ndarray:
        """Shadow alpha sigma ``(H, W)`` float32 in [0, 1] of the object with matte ``alpha``."""
        import torch

        rgb = as_rgb(image)
        shape = rgb.shape[:2]
        object_alpha = as_mask(alpha, shape, "alpha")
        taken = np.maximum(object_alpha, as_mask(occupied, shape, "occupied")) if occupied is not None else object_alpha
        if not (object_alpha >= 0.5).any():
            return np.zeros(shape, np.float32)
        scale = min(self.working_side / min(shape), 4 * self.working_side / max(shape))  # long side <= 4x
        size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
        channels = [resize(rgb, size)]
        if self.head.config.image_channels == 4:
            if self.mode == "refine":
                prior = self.classical(rgb, object_alpha, taken)
                channels.append(resize(prior, size)[:, :, None])
            else:
                channels.append(np.zeros((*size, 1), np.float32))
        small = np.dstack(channels).astype(np.float32)
        small_alpha, small_taken = resize(object_alpha, size), resize(taken, size)
        dtype = self.head.dtype
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))[None].to(self.device, dtype)
            obj = torch.from_numpy(np.ascontiguousarray(small_alpha))[None, None].to(self.device, dtype)
            union = torch.from_numpy(np.ascontiguousarray(small_taken))[None, None].to(self.device, dtype)
            sigma = self.head(tensor, obj, union).float().cpu().numpy()[0, 0]
        if sigma.shape != shape:
            sigma = cv2.resize(sigma, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        sigma = np.clip(sigma, 0.0, self.max_sigma)
        sigma[sigma < self.min_sigma] = 0.0
        sigma = np.minimum(sigma, 1.0 - rgb.max(axis=2))  # lifting the shadow must not go above white
        sigma[taken >= 0.99] = 0.0
        return np.clip(sigma, 0.0, 1.0).astype(np.float32)
