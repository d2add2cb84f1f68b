"""Cast-shadow extraction: the darkening an object leaves on its surroundings, as a shadow alpha.

Per docs/design.md a shadow is a black layer with alpha sigma: ``observed = (1 - sigma) * shadow_free``.
`ShadowExtractor` is the interface; `DarkeningShadowExtractor` is the weight-free CPU default.
An adapter for a learned shadow detector only has to map ``(image, object alpha)`` to sigma.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_mask, as_rgb, dilate, luminance, mask_box, push_pull_fill, resize, scale_for

__all__ = ["DarkeningShadowExtractor", "ShadowExtractor", "remove_attached_shadow"]


@runtime_checkable
class ShadowExtractor(Protocol):
    """Estimates the shadow an object casts, as the alpha sigma of a black shadow layer."""

    def __call__(self, image: Any, alpha: Any, occupied: Any = None) -> np.ndarray:
        """``(H, W)`` float32 sigma in [0, 1] of the object whose matte is ``alpha``.

        ``occupied`` (optional, ``(H, W)`` in [0, 1]) marks every object's pixels, where no shadow
        is measured; by default only this object's.
        """
        ...


class DarkeningShadowExtractor:
    """Cast shadow as measured darkening against a shadow-free reference from the surroundings.

    The search region is a band around the object reaching ``reach_below`` of its height below it,
    ``reach_side`` of its width to each side and ``reach_above`` of its height above (cast
    shadows fall on the ground, mostly below and beside the object). The shadow-free reference
    inside the band is interpolated smoothly (a push-pull pyramid) from the pixels outside it.
    A pixel is evidence of shadow when it is at least ``min_darkening`` darker than the reference
    with about the same chromaticity (shadows dim, they do not recolour: ``chroma_tolerance``), and
    not more than ``max_darkening`` (near-black things beside an object are objects, not shadows).
    Only evidence regions that touch the object's contact zone (beside the lowest
    ``1 - contact_from`` of its height, where it meets the ground) and cover at least
    ``min_area`` of the object's area are kept; sigma = 1 - observed/reference there, smoothed,
    and exactly zero elsewhere. With ``skip_cut_objects`` an object cut by the bottom of the frame
    (its base, where a cast shadow would attach, is not in the picture) gets no shadow: there the
    darker things beside it are far more often other objects than its shadow. Sigma never exceeds
    ``1 - max(RGB)``, so lifting the shadow (dividing by 1 - sigma) stays within [0, 1].
    """

    def __init__(
        self,
        working_size: int = 256,
        reach_below: float = 0.6,
        reach_side: float = 0.5,
        reach_above: float = 0.05,
        min_darkening: float = 0.15,
        max_darkening: float = 0.85,
        max_sigma: float = 0.85,
        contact_from: float = 0.6,
        chroma_tolerance: float = 0.06,
        min_area: float = 0.01,
        smoothing: float = 1.0,
        skip_cut_objects: bool = True,
    ) -> None:
        self.working_size = working_size
        self.reach_below = reach_below
        self.reach_side = reach_side
        self.reach_above = reach_above
        self.min_darkening = min_darkening
        self.max_darkening = max_darkening
        self.contact_from = contact_from
        self.max_sigma = max_sigma
        self.chroma_tolerance = chroma_tolerance
        self.min_area = min_area
        self.smoothing = smoothing
        self.skip_cut_objects = skip_cut_objects

    def __call__(self, image: Any, alpha: Any, occupied: Any = None) -> np.ndarray:
        """Shadow alpha sigma ``(H, W)`` of the object with matte ``alpha``."""
        rgb = as_rgb(image)
        shape = rgb.shape[:2]
        object_alpha = as_mask(alpha, shape, "alpha")
        taken = np.maximum(object_alpha, as_mask(occupied, shape, "occupied")) if occupied is not None else object_alpha
        sigma = np.zeros(shape, np.float32)
        scale = scale_for(rgb.shape, self.working_size)
        size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
        small = resize(rgb, size)
        obj = resize(object_alpha, size) >= 0.5
        box = mask_box(obj)
        if box is None or (self.skip_cut_objects and box[3] >= obj.shape[0]):
            return sigma
        blocked = dilate(resize(taken, size) > 0.02, 1)
        band = self._band(obj, box) & ~blocked
        if not band.any():
            return sigma
        reference = push_pull_fill(small, (~band & ~blocked).astype(np.float32))
        observed_y, reference_y = luminance(small), luminance(reference)
        darkening = 1.0 - observed_y / np.maximum(reference_y, 1e-4)
        chroma_shift = np.abs(_chromaticity(small) - _chromaticity(reference)).max(axis=2)
        evidence = band & (darkening >= self.min_darkening) & (darkening <= self.max_darkening)
        evidence &= chroma_shift <= self.chroma_tolerance
        evidence &= reference_y > 0.03
        keep = self._attached(evidence, obj, blocked, box)
        if not keep.any():
            return sigma
        raw = np.where(keep, np.clip(darkening, 0.0, self.max_sigma), 0.0).astype(np.float32)
        if self.smoothing > 0:
            raw = cv2.GaussianBlur(raw, (0, 0), self.smoothing) * dilate(keep, 1)
        sigma = np.clip(resize(raw, shape, cv2.INTER_LINEAR), 0.0, self.max_sigma)
        sigma[sigma < 0.01] = 0.0
        sigma = np.minimum(sigma, 1.0 - rgb.max(axis=2))  # lifting must not exceed white
        sigma[taken >= 0.99] = 0.0
        return np.clip(sigma, 0.0, 1.0).astype(np.float32)

    def _band(self, obj: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Where to look: the object grown downwards, sideways and a little upwards."""
        left, top, right, bottom = box
        width, height = right - left, bottom - top
        side = max(1, round(self.reach_side * width))
        below = max(1, round(self.reach_below * height))
        above = max(1, round(self.reach_above * height))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, above + below + 1))
        # cv2.dilate moves a pixel by (anchor - kernel offset): anchor y = below reaches `below` down.
        grown = cv2.dilate(obj.astype(np.uint8), kernel, anchor=(side, below))
        return grown.astype(bool) & ~obj

    def _attached(
        self, evidence: np.ndarray, obj: np.ndarray, blocked: np.ndarray, box: tuple[int, int, int, int]
    ) -> np.ndarray:
        """Evidence components that touch the object's contact zone (near its lower part), big enough."""
        size = float(np.sqrt(obj.sum()))
        lower = obj.copy()
        lower[: box[1] + int(self.contact_from * (box[3] - box[1]))] = False
        contact = dilate(lower, max(2, round(0.04 * size)) + 1) & ~blocked
        count, labels, stats, _ = cv2.connectedComponentsWithStats(evidence.astype(np.uint8), connectivity=8)
        touching = np.unique(labels[contact & evidence])
        keep = np.zeros(count, bool)
        for index in touching:
            if index > 0 and stats[index, cv2.CC_STAT_AREA] >= self.min_area * obj.sum():
                keep[index] = True
        return keep[labels]


def _chromaticity(image: np.ndarray) -> np.ndarray:
    """RGB divided by its sum (brightness-free colour)."""
    return image / np.maximum(image.sum(axis=2, keepdims=True), 1e-4)


def remove_attached_shadow(
    image: Any,
    mask: Any,
    working_size: int = 256,
    min_darkening: float = 0.15,
    max_darkening: float = 0.85,
    chroma_tolerance: float = 0.06,
    max_share: float = 0.6,
) -> np.ndarray:
    """``mask`` without the cast shadow that a segmentation often swallows with the object.

    Inside the mask, a pixel is shadow-like when it is a darkened version of the surroundings (the
    colour outside the mask interpolated inwards): ``min_darkening`` to ``max_darkening`` darker
    with the same chromaticity within ``chroma_tolerance``. Shadow-like regions that touch the
    mask's outline in the lower half of the mask are removed, unless together they would take more
    than ``max_share`` of it (then the "object" itself looks like a darker patch of its
    surroundings and the mask is returned unchanged). Returns a bool ``(H, W)`` mask.
    """
    rgb = as_rgb(image)
    shape = rgb.shape[:2]
    full = as_mask(mask, shape) >= 0.5
    box = mask_box(full)
    if box is None:
        return full
    scale = scale_for(rgb.shape, working_size)
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    small = resize(rgb, size)
    obj = resize(full.astype(np.float32), size) >= 0.5
    if obj.sum() < 16 or obj.all():
        return full
    reference = push_pull_fill(small, (~dilate(obj, 1)).astype(np.float32))
    observed_y, reference_y = luminance(small), luminance(reference)
    darkening = 1.0 - observed_y / np.maximum(reference_y, 1e-4)
    chroma_shift = np.abs(_chromaticity(small) - _chromaticity(reference)).max(axis=2)
    candidate = obj & (darkening >= min_darkening) & (darkening <= max_darkening)
    candidate &= (chroma_shift <= chroma_tolerance) & (reference_y > 0.03)
    outline = obj & ~cv2.erode(obj.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    rows = np.nonzero(obj)[0]
    middle = float(rows.mean())
    count, labels = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=8)
    shadow = np.zeros_like(obj)
    for index in range(1, count):
        component = labels == index
        if (component & outline).any() and float(np.nonzero(component)[0].mean()) > middle:
            shadow |= component
    if not shadow.any() or shadow.sum() > max_share * obj.sum():
        return full
    # Clean the cut: drop thin leftovers, and keep the parts of the object that are still big.
    kept = cv2.morphologyEx((obj & ~shadow).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    shadow_full = resize((obj & ~kept).astype(np.float32), shape, cv2.INTER_LINEAR) >= 0.5
    return full & ~shadow_full
