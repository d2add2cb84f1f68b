"""Background completion: fill the holes that removed objects leave.

`Inpainter` is the interface; `OpenCVInpainter` is the weight-free CPU default. An adapter for a
``diffusers`` inpainting pipeline only has to map ``(image, mask)`` to the filled image.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ..layers import to_uint8
from ._utils import as_mask, as_rgb, dilate, mask_box, padded_box, push_pull_fill, resize, scale_for

__all__ = ["INPAINT_METHODS", "Inpainter", "OpenCVInpainter"]

#: Coarse fills for large holes. "smooth": push-pull pyramid; "telea"/"ns": OpenCV's ``cv2.inpaint``;
#: "shiftmap", "fsr_fast", "fsr_best": ``cv2.xphoto.inpaint`` (opencv-contrib); "biharmonic": scikit-image.
INPAINT_METHODS = ("smooth", "telea", "ns", "shiftmap", "fsr_fast", "fsr_best", "biharmonic")
_CROP_METHODS = ("shiftmap", "fsr_fast", "fsr_best", "biharmonic")


@runtime_checkable
class Inpainter(Protocol):
    """Fills masked pixels of an RGB image with plausible background."""

    def __call__(self, image: Any, mask: Any) -> np.ndarray:
        """``(H, W, 3)`` float32: ``image`` with the pixels where ``mask`` is set (coverage > 0) filled."""
        ...


class OpenCVInpainter:
    """Coarse-to-fine inpainting: OpenCV (Telea/Navier-Stokes, xphoto), scikit-image or a smooth pyramid fill.

    The mask is dilated by ``dilation`` pixels (object edges bleed into their surroundings). Thin
    holes are inpainted directly at full resolution with OpenCV (``fine_method``: "telea" or "ns").
    Large holes get a coarse fill first (``method``, one of `INPAINT_METHODS`):

    - "smooth" (default): a push-pull pyramid, a smooth, streak-free average of the surroundings;
    - "telea" / "ns": OpenCV inpainting of the whole image at ``working_size`` pixels on the long side;
    - "shiftmap", "fsr_fast", "fsr_best": ``cv2.xphoto.inpaint`` (shift-map patch copying, or frequency-selective
      reconstruction), and "biharmonic": ``skimage.restoration.inpaint_biharmonic``. These run on a crop around
      the hole (padded by half its size), brought down to ``working_size`` pixels on the long side.

    ``benchmarks/bench_fill.py`` compares them on real photos. Telea/NS (at ``working_size=1024``) come closest
    to the true pixels, but on very large holes they draw streaks and hard wedges that a later peeling round can
    mistake for an object, and cost ten times as much, so the default stays "smooth". The xphoto methods are
    slower (FSR_BEST by far) and no closer to the truth.

    The coarse fill is upsampled, and a ring of ``seam`` pixels along the hole's edge is then inpainted again at
    full resolution so that the fill meets the untouched pixels without a seam. When no reduction is needed the
    chosen method runs at full resolution directly. Pixels outside the (dilated) mask are returned unchanged.

    With ``texture``, the smooth fill of a large hole gets the photo's own fine detail back (`transfer_detail`):
    the high frequencies of tiles from around the hole, each chosen to match the fill's colour where it goes, are
    added with overlapping windows, so that a hole in sand or foliage is not a smear. ``seed`` picks among the
    best-matching tiles (the result is deterministic).
    """

    def __init__(
        self,
        method: str = "smooth",
        fine_method: str = "telea",
        radius: int = 5,
        dilation: int = 2,
        working_size: int = 256,
        seam: int = 4,
        texture: bool = False,
        seed: int = 0,
    ) -> None:
        if method not in INPAINT_METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, INPAINT_METHODS))}, got {method!r}")
        if fine_method not in ("telea", "ns"):
            raise ValueError(f"fine_method must be 'telea' or 'ns', got {fine_method!r}")
        if working_size < 16:
            raise ValueError(f"working_size must be at least 16 pixels, got {working_size}")
        self.method = method
        self.fine_method = fine_method
        self.radius = radius
        self.dilation = dilation
        self.working_size = working_size
        self.seam = seam
        self.texture = texture
        self.seed = seed

    def _inpaint(self, image: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
        """OpenCV inpainting of a float RGB image, channel by channel at 16-bit precision.

        (16-bit, not float32: OpenCV's Telea returns garbage for float input.)
        """
        hole8 = hole.astype(np.uint8)
        image16 = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        channels = [cv2.inpaint(np.ascontiguousarray(image16[:, :, c]), hole8, self.radius, flag) for c in range(3)]
        return np.stack(channels, axis=2).astype(np.float32) / 65535.0

    def _fill(self, image: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
        """``image`` (float RGB) with ``hole`` filled by one of the crop methods, at the image's own size."""
        if method == "biharmonic":
            from skimage.restoration import inpaint_biharmonic

            return inpaint_biharmonic(image, hole, channel_axis=-1).astype(np.float32)
        # cv2.xphoto.inpaint: 8-bit input (FSR returns zeros for float), mask non-zero = VALID pixel;
        # shift-map expects a Lab-like image (intensity first), FSR a BGR one.
        bgr = cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR)
        source = cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab) if method == "shiftmap" else bgr
        flag = {
            "shiftmap": cv2.xphoto.INPAINT_SHIFTMAP,
            "fsr_fast": cv2.xphoto.INPAINT_FSR_FAST,
            "fsr_best": cv2.xphoto.INPAINT_FSR_BEST,
        }[method]
        valid = np.where(hole, 0, 255).astype(np.uint8)
        result = np.zeros_like(source)
        cv2.xphoto.inpaint(source, valid, result, flag)
        if method == "shiftmap":
            result = cv2.cvtColor(result, cv2.COLOR_Lab2BGR)
        return cv2.cvtColor(result, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0

    def _coarse_crop(self, rgb: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, bool]:
        """The crop methods' fill of ``hole`` (whole image) and whether it ran below full resolution."""
        left, top, right, bottom = mask_box(hole)  # type: ignore[misc]  # the hole is not empty here
        pad = max(16, max(right - left, bottom - top) // 2)
        left, top, right, bottom = padded_box((left, top, right, bottom), pad, rgb.shape)
        crop, crop_hole = rgb[top:bottom, left:right], hole[top:bottom, left:right]
        scale = scale_for(crop.shape, self.working_size)
        coarse = rgb.copy()
        if scale >= 1.0:
            coarse[top:bottom, left:right] = self._fill(crop, crop_hole, self.method)
            return coarse, False
        size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
        small_hole = resize(crop_hole.astype(np.float32), size) > 0
        if small_hole.all():
            small_hole = resize(crop_hole.astype(np.float32), size) > 0.5
        if small_hole.all():  # nothing known left at this size: fall back to the pyramid fill
            coarse[top:bottom, left:right] = push_pull_fill(crop, (~crop_hole).astype(np.float32))
        else:
            small_fill = self._fill(resize(crop, size), small_hole, self.method)
            coarse[top:bottom, left:right] = resize(small_fill, crop.shape[:2], cv2.INTER_CUBIC)
        return coarse, True

    def __call__(self, image: Any, mask: Any) -> np.ndarray:
        """``image`` with the masked pixels filled."""
        rgb = as_rgb(image)
        hole = dilate(as_mask(mask, rgb.shape[:2]) > 0, self.dilation)
        if not hole.any():
            return rgb.copy()
        if hole.all():
            raise ValueError("the mask covers the whole image: there is nothing to inpaint from")
        distance = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3)
        scale = scale_for(rgb.shape, self.working_size)
        thin = float(distance.max()) <= 2 * self.seam
        if thin or (self.method in ("telea", "ns") and scale >= 1.0):
            method = self.method if self.method in ("telea", "ns") and not thin else self.fine_method
            return np.where(hole[:, :, None], self._inpaint(rgb, hole, method), rgb).astype(np.float32)
        if self.method == "smooth":
            coarse = push_pull_fill(rgb, (~hole).astype(np.float32))
        elif self.method in _CROP_METHODS:
            coarse, reduced = self._coarse_crop(rgb, hole)
            if not reduced:
                return np.where(hole[:, :, None], np.clip(coarse, 0.0, 1.0), rgb).astype(np.float32)
        else:  # OpenCV at low resolution: every low-resolution pixel the hole touches is unknown
            size = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
            small_hole = resize(hole.astype(np.float32), size) > 0
            if small_hole.all():
                small_hole = resize(hole.astype(np.float32), size) > 0.5
            small_fill = self._inpaint(resize(rgb, size), small_hole, self.method)
            coarse = resize(small_fill, rgb.shape[:2], cv2.INTER_CUBIC)
        filled = np.where(hole[:, :, None], np.clip(coarse, 0.0, 1.0), rgb).astype(np.float32)
        # Fine seam: re-inpaint the outer ring of the hole at full resolution.
        ring = hole & (distance <= self.seam)
        filled = np.where(ring[:, :, None], self._inpaint(filled, ring, self.fine_method), filled).astype(np.float32)
        if self.texture:
            filled = transfer_detail(rgb, hole, filled, np.random.default_rng(self.seed))
        return filled


def _known_blur(rgb: np.ndarray, known: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``rgb`` over its ``known`` pixels only (normalised convolution)."""
    weights = cv2.GaussianBlur(known.astype(np.float32), (0, 0), sigma)
    blurred = cv2.GaussianBlur(rgb * known[:, :, None], (0, 0), sigma)
    return blurred / np.maximum(weights, 1e-4)[:, :, None]


def transfer_detail(
    rgb: np.ndarray,
    hole: np.ndarray,
    filled: np.ndarray,
    rng: np.random.Generator,
    tiles_across: int = 32,
    choices: int = 3,
    max_sources: int = 4000,
) -> np.ndarray:
    """``filled`` with the photo's fine detail added inside ``hole``.

    The detail is the photo minus its blur over known pixels (so the removed object does not leak in). Tiles of
    ``1 / tiles_across`` of the image's longer side (8 to 64 px) cover the hole at half-tile steps; each takes the
    detail of one of the ``choices`` known tiles that best match the place (blurred colour close to the fill's,
    as much detail as the surroundings carry inwards, nearer first), scaled down when it has more detail than
    expected there, and weighted by a periodic Hann window. The detail fades in over the first half tile inside
    the hole, so the seam stays as smooth as the fill made it. Returns ``filled`` unchanged when fewer than eight
    whole known tiles exist.
    """
    height, width = hole.shape
    tile = int(np.clip(round(max(height, width) / tiles_across), 8, 64))
    tile += tile % 2
    step = tile // 2
    known = ~dilate(hole, 2)
    sigma = tile / 4.0
    base = _known_blur(rgb, known, sigma)
    detail = (rgb - base) * known[:, :, None]
    # Source tiles: every half-tile grid position whose tile is wholly known.
    integral = cv2.integral(known.astype(np.uint8))
    ys, xs = np.mgrid[0 : height - tile + 1 : step, 0 : width - tile + 1 : step]
    ys, xs = ys.ravel(), xs.ravel()
    whole = (integral[ys + tile, xs + tile] - integral[ys, xs + tile] - integral[ys + tile, xs] + integral[ys, xs]) == (
        tile * tile
    )
    ys, xs = ys[whole], xs[whole]
    if len(ys) < 8:
        return filled
    if len(ys) > max_sources:
        keep = np.sort(rng.choice(len(ys), max_sources, replace=False))
        ys, xs = ys[keep], xs[keep]
    centre = step
    source_colour = base[ys + centre, xs + centre]
    smooth_fill = cv2.GaussianBlur(filled, (0, 0), sigma)
    # How much detail each place has: a tile's own, and for the hole the amount around it carried inwards, so
    # that an edge from elsewhere is not pasted into a plain wall (nor a plain patch into foliage).
    energy = cv2.GaussianBlur((detail**2).mean(axis=2), (0, 0), tile / 2.0)
    expected = push_pull_fill(np.where(known, energy, 0.0).astype(np.float32), known.astype(np.float32))
    floor = 1e-5
    source_energy = np.log(energy[ys + centre, xs + centre] + floor)
    window_1d = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(tile) / tile)  # periodic Hann: 50 % overlaps sum to 1
    window = np.outer(window_1d, window_1d).astype(np.float32)
    left, top, right, bottom = mask_box(hole)  # type: ignore[misc]  # the hole is not empty here
    added = np.zeros_like(filled)
    weight = np.zeros(hole.shape, np.float32)
    diagonal = float(np.hypot(height, width))
    for y in range(max(0, top - step) // step * step, min(bottom, height - tile) + 1, step):
        for x in range(max(0, left - step) // step * step, min(right, width - tile) + 1, step):
            if not hole[y : y + tile, x : x + tile].any():
                continue
            colour_gap = np.abs(source_colour - smooth_fill[y + centre, x + centre]).sum(axis=1)
            energy_gap = np.abs(source_energy - np.log(expected[y + centre, x + centre] + floor))
            distance = np.hypot(ys - y, xs - x) / diagonal
            cost = colour_gap + 0.2 * energy_gap + 0.05 * distance
            best = np.argpartition(cost, min(choices, len(ys) - 1))[:choices]
            pick = int(best[rng.integers(len(best))])
            sy, sx = int(ys[pick]), int(xs[pick])
            # Never more detail than expected here: a stronger tile is scaled down to the expected amount.
            gain = min(
                1.0, float(np.sqrt(expected[y + centre, x + centre] / max(energy[sy + centre, sx + centre], floor)))
            )
            added[y : y + tile, x : x + tile] += detail[sy : sy + tile, sx : sx + tile] * (gain * window)[:, :, None]
            weight[y : y + tile, x : x + tile] += window**2
    inside = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3)
    fade = np.clip(inside / step, 0.0, 1.0) * (weight > 1e-6)
    # Overlapping tiles are unrelated, so their weighted sum is divided by the root of the summed squared weights:
    # the blend keeps the detail's strength (dividing by the summed weights would average it away by a third).
    added /= np.sqrt(np.maximum(weight, 1e-6))[:, :, None]
    return np.clip(filled + added * fade[:, :, None], 0.0, 1.0).astype(np.float32)
