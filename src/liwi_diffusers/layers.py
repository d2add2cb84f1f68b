"""The layered image: an opaque background, then per object a shadow and an RGBA foreground.

Layers compose back to front with Porter-Duff "over" (see docs/design.md):

    X_0 = B
    X_k = a_k * C_k + (1 - a_k) * (1 - sigma_k) * X_(k-1)     # shadow k, then object k
    I   = X_K

A shadow is a black layer whose alpha is sigma_k, the fraction of light object k takes away
from everything beneath it, so any paint program shows it correctly with the normal blend mode.

`compose_layers` is the one function that composes and `check_decomposition` the one that
checks; the pipeline, exporters, dataset rows, metrics and demo all go through them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    "LayeredImage",
    "LayeredImageError",
    "RecompositionReport",
    "alpha_bbox",
    "check_decomposition",
    "compose_layers",
    "layer_name",
    "parse_layer_name",
    "reconcile_with_image",
    "to_float_image",
]

# Values within this distance outside [0, 1] are float round-off and are clipped; further out is an error.
_RANGE_TOLERANCE = 1e-5
_LAYER_NAME = re.compile(r"^(shadow|object) (\d+)(?:: (.*))?$", re.DOTALL)


class LayeredImageError(ValueError):
    """A layer stack that cannot be a layered image (wrong size, mode, range, NaN, empty)."""


def compose_layers(background: Any, colors: Any, alphas: Any, shadows: Any) -> Any:
    """Compose back to front: ``X_k = a_k C_k + (1 - a_k)(1 - sigma_k) X_(k-1)``.

    Works unchanged on NumPy arrays and torch tensors (differentiable). ``colors``, ``alphas`` and
    ``shadows`` are sequences (or arrays iterated along their first axis) of per-object layers,
    back to front, each broadcastable against ``background``: e.g. background ``(H, W, 3)`` with
    colours ``(K, H, W, 3)`` and alphas/shadows ``(K, H, W, 1)``, or channel-first tensors.
    """
    composite = background
    for color, alpha, shadow in zip(colors, alphas, shadows, strict=True):
        composite = alpha * color + (1 - alpha) * (1 - shadow) * composite
    return composite


def layer_name(role: str, index: int | None = None, label: str | None = None) -> str:
    """Name of a layer in exported files: ``background``, ``shadow 2``, ``object 2: cup``."""
    if role == "background":
        return "background"
    if role not in ("shadow", "object") or index is None or index < 1:
        raise ValueError(f"layer role must be 'background', or 'shadow'/'object' with an index >= 1, got {role!r}")
    return f"{role} {index}" + (f": {label}" if label else "")


def parse_layer_name(name: str) -> tuple[str, int | None, str | None]:
    """Inverse of `layer_name`: ``(role, index, label)``; unknown names give ``("other", None, name)``."""
    if name == "background":
        return "background", None, None
    match = _LAYER_NAME.match(name)
    if match is None:
        return "other", None, name
    role, index, label = match.groups()
    return role, int(index), label or None


def alpha_bbox(alpha: np.ndarray, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
    """Box ``(left, top, right, bottom)`` (right/bottom exclusive) of pixels with alpha > threshold."""
    mask = np.asarray(alpha) > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def to_float_image(image: Any, channels: int | None = None, what: str = "image") -> np.ndarray:
    """An image (PIL, uint8/uint16/float array) as float32 ``(H, W, C)`` in [0, 1].

    Floats must already lie in [0, 1]; ``channels`` (1, 3 or 4) is checked, not converted, except
    that a PIL image is converted to the matching mode (L, RGB, RGBA).
    """
    if isinstance(image, Image.Image):
        if channels is not None:
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
            if image.mode != mode:
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    raise LayeredImageError(
                        f"{what}: 16/32-bit PIL mode {image.mode!r}; load it with liwi_diffusers.load_image"
                    )
                image = image.convert(mode)
        array = np.asarray(image)
    elif hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, channel-last expected here
        array = image.detach().cpu().float().numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise LayeredImageError(f"{what}: expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise LayeredImageError(f"{what}: unsupported dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if channels is not None and array.shape[2] != channels:
        raise LayeredImageError(f"{what}: expected {channels} channels, got {array.shape[2]} (shape {array.shape})")
    return _checked_range(array, what)


def _checked_range(array: np.ndarray, what: str) -> np.ndarray:
    if array.size == 0 or array.shape[0] == 0 or array.shape[1] == 0:
        raise LayeredImageError(f"{what}: empty image (shape {array.shape})")
    if not np.isfinite(array).all():
        raise LayeredImageError(f"{what}: contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise LayeredImageError(f"{what}: values must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    if low < 0 or high > 1:
        array = np.clip(array, 0.0, 1.0)
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class RecompositionReport:
    """How far ``compose(layers)`` is from the image it should recreate (values in [0, 1] units)."""

    mean_abs_error: float
    max_abs_error: float
    psnr: float

    def ok(self, tolerance: float = 1.0 / 255.0) -> bool:
        """Whether every pixel recomposes within ``tolerance`` (default: one 8-bit step)."""
        return self.max_abs_error <= tolerance + 1e-7


@dataclass
class LayeredImage:
    """A photo taken apart: background, then per object (back to front) a shadow and a foreground.

    Attributes:
        background: ``(H, W, 3)`` float32 RGB in [0, 1], opaque.
        foregrounds: per object, ``(H, W, 4)`` float32 straight (unpremultiplied) RGBA in [0, 1].
        shadows: per object, ``(H, W)`` float32 shadow alpha sigma in [0, 1] (all zero: no shadow).
        labels: per object, a short name ("" when unknown).
        metadata: what made the layers (method, tools, object count, why the search for objects stopped);
            JSON-serialisable values, kept by `copy`, `select` and `quantized`.
    Inputs may be PIL images or uint8/float arrays; they are converted and checked on creation.
    """

    background: np.ndarray
    foregrounds: list[np.ndarray] = field(default_factory=list)
    shadows: list[np.ndarray] | None = None
    labels: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.background = to_float_image(self.background, 3, "background")
        height, width = self.background.shape[:2]
        self.foregrounds = [
            self._same_size(to_float_image(fg, 4, f"foreground {k + 1}"), height, width, f"foreground {k + 1}")
            for k, fg in enumerate(self.foregrounds)
        ]
        count = len(self.foregrounds)
        if self.shadows is None:
            self.shadows = [np.zeros((height, width), np.float32) for _ in range(count)]
        if len(self.shadows) != count:
            raise LayeredImageError(f"got {len(self.shadows)} shadow layers for {count} foregrounds; need one each")
        self.shadows = [
            self._same_size(to_float_image(shadow, 1, f"shadow {k + 1}"), height, width, f"shadow {k + 1}")[:, :, 0]
            for k, shadow in enumerate(self.shadows)
        ]
        if self.labels is None:
            self.labels = [""] * count
        if len(self.labels) != count:
            raise LayeredImageError(f"got {len(self.labels)} labels for {count} foregrounds; need one each")
        self.labels = [str(label) for label in self.labels]

    @staticmethod
    def _same_size(array: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
        if array.shape[:2] != (height, width):
            raise LayeredImageError(
                f"{what} is {array.shape[1]}x{array.shape[0]} but the background is {width}x{height}; "
                "all layers must be full-canvas and the same size"
            )
        return array

    # ------------------------------------------------------------------ basic facts
    @property
    def height(self) -> int:
        return int(self.background.shape[0])

    @property
    def width(self) -> int:
        return int(self.background.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as PIL reports it."""
        return self.width, self.height

    @property
    def num_objects(self) -> int:
        return len(self.foregrounds)

    def __repr__(self) -> str:
        labels = ", ".join(label or "?" for label in self.labels)
        return f"LayeredImage({self.width}x{self.height}, {self.num_objects} objects: [{labels}])"

    # ------------------------------------------------------------------ maths
    def compose(self) -> np.ndarray:
        """The image these layers show, ``(H, W, 3)`` float32."""
        alphas = [fg[:, :, 3:4] for fg in self.foregrounds]
        colors = [fg[:, :, :3] for fg in self.foregrounds]
        shadows = [shadow[:, :, None] for shadow in self.shadows]
        return np.asarray(compose_layers(self.background, colors, alphas, shadows), dtype=np.float32)

    def check(self, image: Any) -> RecompositionReport:
        """Recomposition error against ``image`` (see `check_decomposition`)."""
        return check_decomposition(self, image)

    def object_boxes(self, threshold: float = 0.0) -> list[tuple[int, int, int, int] | None]:
        """Per object, the box of its foreground alpha (None when the layer is empty)."""
        return [alpha_bbox(fg[:, :, 3], threshold) for fg in self.foregrounds]

    def quantized(self) -> LayeredImage:
        """A copy with every value rounded to 8 bits, exactly what PNG/PSD/ORA files hold."""

        def q(array: np.ndarray) -> np.ndarray:
            return np.round(array * 255.0).astype(np.float32) / 255.0

        return LayeredImage(
            q(self.background),
            [q(fg) for fg in self.foregrounds],
            [q(s) for s in self.shadows],
            list(self.labels),
            dict(self.metadata),
        )

    def copy(self) -> LayeredImage:
        return LayeredImage(
            self.background.copy(),
            [fg.copy() for fg in self.foregrounds],
            [s.copy() for s in self.shadows],
            list(self.labels),
            dict(self.metadata),
        )

    def select(self, indices: Sequence[int]) -> LayeredImage:
        """A layered image with only the objects at ``indices`` (0-based, order kept as given)."""
        for index in indices:
            if not 0 <= index < self.num_objects:
                raise IndexError(f"object index {index} out of range for {self.num_objects} objects")
        return LayeredImage(
            self.background,
            [self.foregrounds[i] for i in indices],
            [self.shadows[i] for i in indices],
            [self.labels[i] for i in indices],
            dict(self.metadata),
        )

    # ------------------------------------------------------------------ flat stacks (for files)
    def layer_names(self) -> list[str]:
        """Names of `to_rgba_stack` layers, back to front."""
        names = ["background"]
        for k, label in enumerate(self.labels, start=1):
            names += [layer_name("shadow", k, label), layer_name("object", k, label)]
        return names

    def to_rgba_stack(self) -> list[tuple[str, np.ndarray]]:
        """Back-to-front ``(name, (H, W, 4) float32 RGBA)`` layers that compose with plain "over".

        The background is opaque, a shadow is black with alpha sigma, an object is its RGBA.
        """
        opaque = np.ones((self.height, self.width, 1), np.float32)
        stack = [("background", np.concatenate([self.background, opaque], axis=2))]
        black = np.zeros((self.height, self.width, 3), np.float32)
        for k, (fg, shadow, label) in enumerate(zip(self.foregrounds, self.shadows, self.labels), start=1):
            stack.append((layer_name("shadow", k, label), np.concatenate([black, shadow[:, :, None]], axis=2)))
            stack.append((layer_name("object", k, label), fg))
        return stack

    @classmethod
    def from_rgba_stack(cls, layers: Sequence[tuple[str, Any]]) -> LayeredImage:
        """Rebuild from named full-canvas RGBA layers, back to front (inverse of `to_rgba_stack`).

        The first layer must be an opaque background. ``shadow k``/``object k`` names pair shadows
        with objects; a layer with any other name is taken as an object without a shadow, labelled
        with its name (files made by other tools).
        """
        if not layers:
            raise LayeredImageError("empty layer stack: need at least a background layer")
        (first_name, first), *rest = layers
        first = to_float_image(first, 4, f"layer {first_name!r}")
        if parse_layer_name(first_name)[0] not in ("background", "other"):
            raise LayeredImageError(f"the bottom layer must be the background, got {first_name!r}")
        if float(first[:, :, 3].min()) < 1.0 - 1.0 / 255.0:
            raise LayeredImageError(
                f"the bottom layer {first_name!r} must be opaque (alpha 1 everywhere); "
                f"its alpha goes down to {float(first[:, :, 3].min()):.3f}"
            )
        foregrounds, shadows, labels = [], [], []
        pending_shadow: tuple[int, np.ndarray] | None = None
        for name, rgba in rest:
            rgba = to_float_image(rgba, 4, f"layer {name!r}")
            role, index, label = parse_layer_name(name)
            if role == "background":
                raise LayeredImageError("a stack has exactly one background layer, at the bottom")
            if role == "shadow":
                if pending_shadow is not None:
                    raise LayeredImageError(f"shadow {pending_shadow[0]} is not followed by its object layer")
                if float(rgba[:, :, :3].max(initial=0.0)) > 1.0 / 255.0:
                    raise LayeredImageError(f"shadow layer {name!r} must be black (RGB 0); alpha carries the shadow")
                pending_shadow = (index, rgba[:, :, 3])
                continue
            if pending_shadow is not None and role == "object" and pending_shadow[0] != index:
                raise LayeredImageError(f"shadow {pending_shadow[0]} is followed by object {index}")
            shadows.append(pending_shadow[1] if pending_shadow is not None else np.zeros(rgba.shape[:2], np.float32))
            pending_shadow = None
            foregrounds.append(rgba)
            labels.append(label or "")
        if pending_shadow is not None:
            raise LayeredImageError(f"shadow {pending_shadow[0]} has no object layer above it")
        return cls(first[:, :, :3], foregrounds, shadows, labels)

    # ------------------------------------------------------------------ conversions
    def to_pil(self) -> list[tuple[str, Image.Image]]:
        """Back-to-front ``(name, RGBA PIL image)`` layers (8-bit)."""
        return [(name, Image.fromarray(to_uint8(rgba), "RGBA")) for name, rgba in self.to_rgba_stack()]

    @classmethod
    def from_pil(
        cls,
        background: Image.Image,
        foregrounds: Sequence[Image.Image] = (),
        shadows: Sequence[Image.Image] | None = None,
        labels: Sequence[str] | None = None,
    ) -> LayeredImage:
        """From PIL images: background (RGB), RGBA foregrounds, L shadows (alpha sigma)."""
        return cls(
            background,
            list(foregrounds),
            None if shadows is None else list(shadows),
            None if labels is None else list(labels),
        )

    def background_pil(self) -> Image.Image:
        return Image.fromarray(to_uint8(self.background), "RGB")

    def foreground_pil(self, index: int) -> Image.Image:
        return Image.fromarray(to_uint8(self.foregrounds[index]), "RGBA")

    def shadow_pil(self, index: int) -> Image.Image:
        """Shadow alpha of object ``index`` (0-based) as an L image."""
        return Image.fromarray(to_uint8(self.shadows[index]), "L")

    def composite_pil(self) -> Image.Image:
        return Image.fromarray(to_uint8(self.compose()), "RGB")

    def to_tensors(self, device: Any = None, dtype: Any = None) -> dict[str, torch.Tensor]:
        """Channel-first tensors: background ``(3, H, W)``, foregrounds ``(K, 4, H, W)``, shadows ``(K, 1, H, W)``."""
        import torch

        dtype = dtype or torch.float32
        count, height, width = self.num_objects, self.height, self.width
        foregrounds = (
            np.stack(self.foregrounds).transpose(0, 3, 1, 2) if count else np.zeros((0, 4, height, width), np.float32)
        )
        shadows = np.stack(self.shadows)[:, None] if count else np.zeros((0, 1, height, width), np.float32)
        return {
            "background": torch.from_numpy(self.background.transpose(2, 0, 1).copy()).to(device=device, dtype=dtype),
            "foregrounds": torch.from_numpy(np.ascontiguousarray(foregrounds)).to(device=device, dtype=dtype),
            "shadows": torch.from_numpy(np.ascontiguousarray(shadows)).to(device=device, dtype=dtype),
        }

    @classmethod
    def from_tensors(
        cls,
        background: torch.Tensor,
        foregrounds: torch.Tensor,
        shadows: torch.Tensor | None = None,
        labels: Sequence[str] | None = None,
    ) -> LayeredImage:
        """Inverse of `to_tensors` (channel-first, values in [0, 1])."""

        def channel_last(tensor: Any) -> np.ndarray:
            return tensor.detach().cpu().float().numpy().transpose(1, 2, 0)

        fgs = [channel_last(fg) for fg in foregrounds]
        sh = None if shadows is None else [channel_last(s)[:, :, 0] for s in shadows]
        return cls(channel_last(background), fgs, sh, None if labels is None else list(labels))


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8, rounding to the nearest step (what PNG/PSD/ORA files hold)."""
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def check_decomposition(layered: LayeredImage, image: Any) -> RecompositionReport:
    """Compare ``layered.compose()`` with ``image`` (PIL RGB or ``(H, W, 3)`` array): mean/max abs error, PSNR."""
    target = to_float_image(image, 3, "image")
    if target.shape[:2] != (layered.height, layered.width):
        raise LayeredImageError(
            f"image is {target.shape[1]}x{target.shape[0]} but the layers are {layered.width}x{layered.height}"
        )
    difference = np.abs(layered.compose() - target)
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))
    return RecompositionReport(float(difference.mean()), float(difference.max()), psnr)


def reconcile_with_image(layered: LayeredImage, image: Any, iterations: int | None = None) -> LayeredImage:
    """Adjust layer colours (never alphas or shadows) so that the layers recompose to ``image``.

    The composite is linear in each colour: ``I = w_0 B + sum_k w_k C_k`` with ``w_k`` the visible
    weight of layer k (its alpha times the transmittance of everything above it). Per pixel, the
    residual ``r`` is removed by the smallest (least-squares) change of the colours,
    ``dC_k = w_k r / sum_j w_j^2``, so the most visible layer takes most of it; colours that would
    leave [0, 1] are clipped and the rest of the residual goes to the layers still free to move.
    What cannot be removed (e.g. a pixel brighter than its shadow allows) stays; measure it with
    `check_decomposition`.
    """
    target = to_float_image(image, 3, "image")
    if target.shape[:2] != (layered.height, layered.width):
        raise LayeredImageError(
            f"image is {target.shape[1]}x{target.shape[0]} but the layers are {layered.width}x{layered.height}"
        )
    count = layered.num_objects
    background = layered.background.copy()
    foregrounds = [fg.copy() for fg in layered.foregrounds]
    # Where no object or shadow covers a pixel only the background shows: it simply becomes the image there.
    # The least-squares update below runs on the covered pixels only (memory grows with them, not the canvas).
    covered = np.zeros(target.shape[:2], bool)
    for fg, shadow in zip(layered.foregrounds, layered.shadows):
        covered |= (fg[:, :, 3] > 0) | (shadow > 0)
    background[~covered] = target[~covered]
    if covered.any():
        pixels = np.flatnonzero(covered)

        def gather(array: np.ndarray) -> np.ndarray:  # (H, W, ...) -> (N, ...) float32 at the covered pixels
            return array.reshape(-1, *array.shape[2:])[pixels].astype(np.float32, copy=False)

        colors = np.stack([gather(background)] + [gather(fg[:, :, :3]) for fg in foregrounds])  # (K+1, N, 3)
        alphas = np.stack([np.ones(pixels.size, np.float32)] + [gather(fg[:, :, 3]) for fg in foregrounds])
        transmittance = np.stack(
            [np.ones(pixels.size, np.float32)]
            + [(1 - gather(fg[:, :, 3])) * (1 - gather(s)) for fg, s in zip(foregrounds, layered.shadows)]
        )
        # Visible weight of layer k: its alpha times the transmittance of every layer above it.
        above = np.ones_like(alphas)
        for k in range(count - 1, -1, -1):
            above[k] = above[k + 1] * transmittance[k + 1]
        weights = (alphas * above)[..., None]  # (K+1, N, 1)
        wanted = gather(target)
        for _ in range(iterations if iterations is not None else count + 3):
            residual = wanted - (weights * colors).sum(axis=0)
            if float(np.abs(residual).max()) < 1e-6:  # float32 resolution near 1 is 6e-8; an 8-bit step is 4e-3
                break
            free = np.where(residual[None] > 0, colors < 1.0, colors > 0.0)
            free_weights = weights * free
            norm = (free_weights**2).sum(axis=0)
            step = np.divide(residual, norm, out=np.zeros_like(residual), where=norm > 1e-12)
            colors = np.clip(colors + free_weights * step[None], 0.0, 1.0)
        background.reshape(-1, 3)[pixels] = colors[0]
        for k, fg in enumerate(foregrounds):
            fg.reshape(-1, 4)[pixels, :3] = colors[k + 1]
    return LayeredImage(background, foregrounds, [s.copy() for s in layered.shadows], list(layered.labels))
