"""Background completion: fill the holes that removed objects leave.

`Inpainter` is the interface; `OpenCVInpainter` is the weight-free CPU default. An adapter for a
``diffusers`` inpainting pipeline only has to map ``(image, mask)`` to the filled image.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_mask, as_rgb, dilate, push_pull_fill, resize, scale_for

__all__ = ["Inpainter", "OpenCVInpainter"]


@runtime_checkable
class Inpainter(Protocol):
    """Fills masked pixels of an RGB image with plausible background."""

    def __call__(self, image: Any, mask: Any) -> np.ndarray:
        """``(H, W, 3)`` float32: ``image`` with the pixels where ``mask`` is set (coverage > 0) filled."""
        ...


class OpenCVInpainter:
    """Coarse-to-fine inpainting with OpenCV (Telea or Navier-Stokes) and a smooth pyramid fill.

    The mask is dilated by ``dilation`` pixels (object edges bleed into their surroundings). Thin
    holes are inpainted directly at full resolution with OpenCV (``fine_method``: "telea" or "ns").
    Large holes get a coarse fill first: with ``method="smooth"`` (default) a push-pull pyramid
    (a smooth, streak-free average of the surroundings); with "telea"/"ns" OpenCV inpainting at a
    reduced resolution (``working_size`` pixels on the long side), upsampled. A ring of ``seam``
    pixels along the hole's edge is then inpainted again at full resolution so that the fill meets
    the untouched pixels without a seam. Pixels outside the (dilated) mask are returned unchanged.
    """

    def __init__(
        self,
        method: str = "smooth",
        fine_method: str = "telea",
        radius: int = 5,
        dilation: int = 2,
        working_size: int = 256,
        seam: int = 4,
    ) -> None:
        if method not in ("smooth", "telea", "ns"):
            raise ValueError(f"method must be 'smooth', 'telea' or 'ns', got {method!r}")
        if fine_method not in ("telea", "ns"):
            raise ValueError(f"fine_method must be 'telea' or 'ns', got {fine_method!r}")
        self.method = method
        self.fine_method = fine_method
        self.radius = radius
        self.dilation = dilation
        self.working_size = working_size
        self.seam = seam

    def _inpaint(self, image: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
        """OpenCV inpainting of a float RGB image, channel by channel at 16-bit precision.

        (16-bit, not float32: OpenCV's Telea returns garbage for float input.)
        """
        hole8 = hole.astype(np.uint8)
        image16 = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        channels = [cv2.inpaint(np.ascontiguousarray(image16[:, :, c]), hole8, self.radius, flag) for c in range(3)]
        return np.stack(channels, axis=2).astype(np.float32) / 65535.0

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
        if thin or (self.method != "smooth" and scale >= 1.0):
            method = self.fine_method if thin or self.method == "smooth" else self.method
            return np.where(hole[:, :, None], self._inpaint(rgb, hole, method), rgb).astype(np.float32)
        if self.method == "smooth":
            coarse = push_pull_fill(rgb, (~hole).astype(np.float32))
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
        return np.where(ring[:, :, None], self._inpaint(filled, ring, self.fine_method), filled).astype(np.float32)
