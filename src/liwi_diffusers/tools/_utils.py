"""Small helpers shared by the weight-free tools: input checks, resizing, masks, guided filtering."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..layers import LayeredImageError, alpha_bbox, to_float_image


def as_rgb(image: Any, what: str = "image") -> np.ndarray:
    """A PIL image or ``(H, W, 3)`` array (uint8/uint16/float in [0, 1]) as float32 ``(H, W, 3)``.

    Raises `LayeredImageError` (a `ValueError`) for a wrong shape, NaN/inf, out-of-range values or
    an empty image.
    """
    return to_float_image(image, 3, what)


def as_mask(mask: Any, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A boolean or float ``(H, W)`` array as a float32 coverage map in [0, 1] of the given shape."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise LayeredImageError(f"{what}: expected an (H, W) array, got shape {array.shape}")
    if array.shape != tuple(shape):
        raise LayeredImageError(f"{what} is {array.shape[1]}x{array.shape[0]} but the image is {shape[1]}x{shape[0]}")
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise LayeredImageError(f"{what}: contains NaN or infinite values")
    if array.size and (array.min() < -1e-5 or array.max() > 1 + 1e-5):
        raise LayeredImageError(f"{what}: values must lie in [0, 1], found [{array.min():.4g}, {array.max():.4g}]")
    return np.clip(array, 0.0, 1.0)


def scale_for(shape: tuple[int, ...], max_side: int) -> float:
    """Factor (<= 1) that brings the longer side of ``shape`` down to ``max_side``."""
    return min(1.0, float(max_side) / float(max(shape[0], shape[1])))


def resize(array: np.ndarray, size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """Resize a float array to ``size = (height, width)`` (area when shrinking, linear when growing)."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array.copy()
    if interpolation is None:
        shrinking = height < array.shape[0] or width < array.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(array, dtype=np.float32), (width, height), interpolation=interpolation)
    if array.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def disk(radius: float) -> np.ndarray:
    """An elliptical structuring element of the given radius (at least 1x1)."""
    radius = max(round(radius), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a boolean mask by a disc."""
    if radius <= 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), disk(radius)).astype(bool)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion of a boolean mask by a disc (the image border counts as inside)."""
    if radius <= 0:
        return mask.copy()
    return cv2.erode(mask.astype(np.uint8), disk(radius), borderType=cv2.BORDER_REPLICATE).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box ``(left, top, right, bottom)`` (exclusive) of the True pixels, None when there are none."""
    return alpha_bbox(mask)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``(left, top, right, bottom)`` (right and bottom exclusive); 0 when both are empty."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def padded_box(box: tuple[int, int, int, int], pad: int, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` grown by ``pad`` pixels on each side, clipped to an image of ``shape``."""
    left, top, right, bottom = box
    return max(0, left - pad), max(0, top - pad), min(shape[1], right + pad), min(shape[0], bottom + pad)


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB float image."""
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def colour_codes(rgb: np.ndarray, levels: int = 8) -> np.ndarray:
    """Each pixel's colour bin, ``levels`` bins a channel (``levels**3`` in all), for colour histograms of
    float RGB in [0, 1]."""
    quantised = np.clip((rgb[..., :3] * levels).astype(np.int64), 0, levels - 1)
    return (quantised[..., 0] * levels + quantised[..., 1]) * levels + quantised[..., 2]


def box_mean(array: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a ``(2r+1)`` square window (edges reflected)."""
    size = 2 * radius + 1
    return cv2.boxFilter(array, -1, (size, size), borderType=cv2.BORDER_REFLECT)


def guided_upsample(
    guide_low: np.ndarray, source_low: np.ndarray, guide_high: np.ndarray, radius: int = 2, eps: float = 1e-4
) -> np.ndarray:
    """Edge-aware upsampling of ``source_low`` with a grey guide (the fast guided filter of He and Sun).

    The local linear model ``source ~ a * guide + b`` is fitted at low resolution; ``a`` and ``b``
    are upsampled smoothly and applied to the full-resolution guide, so edges follow the photo.
    """
    g = guide_low.astype(np.float32)
    s = source_low.astype(np.float32)
    mean_g, mean_s = box_mean(g, radius), box_mean(s, radius)
    var_g = box_mean(g * g, radius) - mean_g * mean_g
    cov = box_mean(g * s, radius) - mean_g * mean_s
    a = cov / (var_g + eps)
    b = mean_s - a * mean_g
    a, b = box_mean(a, radius), box_mean(b, radius)
    size = guide_high.shape[:2]
    return resize(a, size, cv2.INTER_LINEAR) * guide_high.astype(np.float32) + resize(b, size, cv2.INTER_LINEAR)


def push_pull_fill(values: np.ndarray, weights: np.ndarray, min_weight: float = 1e-3) -> np.ndarray:
    """Fill pixels of zero weight smoothly from their weighted surroundings (a push-pull pyramid).

    ``values`` is ``(H, W)`` or ``(H, W, C)``, ``weights`` ``(H, W)`` in [0, 1]. Pixels with full weight
    keep their value; holes take a weighted average from the coarsest level needed to cover them.
    """
    values = values.astype(np.float32)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[:, :, None]
    weights = weights.astype(np.float32)
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    v, w = values * weights[:, :, None], weights
    while True:
        levels.append((v, w))
        if min(w.shape) <= 1 or float(w.min()) > min_weight:
            break
        height, width = (w.shape[0] + 1) // 2, (w.shape[1] + 1) // 2
        v = resize(v, (height, width), cv2.INTER_AREA).reshape(height, width, -1)
        w = resize(w, (height, width), cv2.INTER_AREA)
    # Coarsest level: normalise (and use the global mean where even that has no support).
    v, w = levels[-1]
    total = float(w.sum())
    fallback = v.reshape(-1, v.shape[2]).sum(axis=0) / total if total > 0 else np.zeros(v.shape[2], np.float32)
    filled = np.where(w[:, :, None] > min_weight, v / np.maximum(w[:, :, None], min_weight), fallback)
    for v, w in reversed(levels[:-1]):
        up = resize(filled, w.shape, cv2.INTER_LINEAR).reshape(w.shape[0], w.shape[1], -1)
        wn = np.clip(w, 0.0, 1.0)[:, :, None]
        own = v / np.maximum(w[:, :, None], min_weight)
        filled = wn * own + (1 - wn) * up
    return filled[:, :, 0] if squeeze else filled
