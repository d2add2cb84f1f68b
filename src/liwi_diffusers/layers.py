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
    "LayerCrop",
    "LayerPart",
    "LayeredImage",
    "LayeredImageError",
    "RecompositionReport",
    "alpha_bbox",
    "check_decomposition",
    "compose_layers",
    "flatten_parts",
    "layer_name",
    "parse_layer_name",
    "parse_part_path",
    "part_layer_name",
    "reconcile_with_image",
    "to_float_image",
]

# Values within this distance outside [0, 1] are float round-off and are clipped; further out is an error.
_RANGE_TOLERANCE = 1e-5
# Full-canvas work (compose, check, 8-bit conversion) runs a band of rows of about this many pixels at a time, so
# that its temporary arrays stay the same size whatever the photo's size.
_BAND_PIXELS = 1 << 20
_LAYER_NAME = re.compile(r"^(shadow|object) (\d+)(?:: (.*))?$", re.DOTALL)
_PART_NAME = re.compile(r"^part (\d+(?:\.\d+)+)(?:: (.*))?$", re.DOTALL)


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


def part_layer_name(path: Sequence[int], label: str | None = None) -> str:
    """Name of a part layer: ``part 2.1`` is part 1 of object 2, ``part 2.1.3: wheel`` part 3 of that part.

    ``path`` starts with the 1-based object index, then one 1-based part index per level (back to front).
    """
    path = [int(step) for step in path]
    if len(path) < 2 or min(path) < 1:
        raise ValueError(f"a part path is the object index then part indices, all >= 1, got {path}")
    return "part " + ".".join(map(str, path)) + (f": {label}" if label else "")


def parse_part_path(name: str) -> tuple[tuple[int, ...], str | None] | None:
    """Inverse of `part_layer_name`: ``(path, label)``, or None when ``name`` is not a part layer's."""
    match = _PART_NAME.match(name)
    if match is None:
        return None
    path, label = match.groups()
    return tuple(int(step) for step in path.split(".")), label or None


def parse_layer_name(name: str) -> tuple[str, int | None, str | None]:
    """Inverse of `layer_name`: ``(role, index, label)``; unknown names give ``("other", None, name)``.

    A part layer (`part_layer_name`) gives ``("part", object index, label)``.
    """
    if name == "background":
        return "background", None, None
    part = parse_part_path(name)
    if part is not None:
        return "part", part[0][0], part[1]
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


def row_bands(height: int, width: int, band_pixels: int | None = None) -> list[slice]:
    """Slices of rows that cut a ``height x width`` canvas into bands of about ``band_pixels`` pixels.

    ``band_pixels`` defaults to the module's ``_BAND_PIXELS`` (about a million).
    """
    rows = max(1, (band_pixels or _BAND_PIXELS) // max(1, width))
    return [slice(start, min(height, start + rows)) for start in range(0, height, rows)]


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
    integer = array.dtype in (np.uint8, np.uint16, bool)
    if not integer and not np.issubdtype(array.dtype, np.floating):
        raise LayeredImageError(f"{what}: unsupported dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if channels is not None and array.shape[2] != channels:
        raise LayeredImageError(f"{what}: expected {channels} channels, got {array.shape[2]} (shape {array.shape})")
    if not integer:
        return _checked_range(array.astype(np.float32, copy=False), what)
    # In [0, 1] by construction: scaled in place (one float copy, not two), no range check needed.
    if array.size == 0:
        raise LayeredImageError(f"{what}: empty image (shape {array.shape})")
    converted = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype != bool:
        np.divide(converted, np.float32(255.0 if array.dtype == np.uint8 else 65535.0), out=converted)
    return converted


def _checked_range(array: np.ndarray, what: str) -> np.ndarray:
    if array.size == 0 or array.shape[0] == 0 or array.shape[1] == 0:
        raise LayeredImageError(f"{what}: empty image (shape {array.shape})")
    low, high = float(array.min()), float(array.max())  # NaN and infinities show in the extremes: no mask needed
    if not (np.isfinite(low) and np.isfinite(high)):
        raise LayeredImageError(f"{what}: contains NaN or infinite values")
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
class LayerPart:
    """A part of an object layer (`LayeredImage.parts`): straight RGBA on the full canvas, a label, its own parts.

    Attributes:
        rgba: ``(H, W, 4)`` float32 straight RGBA in [0, 1]. For a part with ``parts`` it may be None: it is then
            their composite (`flatten_parts`), and when given it must equal that composite within 1/255.
        label: a short name ("" when unknown).
        parts: the part's own parts, back to front (empty: a leaf).
    """

    rgba: np.ndarray | None = None
    label: str = ""
    parts: list[LayerPart] = field(default_factory=list)

    def leaves(self) -> list[tuple[tuple[int, ...], LayerPart]]:
        """``(path below this part, leaf)`` for every leaf, back to front (``[((), self)]`` for a leaf)."""
        if not self.parts:
            return [((), self)]
        return [((j, *path), leaf) for j, part in enumerate(self.parts, start=1) for path, leaf in part.leaves()]

    def copy(self, transform: Any = None) -> LayerPart:
        """A deep copy; ``transform`` (array -> array) is applied to every stored RGBA."""
        transform = transform or np.copy
        rgba = None if self.rgba is None else transform(self.rgba)
        return LayerPart(rgba, self.label, [part.copy(transform) for part in self.parts])


def flatten_parts(parts: Sequence[LayerPart]) -> np.ndarray:
    """Straight RGBA ``(H, W, 4)`` of ``parts`` composed back to front with "over" onto transparency.

    A part with its own parts contributes their composite (recursively), so the leaves decide.
    """
    if not parts:
        raise LayeredImageError("flatten_parts needs at least one part")
    premultiplied: np.ndarray | None = None
    alpha: np.ndarray | None = None
    for part in parts:
        rgba = flatten_parts(part.parts) if part.parts else part.rgba
        if rgba is None:
            raise LayeredImageError("a part without parts needs its RGBA")
        a = rgba[:, :, 3:4]
        if premultiplied is None or alpha is None:
            premultiplied, alpha = a * rgba[:, :, :3], a.copy()
        else:
            premultiplied = a * rgba[:, :, :3] + (1 - a) * premultiplied
            alpha = a + (1 - a) * alpha
    assert premultiplied is not None and alpha is not None
    color = np.divide(premultiplied, alpha, out=np.zeros_like(premultiplied), where=alpha > 0)
    return np.concatenate([np.clip(color, 0.0, 1.0), np.clip(alpha, 0.0, 1.0)], axis=2).astype(np.float32)


def _premultiplied(rgba: np.ndarray) -> np.ndarray:
    return np.concatenate([rgba[:, :, :3] * rgba[:, :, 3:4], rgba[:, :, 3:4]], axis=2)


def _check_same_layer(parts: np.ndarray, layer: np.ndarray, what: str, target: str) -> None:
    """Raise unless two straight RGBA layers show the same (premultiplied colour and alpha within 1/255)."""
    error = float(np.abs(_premultiplied(parts) - _premultiplied(layer)).max())
    if error > 1.0 / 255.0 + 1e-5:
        raise LayeredImageError(
            f"{what} do not recompose to {target} (max difference {error:.4f}, more than 1/255); "
            "give parts that split the layer, e.g. from liwi_diffusers.tools.decompose_layer"
        )


# 16-bit storage: a value v in [0, 1] is kept as round(v * 65535); 65535 = 255 * 257, so 8-bit values are exact.
_UINT16_SCALE = np.float32(65535.0)


@dataclass
class LayerCrop:
    """A layer stored as its box only: ``pixels`` placed at ``(left, top)`` on the canvas, zero everywhere else.

    ``pixels`` is ``(h, w, 4)`` straight RGBA for an object, ``(h, w)`` for a shadow and ``(H, W, 3)`` for the
    background (whose crop is the whole canvas), either float32 in [0, 1] or uint16 holding ``round(value * 65535)``
    (half the memory of float32; every value within 0.5 / 65535 = 7.6e-6 of the float it stands for, and 8-bit values
    exactly). ``(0, 0, ...)`` pixels: a layer that is zero everywhere. `LayeredImage` takes crops wherever it takes
    full-canvas layers and keeps them as they are (see `LayeredImage.compact`).
    """

    pixels: np.ndarray
    left: int = 0
    top: int = 0

    @classmethod
    def of(cls, layer: Any, channel: int | None = None, dtype: Any = np.uint16) -> LayerCrop:
        """A full-canvas float layer cut to the box where ``layer[..., channel]`` (2-D: ``layer``) is non-zero."""
        layer = np.asarray(layer)
        support = layer if channel is None else layer[..., channel]
        box = alpha_bbox(support)
        if box is None:
            return cls(np.zeros((0, 0, *layer.shape[2:]), dtype))
        left, top, right, bottom = box
        return cls(_stored_as(layer[top:bottom, left:right], dtype), left, top)

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """``(left, top, right, bottom)`` of the stored pixels on the canvas (None when empty)."""
        height, width = self.pixels.shape[:2]
        if height == 0 or width == 0:
            return None
        return self.left, self.top, self.left + width, self.top + height

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """float32 values of the canvas window ``rows`` x ``cols`` (slices with start and stop), 0 outside the crop.

        A window inside a float32 crop is a view of it (do not write to it); otherwise a new array.
        """
        top, bottom, left, right = rows.start, rows.stop, cols.start, cols.stop
        box = self.box
        inside = box is not None and box[0] <= left and box[1] <= top and right <= box[2] and bottom <= box[3]
        if inside:  # float32: a view; 16-bit: converted, with no zeros to fill first
            return _as_float(self.pixels[top - self.top : bottom - self.top, left - self.left : right - self.left])
        out = np.zeros((bottom - top, right - left, *self.pixels.shape[2:]), np.float32)
        if box is None:
            return out
        y0, y1, x0, x1 = max(top, box[1]), min(bottom, box[3]), max(left, box[0]), min(right, box[2])
        if y0 < y1 and x0 < x1:
            stored = self.pixels[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left]
            _as_float(stored, out[y0 - top : y1 - top, x0 - left : x1 - left])
        return out

    def full(self, height: int, width: int) -> np.ndarray:
        """The layer on a ``height x width`` canvas, float32 (a new array)."""
        if self.box == (0, 0, width, height) and self.pixels.dtype == np.float32:
            return self.pixels.copy()
        return self.read(slice(0, height), slice(0, width))

    def write(self, top: int, left: int, values: np.ndarray) -> None:
        """Store float ``values`` (in [0, 1]) at canvas ``(top, left)``, the part that falls inside the crop only."""
        box = self.box
        if box is None:
            return
        bottom, right = top + values.shape[0], left + values.shape[1]
        y0, y1, x0, x1 = max(top, box[1]), min(bottom, box[3]), max(left, box[0]), min(right, box[2])
        if y0 < y1 and x0 < x1:
            target = self.pixels[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left]
            target[...] = _stored_as(values[y0 - top : y1 - top, x0 - left : x1 - left], self.pixels.dtype)

    def nonzero_box(self, channel: int | None = None, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
        """Canvas box of the pixels whose ``channel`` (a 2-D crop: its value) is above ``threshold``, or None."""
        if self.box is None:
            return None
        limit = threshold * _UINT16_SCALE if self.pixels.dtype == np.uint16 else np.float32(threshold)
        row_hits, col_hits = [], np.zeros(self.pixels.shape[1], bool)
        for rows in row_bands(*self.pixels.shape[:2]):
            band = self.pixels[rows] if channel is None else self.pixels[rows, :, channel]
            hits = band > limit
            row_hits.append(hits.any(axis=1))
            col_hits |= hits.any(axis=0)
        hit_rows, hit_cols = np.flatnonzero(np.concatenate(row_hits)), np.flatnonzero(col_hits)
        if hit_rows.size == 0:
            return None
        return (
            self.left + int(hit_cols[0]),
            self.top + int(hit_rows[0]),
            self.left + int(hit_cols[-1]) + 1,
            self.top + int(hit_rows[-1]) + 1,
        )

    def copy(self) -> LayerCrop:
        return LayerCrop(self.pixels.copy(), self.left, self.top)


def _as_float(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored pixels (float32, or uint16 in 1/65535 steps) as float32 in [0, 1], into ``out`` when given."""
    if pixels.dtype != np.uint16:
        if out is None:
            return pixels
        out[...] = pixels
        return out
    # A true division (not a multiplication by 1/65535): an 8-bit value v stored as 257 v reads back as v / 255 does.
    return np.divide(pixels, _UINT16_SCALE, out=out, dtype=np.float32)


def _stored_as(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Float ``values`` in [0, 1] as ``dtype`` (float32, or uint16 rounded to 1/65535 steps), a band at a time."""
    if np.dtype(dtype) != np.uint16:
        return np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty(values.shape, np.uint16)
    for rows in row_bands(values.shape[0], values.size // max(1, values.shape[0])):
        out[rows] = np.round(np.clip(values[rows], 0.0, 1.0) * _UINT16_SCALE)
    return out


_Entry = Any  # a stored layer: a full-canvas float32 array or a `LayerCrop`


class LayeredImage:
    """A photo taken apart: background, then per object (back to front) a shadow and a foreground.

    Attributes:
        background: ``(H, W, 3)`` float32 RGB in [0, 1], opaque.
        foregrounds: per object, ``(H, W, 4)`` float32 straight (unpremultiplied) RGBA in [0, 1].
        shadows: per object, ``(H, W)`` float32 shadow alpha sigma in [0, 1] (all zero: no shadow).
        labels: per object, a short name ("" when unknown).
        metadata: what made the layers (method, tools, object count, why the search for objects stopped);
            JSON-serialisable values, kept by `copy`, `select` and `quantized`.
        parts: optional, per object (0-based index) that was decomposed again (`liwi_diffusers.tools.decompose_layer`),
            its parts back to front (`LayerPart`s, or RGBA images taken as unlabelled leaf parts). A part has no
            shadow (the object's shadow stays with the object). The parts must recompose to the object's layer
            within 1/255; `compose` (so `check`) and the flat stacks of `to_rgba_stack` use the parts.
    Inputs may be PIL images or uint8/float arrays; they are converted and checked on creation.

    Any layer may also be given as a `LayerCrop` (its box only, float32 or 16-bit; `compact` makes them): it is kept
    as it is, and ``background``, ``foregrounds`` and ``shadows`` bring such layers to the full-canvas float32
    arrays above the first time they are asked for. Composing, checking, `object_boxes`, `layer_crop` and the file
    writers read the crops directly, so a large photo's layers cost their boxes, not the canvas.
    """

    def __init__(
        self,
        background: Any,
        foregrounds: Sequence[Any] = (),
        shadows: Sequence[Any] | None = None,
        labels: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        parts: dict[int, list[LayerPart]] | None = None,
    ) -> None:
        self._background = self._checked_background(background)
        height, width = self.height, self.width
        self._foregrounds: list[_Entry] = [
            self._checked_layer(fg, 4, f"foreground {k + 1}", height, width) for k, fg in enumerate(foregrounds)
        ]
        count = len(self._foregrounds)
        if shadows is None:
            shadows = [LayerCrop(np.zeros((0, 0), np.float32)) for _ in range(count)]
        if len(shadows) != count:
            raise LayeredImageError(f"got {len(shadows)} shadow layers for {count} foregrounds; need one each")
        self._shadows: list[_Entry] = [
            self._checked_layer(shadow, 1, f"shadow {k + 1}", height, width) for k, shadow in enumerate(shadows)
        ]
        if labels is None:
            labels = [""] * count
        if len(labels) != count:
            raise LayeredImageError(f"got {len(labels)} labels for {count} foregrounds; need one each")
        self.labels: list[str] = [str(label) for label in labels]
        self.metadata: dict[str, Any] = {} if metadata is None else metadata
        self.parts: dict[int, list[LayerPart]] = self._checked_parts(parts or {}, height, width)

    # ------------------------------------------------------------------ the layers, full canvas or as stored
    @property
    def background(self) -> np.ndarray:
        if isinstance(self._background, LayerCrop):
            self._background = self._background.full(self.height, self.width)
        return self._background

    @background.setter
    def background(self, value: np.ndarray) -> None:
        self._background = value

    @property
    def foregrounds(self) -> list[np.ndarray]:
        for k, entry in enumerate(self._foregrounds):
            if isinstance(entry, LayerCrop):
                self._foregrounds[k] = entry.full(self.height, self.width)
        return self._foregrounds

    @foregrounds.setter
    def foregrounds(self, value: list[np.ndarray]) -> None:
        self._foregrounds = value

    @property
    def shadows(self) -> list[np.ndarray]:
        for k, entry in enumerate(self._shadows):
            if isinstance(entry, LayerCrop):
                self._shadows[k] = entry.full(self.height, self.width)
        return self._shadows

    @shadows.setter
    def shadows(self, value: list[np.ndarray]) -> None:
        self._shadows = value

    def layer_crop(self, role: str, index: int | None = None) -> LayerCrop:
        """Layer ``role`` ("background", "shadow" or "object"; ``index`` 0-based) as stored, without a copy.

        A full-canvas layer is a crop at ``(0, 0)`` over the whole canvas. An object with parts gives its own layer.
        """
        if role == "background":
            entry = self._background
        elif role in ("object", "shadow") and index is not None:
            entry = (self._foregrounds if role == "object" else self._shadows)[index]
        else:
            raise ValueError(f"role must be 'background', or 'object'/'shadow' with an index, got {role!r}")
        return entry if isinstance(entry, LayerCrop) else LayerCrop(entry)

    def compact(self, dtype: Any = np.uint16) -> LayeredImage:
        """The same layers stored as `LayerCrop`s: objects and shadows cut to their non-zero box, all in ``dtype``.

        ``np.uint16`` (default) halves float32's memory and moves no value by more than 7.6e-6, so the layers still
        recompose within 1/255 (within about 2e-5 of the float32 error); ``np.float32`` keeps the values exactly.
        Objects with parts keep their parts as they are.
        """
        height, width = self.height, self.width

        def cut(entry: _Entry, channel: int | None) -> LayerCrop:
            if isinstance(entry, LayerCrop):
                box = entry.nonzero_box(channel)
                if box is None:
                    return LayerCrop(np.zeros((0, 0, *entry.pixels.shape[2:]), dtype))
                left, top, right, bottom = box
                pixels = entry.read(slice(top, bottom), slice(left, right))
                return LayerCrop(_stored_as(pixels, dtype), left, top)
            return LayerCrop.of(entry, channel, dtype)

        background = LayerCrop(_stored_as(self.layer_crop("background").full(height, width), dtype))
        return LayeredImage(
            background,
            [cut(entry, 3) for entry in self._foregrounds],
            [cut(entry, None) for entry in self._shadows],
            list(self.labels),
            dict(self.metadata),
            {k: [part.copy() for part in tree] for k, tree in (self.parts or {}).items()},
        )

    def _full(self, entry: _Entry) -> np.ndarray:
        """A stored layer on the full canvas (the array itself when it is one, else a new float32 array)."""
        return entry.full(self.height, self.width) if isinstance(entry, LayerCrop) else entry

    def _checked_background(self, background: Any) -> _Entry:
        if not isinstance(background, LayerCrop):
            return to_float_image(background, 3, "background")
        if background.left != 0 or background.top != 0 or background.box is None:
            raise LayeredImageError("background: a crop of the background must cover the whole canvas, from (0, 0)")
        return self._checked_crop(background, 3, "background")

    def _checked_layer(self, layer: Any, channels: int, what: str, height: int, width: int) -> _Entry:
        """A layer converted and checked: a full-canvas float32 array, or a `LayerCrop` that fits the canvas."""
        if not isinstance(layer, LayerCrop):
            array = self._same_size(to_float_image(layer, channels, what), height, width, what)
            return array[:, :, 0] if channels == 1 else array
        crop = self._checked_crop(layer, channels, what)
        box = crop.box
        if box is not None and (box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height):
            raise LayeredImageError(
                f"{what}: its crop spans {box} (left, top, right, bottom), outside the {width}x{height} canvas"
            )
        return crop

    @staticmethod
    def _checked_crop(crop: LayerCrop, channels: int, what: str) -> LayerCrop:
        pixels = np.asarray(crop.pixels)
        if isinstance(crop.left, bool) or isinstance(crop.top, bool):
            raise LayeredImageError(f"{what}: crop offsets must be ints, got ({crop.left!r}, {crop.top!r})")
        left, top = int(crop.left), int(crop.top)
        if pixels.ndim == 2 and channels == 1:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3 or pixels.shape[2] != channels:
            shape = "(h, w)" if channels == 1 else f"(h, w, {channels})"
            raise LayeredImageError(f"{what}: crop pixels must be {shape}, got shape {pixels.shape}")
        if pixels.shape[0] == 0 or pixels.shape[1] == 0:
            pixels = np.zeros((0, 0, channels), np.float32)
        elif pixels.dtype != np.uint16:
            pixels = to_float_image(pixels, channels, what)
        return LayerCrop(pixels[:, :, 0] if channels == 1 else pixels, left, top)

    def _checked_parts(self, parts: dict[int, Any], height: int, width: int) -> dict[int, list[LayerPart]]:
        """Parts converted and checked: known objects, full canvas, recomposing to the object layer."""
        checked: dict[int, list[LayerPart]] = {}
        for index in sorted(parts):
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_objects:
                raise LayeredImageError(f"parts given for object index {index!r}; there are {self.num_objects} objects")
            what = f"parts of object {index + 1}"
            if not parts[index]:
                continue  # no parts: the object layer stands alone
            tree = [
                self._checked_part(part, f"{what}, part {j}", height, width) for j, part in enumerate(parts[index], 1)
            ]
            layer = self._full(self._foregrounds[index])
            _check_same_layer(flatten_parts(tree), layer, what, f"object {index + 1}'s layer")
            checked[int(index)] = tree
        return checked

    def _checked_part(self, part: Any, what: str, height: int, width: int) -> LayerPart:
        if not isinstance(part, LayerPart):
            part = LayerPart(part)
        children = [self._checked_part(p, f"{what}.{j}", height, width) for j, p in enumerate(part.parts, 1)]
        if part.rgba is None and not children:
            raise LayeredImageError(f"{what} has neither RGBA pixels nor parts")
        rgba = None if part.rgba is None else self._same_size(to_float_image(part.rgba, 4, what), height, width, what)
        if children:
            flat = flatten_parts(children)
            if rgba is not None:
                _check_same_layer(flat, rgba, f"the parts of {what}", what)
            rgba = flat
        return LayerPart(rgba, str(part.label), children)

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
        return int(self._canvas_shape()[0])

    @property
    def width(self) -> int:
        return int(self._canvas_shape()[1])

    def _canvas_shape(self) -> tuple[int, ...]:
        background = self._background
        return (background.pixels if isinstance(background, LayerCrop) else background).shape

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as PIL reports it."""
        return self.width, self.height

    @property
    def num_objects(self) -> int:
        return len(self._foregrounds)

    def __repr__(self) -> str:
        labels = ", ".join(label or "?" for label in self.labels)
        split = f", {len(self.parts)} split into parts" if self.parts else ""
        return f"LayeredImage({self.width}x{self.height}, {self.num_objects} objects: [{labels}]{split})"

    def object_layer(self, index: int) -> np.ndarray:
        """Straight RGBA of object ``index`` (0-based) as it is shown: its parts' composite when it has parts."""
        parts = (self.parts or {}).get(index)
        return flatten_parts(parts) if parts else self._full(self._foregrounds[index])

    # ------------------------------------------------------------------ maths
    def compose(self) -> np.ndarray:
        """The image these layers show, ``(H, W, 3)`` float32 (objects with parts: from their parts).

        Composed a band of rows at a time: beyond the result, memory does not grow with the photo's size.
        """
        composite = np.empty((self.height, self.width, 3), np.float32)
        for rows in row_bands(self.height, self.width):
            composite[rows] = self.compose_rows(rows)
        return composite

    def compose_rows(self, rows: slice, quantize: bool = False) -> np.ndarray:
        """What `compose` gives for the rows ``rows`` (``(rows, W, 3)`` float32), computed from those rows only.

        With ``quantize``, every layer is first rounded to 8 bits, as files store it (`quantized`).
        """

        def q(array: np.ndarray) -> np.ndarray:
            return np.round(array * 255.0).astype(np.float32) / 255.0 if quantize else array

        cols = slice(0, self.width)
        layers = []
        for k in range(self.num_objects):
            parts = (self.parts or {}).get(k)
            if parts:
                layers.append(flatten_parts([part.copy(lambda array: q(array[rows])) for part in parts]))
            else:
                layers.append(q(self.layer_crop("object", k).read(rows, cols)))
        alphas = [fg[:, :, 3:4] for fg in layers]
        colors = [fg[:, :, :3] for fg in layers]
        shadows = [q(self.layer_crop("shadow", k).read(rows, cols))[:, :, None] for k in range(self.num_objects)]
        background = q(self.layer_crop("background").read(rows, cols))
        return np.asarray(compose_layers(background, colors, alphas, shadows), dtype=np.float32)

    def check(self, image: Any) -> RecompositionReport:
        """Recomposition error against ``image`` (see `check_decomposition`)."""
        return check_decomposition(self, image)

    def object_boxes(self, threshold: float = 0.0) -> list[tuple[int, int, int, int] | None]:
        """Per object, the box of its foreground alpha (None when the layer is empty)."""
        return [self.layer_crop("object", k).nonzero_box(3, threshold) for k in range(self.num_objects)]

    def quantized(self) -> LayeredImage:
        """A copy with every value rounded to 8 bits, exactly what PNG/PSD/ORA files hold."""

        def q(array: np.ndarray) -> np.ndarray:
            return np.round(array * 255.0).astype(np.float32) / 255.0

        # An object with parts is what its rounded parts show (rounded parts of a soft split may differ by a step).
        def q_entry(entry: _Entry) -> _Entry:  # a crop stays a crop (float32)
            if isinstance(entry, LayerCrop):
                return LayerCrop(q(_as_float(entry.pixels)), entry.left, entry.top)
            return q(entry)

        parts = {k: [part.copy(q) for part in tree] for k, tree in (self.parts or {}).items()}
        foregrounds = [flatten_parts(parts[k]) if k in parts else q_entry(fg) for k, fg in enumerate(self._foregrounds)]
        return LayeredImage(
            q_entry(self._background),
            foregrounds,
            [q_entry(s) for s in self._shadows],
            list(self.labels),
            dict(self.metadata),
            parts,
        )

    def copy(self) -> LayeredImage:
        return LayeredImage(
            self._background.copy(),
            [fg.copy() for fg in self._foregrounds],
            [s.copy() for s in self._shadows],
            list(self.labels),
            dict(self.metadata),
            {k: [part.copy() for part in tree] for k, tree in (self.parts or {}).items()},
        )

    def select(self, indices: Sequence[int]) -> LayeredImage:
        """A layered image with only the objects at ``indices`` (0-based, order kept as given)."""
        for index in indices:
            if not 0 <= index < self.num_objects:
                raise IndexError(f"object index {index} out of range for {self.num_objects} objects")
        parts = self.parts or {}
        return LayeredImage(
            self._background,
            [self._foregrounds[i] for i in indices],
            [self._shadows[i] for i in indices],
            [self.labels[i] for i in indices],
            dict(self.metadata),
            {new: parts[old] for new, old in enumerate(indices) if old in parts},
        )

    # ------------------------------------------------------------------ flat stacks (for files)
    def layer_names(self) -> list[str]:
        """Names of `to_rgba_stack` layers, back to front."""
        return [name for name, _ in self._named_layers()]

    def _named_layers(self) -> list[tuple[str, Any]]:
        """``(name, how to get its RGBA)`` per flat layer, back to front."""
        layers: list[tuple[str, Any]] = [("background", None)]
        parts = self.parts or {}
        for k, label in enumerate(self.labels):
            layers.append((layer_name("shadow", k + 1, label), ("shadow", k)))
            if k not in parts:
                layers.append((layer_name("object", k + 1, label), ("object", k)))
                continue
            for j, part in enumerate(parts[k], start=1):
                for path, leaf in part.leaves():
                    layers.append((part_layer_name((k + 1, j, *path), leaf.label), ("part", leaf)))
        return layers

    def to_rgba_stack(self) -> list[tuple[str, np.ndarray]]:
        """Back-to-front ``(name, (H, W, 4) float32 RGBA)`` layers that compose with plain "over".

        The background is opaque, a shadow is black with alpha sigma, an object is its RGBA; an object with
        parts is its leaf parts instead (``part 2.1``, ``part 2.2: wheel``, ...; `part_layer_name`), back to front.
        """
        opaque = np.ones((self.height, self.width, 1), np.float32)
        black = np.zeros((self.height, self.width, 3), np.float32)
        stack = []
        for name, source in self._named_layers():
            if source is None:
                stack.append((name, np.concatenate([self._full(self._background), opaque], axis=2)))
            elif source[0] == "shadow":
                shadow = self._full(self._shadows[source[1]])
                stack.append((name, np.concatenate([black, shadow[:, :, None]], axis=2)))
            elif source[0] == "object":
                stack.append((name, self._full(self._foregrounds[source[1]])))
            else:
                stack.append((name, source[1].rgba))
        return stack

    @classmethod
    def from_rgba_stack(cls, layers: Sequence[tuple[str, Any]]) -> LayeredImage:
        """Rebuild from named full-canvas RGBA layers, back to front (inverse of `to_rgba_stack`).

        The first layer must be an opaque background. ``shadow k``/``object k`` names pair shadows
        with objects; a run of ``part k.j...`` layers (`part_layer_name`) after ``shadow k`` stands for object k
        split into parts (its label comes from the shadow's name; a part split again gets no label of its own).
        A layer with any other name is taken as an object without a shadow, labelled with its name (files made
        by other tools).
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
        foregrounds: list[np.ndarray] = []
        shadows: list[np.ndarray] = []
        labels: list[str] = []
        parts: dict[int, list[LayerPart]] = {}
        pending_shadow: tuple[int, np.ndarray, str] | None = None
        run: list[tuple[tuple[int, ...], np.ndarray, str]] = []  # the part layers of the object being read

        def close_run() -> None:
            nonlocal pending_shadow
            if not run:
                return
            index = run[0][0][0]
            tree = _part_tree([(path[1:], rgba, label) for path, rgba, label in run], f"object {index}")
            shadow = pending_shadow[1] if pending_shadow is not None else np.zeros(first.shape[:2], np.float32)
            parts[len(foregrounds)] = tree
            foregrounds.append(flatten_parts(tree))
            shadows.append(shadow)
            labels.append(pending_shadow[2] if pending_shadow is not None else "")
            pending_shadow = None
            run.clear()

        for name, rgba in rest:
            rgba = to_float_image(rgba, 4, f"layer {name!r}")
            role, index, label = parse_layer_name(name)
            if role == "part":
                path = parse_part_path(name)[0]  # type: ignore[index]
                if run and run[0][0][0] != index:
                    close_run()
                if not run and pending_shadow is not None and pending_shadow[0] != index:
                    raise LayeredImageError(f"shadow {pending_shadow[0]} is followed by part layer {name!r}")
                run.append((path, rgba, label or ""))
                continue
            close_run()
            if role == "background":
                raise LayeredImageError("a stack has exactly one background layer, at the bottom")
            if role == "shadow":
                if pending_shadow is not None:
                    raise LayeredImageError(f"shadow {pending_shadow[0]} is not followed by its object layer")
                if float(rgba[:, :, :3].max(initial=0.0)) > 1.0 / 255.0:
                    raise LayeredImageError(f"shadow layer {name!r} must be black (RGB 0); alpha carries the shadow")
                pending_shadow = (index, rgba[:, :, 3], label or "")  # type: ignore[assignment]
                continue
            if pending_shadow is not None and role == "object" and pending_shadow[0] != index:
                raise LayeredImageError(f"shadow {pending_shadow[0]} is followed by object {index}")
            shadows.append(pending_shadow[1] if pending_shadow is not None else np.zeros(rgba.shape[:2], np.float32))
            pending_shadow = None
            foregrounds.append(rgba)
            labels.append(label or "")
        close_run()
        if pending_shadow is not None:
            raise LayeredImageError(f"shadow {pending_shadow[0]} has no object layer above it")
        return cls(first[:, :, :3], foregrounds, shadows, labels, parts=parts)

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
        return Image.fromarray(to_uint8(self._full(self._background)), "RGB")

    def foreground_pil(self, index: int) -> Image.Image:
        return Image.fromarray(to_uint8(self._full(self._foregrounds[index])), "RGBA")

    def shadow_pil(self, index: int) -> Image.Image:
        """Shadow alpha of object ``index`` (0-based) as an L image."""
        return Image.fromarray(to_uint8(self._full(self._shadows[index])), "L")

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


def _part_tree(leaves: list[tuple[tuple[int, ...], np.ndarray, str]], what: str) -> list[LayerPart]:
    """Parts from back-to-front ``(path, rgba, label)`` leaves; the parts of one part must come together."""
    tree: list[LayerPart] = []
    keys: list[int] = []
    position = 0
    while position < len(leaves):
        path = leaves[position][0]
        if not path:
            raise LayeredImageError(f"{what}: a part layer cannot also hold parts")
        key, end = path[0], position
        while end < len(leaves) and leaves[end][0] and leaves[end][0][0] == key:
            end += 1
        if key in keys:
            raise LayeredImageError(f"{what}: the layers of part {key} are not next to each other in the stack")
        keys.append(key)
        group = leaves[position:end]
        if len(group) == 1 and len(group[0][0]) == 1:
            tree.append(LayerPart(group[0][1], group[0][2]))
        else:
            tree.append(LayerPart(None, "", _part_tree([(p[1:], r, lab) for p, r, lab in group], f"{what}.{key}")))
        position = end
    return tree


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8, rounding to the nearest step (what PNG/PSD/ORA files hold).

    Converted a band of rows at a time, so a large image needs no full-size float temporaries.
    """
    array = np.asarray(array)
    if array.ndim < 2 or array.size <= _BAND_PIXELS:
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.empty(array.shape, np.uint8)
    for rows in row_bands(array.shape[0], array.size // max(1, array.shape[0])):
        out[rows] = np.round(np.clip(array[rows], 0.0, 1.0) * 255.0)
    return out


def check_decomposition(layered: LayeredImage, image: Any) -> RecompositionReport:
    """Compare ``layered.compose()`` with ``image`` (PIL RGB or ``(H, W, 3)`` array): mean/max abs error, PSNR."""
    source = _image_rows(image, 3, "image")
    if source.shape[:2] != (layered.height, layered.width):
        raise LayeredImageError(
            f"image is {source.shape[1]}x{source.shape[0]} but the layers are {layered.width}x{layered.height}"
        )
    # A band of rows at a time: the check needs no full-size copy of the photo or of the composite.
    total, squares, largest = 0.0, 0.0, 0.0
    for rows in row_bands(layered.height, layered.width):
        difference = np.abs(layered.compose_rows(rows) - to_float_image(source[rows], 3, "image"))
        total += float(difference.sum(dtype=np.float64))
        squares += float(np.square(difference, dtype=np.float64).sum())
        largest = max(largest, float(difference.max()))
    count = layered.height * layered.width * 3
    mse = squares / count
    psnr = float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))
    return RecompositionReport(total / count, largest, psnr)


def _image_rows(image: Any, channels: int, what: str) -> np.ndarray:
    """``image`` as an ``(H, W, C)`` array whose row bands `to_float_image` takes, without converting it whole.

    A PIL image becomes its (converted) 8-bit pixels, an array stays as it is; anything else is converted whole.
    """
    if isinstance(image, Image.Image):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            return to_float_image(image, channels, what)  # raises its usual error
        array = np.asarray(image if image.mode == mode else image.convert(mode))
    elif isinstance(image, np.ndarray):
        array = image
    else:
        return to_float_image(image, channels, what)
    if array.ndim == 2:
        array = array[:, :, None]
    usable = array.dtype in (np.uint8, np.uint16, bool) or np.issubdtype(array.dtype, np.floating)
    if array.ndim != 3 or array.size == 0 or not usable or array.shape[2] != channels:
        return to_float_image(array, channels, what)  # raises its usual error
    return array


# `reconcile_colours` stops when no residual is above this (float32 resolution near 1 is 6e-8; an 8-bit step is 4e-3).
RECONCILE_TOLERANCE = 1e-6
# Pixels `reconcile_colours` solves at a time (its scratch memory: 27 (K+1) bytes a pixel of a chunk).
RECONCILE_CHUNK = 1 << 14


def visible_weights(alphas: Sequence[np.ndarray], transmittance: Sequence[np.ndarray]) -> np.ndarray:
    """Visible weight of every layer, stacked: its alpha times the transmittance of every layer above it.

    ``alphas`` and ``transmittance`` (``(1 - alpha)(1 - sigma)``) are per object (at least one), back to front, all
    of one shape S; the result is ``(K+1, *S)`` with the background (alpha 1) first.
    """
    if not alphas or len(alphas) != len(transmittance):
        raise ValueError(
            f"need at least one object and one transmittance per alpha, got {len(alphas)} and {len(transmittance)}"
        )
    weights = [alphas[-1]]
    above = transmittance[-1]
    for alpha, through in zip(alphas[-2::-1], transmittance[-2::-1]):
        weights.append(alpha * above)
        above = above * through
    weights.append(above)
    return np.stack(weights[::-1])


def reconcile_colours(
    colors: np.ndarray, weights: np.ndarray, wanted: np.ndarray, iterations: int | None = None
) -> np.ndarray:
    """The solver of `reconcile_with_image`, in place on channel-first arrays; returns ``colors``.

    ``colors`` ``(K+1, 3, N)`` float32 in [0, 1] (background first), ``weights`` ``(K+1, 1, N)`` (`visible_weights`),
    ``wanted`` ``(3, N)``. Each round removes the residual by the least-squares change of the colours still free to
    move in its direction (not at 0 or 1), then clips to [0, 1]; a round works only on the pixels whose residual is
    still above `RECONCILE_TOLERANCE` (clipping leaves a few), at most ``iterations`` (default K + 3) rounds.
    Pixels are independent: they are solved `RECONCILE_CHUNK` at a time in scratch buffers allocated once, which
    bounds the memory and avoids what fresh multi-megabyte temporaries cost in page faults each round.
    """
    layers, channels, count = colors.shape
    if weights.shape != (layers, 1, count) or wanted.shape != (channels, count):
        raise ValueError(
            f"expected weights {(layers, 1, count)} and wanted {(channels, count)} for colors {colors.shape}, "
            f"got {weights.shape} and {wanted.shape}"
        )
    rounds = iterations if iterations is not None else layers + 2
    size = layers * channels * min(count, RECONCILE_CHUNK)
    scratch = (np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, bool))
    planes = np.empty((4, channels * min(count, RECONCILE_CHUNK)), np.float32)
    for start in range(0, count, RECONCILE_CHUNK):
        chunk = slice(start, min(count, start + RECONCILE_CHUNK))
        _reconcile_chunk(colors[:, :, chunk], weights[:, :, chunk], wanted[:, chunk], rounds, scratch, planes)
    return colors


def _reconcile_chunk(
    colors: np.ndarray,
    weights: np.ndarray,
    wanted: np.ndarray,
    rounds: int,
    scratch: tuple[np.ndarray, np.ndarray, np.ndarray],
    planes: np.ndarray,
) -> None:
    """`reconcile_colours` on one chunk of pixels (views, updated in place), with the caller's scratch buffers."""
    layers, channels, n = colors.shape

    def buffers(n: int) -> tuple[np.ndarray, ...]:  # the scratch as (K+1, 3, n) x 3 and (3, n) x 4 views
        layered = (buffer[: layers * channels * n].reshape(layers, channels, n) for buffer in scratch)
        return (*layered, *(plane[: channels * n].reshape(channels, n) for plane in planes))

    active: np.ndarray | None = None  # indices of the pixels still worked on (None: all)
    work_colors, work_weights, work_wanted = colors, weights, wanted
    for _ in range(rounds):
        stacked, free_weights, free, residual, norm, step, sign = buffers(n)
        np.multiply(work_weights, work_colors, out=stacked)
        np.sum(stacked, axis=0, out=residual)
        np.subtract(work_wanted, residual, out=residual)
        unsolved = (np.abs(residual, out=norm) >= RECONCILE_TOLERANCE).any(axis=0)
        remaining = int(np.count_nonzero(unsolved))
        if remaining == 0:
            break
        if remaining < n // 4:  # few pixels left (clipping leaves some): work on those only from here on
            if active is not None:
                colors[:, :, active] = work_colors
            keep = np.flatnonzero(unsolved)
            active = keep if active is None else active[keep]
            work_colors, work_weights, work_wanted = colors[:, :, active], weights[:, :, active], wanted[:, active]
            unsolved_residual = residual[:, keep]
            n = remaining
            stacked, free_weights, free, residual, norm, step, sign = buffers(n)
            residual[...] = unsolved_residual
        # Free: below 1 where the residual is positive, above 0 where it is negative: ``(c - 1/2) sign(r) < 1/2``.
        np.subtract(work_colors, 0.5, out=stacked)
        np.multiply(stacked, np.sign(residual, out=sign), out=stacked)
        np.multiply(work_weights, np.less(stacked, 0.5, out=free), out=free_weights)
        np.sum(np.multiply(free_weights, free_weights, out=stacked), axis=0, out=norm)
        step.fill(0.0)
        np.divide(residual, norm, out=step, where=norm > 1e-12)
        work_colors += np.multiply(free_weights, step, out=stacked)
        np.clip(work_colors, 0.0, 1.0, out=work_colors)
    if active is not None:
        colors[:, :, active] = work_colors


def reconcile_with_image(layered: LayeredImage, image: Any, iterations: int | None = None) -> LayeredImage:
    """Adjust layer colours (never alphas or shadows) so that the layers recompose to ``image``.

    The composite is linear in each colour: ``I = w_0 B + sum_k w_k C_k`` with ``w_k`` the visible
    weight of layer k (its alpha times the transmittance of everything above it). Per pixel, the
    residual ``r`` is removed by the smallest (least-squares) change of the colours,
    ``dC_k = w_k r / sum_j w_j^2``, so the most visible layer takes most of it; colours that would
    leave [0, 1] are clipped and the rest of the residual goes to the layers still free to move.
    What cannot be removed (e.g. a pixel brighter than its shadow allows) stays; measure it with
    `check_decomposition`. The result has no parts (`LayeredImage.parts`): reconcile first, then split
    objects with `liwi_diffusers.tools.decompose_layer` (its parts are the reconciled colours).
    """
    target = to_float_image(image, 3, "image")
    if target.shape[:2] != (layered.height, layered.width):
        raise LayeredImageError(
            f"image is {target.shape[1]}x{target.shape[0]} but the layers are {layered.width}x{layered.height}"
        )
    count = layered.num_objects
    # Full-canvas float32 copies (of crops too, without changing how ``layered`` stores them).
    height, width = layered.height, layered.width
    background = layered.layer_crop("background").full(height, width)
    foregrounds = [layered.layer_crop("object", k).full(height, width) for k in range(count)]
    shadows = [layered.layer_crop("shadow", k).full(height, width) for k in range(count)]
    # Where no object or shadow covers a pixel only the background shows: it simply becomes the image there.
    # The least-squares update below runs on the covered pixels only (memory grows with them, not the canvas).
    covered = np.zeros(target.shape[:2], bool)
    for fg, shadow in zip(foregrounds, shadows):
        covered |= (fg[:, :, 3] > 0) | (shadow > 0)
    every = bool(covered.all())
    if not every:
        background[~covered] = target[~covered]
    if count and (every or covered.any()):
        pixels = None if every else np.flatnonzero(covered)

        def gather(array: np.ndarray) -> np.ndarray:  # (H, W, C) -> (C, N) float32 at the ``pixels``
            flat = array.reshape(-1, array.shape[2] if array.ndim == 3 else 1)
            return np.ascontiguousarray((flat if pixels is None else flat[pixels]).T, dtype=np.float32)

        alphas = [gather(fg[:, :, 3]) for fg in foregrounds]
        transmittance = [(1 - alpha) * (1 - gather(shadow)) for alpha, shadow in zip(alphas, shadows)]
        weights = visible_weights(alphas, transmittance)  # (K+1, 1, N)
        # Where one object alone is seen (visible weight exactly 1: opaque, nothing in front of it), the solver's
        # answer is the image itself in that object's colour and no change elsewhere: set it without solving.
        alone = weights[1:, 0] == 1.0  # (K, N)
        seen_alone = alone.any(axis=0)
        flat_target = target.reshape(-1, 3)
        for k, fg in enumerate(foregrounds):
            if alone[k].any():
                where = np.flatnonzero(alone[k]) if pixels is None else pixels[alone[k]]
                fg.reshape(-1, 4)[where, :3] = flat_target[where]
        if not seen_alone.all():
            weights = weights[:, :, ~seen_alone]
            if seen_alone.any():
                pixels = np.flatnonzero(~seen_alone) if pixels is None else pixels[~seen_alone]
            colors = np.stack([gather(background)] + [gather(fg[:, :, :3]) for fg in foregrounds])  # (K+1, 3, N)
            reconcile_colours(colors, np.ascontiguousarray(weights), gather(target), iterations)
            if pixels is None:
                background.reshape(-1, 3)[:] = colors[0].T
                for k, fg in enumerate(foregrounds):
                    fg.reshape(-1, 4)[:, :3] = colors[k + 1].T
            else:
                background.reshape(-1, 3)[pixels] = colors[0].T
                for k, fg in enumerate(foregrounds):
                    fg.reshape(-1, 4)[pixels, :3] = colors[k + 1].T
    return LayeredImage(background, foregrounds, shadows, list(layered.labels))
