"""Object proposals: which regions of a photo are separate foreground objects, with a mask each.

`ObjectProposer` is the interface; `SaliencyProposer` is the weight-free CPU default. A real-model
adapter (e.g. a ``transformers`` mask-generation or zero-shot-detection pipeline) only has to map
an RGB float image to a list of `ObjectProposal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_rgb, colour_codes, dilate, disk, mask_box, padded_box, resize, scale_for

__all__ = ["ObjectProposal", "ObjectProposer", "SaliencyProposer", "focus_map", "saliency_map"]


@dataclass
class ObjectProposal:
    """One candidate object.

    Attributes:
        mask: ``(H, W)`` bool, the object's pixels at the image's resolution.
        score: confidence in [0, 1] (higher is more object-like); proposals come sorted by it.
        label: a short name ("object" when no classifier is involved).
        box: ``(left, top, right, bottom)`` of the mask, right/bottom exclusive.
    """

    mask: np.ndarray
    score: float
    label: str = "object"
    box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ValueError(f"ObjectProposal.mask must be (H, W), got shape {self.mask.shape}")
        if self.box == (0, 0, 0, 0):
            self.box = mask_box(self.mask) or (0, 0, 0, 0)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@runtime_checkable
class ObjectProposer(Protocol):
    """Finds foreground objects in an RGB image."""

    def __call__(self, image: Any, max_objects: int | None = None) -> list[ObjectProposal]:
        """Proposals for ``image`` (PIL or float ``(H, W, 3)`` in [0, 1]), best first, at most ``max_objects``."""
        ...


def _superpixel_graph(segments: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``(E, 2)`` between 4-adjacent superpixels."""
    pairs = np.concatenate(
        [
            np.stack([segments[:, :-1].ravel(), segments[:, 1:].ravel()], axis=1),
            np.stack([segments[:-1, :].ravel(), segments[1:, :].ravel()], axis=1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def saliency_map(
    image: Any,
    num_segments: int = 250,
    sigma_color: float = 10.0,
    sigma_space: float = 0.25,
    sigma_boundary: float = 1.0,
    bottom_weight: float = 0.5,
    focus_weight: float = 0.7,
) -> np.ndarray:
    """Per-pixel saliency in [0, 1] from colour contrast over SLIC superpixels.

    Superpixels well connected to the image border are background (the boundary-connectivity
    prior: a region's geodesic "length along the border" over the square root of its geodesic
    "area", with colour distance as the geodesic metric). Saliency is colour contrast to nearby
    background-like superpixels, then smoothed over the superpixel graph by a small least-squares
    problem (background pulled to 0, contrast-weighted foreground to 1, similar neighbours together).
    The bottom border counts ``bottom_weight`` as much as the other sides: photographed objects
    are often cut by the bottom of the frame.
    """
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.csgraph import dijkstra
    from scipy.sparse.linalg import spsolve
    from skimage.color import rgb2lab
    from skimage.segmentation import slic

    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    lab = rgb2lab(rgb).astype(np.float32)
    segments = slic(
        rgb, n_segments=num_segments, compactness=10.0, start_label=0, convert2lab=True, enforce_connectivity=True
    )
    count = int(segments.max()) + 1
    flat = segments.ravel()
    sizes = np.maximum(np.bincount(flat, minlength=count), 1).astype(np.float64)
    colors = np.stack([np.bincount(flat, lab[..., c].ravel(), count) for c in range(3)], axis=1) / sizes[:, None]
    rows, cols = np.mgrid[0:height, 0:width]
    scale = float(max(height, width))
    centers = (
        np.stack([np.bincount(flat, rows.ravel(), count), np.bincount(flat, cols.ravel(), count)], axis=1)
        / sizes[:, None]
        / scale
    )

    # Which superpixels touch the border, and how much each side counts. A sharp (in-focus,
    # textured) border region is less likely background than a smooth one: frame-filling subjects
    # in front of a blurred or plain background touch the border too.
    border = np.zeros(count)
    sides = ((segments[0], 1.0), (segments[:, 0], 1.0), (segments[:, -1], 1.0), (segments[-1], bottom_weight))
    for side, weight in sides:
        np.maximum.at(border, np.unique(side), weight)
    focus = _focus(rgb, segments, count)
    border *= 1.0 - focus_weight * focus

    edges = _superpixel_graph(segments)
    color_dist = np.linalg.norm(colors[:, None, :] - colors[None, :, :], axis=2)
    # Geodesic graph: neighbours, plus every pair of border superpixels (the border is one
    # background region even where an object cuts it). Small colour steps cost nothing, so smooth
    # gradients (sky, walls) stay connected.
    on_border = np.flatnonzero(border > 0)
    border_pairs = np.stack(np.meshgrid(on_border, on_border, indexing="ij"), axis=2).reshape(-1, 2)
    border_pairs = border_pairs[border_pairs[:, 0] < border_pairs[:, 1]]
    graph_edges = np.concatenate([edges, border_pairs])
    lengths = color_dist[graph_edges[:, 0], graph_edges[:, 1]]
    clip = _neighbour_clip(color_dist, edges, count)
    lengths = np.maximum(lengths - clip, 0.0) + 1e-6
    graph = coo_matrix((lengths, (graph_edges[:, 0], graph_edges[:, 1])), shape=(count, count)).tocsr()
    geodesic = dijkstra(graph, directed=False)
    geodesic[~np.isfinite(geodesic)] = 1e6
    similarity = np.exp(-(geodesic**2) / (2 * sigma_color**2))
    area = similarity.sum(axis=1)
    boundary_length = similarity @ border
    connectivity = boundary_length / np.sqrt(area)
    background = 1.0 - np.exp(-(connectivity**2) / (2 * sigma_boundary**2))

    space_dist = np.linalg.norm(centers[:, None, :] - centers[None, :, :], axis=2)
    space_weight = np.exp(-(space_dist**2) / (2 * sigma_space**2))
    contrast = (color_dist * space_weight * background[None, :]).sum(axis=1)
    contrast = contrast / max(float(contrast.max()), 1e-6)
    foreground = contrast * (1.0 - background)  # contrast of background-like regions does not count

    # Saliency optimisation: min sum bg s^2 + fg (s-1)^2 + sum_ij w_ij (s_i - s_j)^2.
    smooth = np.exp(-(color_dist[edges[:, 0], edges[:, 1]] ** 2) / (2 * sigma_color**2)) + 0.1
    rows_ij = np.concatenate([edges[:, 0], edges[:, 1]])
    cols_ij = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = coo_matrix((np.concatenate([smooth, smooth]), (rows_ij, cols_ij)), shape=(count, count)).tocsr()
    laplacian = diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    system = (diags(background + foreground + 1e-6) + laplacian).tocsc()
    values = np.clip(spsolve(system, foreground), 0.0, None)
    values = values / max(float(values.max()), 1e-6)
    return values[segments].astype(np.float32)


class SaliencyProposer:
    """Weight-free proposals: several seedings of GrabCut, split into components, ranked by objectness.

    Three hypotheses seed GrabCut at ``working_size`` pixels on the long side: the boundary-prior
    colour saliency of `saliency_map` (objects stand out from a border-connected background), a
    focus map (in-focus texture in front of a smooth or defocused background: frame-filling
    subjects) and a frame rectangle (the classic GrabCut start: the border strip is background,
    except at the bottom where subjects are often cut). Each result is cleaned and split into
    connected components; components that are too small (< ``min_area`` of the image), too big
    (> ``max_area``) or that hug the border (touch all four sides, or more than
    ``max_border_contact`` of the image perimeter) are dropped. The rest get an objectness score
    (colour difference to a surrounding ring, edge support along the outline, little border
    contact, not tiny). The best non-overlapping ones scoring at least ``min_score`` are kept (a
    whole beats its parts), nearly touching ones that form a better object together are merged,
    and each is refined by a local GrabCut in a box around it (``refine``). Masks come back at
    the input resolution. Deterministic: OpenCV's RNG is seeded before every GrabCut.
    """

    def __init__(
        self,
        max_objects: int = 4,
        working_size: int = 320,
        num_segments: int = 250,
        grabcut_iterations: int = 5,
        hypotheses: tuple[str, ...] = ("saliency", "focus", "frame"),
        min_area: float = 0.005,
        max_area: float = 0.75,
        max_border_contact: float = 0.65,
        min_score: float = 0.2,
        max_overlap: float = 0.3,
        part_ratio: float = 0.5,
        refine: bool = True,
        refine_tolerance: float = 0.7,
        label: str = "object",
    ) -> None:
        unknown = set(hypotheses) - {"saliency", "focus", "frame"}
        if unknown:
            raise ValueError(f"unknown hypotheses {sorted(unknown)}; choose from 'saliency', 'focus', 'frame'")
        self.max_objects = max_objects
        self.working_size = working_size
        self.num_segments = num_segments
        self.grabcut_iterations = grabcut_iterations
        self.hypotheses = tuple(hypotheses)
        self.min_area = min_area
        self.max_area = max_area
        self.max_border_contact = max_border_contact
        self.min_score = min_score
        self.max_overlap = max_overlap
        self.part_ratio = part_ratio
        self.refine = refine
        self.refine_tolerance = refine_tolerance
        self.label = label
        self._grabcut_budget: int | None = None  # GrabCut work left for the image in progress

    def __call__(self, image: Any, max_objects: int | None = None) -> list[ObjectProposal]:
        """Proposals for ``image``, best first, at most ``max_objects`` (default: the constructor's)."""
        rgb = as_rgb(image)
        limit = self.max_objects if max_objects is None else max_objects
        if limit < 0:
            raise ValueError(f"max_objects must be >= 0, got {limit}")
        height, width = rgb.shape[:2]
        if limit == 0 or min(height, width) < 16:
            return []
        scale = scale_for(rgb.shape, self.working_size)
        small = resize(rgb, (max(1, round(height * scale)), max(1, round(width * scale))))
        if not _has_contrast(small):  # a flat image has no object to separate from anything
            return []
        self._grabcut_budget = _GRABCUT_BUDGET * small.shape[0] * small.shape[1]
        cues = _ObjectnessCues(small)
        candidates: list[tuple[np.ndarray, float]] = []
        for hypothesis in self.hypotheses:
            init = self._seeds(hypothesis, small)
            if hypothesis == "saliency":  # superpixel saliency already follows edges
                masks = [np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))]
            else:
                masks = [self._grabcut(small, init)]
            for mask in masks:
                candidates.extend((component, cues.score(component)) for component in self._components(mask))
        chosen = self._merge_parts(self._select(candidates, limit), cues)
        if self.refine:
            chosen = sorted(self._refine_all(small, chosen, cues), key=lambda item: -item[1])
        proposals = []
        for component, score in chosen:
            full = resize(component.astype(np.float32), (height, width), cv2.INTER_LINEAR) >= 0.5
            if full.any():
                proposals.append(ObjectProposal(full, score, self.label))
        return proposals

    def _select(self, candidates: list[tuple[np.ndarray, float]], limit: int) -> list[tuple[np.ndarray, float]]:
        """Best-scoring, mutually (almost) disjoint candidates; a whole beats its part.

        A candidate mostly inside a bigger one (an eye inside a face) gives way to it when the
        bigger one scores at least ``part_ratio`` times as much.
        """
        candidates = [item for item in candidates if item[1] >= self.min_score]
        areas = [float(mask.sum()) for mask, _ in candidates]
        kept = []
        for i, (mask, score) in enumerate(candidates):
            is_part = any(
                areas[j] > 1.5 * areas[i]
                and (mask & other).sum() > 0.8 * areas[i]
                and other_score >= self.part_ratio * score
                for j, (other, other_score) in enumerate(candidates)
            )
            if not is_part:
                kept.append((mask, score))
        kept.sort(key=lambda item: -item[1])
        chosen: list[tuple[np.ndarray, float]] = []
        taken = np.zeros(kept[0][0].shape if kept else (1, 1), bool)
        for mask, score in kept:
            if len(chosen) == limit:
                break
            area = mask.sum()
            if any((mask & other).sum() > self.max_overlap * min(area, other.sum()) for other, _ in chosen):
                continue
            chosen.append((mask & ~taken, score))
            taken |= mask
        return chosen

    def _merge_parts(
        self, chosen: list[tuple[np.ndarray, float]], cues: _ObjectnessCues
    ) -> list[tuple[np.ndarray, float]]:
        """Join chosen regions that nearly touch when their union (gap closed) is as good an object.

        Catches one object split by a thin band of background colour (a collar between head and body).
        """
        merged = True
        while merged and len(chosen) > 1:
            merged = False
            gap = max(2, round(0.03 * max(chosen[0][0].shape)))
            for i in range(len(chosen)):
                for j in range(i + 1, len(chosen)):
                    (a, score_a), (b, score_b) = chosen[i], chosen[j]
                    if not (dilate(a, gap) & b).any():
                        continue
                    union = cv2.morphologyEx((a | b).astype(np.uint8), cv2.MORPH_CLOSE, disk(gap)).astype(bool)
                    union = _fill_small_holes(union, 0.02 * union.sum())
                    score = cues.score(union)
                    if score >= 0.9 * (score_a * a.sum() + score_b * b.sum()) / (a.sum() + b.sum()):
                        chosen = [item for k, item in enumerate(chosen) if k not in (i, j)] + [(union, score)]
                        merged = True
                        break
                if merged:
                    break
        chosen.sort(key=lambda item: -item[1])
        return chosen

    def _refine_all(
        self, small: np.ndarray, chosen: list[tuple[np.ndarray, float]], cues: _ObjectnessCues
    ) -> list[tuple[np.ndarray, float]]:
        """Local GrabCut around each chosen region; kept unless it scores much worse.

        The refined mask may score a little lower and still be right (a subject reaching the frame
        edge gains border contact), so it only has to reach ``refine_tolerance`` of the old score.
        """
        refined: list[tuple[np.ndarray, float]] = []
        for index, (mask, score) in enumerate(chosen):
            others = np.zeros_like(mask)
            for j, (other, _) in enumerate(chosen):
                if j != index:
                    others |= other
            candidate = self._refine(small, mask, others)
            candidate_score = cues.score(candidate) if candidate.any() else 0.0
            if candidate_score >= self.refine_tolerance * score:
                mask, score = candidate, candidate_score
            refined.append((mask, score))
        return refined

    def _refine(self, small: np.ndarray, mask: np.ndarray, others: np.ndarray) -> np.ndarray:
        """GrabCut in a box around ``mask``: its core is object, a ring around it is undecided."""
        size = float(np.sqrt(mask.sum()))
        reach = max(3, round(0.15 * size))
        box = mask_box(mask)
        if box is None:
            return mask
        left, top, right, bottom = padded_box(box, 2 * reach, small.shape)
        crop_mask = mask[top:bottom, left:right]
        inside = cv2.distanceTransform(crop_mask.astype(np.uint8), cv2.DIST_L2, 3)
        init = np.full(crop_mask.shape, cv2.GC_BGD, np.uint8)
        init[dilate(crop_mask, reach)] = cv2.GC_PR_BGD
        init[crop_mask] = cv2.GC_PR_FGD
        init[inside > 0.5 * float(inside.max())] = cv2.GC_FGD
        init[others[top:bottom, left:right]] = cv2.GC_BGD
        refined = self._grabcut(small[top:bottom, left:right], init)
        components = self._components_in(refined, crop_mask)
        full = np.zeros_like(mask)
        full[top:bottom, left:right] = components
        return full

    @staticmethod
    def _components_in(refined: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """The connected parts of ``refined`` that overlap ``seed`` (drops stray islands)."""
        count, labels = cv2.connectedComponents(refined.astype(np.uint8), connectivity=8)
        keep = np.zeros(count, bool)
        keep[np.unique(labels[seed & refined])] = True
        keep[0] = False
        return keep[labels]

    def _seeds(self, hypothesis: str, small: np.ndarray) -> np.ndarray:
        """GrabCut initial labels for one hypothesis."""
        height, width = small.shape[:2]
        if hypothesis == "frame":
            init = np.full((height, width), cv2.GC_BGD, np.uint8)
            left, right, top = round(0.04 * width), round(0.96 * width), round(0.04 * height)
            init[top:, left:right] = cv2.GC_PR_FGD
            return init
        if hypothesis == "saliency":
            cue = saliency_map(small, num_segments=self.num_segments)
            threshold = _otsu(cue)
            low, high = 0.5 * threshold, 0.5 * (threshold + 1.0)
        else:
            cue = focus_map(small)
            low, threshold, high = 0.1, 0.35, 0.7
        init = np.full(cue.shape, cv2.GC_PR_BGD, np.uint8)
        init[cue < low] = cv2.GC_BGD
        init[cue >= threshold] = cv2.GC_PR_FGD
        init[cue >= high] = cv2.GC_FGD
        return init

    def _grabcut(self, small: np.ndarray, init: np.ndarray) -> np.ndarray:
        """Foreground mask from GrabCut started from the labels ``init``."""
        is_fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if is_fg.all() or not is_fg.any():
            return np.zeros(init.shape, bool)
        # Second line of defence: a bounded amount of GrabCut per image (pixels x iterations); past it,
        # hypotheses get no GrabCut and refinement keeps the unrefined mask.
        work = init.size * self.grabcut_iterations
        budget = self._grabcut_budget
        if budget is not None:
            if work > budget:
                return is_fg
            self._grabcut_budget = budget - work
        image8 = _dither(np.round(small * 255).astype(np.uint8)[:, :, ::-1])
        mask = init.copy()
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's global RNG
        try:
            cv2.grabCut(image8, mask, None, bgd, fgd, self.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour models (e.g. a flat image)
            return is_fg
        return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))

    def _components(self, foreground: np.ndarray) -> list[np.ndarray]:
        """Cleaned connected components of ``foreground`` that pass the size and border filters."""
        height, width = foreground.shape
        radius = max(1, round(0.006 * max(height, width)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        cleaned = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_OPEN, kernel)
        cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, kernel)
        count, labels = cv2.connectedComponents(cleaned, connectivity=8)
        total = float(height * width)
        perimeter = 2.0 * (height + width)
        results = []
        for index in range(1, count):
            component = labels == index
            area = float(component.sum())
            if not self.min_area * total <= area <= self.max_area * total:
                continue
            sides = (component[0], component[-1], component[:, 0], component[:, -1])
            contact = [float(side.sum()) for side in sides]
            touched = sum(c > 0.05 * len(side) for c, side in zip(contact, sides))
            if touched == 4 or sum(contact) > self.max_border_contact * perimeter:
                continue
            results.append(_fill_small_holes(component, 0.02 * area))
        return results


class _ObjectnessCues:
    """Per-image data for the objectness score: quantised colours and the gradient magnitude."""

    def __init__(self, small: np.ndarray) -> None:
        self.colors = colour_codes(small)
        grey = cv2.GaussianBlur(small.mean(axis=2).astype(np.float32), (0, 0), 0.8)
        self.gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
        self.strong_edge = max(float(np.percentile(self.gradient, 97)), 1e-6)
        self.min_object_area = 0.04  # objects smaller than this share of the image score lower

    def score(self, mask: np.ndarray) -> float:
        """Objectness in [0, 1] of ``mask``.

        Colour separation from a surrounding ring (total variation distance of colour histograms)
        x edge support (mean gradient along the outline, relative to the image's strong edges)
        x sqrt(1 - share of the outline on the image border) x a penalty for tiny regions.
        """
        area = float(mask.sum())
        ring_width = max(3, round(0.1 * np.sqrt(area)))
        ring = dilate(mask, ring_width) & ~mask
        if not ring.any():
            return 0.0
        inside = np.bincount(self.colors[mask], minlength=512) / area
        outside = np.bincount(self.colors[ring], minlength=512) / float(ring.sum())
        separation = 0.5 * float(np.abs(inside - outside).sum())
        eroded = cv2.erode(mask.astype(np.uint8), disk(1), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        outline = mask & ~eroded.astype(bool)
        on_border = np.zeros_like(outline)
        on_border[[0, -1], :] = True
        on_border[:, [0, -1]] = True
        inner_outline = outline & ~on_border
        if not inner_outline.any():
            return 0.0
        edges = min(1.0, float(self.gradient[inner_outline].mean()) / self.strong_edge)
        border_share = float((outline & on_border).sum()) / float(outline.sum())
        size = min(1.0, np.sqrt(area / (self.min_object_area * mask.size)))
        return separation * edges * np.sqrt(1.0 - border_share) * size


# GrabCut work allowed per image, in working images x iterations (the hypotheses take 2 x 5, refining
# 8 objects in their boxes far less).
_GRABCUT_BUDGET = 40


def _has_contrast(small: np.ndarray, min_spread: float = 3.0 / 255.0) -> bool:
    """Whether some colour channel varies by more than ``min_spread`` (robust 0.5-99.5 percentile range)."""
    low, high = np.percentile(small.reshape(-1, small.shape[-1]), [0.5, 99.5], axis=0)
    return bool(np.any(high - low > min_spread))


def _dither(image8: np.ndarray) -> np.ndarray:
    """``image8`` with a fixed pseudo-random +-1 level dither, so GrabCut never sees a flat colour region.

    In a flat region GrabCut's colour models collapse to a point (variance only the 0.01 singular-fix):
    where both models contain that colour, the foreground/background costs tie up to rounding noise,
    and OpenCV's max-flow (Boykov-Kolmogorov) then spends time quadratic in the region's size
    re-adopting orphaned search trees (77 s for a white 512 px photo). One level of dither gives the
    models a real variance and the costs a real difference; it is far below any visible colour step.
    """
    noise = np.random.default_rng(0).integers(0, 2, image8.shape, dtype=np.uint8)
    return np.ascontiguousarray(np.where(image8 >= 128, image8 - noise, image8 + noise).astype(np.uint8))


def focus_map(image: Any) -> np.ndarray:
    """In-focus texture in [0, 1]: local gradient energy, smoothed and normalised by percentiles."""
    rgb = as_rgb(image)
    grey = cv2.GaussianBlur(rgb.mean(axis=2).astype(np.float32), (0, 0), 0.7)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    energy = cv2.GaussianBlur(magnitude, (0, 0), 0.02 * max(rgb.shape[:2]))
    low, high = np.percentile(energy, [5, 95])
    return np.clip((energy - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def _focus(rgb: np.ndarray, segments: np.ndarray, count: int) -> np.ndarray:
    """Per-superpixel sharpness in [0, 1]: mean gradient magnitude relative to the sharpest regions."""
    grey = cv2.GaussianBlur(rgb.mean(axis=2).astype(np.float32), (0, 0), 0.8)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    flat = segments.ravel()
    sizes = np.maximum(np.bincount(flat, minlength=count), 1)
    sharpness = np.bincount(flat, magnitude.ravel(), count) / sizes
    reference = float(np.percentile(sharpness, 90))
    return np.clip(sharpness / max(reference, 1e-6), 0.0, 1.0)


def _neighbour_clip(color_dist: np.ndarray, edges: np.ndarray, count: int) -> float:
    """Typical colour step to the most similar neighbour: steps below it are noise, not edges."""
    nearest = np.full(count, np.inf)
    steps = color_dist[edges[:, 0], edges[:, 1]]
    np.minimum.at(nearest, edges[:, 0], steps)
    np.minimum.at(nearest, edges[:, 1], steps)
    return float(np.mean(nearest[np.isfinite(nearest)])) if np.isfinite(nearest).any() else 0.0


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1]."""
    histogram, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    weights = histogram.astype(np.float64) / max(histogram.sum(), 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    omega = np.cumsum(weights)
    mu = np.cumsum(weights * centers)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(np.clip(edges[int(np.argmax(between)) + 1], 0.05, 0.95))


def _fill_small_holes(mask: np.ndarray, max_hole: float) -> np.ndarray:
    """Fill holes of ``mask`` smaller than ``max_hole`` pixels (bigger ones, e.g. a handle, stay)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    filled = mask.copy()
    height, width = mask.shape
    for index in range(1, count):
        left, top, w, h, area = stats[index]
        touches_border = left == 0 or top == 0 or left + w == width or top + h == height
        if not touches_border and area <= max_hole:
            filled[labels == index] = True
    return filled
