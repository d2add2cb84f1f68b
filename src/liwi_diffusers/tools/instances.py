"""From one salient matte to object instances: separate regions, and touching instances split apart.

A salient-object segmenter answers "what stands out", not "how many things": a group of people, a row of
parked cars or a rider on a horse come out as one region. `split_salient_matte` turns the matte into one soft
coverage map per object:

1. regions that are not connected become separate objects (small specks are dropped);
2. a region whose shape has several distinct cores (peaks of the distance to its edge, separated by narrow
   necks) is cut along the watershed of that distance, when every part is a sizeable share of the region and
   the cut between parts is short compared with their size.

Every pixel of the matte goes to exactly one object (its nearest core), so objects never double-count coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["InstanceSplitter", "split_salient_matte"]

_SHAPE_SIZE = 256  # the splitting works on region shapes at most this many pixels across


@dataclass
class InstanceSplitter:
    """Settings of `split_salient_matte`.

    Attributes:
        threshold: coverage above which a pixel belongs to a region.
        min_area: smallest object, as a share of the image's pixels.
        min_peak: a region counts only if its strongest coverage reaches this (weak glows are not objects).
        split: whether to try splitting touching instances at all.
        min_part: smallest part of a split, as a share of the region's area.
        max_neck: longest cut allowed between two parts, relative to the square root of the smaller part's area.
        core_separation: two cores are distinct when the distance map dips between them below this share of the
            lower core's height.
    """

    threshold: float = 0.5
    min_area: float = 0.002
    min_peak: float = 0.8
    split: bool = True
    min_part: float = 0.12
    max_neck: float = 0.9
    core_separation: float = 0.7

    def __call__(self, coverage: np.ndarray) -> list[np.ndarray]:
        return split_salient_matte(coverage, self)


def split_salient_matte(coverage: np.ndarray, settings: InstanceSplitter | None = None) -> list[np.ndarray]:
    """Per object, a ``(H, W)`` float32 soft coverage cut from ``coverage``; largest first."""
    settings = settings or InstanceSplitter()
    coverage = np.asarray(coverage, np.float32)
    solid = (coverage >= settings.threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    min_pixels = max(4, settings.min_area * coverage.size)
    seeds = np.zeros(coverage.shape, np.int32)
    next_label = 1
    for index in range(1, count):
        if stats[index, cv2.CC_STAT_AREA] < min_pixels:
            continue
        region = labels == index
        if float(coverage[region].max()) < settings.min_peak:
            continue
        parts = _split_region(region, settings) if settings.split else [region]
        for part in parts:
            seeds[part] = next_label
            next_label += 1
    if next_label == 1:
        return []
    owner = _nearest_seed(seeds)
    soft = coverage * (coverage > 0.01)
    objects = [np.where(owner == label, soft, 0.0).astype(np.float32) for label in range(1, next_label)]
    return sorted(objects, key=lambda alpha: -float(alpha.sum()))


def _nearest_seed(seeds: np.ndarray) -> np.ndarray:
    """Label of the nearest seed pixel, for every pixel (seeds keep their own label)."""
    background = (seeds == 0).astype(np.uint8)
    if not background.any():
        return seeds
    _, nearest = cv2.distanceTransformWithLabels(background, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # `nearest` numbers the zero pixels of `background` (the seed pixels); map each number to its seed label.
    seed_rows, seed_cols = np.nonzero(seeds)
    lookup = np.zeros(int(nearest.max()) + 1, np.int32)
    lookup[nearest[seed_rows, seed_cols]] = seeds[seed_rows, seed_cols]
    return lookup[nearest]


def _split_region(region: np.ndarray, settings: InstanceSplitter) -> list[np.ndarray]:
    """``region`` cut into instances along narrow necks, or ``[region]`` when it looks like one thing."""
    from skimage.segmentation import watershed

    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    full_crop = region[top:bottom, left:right]
    # The shape is all that matters here: work on the crop at most `_SHAPE_SIZE` pixels across (a 1024 px
    # region would need a dilation kernel of hundreds of pixels), then scale the parts back up.
    scale = min(1.0, _SHAPE_SIZE / max(full_crop.shape))
    small_size = (max(1, round(full_crop.shape[1] * scale)), max(1, round(full_crop.shape[0] * scale)))
    small = full_crop if scale == 1.0 else cv2.resize(full_crop.astype(np.uint8), small_size, cv2.INTER_AREA) > 0
    pad = 2
    crop = np.pad(small, pad).astype(np.uint8)
    distance = cv2.distanceTransform(crop, cv2.DIST_L2, 5)
    height = float(distance.max())
    if height < 4:
        return [region]
    # Cores: plateaus of the smoothed distance map, kept only when a real dip separates them.
    smooth = cv2.GaussianBlur(distance, (0, 0), max(1.0, 0.1 * height))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(0.5 * height) + 1,) * 2)
    peaks = (smooth >= cv2.dilate(smooth, kernel) - 1e-6) & (smooth >= 0.35 * height) & (crop > 0)
    count, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if count <= 2:
        return [region]
    labels = watershed(-smooth, markers, mask=crop > 0)
    area = float(crop.sum())
    parts = [labels == k for k in range(1, count)]
    keep = [p for p in parts if p.sum() >= settings.min_part * area]
    if len(keep) < 2:
        return [region]
    # Every cut must be a neck: short against the parts it separates, with a dip in the distance map.
    for part in keep:
        part_core = float(smooth[part].max())
        border = part & cv2.dilate((~part & (crop > 0)).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if not border.any():
            continue
        neck_length = float(border.sum())
        neck_height = float(smooth[border].max())
        if neck_length > settings.max_neck * np.sqrt(part.sum()) or neck_height > settings.core_separation * part_core:
            return [region]
    # Parts too small to stand alone go back to their largest neighbour: simply merge them into the seeds of
    # the kept parts by leaving them unlabelled (the nearest-seed pass assigns them).
    out = []
    for part in keep:
        piece = part[pad:-pad, pad:-pad].astype(np.uint8)
        if scale < 1.0:
            piece = cv2.resize(piece, (full_crop.shape[1], full_crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        full = np.zeros(region.shape, bool)
        full[top:bottom, left:right] = (piece > 0) & full_crop
        out.append(full)
    return out
