"""Box and point prompts: tell the decomposer which objects to take out.

A prompt names one object; each gives one object layer (with its shadow) inside the same decomposition:

- a **box** ``(x0, y0, x1, y1)``: the object lies inside it (left, top, right, bottom; right and bottom are
  exclusive, so ``(0, 0, width, height)`` is the whole photo);
- a **point** ``(x, y)``: a pixel on the object (column, row);
- a **negative point** ``(x, y)``: a pixel that belongs to none of the prompted objects. It is cut out of every
  prompted object, and an automatically found object that covers it is left out.

Coordinates are pixels of the photo as given, or fractions of its width and height. The rule, per prompt: it is
in fractions when every coordinate lies in [0, 1] and at least one of them is a float (in the CLI: written with a
decimal point), e.g. ``(0.1, 0.2, 0.6, 0.9)`` or ``(0.5, 0.5)``; otherwise it is in pixels, e.g. ``(12, 40, 200,
310)`` or ``(0, 0, 1, 1)`` (a one-pixel box). Bad prompts (outside the photo, empty, inverted, not numbers) raise
a `ValueError` with a one-line message.

How a prompt becomes a mask (`PromptSegmenter`): the learned segmenter runs on a crop around the prompt (a box
plus a margin; for a point, squares of a few sizes centred on it). For a box, the segmenter's regions inside it
are kept when they fit the box (touch its four sides, fill more than a speck), else GrabCut started from the box
(its middle sure; the box, then only its inscribed ellipse, probable foreground), else that ellipse. For a
point, the region under it is kept when the point lies well inside it and the crop did not cut it; else a
smaller crop is tried, and with no region under the point GrabCut grows one from a disc around it. Without a
segmenter (weight-free) only the GrabCut steps run. The decomposer then mattes the mask, finds its shadow and
fills the background as for any object.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ._utils import box_iou, colour_codes, dilate, disk, resize, scale_for

__all__ = [
    "BoxPrompt",
    "PointPrompt",
    "PromptSegmenter",
    "Prompts",
    "parse_box",
    "parse_numbers",
    "parse_point",
    "parse_prompts",
]


# ---------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class BoxPrompt:
    """A box around one object, in pixels of the photo: ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: float
    y0: float
    x1: float
    y1: float
    what: str = "box"  # what messages call it

    def scaled(self, factor: float) -> BoxPrompt:
        """The same box on the photo resized by ``factor``."""
        return BoxPrompt(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.what)

    def pixels(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` whole pixels (right/bottom exclusive, at least one pixel) in ``shape``."""
        height, width = shape[:2]
        left = min(max(0, math.floor(self.x0 + 1e-6)), width - 1)
        top = min(max(0, math.floor(self.y0 + 1e-6)), height - 1)
        right = max(left + 1, min(width, math.ceil(self.x1 - 1e-6)))
        bottom = max(top + 1, min(height, math.ceil(self.y1 - 1e-6)))
        return left, top, right, bottom


@dataclass(frozen=True)
class PointPrompt:
    """A pixel on one object (``positive``) or on none of the prompted objects, in pixels of the photo."""

    x: float
    y: float
    positive: bool = True
    what: str = "point"

    def scaled(self, factor: float) -> PointPrompt:
        """The same point on the photo resized by ``factor``."""
        return PointPrompt(self.x * factor, self.y * factor, self.positive, self.what)

    def pixel(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(column, row)`` of the pixel the point falls on, inside ``shape``."""
        height, width = shape[:2]
        return min(max(0, math.floor(self.x)), width - 1), min(max(0, math.floor(self.y)), height - 1)


@dataclass(frozen=True)
class Prompts:
    """The prompts of one decomposition, in pixels of its photo. Objects: the boxes, then the points."""

    boxes: tuple[BoxPrompt, ...] = ()
    points: tuple[PointPrompt, ...] = ()
    negative_points: tuple[PointPrompt, ...] = ()

    @property
    def objects(self) -> tuple[BoxPrompt | PointPrompt, ...]:
        """One entry per prompted object: boxes first, then positive points."""
        return (*self.boxes, *self.points)

    def __len__(self) -> int:
        return len(self.boxes) + len(self.points)

    def __bool__(self) -> bool:
        return bool(self.boxes or self.points or self.negative_points)

    def scaled(self, factor: float) -> Prompts:
        """The same prompts on the photo resized by ``factor`` (the decomposer's working resolution)."""
        if factor == 1.0:
            return self
        return Prompts(
            tuple(b.scaled(factor) for b in self.boxes),
            tuple(p.scaled(factor) for p in self.points),
            tuple(p.scaled(factor) for p in self.negative_points),
        )

    def describe(self) -> list[dict[str, Any]]:
        """JSON-friendly list of the object prompts (for ``LayeredImage.metadata``)."""
        out: list[dict[str, Any]] = []
        for prompt in self.objects:
            if isinstance(prompt, BoxPrompt):
                out.append({"kind": "box", "box": [prompt.x0, prompt.y0, prompt.x1, prompt.y1]})
            else:
                out.append({"kind": "point", "point": [prompt.x, prompt.y]})
        return out


def parse_numbers(text: str, count: int, what: str) -> tuple[int | float, ...]:
    """``"10,20"`` -> ``(10, 20)``; ``"0.5,0.25"`` -> ``(0.5, 0.25)`` (written with a point: a float).

    Raises ``ValueError`` naming ``what`` when there are not ``count`` numbers.
    """
    parts = [part.strip() for part in str(text).replace(" ", "").split(",")]
    shape = "x0,y0,x1,y1" if count == 4 else "x,y"
    if len(parts) != count or not all(parts):
        raise ValueError(f"{what}: expected {count} numbers {shape} separated by commas, got {text!r}")
    values: list[int | float] = []
    for part in parts:
        try:
            values.append(int(part) if part.lstrip("+-").isdigit() else float(part))
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not a number (expected {shape}, e.g. 10,20 or 0.5,0.5)") from None
    return tuple(values)


def _numbers(value: Any, count: int, what: str) -> tuple[int | float, ...]:
    if isinstance(value, str):
        return parse_numbers(value, count, what)
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{what}: expected {count} numbers, got {type(value).__name__}") from None
    if len(values) != count:
        raise ValueError(f"{what}: expected {count} numbers, got {len(values)}")
    out: list[int | float] = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise ValueError(f"{what}: {item!r} is not a number")
        number = int(item) if isinstance(item, numbers.Integral) else float(item)
        if not math.isfinite(number):
            raise ValueError(f"{what}: coordinates must be finite numbers, got {item!r}")
        out.append(number)
    return tuple(out)


def _in_fractions(values: Sequence[int | float]) -> bool:
    """The coordinate rule: fractions when every value is in [0, 1] and at least one is a float."""
    return all(0.0 <= v <= 1.0 for v in values) and any(isinstance(v, float) for v in values)


def _show(values: Sequence[int | float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def parse_box(value: Any, size: tuple[int, int], what: str = "box") -> BoxPrompt:
    """A `BoxPrompt` in pixels from ``(x0, y0, x1, y1)`` (pixels or fractions) on a photo of ``size = (w, h)``."""
    x0, y0, x1, y1 = values = _numbers(value, 4, what)
    width, height = size
    if _in_fractions(values):
        x0, y0, x1, y1 = x0 * width, y0 * height, x1 * width, y1 * height
    if x1 < x0 or y1 < y0:
        raise ValueError(
            f"{what} {_show(values)} is inverted: give x0,y0,x1,y1 with x0 < x1 (left, right) and y0 < y1 (top, bottom)"
        )
    if min(x0, y0) < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"{what} {_show(values)} reaches outside the {width}x{height} image: keep 0 <= x0 < x1 <= {width} "
            f"and 0 <= y0 < y1 <= {height} (or give fractions in [0, 1])"
        )
    if x1 - x0 < 1 or y1 - y0 < 1:
        hint = (
            " (read as pixels: fractions need every value in [0, 1])"
            if any(isinstance(v, float) for v in values)
            else ""
        )
        raise ValueError(f"{what} {_show(values)} is empty{hint}: a box must be at least one pixel wide and high")
    return BoxPrompt(float(x0), float(y0), float(x1), float(y1), what)


def parse_point(value: Any, size: tuple[int, int], what: str = "point", positive: bool = True) -> PointPrompt:
    """A `PointPrompt` in pixels from ``(x, y)`` (pixels or fractions) on a photo of ``size = (w, h)``."""
    x, y = values = _numbers(value, 2, what)
    width, height = size
    if _in_fractions(values):
        x, y = min(x * width, width - 0.5), min(y * height, height - 0.5)  # 1.0 is the last pixel, not past it
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"{what} {_show(values)} is outside the {width}x{height} image: keep 0 <= x < {width} and "
            f"0 <= y < {height} (or give fractions in [0, 1])"
        )
    return PointPrompt(float(x), float(y), positive, what)


def parse_prompts(
    boxes: Any = None,
    points: Any = None,
    negative_points: Any = None,
    size: tuple[int, int] = (1, 1),
) -> Prompts:
    """`Prompts` in pixels of a photo of ``size = (width, height)``.

    ``boxes`` is a list of ``(x0, y0, x1, y1)``, ``points`` and ``negative_points`` lists of ``(x, y)``; each
    may also be a `BoxPrompt` / `PointPrompt` (taken as given, in pixels) or a string ``"x0,y0,x1,y1"``.
    """

    def listed(value: Any, what: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, (str, BoxPrompt, PointPrompt)) or (
            isinstance(value, (tuple, list)) and value and isinstance(value[0], numbers.Real)
        ):
            raise ValueError(f"{what} must be a list of prompts, e.g. {what}=[(10, 20, 110, 220)]; got one prompt")
        try:
            return list(value)
        except TypeError:
            raise ValueError(f"{what} must be a list of prompts, got {type(value).__name__}") from None

    parsed_boxes = []
    for index, box in enumerate(listed(boxes, "boxes"), start=1):
        parsed_boxes.append(box if isinstance(box, BoxPrompt) else parse_box(box, size, f"box {index}"))
    parsed_points = []
    for index, point in enumerate(listed(points, "points"), start=1):
        parsed_points.append(point if isinstance(point, PointPrompt) else parse_point(point, size, f"point {index}"))
    negatives = []
    for index, point in enumerate(listed(negative_points, "negative_points"), start=1):
        if isinstance(point, PointPrompt):
            negatives.append(PointPrompt(point.x, point.y, False, point.what))
        else:
            negatives.append(parse_point(point, size, f"negative point {index}", positive=False))
    return Prompts(tuple(parsed_boxes), tuple(parsed_points), tuple(negatives))


# ---------------------------------------------------------------------------------------------- segmentation
class RememberingSegmenter:
    """A segmenter that keeps its last few answers by image content (the decomposer's first pass on the whole
    photo then serves both the automatic objects and the point prompts). ``size`` answers are kept: enough for
    the whole photo and the decomposer's crops (five with the default 2 x 2 grid)."""

    def __init__(self, segmenter: Any, size: int = 8) -> None:
        self.segmenter = segmenter
        self.name = getattr(segmenter, "name", type(segmenter).__name__)
        self.size = size
        self._answers: dict[str, np.ndarray] = {}

    def at_side(self, side: int) -> Any:
        """The wrapped segmenter at another input side (`OnnxSegmenter.at_side`), remembering on its own."""
        sized = self.segmenter.at_side(side) if hasattr(self.segmenter, "at_side") else self.segmenter
        return self if sized is self.segmenter else RememberingSegmenter(sized, self.size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(image, np.float32)
        key = hashlib.sha1(array.tobytes()).hexdigest() + str(array.shape)
        if key not in self._answers:
            if len(self._answers) >= self.size:
                self._answers.pop(next(iter(self._answers)))
            self._answers[key] = np.asarray(self.segmenter(array), np.float32)
        return self._answers[key].copy()


SHAPE_PRIORS = ("box", "middle", "ellipse")  # GrabCut's starting labels from a box alone (`_shape_prior_labels`)


@dataclass
class PromptSegmenter:
    """Masks of prompted objects: the segmenter on a crop around each prompt, GrabCut where it finds nothing.

    Attributes:
        box_margin: the crop around a box is the box grown by this share of its longer side on each side.
        point_crops: for a point, squares of these shares of the photo's longer side (1.0: the whole photo, the
            pass the automatic objects use too), centred on the point, are segmented from large to small; the
            first with a plausible region under the point gives the object (a small crop finds what the whole
            photo's pass misses or merges with its surroundings; more context keeps a part from passing for
            the object).
        min_point_depth: a point's region is plausible when the point's distance to its edge is at least this
            share of the region's largest (the point is well inside it, not on its rim).
        grabcut_margin: GrabCut works on the box grown by this share of its longer side (background to learn).
        min_box_fit: a box candidate is taken when its bounding box has at least this IoU with the prompt's...
        min_box_fill: ... and it covers at least this share of the box (a speck is not what a box was drawn for).
        loose_box_fit: when no candidate fits that well, the best-fitting one above this IoU is taken (a loose
            box); below it, the ellipse the box holds.
        max_surroundings_likeness: a candidate drawn from the box's shape alone is refused when its colours match
            those around the box at least this much (histogram intersection, 0-1): a box that is loose or cuts
            its object has background in its middle, and GrabCut then fills the box with that background.
        split_instances: cut a point's region into instances (`split_salient_matte`) and keep the one under it.
        grabcut_size: GrabCut runs on the crop at most this many pixels on its long side.
        grabcut_iterations: GrabCut iterations.
        grabcut_from_matte: whether a box tries GrabCut started from the segmenter's matte before the shape priors.
        box_priors: the shape priors a box tries GrabCut from, in order (see `_shape_prior_labels`: "box",
            "middle", "ellipse"). Each is one more GrabCut on a box that nothing fits; the fast preset keeps
            fewer.
        learned: a `liwi_diffusers.tools.learned_prompts.LearnedPromptSegmenter` (a trained prompt head on the
            segmenter's features; opt-in): when set, it gives every box's and point's mask and the rules above are
            not used; None (default) keeps them.
    """

    box_margin: float = 0.1
    grabcut_margin: float = 0.3
    min_box_fit: float = 0.8
    min_box_fill: float = 0.1
    loose_box_fit: float = 0.5
    max_surroundings_likeness: float = 0.7
    point_crops: tuple[float, ...] = (1.0, 0.4, 0.2)
    min_point_depth: float = 0.5
    split_instances: bool = True
    grabcut_size: int = 320
    grabcut_iterations: int = 5
    grabcut_from_matte: bool = True
    box_priors: tuple[str, ...] = SHAPE_PRIORS
    learned: Any = None

    def __post_init__(self) -> None:
        unknown = [prior for prior in self.box_priors if prior not in SHAPE_PRIORS]
        if unknown:
            raise ValueError(f"PromptSegmenter: unknown box prior(s) {unknown}; choose from {list(SHAPE_PRIORS)}")
        self.box_priors = tuple(self.box_priors)

    def __call__(
        self,
        image: np.ndarray,
        prompts: Prompts,
        segmenter: Any = None,
        detected: Sequence[Sequence[float]] = (),
        box_segmenter: Any = None,
    ) -> list[np.ndarray]:
        """One ``(H, W)`` float32 coverage per object prompt of ``prompts`` (in pixels of ``image``).

        ``detected``: an object detector's boxes ``(x0, y0, x1, y1)`` in pixels of ``image``, which point prompts
        try first (see `segment_point`). ``box_segmenter``: what segments the crop around a box (a box prompt, or
        a detected box a point tries); None: ``segmenter``.
        """
        negatives = [p.pixel(image.shape) for p in prompts.negative_points]
        masks = []
        for prompt in prompts.objects:
            if isinstance(prompt, BoxPrompt):
                coverage = self.segment_box(image, prompt, box_segmenter or segmenter, negatives)
            else:
                coverage = self.segment_point(image, prompt, segmenter, negatives, detected, box_segmenter)
            masks.append(coverage.astype(np.float32))
        return masks

    # -------------------------------------------------------------- boxes
    def segment_box(
        self, image: np.ndarray, box: BoxPrompt, segmenter: Any = None, negatives: Sequence[tuple[int, int]] = ()
    ) -> np.ndarray:
        """Coverage of the object inside ``box``: nothing outside the box.

        Candidates, in order of preference: the segmenter's regions in the box (at its own threshold, then at
        half its peak there when it is unsure), GrabCut started from the segmenter's matte, then GrabCut started
        from the box alone (`_shape_prior_labels`: the whole box probable; then its middle sure as well; then
        only the ellipse it holds probable). A box drawn around an object touches it on all four sides and is not
        mostly empty, so the first candidate whose bounding box fits the prompt's (IoU >= ``min_box_fit``) and
        that covers at least ``min_box_fill`` of the box is taken (with a negative point in the box, the first
        that found anything). A box-only candidate made of the colours around the box is refused (see
        ``max_surroundings_likeness``). When none passes, the best-fitting one with a fit of at least
        ``loose_box_fit`` (a box drawn loosely), else the ellipse the box holds: on cluttered photos a guess from
        the box's shape is closer to the object than a confident mask of
        something else.
        """
        height, width = image.shape[:2]
        left, top, right, bottom = box.pixels(image.shape)
        if self.learned is not None:
            return self.learned.box_mask(image, (left, top, right, bottom), negatives)
        size = max(right - left, bottom - top)
        pad = round(self.grabcut_margin * size) + 4  # GrabCut needs background around the box to learn from
        crop = (max(0, left - pad), max(0, top - pad), min(width, right + pad), min(height, bottom + pad))
        cl, ct, cr, cb = crop
        patch = image[ct:cb, cl:cr]
        inside = np.zeros(patch.shape[:2], bool)
        inside[top - ct : bottom - ct, left - cl : right - cl] = True
        seeds_out = _negative_mask(patch.shape[:2], negatives, crop)
        target = (left - cl, top - ct, right - cl, bottom - ct)
        area = float(inside.sum())
        cut = bool((seeds_out & inside).any())  # the user cut part of the box away: it no longer bounds the object
        # The box's shape says its middle is the object; where that middle looks like what surrounds the box
        # (a loose box, or one that cuts its object), GrabCut fills the box with the background it was drawn on.
        surroundings = _colour_histogram(patch, ~dilate(inside, 2))

        def candidates() -> Iterator[tuple[np.ndarray, bool]]:
            """Soft coverages in the crop, in order of preference, made only when asked for (GrabCut is the cost:
            about half a second each); each with whether it comes from the box's shape alone."""
            if segmenter is not None:
                margin = round(self.box_margin * size) + 2
                sl, st = max(0, left - margin), max(0, top - margin)
                sr, sb = min(width, right + margin), min(height, bottom + margin)
                matte = np.zeros(patch.shape[:2], np.float32)
                matte[st - ct : sb - ct, sl - cl : sr - cl] = _segment(segmenter, image[st:sb, sl:sr])
                matte *= inside
                peak = float(matte.max())
                for threshold in (0.5, 0.5 * peak) if 0.1 <= peak < 0.9 else (0.5,):
                    solid = matte >= threshold
                    kept = _box_regions(_without_regions_at(solid, seeds_out))
                    if kept.any():
                        # An unsure matte (peak under 0.9) is stretched so its threshold is sure: matting would
                        # otherwise take its faint values for a faint object.
                        scale = 1.0 if threshold == 0.5 else 1.0 / max(threshold, 1e-3)
                        yield np.where(dilate(kept, 2), np.clip(matte * scale, 0, 1), 0.0), False
                if peak >= 0.1 and self.grabcut_from_matte:
                    seeded = self._grabcut(patch, _labels_from(matte >= min(0.5, 0.5 * peak), inside, seeds_out))
                    yield _box_regions(_without_regions_at(seeded & inside, seeds_out)).astype(np.float32), False
            for prior in self.box_priors:
                shaped = self._grabcut(patch, _shape_prior_labels(inside, target, seeds_out, prior)) & inside
                yield _box_regions(_without_regions_at(shaped, seeds_out)).astype(np.float32), True

        coverage = None
        best_loose: tuple[float, np.ndarray] | None = None  # (fit, candidate); of equal fits, the later one
        for candidate, from_shape in candidates():
            solid = candidate >= 0.5
            fit = _box_fit(solid, target)
            full = self._fills(solid, area)
            if from_shape and surroundings is not None:
                mine = _colour_histogram(patch, solid)
                if mine is not None and float(np.minimum(mine, surroundings).sum()) >= self.max_surroundings_likeness:
                    fit = 0.0
            if (fit > 0.0) if cut else (fit >= self.min_box_fit and full):
                coverage = candidate  # the first good one: the later candidates are not made at all
                break
            if fit >= self.loose_box_fit and full and (best_loose is None or fit >= best_loose[0]):
                best_loose = (fit, candidate)
        if coverage is None and best_loose is not None:
            coverage = best_loose[1]
        if coverage is None:  # nothing plausible: the ellipse the box holds
            coverage = (_ellipse_in(patch.shape[:2], target) & ~seeds_out).astype(np.float32)
        out = np.zeros((height, width), np.float32)
        out[ct:cb, cl:cr] = coverage * inside
        return out

    def fills_box(self, solid: np.ndarray, box: BoxPrompt) -> bool:
        """Whether the mask ``solid`` (boolean, the photo's shape) is what a box drawn around it would take: its
        bounding box fits ``box`` (IoU >= ``min_box_fit``) and it covers at least ``min_box_fill`` of the box."""
        left, top, right, bottom = box.pixels(solid.shape)
        inside = solid[top:bottom, left:right]
        return _box_fit(inside, (0, 0, right - left, bottom - top)) >= self.min_box_fit and self._fills(
            inside, float((right - left) * (bottom - top))
        )

    def _fills(self, solid: np.ndarray, box_area: float) -> bool:
        return float(solid.sum()) >= self.min_box_fill * box_area

    # -------------------------------------------------------------- points
    def segment_point(
        self,
        image: np.ndarray,
        point: PointPrompt,
        segmenter: Any = None,
        negatives: Sequence[tuple[int, int]] = (),
        detected: Sequence[Sequence[float]] = (),
        box_segmenter: Any = None,
    ) -> np.ndarray:
        """Coverage of the object under ``point`` (``box_segmenter``, default ``segmenter``: for detected boxes).

        A detected box ``(x0, y0, x1, y1)`` of ``detected`` that holds the point is tried first, smallest first:
        it is segmented as a box prompt is (`segment_box`), and its region under the point is taken when the
        point lies well inside it (see below). A detector knows where a whole object ends, which a click alone
        does not say (a part or the whole, a dish or the table). Otherwise the segmenter runs on squares of
        ``point_crops`` shares of the photo centred on the point, from large to small, and the region under the
        point (cut into instances, `_instance_at`) is a candidate. People click
        on the middle of what they mean, so a candidate is plausible when the point lies well inside it (its
        distance to the region's edge is at least ``min_point_depth`` of the region's largest such distance: a
        point near the edge of a region belongs to something smaller within it, e.g. a dish on a table) and,
        for a crop smaller than the photo, when the region stays inside the crop (else the crop cut it). The
        first plausible candidate is taken, else the one holding the point deepest (regions the crop cut last);
        with no region under the point anywhere, GrabCut grows one from a disc around the point (`_grow_point`).
        """
        height, width = image.shape[:2]
        x, y = point.pixel(image.shape)
        if self.learned is not None:
            return self.learned.point_mask(image, (x, y), negatives)
        if segmenter is not None:
            for box in sorted(_boxes_holding(detected, x, y), key=lambda b: (b[2] - b[0]) * (b[3] - b[1])):
                coverage = self.segment_box(image, BoxPrompt(*box), box_segmenter or segmenter, negatives)
                region = _region_at(coverage >= 0.5, x, y)
                if region is not None and _depth_at(region, x, y) >= self.min_point_depth:
                    return np.where(dilate(region, 2), coverage, 0.0).astype(np.float32)
        best = None
        fallback: tuple[tuple[bool, float], tuple[tuple[int, int, int, int], np.ndarray]] | None = None
        if segmenter is not None:
            for share in sorted(self.point_crops, reverse=True):
                crop = _square_around(x, y, share * max(height, width), (height, width))
                cl, ct, cr, cb = crop
                patch = image[ct:cb, cl:cr]
                seeds_out = _negative_mask(patch.shape[:2], negatives, crop)
                matte = _segment(segmenter, patch)
                region = _region_at(matte >= 0.5, x - cl, y - ct)
                if region is None:
                    continue
                if self.split_instances:  # touching things (a boat by a seaplane) come apart at their neck
                    region = _instance_at(np.where(region, matte, 0.0), x - cl, y - ct, region)
                if (region & seeds_out).any():  # a negative point on the same region: let GrabCut cut between them
                    region = self._cut_point(patch, region, (x - cl, y - ct), seeds_out)
                    if region is None:
                        continue
                    matte = np.maximum(matte, 0.5 * region)
                answer = (crop, np.where(dilate(region, 2), matte, 0.0))
                whole = not _runs_into_edge(region, crop, (height, width))
                depth = _depth_at(region, x - cl, y - ct)
                if whole and depth >= self.min_point_depth:
                    best = answer
                    break
                if fallback is None or (whole, depth) > fallback[0]:
                    fallback = ((whole, depth), answer)
        if best is None and fallback is not None:
            best = fallback[1]
        if best is None:
            best = self._grow_point(image, (x, y), negatives)
        (cl, ct, cr, cb), coverage = best
        out = np.zeros((height, width), np.float32)
        out[ct:cb, cl:cr] = coverage
        return out

    def _grow_point(
        self, image: np.ndarray, at: tuple[int, int], negatives: Sequence[tuple[int, int]]
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """GrabCut grown from a disc around the point, on the squares of ``point_crops`` from large to small.

        The disc (sure foreground) and a ring three times its radius (probable) scale with the square, so one of
        them matches the object's size. As for the segmenter's regions, the first answer that holds the point
        well inside, stays inside its square and grew beyond its disc is taken; else the one that comes closest.
        """
        height, width = image.shape[:2]
        x, y = at
        scored = []
        for share in sorted(self.point_crops, reverse=True):
            crop = _square_around(x, y, share * max(height, width), (height, width))
            cl, ct, cr, cb = crop
            patch = image[ct:cb, cl:cr]
            seeds_out = _negative_mask(patch.shape[:2], negatives, crop)
            labels = np.full(patch.shape[:2], cv2.GC_PR_BGD, np.uint8)
            radius = max(2, round(0.04 * max(patch.shape[:2])))
            cv2.circle(labels, (x - cl, y - ct), radius * 3, int(cv2.GC_PR_FGD), -1)
            cv2.circle(labels, (x - cl, y - ct), radius, int(cv2.GC_FGD), -1)
            labels[seeds_out] = cv2.GC_BGD
            region = _region_at(self._grabcut(patch, labels), x - cl, y - ct)
            if region is None:
                region = np.zeros(patch.shape[:2], bool)
                cv2.circle(region.view(np.uint8), (x - cl, y - ct), radius, 1, -1)
            grown = float(region.sum()) >= 2.0 * math.pi * radius**2
            whole = not _runs_into_edge(region, crop, (height, width))
            depth = _depth_at(region, x - cl, y - ct)
            answer = (crop, region.astype(np.float32))
            if grown and whole and depth >= self.min_point_depth:
                return answer
            scored.append(((grown, whole, depth), answer))
        return max(scored, key=lambda item: item[0])[1]

    def _cut_point(
        self, patch: np.ndarray, region: np.ndarray, at: tuple[int, int], seeds_out: np.ndarray
    ) -> np.ndarray | None:
        """The part of ``region`` on the positive point's side of the negative points (GrabCut between them)."""
        labels = np.full(region.shape, cv2.GC_PR_BGD, np.uint8)
        labels[region] = cv2.GC_PR_FGD
        cv2.circle(labels, at, max(2, round(0.02 * max(region.shape))), int(cv2.GC_FGD), -1)
        labels[dilate(seeds_out, 2)] = cv2.GC_BGD
        cut = self._grabcut(patch, labels) & region & ~dilate(seeds_out, 1)
        return _region_at(cut, *at)

    # -------------------------------------------------------------- GrabCut
    def _grabcut(self, patch: np.ndarray, labels: np.ndarray, around: np.ndarray | None = None) -> np.ndarray:
        """GrabCut's foreground from the starting ``labels`` (cv2.GC_*), on the patch at most ``grabcut_size``."""
        from .proposals import _dither

        scale = scale_for(patch.shape, self.grabcut_size)
        size = (max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale)))
        small = np.clip(resize(patch, size), 0.0, 1.0)
        small_labels = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        is_fg = np.isin(small_labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
        is_bg = ~is_fg
        if not is_fg.any():
            return np.zeros(patch.shape[:2], bool)
        if not is_bg.any():  # the box is the whole crop (the whole photo): its frame is the background model
            small_labels[[0, -1], :] = cv2.GC_PR_BGD
            small_labels[:, [0, -1]] = cv2.GC_PR_BGD
        image8 = _dither(np.round(small * 255).astype(np.uint8)[:, :, ::-1])
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(image8, small_labels, None, bgd, fgd, self.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour models (a flat crop)
            return np.zeros(patch.shape[:2], bool)
        foreground = np.isin(small_labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        return resize(foreground, patch.shape[:2], cv2.INTER_LINEAR) >= 0.5


# ---------------------------------------------------------------------------------------------- helpers
def _segment(segmenter: Any, patch: np.ndarray) -> np.ndarray:
    matte = np.asarray(segmenter(np.ascontiguousarray(patch)), np.float32)
    if matte.shape != patch.shape[:2]:
        raise ValueError(f"segmenter returned a {matte.shape} matte for a {patch.shape[:2]} crop")
    return matte


def _square_around(x: int, y: int, side: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A square crop ``(left, top, right, bottom)`` of about ``side`` pixels centred on ``(x, y)``, inside
    ``shape`` (moved, not cut, where it would leave the photo)."""
    height, width = shape
    crop_w, crop_h = min(width, max(16, round(side))), min(height, max(16, round(side)))
    left = int(np.clip(x - crop_w // 2, 0, width - crop_w))
    top = int(np.clip(y - crop_h // 2, 0, height - crop_h))
    return left, top, left + crop_w, top + crop_h


def _negative_mask(
    shape: tuple[int, int], negatives: Sequence[tuple[int, int]], crop: tuple[int, int, int, int]
) -> np.ndarray:
    """Small discs around the negative points that fall in ``crop``, in crop coordinates."""
    mask = np.zeros(shape, np.uint8)
    radius = max(1, round(0.01 * max(shape)))
    for x, y in negatives:
        if crop[0] <= x < crop[2] and crop[1] <= y < crop[3]:
            cv2.circle(mask, (x - crop[0], y - crop[1]), radius, 1, -1)
    return mask.astype(bool)


def _components(solid: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid.astype(np.uint8), connectivity=8)
    return count, labels, stats[:, cv2.CC_STAT_AREA]


def _without_regions_at(solid: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``solid`` without its connected regions that touch ``seeds`` (the negative points)."""
    if not seeds.any():
        return solid
    _, labels, _ = _components(solid)
    touched = np.unique(labels[seeds & solid])
    return solid & ~np.isin(labels, touched[touched > 0])


def _box_fit(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """IoU of the bounding box of ``mask`` (specks under 1 % of it ignored) with ``box``; 0 for an empty mask."""
    count, labels, areas = _components(mask)
    if count <= 1:
        return 0.0
    keep = np.isin(labels, [i for i in range(1, count) if areas[i] >= 0.01 * areas[1:].sum()])
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    return box_iou((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1), box)


def _box_regions(solid: np.ndarray, min_share: float = 0.1) -> np.ndarray:
    """The regions of ``solid`` that make up the boxed object: the largest and any at least ``min_share`` of it."""
    count, labels, areas = _components(solid)
    if count <= 1:
        return np.zeros(solid.shape, bool)
    largest = int(areas[1:].max())
    keep = [index for index in range(1, count) if areas[index] >= min_share * largest]
    return np.isin(labels, keep)


def _region_at(solid: np.ndarray, x: int, y: int) -> np.ndarray | None:
    """The connected region of ``solid`` under ``(x, y)``, or the nearest one within a few pixels; None if none."""
    count, labels, _ = _components(solid)
    if count <= 1:
        return None
    label = int(labels[y, x])
    if label == 0:
        radius = max(2, round(0.015 * max(solid.shape)))
        window = labels[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
        near = window[window > 0]
        if near.size == 0:
            return None
        label = int(np.bincount(near).argmax())
    return labels == label


def _instance_at(matte: np.ndarray, x: int, y: int, region: np.ndarray) -> np.ndarray:
    """The instance of ``matte`` (`split_salient_matte`) under ``(x, y)``; ``region`` when it does not split."""
    from .instances import split_salient_matte

    parts = split_salient_matte(matte)
    if len(parts) < 2:
        return region
    best = max(parts, key=lambda part: float(part[y, x]))
    return best >= 0.5 if best[y, x] >= 0.5 else region


def _boxes_holding(boxes: Sequence[Sequence[float]], x: int, y: int) -> list[tuple[float, float, float, float]]:
    """The boxes ``(x0, y0, x1, y1)`` that hold the pixel ``(x, y)``."""
    held = []
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if x0 <= x < x1 and y0 <= y < y1:
            held.append((x0, y0, x1, y1))
    return held


def _depth_at(region: np.ndarray, x: int, y: int) -> float:
    """How deep ``(x, y)`` lies in ``region``: its distance to the region's edge over the largest such distance
    (1 at the region's innermost pixel, near 0 on its rim, 0 outside it)."""
    distance = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    peak = float(distance.max())
    return float(distance[y, x]) / peak if peak > 0 else 0.0


def _runs_into_edge(region: np.ndarray, crop: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Whether ``region`` touches a side of ``crop`` that is not also the photo's edge (it may go on outside)."""
    left, top, right, bottom = crop
    height, width = shape
    sides = []
    if left > 0:
        sides.append(region[:, 0])
    if right < width:
        sides.append(region[:, -1])
    if top > 0:
        sides.append(region[0, :])
    if bottom < height:
        sides.append(region[-1, :])
    return any(side.any() for side in sides)


def _colour_histogram(patch: np.ndarray, where: np.ndarray, levels: int = 8) -> np.ndarray | None:
    """The normalised histogram of the colours of ``patch`` (float RGB in [0, 1]) at ``where``, ``levels`` bins a
    channel; None for fewer than 64 pixels (too few to say what they look like)."""
    if int(where.sum()) < 64:
        return None
    histogram = np.bincount(colour_codes(patch[where], levels), minlength=levels**3).astype(np.float64)
    return histogram / histogram.sum()


def _ellipse_in(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The filled ellipse inscribed in ``box = (left, top, right, bottom)`` (right/bottom exclusive)."""
    left, top, right, bottom = box
    mask = np.zeros(shape, np.uint8)
    centre = (round((left + right - 1) / 2), round((top + bottom - 1) / 2))
    axes = (max(1, round((right - left) / 2)), max(1, round((bottom - top) / 2)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def _shape_prior_labels(
    inside: np.ndarray, box: tuple[int, int, int, int], seeds_out: np.ndarray, prior: str = "ellipse"
) -> np.ndarray:
    """GrabCut labels from a box alone; the outside of the box and the negative points are sure background.

    ``prior`` says what the box is taken to hold: "box", the whole box probable foreground (an object that fills
    its box, such as a pet in a close-up); "middle", the same with the ellipse of half the box's size at its
    centre sure (an object fills the middle of the box drawn around it); "ellipse", that sure middle with only
    the ellipse the box holds probable and its corners probable background (on a cluttered box the whole box as
    probable foreground lets GrabCut settle on whatever colour dominates it).
    """
    if prior not in ("box", "middle", "ellipse"):
        raise ValueError(f"prior must be 'box', 'middle' or 'ellipse', got {prior!r}")
    left, top, right, bottom = box
    labels = np.full(inside.shape, cv2.GC_BGD, np.uint8)
    if prior == "ellipse":
        labels[inside] = cv2.GC_PR_BGD
        labels[_ellipse_in(inside.shape, box) & inside] = cv2.GC_PR_FGD
    else:
        labels[inside] = cv2.GC_PR_FGD
    if prior != "box":
        half_w, half_h = (right - left) / 4, (bottom - top) / 4
        middle = (round(left + half_w), round(top + half_h), round(right - half_w), round(bottom - half_h))
        labels[_ellipse_in(inside.shape, middle) & inside & ~dilate(seeds_out, 3)] = cv2.GC_FGD
    labels[seeds_out] = cv2.GC_BGD
    return labels


def _labels_from(kept: np.ndarray, inside: np.ndarray, seeds_out: np.ndarray) -> np.ndarray:
    """GrabCut labels from a segmented mask: its core sure, its rim probable, the outside of the box sure
    background, the negative points sure background."""
    labels = np.full(kept.shape, cv2.GC_BGD, np.uint8)
    labels[inside] = cv2.GC_PR_BGD
    labels[kept] = cv2.GC_PR_FGD
    core = cv2.erode(kept.astype(np.uint8), disk(max(2, round(0.05 * math.sqrt(max(1, kept.sum())))))).astype(bool)
    labels[core & ~dilate(seeds_out, max(3, round(0.05 * max(kept.shape))))] = cv2.GC_FGD
    labels[seeds_out] = cv2.GC_BGD
    return labels
