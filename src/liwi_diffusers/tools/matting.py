"""Alpha matting: a soft alpha matte and straight foreground colour from a coarse object mask.

`AlphaMatter` is the interface; `ClosedFormMatter` is the weight-free CPU default (pymatting's
closed-form matting on a trimap made from the mask). An adapter for a learned matting model only
has to map ``(image, coarse mask)`` to a `Matte`.

pymatting compiles its numba kernels on first import (about a minute, cached afterwards), so it
is imported only inside `ClosedFormMatter.__call__`.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_mask, as_rgb, dilate, erode, guided_upsample, luminance, mask_box, padded_box, resize, scale_for

__all__ = ["AlphaMatter", "BandMatter", "ClosedFormMatter", "Matte", "blur_fusion_foreground", "make_trimap"]


@dataclass
class Matte:
    """A matted object at full resolution.

    Attributes:
        alpha: ``(H, W)`` float32 in [0, 1].
        foreground: ``(H, W, 3)`` float32 straight (unpremultiplied) colour in [0, 1]; where alpha is 0
            it is meaningless (the input image is used there).
    """

    alpha: np.ndarray
    foreground: np.ndarray

    def rgba(self) -> np.ndarray:
        """``(H, W, 4)`` straight RGBA."""
        return np.concatenate([self.foreground, self.alpha[:, :, None]], axis=2).astype(np.float32)


@runtime_checkable
class AlphaMatter(Protocol):
    """Turns a coarse object mask into a soft alpha matte and the object's own colour."""

    def __call__(self, image: Any, mask: Any) -> Matte:
        """Matte of the object covered by ``mask`` (``(H, W)`` bool or float) in ``image`` (PIL or float RGB)."""
        ...


def make_trimap(mask: np.ndarray, radius: int) -> np.ndarray:
    """Trimap from a boolean mask: 1 inside (mask eroded), 0 outside (mask dilated), 0.5 between."""
    trimap = np.full(mask.shape, 0.5, np.float64)
    trimap[erode(mask, radius)] = 1.0
    trimap[~dilate(mask, radius)] = 0.0
    return trimap


class ClosedFormMatter:
    """Closed-form matting (Levin et al.) on a crop around the object, then foreground colour.

    The unknown band of the trimap is ``band`` times the object's size (square root of its area),
    clamped to ``[min_radius, max_radius]`` working pixels. The crop (object box plus margin) is
    solved at most ``working_size`` pixels on its long side; the matte is brought back to full
    resolution with a guided upsampling that follows the photo's edges, and the straight colour is
    estimated at full resolution with pymatting's multilevel foreground estimation.
    """

    def __init__(
        self,
        working_size: int = 320,
        band: float = 0.04,
        min_radius: int = 4,
        max_radius: int = 16,
        epsilon: float = 1e-6,
        max_iterations: int = 2000,
    ) -> None:
        self.working_size = working_size
        self.band = band
        self.min_radius = min_radius
        self.max_radius = max_radius
        self.epsilon = epsilon
        self.max_iterations = max_iterations

    def __call__(self, image: Any, mask: Any) -> Matte:
        """Matte of ``mask`` (coverage >= 0.5 counts as object) in ``image``."""
        rgb = as_rgb(image)
        coarse = as_mask(mask, rgb.shape[:2]) >= 0.5
        height, width = rgb.shape[:2]
        alpha = np.zeros((height, width), np.float32)
        box = mask_box(coarse)
        if box is None:
            return Matte(alpha, rgb.copy())
        size = float(np.sqrt(coarse.sum()))
        # Crop with room for the unknown band and some known background around it.
        left, top, right, bottom = padded_box(box, int(0.1 * size) + 2 * self.max_radius, rgb.shape)
        crop, crop_mask = rgb[top:bottom, left:right], coarse[top:bottom, left:right]
        scale = scale_for(crop.shape, self.working_size)
        small_size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
        small = np.clip(resize(crop, small_size), 0.0, 1.0)
        small_mask = resize(crop_mask.astype(np.float32), small_size) >= 0.5
        radius = int(np.clip(round(self.band * size * scale), self.min_radius, self.max_radius))
        small_alpha = self._solve(small, small_mask, radius)
        if scale < 1.0:
            crop_alpha = guided_upsample(luminance(small), small_alpha, luminance(crop), radius=2, eps=1e-3)
            # Far from the unknown band the answer is known: keep it exact.
            trimap = resize(make_trimap(small_mask, radius).astype(np.float32), crop.shape[:2], cv2.INTER_NEAREST)
            crop_alpha = np.where(trimap == 1.0, 1.0, np.where(trimap == 0.0, 0.0, crop_alpha))
        else:
            crop_alpha = small_alpha
        crop_alpha = np.clip(crop_alpha, 0.0, 1.0).astype(np.float32)
        crop_alpha[crop_alpha < 1e-3] = 0.0
        crop_alpha[crop_alpha > 1 - 1e-3] = 1.0
        alpha[top:bottom, left:right] = crop_alpha
        foreground = rgb.copy()
        foreground[top:bottom, left:right] = self._foreground(crop, crop_alpha)
        return Matte(alpha, foreground)

    def _solve(self, image: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
        """Closed-form alpha for one working-size crop."""
        trimap = make_trimap(mask, radius)
        unknown = trimap == 0.5
        if not unknown.any() or not (trimap == 1.0).any() or not (trimap == 0.0).any():
            return mask.astype(np.float32)
        alpha = closed_form_alpha(
            image.astype(np.float64),
            trimap,
            laplacian_kwargs={"epsilon": self.epsilon},
            cg_kwargs={"maxiter": self.max_iterations},
        )
        return np.asarray(alpha, np.float32)

    @staticmethod
    def _foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Straight foreground colour (pymatting's multilevel estimate), clipped to [0, 1]."""
        if not ((alpha > 0) & (alpha < 1)).any():
            return image.copy()
        from pymatting import estimate_foreground_ml

        foreground = estimate_foreground_ml(image.astype(np.float64), alpha.astype(np.float64))
        return np.clip(np.asarray(foreground, np.float32), 0.0, 1.0)


class BandMatter:
    """Matting for a learned soft matte: keep the segmenter's alpha, re-solve only where it is unsure.

    Where the coverage is clearly in (>= ``high``) or out (<= ``low``) it is taken as it is. The rest, the
    uncertain band (hair, fur, motion blur, thin parts), is solved with closed-form matting when it is wide
    enough to matter (more than ``min_band`` of the object's area), on a crop at most ``working_size`` pixels
    on its long side, then upsampled with the photo as guide. Straight colour is estimated where the alpha is
    fractional with blur fusion (`blur_fusion_foreground`: box filters, linear time; pymatting's multilevel
    estimate gives similar colours at about 50x the cost), so the object shows no halo of its old background.

    A segmenter is sometimes unsure of a whole object: its matte is grey (0.7-0.9) all through an opaque bench or
    car, which would leave the layer see-through. So when the ``interior_quantile`` quantile of the object's
    interior (its solid part, eroded by 5 % of its size) is under ``high`` (by default: a quarter of the interior is
    unsure), the coverage is first divided by that quantile, so that the interior is sure and the edge keeps its
    shape (``interior_quantile=None``: off).
    """

    def __init__(
        self,
        low: float = 0.05,
        high: float = 0.95,
        min_band: float = 0.05,
        working_size: int = 400,
        epsilon: float = 1e-6,
        max_iterations: int = 500,
        interior_quantile: float | None = 0.25,
    ) -> None:
        if interior_quantile is not None and not 0.0 <= interior_quantile <= 1.0:
            raise ValueError(f"interior_quantile must be in [0, 1] or None, got {interior_quantile}")
        self.low = low
        self.high = high
        self.min_band = min_band
        self.working_size = working_size
        self.epsilon = epsilon
        self.max_iterations = max_iterations
        self.interior_quantile = interior_quantile

    def __call__(self, image: Any, mask: Any) -> Matte:
        """Matte of the object whose soft coverage is ``mask`` in ``image``."""
        rgb = as_rgb(image)
        coverage = as_mask(mask, rgb.shape[:2])
        box = mask_box(coverage > self.low)
        if box is None:
            return Matte(np.zeros(rgb.shape[:2], np.float32), rgb.copy())
        size = float(np.sqrt((coverage >= 0.5).sum())) or 1.0
        left, top, right, bottom = padded_box(box, int(0.05 * size) + 8, rgb.shape)
        crop, crop_cover = rgb[top:bottom, left:right], self._sure_interior(coverage[top:bottom, left:right], size)
        sure_in, sure_out = crop_cover >= self.high, crop_cover <= self.low
        band = ~sure_in & ~sure_out
        crop_alpha = crop_cover.copy()
        if band.sum() > self.min_band * max(1.0, float(sure_in.sum())) and sure_in.any() and sure_out.any():
            crop_alpha = self._solve_band(crop, crop_cover, sure_in, sure_out)
        crop_alpha[crop_alpha < 1e-3] = 0.0
        crop_alpha[crop_alpha > 1 - 1e-3] = 1.0
        alpha = np.zeros(rgb.shape[:2], np.float32)
        alpha[top:bottom, left:right] = crop_alpha
        foreground = rgb.copy()
        foreground[top:bottom, left:right] = blur_fusion_foreground(crop, crop_alpha)
        return Matte(alpha, foreground)

    def _sure_interior(self, coverage: np.ndarray, size: float) -> np.ndarray:
        """``coverage`` divided by its interior's ``interior_quantile`` quantile when that is under ``high``."""
        if self.interior_quantile is None:
            return coverage
        interior = erode(coverage >= 0.5, max(1, round(0.05 * size)))
        if not interior.any():
            return coverage
        level = float(np.quantile(coverage[interior], self.interior_quantile))
        if level >= self.high:
            return coverage
        return np.clip(coverage / max(level, 0.5), 0.0, 1.0).astype(np.float32)

    def _solve_band(self, crop: np.ndarray, cover: np.ndarray, sure_in: np.ndarray, sure_out: np.ndarray) -> np.ndarray:
        scale = scale_for(crop.shape, self.working_size)
        small_size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
        small = np.clip(resize(crop, small_size), 0.0, 1.0)
        trimap = np.full(small_size, 0.5, np.float64)
        trimap[resize(sure_in.astype(np.float32), small_size) >= 0.999] = 1.0
        trimap[resize(sure_out.astype(np.float32), small_size) >= 0.999] = 0.0
        if not (trimap == 1.0).any() or not (trimap == 0.0).any():
            return cover.copy()
        solved = closed_form_alpha(
            small.astype(np.float64),
            trimap,
            laplacian_kwargs={"epsilon": self.epsilon},
            cg_kwargs={"maxiter": self.max_iterations},
        )
        solved = np.clip(np.asarray(solved, np.float32), 0.0, 1.0)
        if scale < 1.0:
            solved = guided_upsample(luminance(small), solved, luminance(crop), radius=2, eps=1e-3)
        band = ~sure_in & ~sure_out
        return np.clip(np.where(band, solved, cover), 0.0, 1.0).astype(np.float32)


def closed_form_alpha(image: np.ndarray, trimap: np.ndarray, **kwargs: Any) -> np.ndarray:
    """pymatting's ``estimate_alpha_cf``, without the "PERFORMANCE WARNING" it prints to stdout.

    That message (its preconditioner retrying with a larger shift) is about speed only, and it would land in
    the middle of the CLI's output and of files that users pipe stdout into.
    """
    from pymatting import estimate_alpha_cf  # lazy: numba compile on first import

    with contextlib.redirect_stdout(io.StringIO()):
        return estimate_alpha_cf(image, trimap, **kwargs)


def blur_fusion_foreground(image: np.ndarray, alpha: np.ndarray, radii: tuple[int, ...] = (90, 6)) -> np.ndarray:
    """Straight foreground colour by blur fusion (Forte and Pitie, "Approximate fast foreground colour
    estimation", ICIP 2021): local means of foreground and background colour, corrected so that
    ``alpha F + (1 - alpha) B`` reproduces the photo, first with a wide window, then a narrow one.

    Where alpha is 1 the result is the photo; where it is 0 the colour is meaningless (the nearby foreground).
    """
    rgb = image.astype(np.float32)
    a = np.clip(alpha.astype(np.float32), 0.0, 1.0)[:, :, None]
    if not ((a > 0) & (a < 1)).any():
        return rgb.copy()
    foreground, background = rgb, rgb
    for radius in radii:
        size = (2 * radius + 1, 2 * radius + 1)

        def mean(x: np.ndarray, size: tuple[int, int] = size) -> np.ndarray:
            out = cv2.blur(x, size, borderType=cv2.BORDER_REFLECT)
            return out[:, :, None] if out.ndim == 2 else out

        weight_f, weight_b = mean(a[:, :, 0]), mean(1.0 - a[:, :, 0])
        local_f = mean(foreground * a) / np.maximum(weight_f, 1e-5)
        local_b = mean(background * (1.0 - a)) / np.maximum(weight_b, 1e-5)
        foreground = np.clip(local_f + a * (rgb - a * local_f - (1.0 - a) * local_b), 0.0, 1.0)
        background = local_b
    return np.where(a >= 1.0, rgb, foreground).astype(np.float32)
