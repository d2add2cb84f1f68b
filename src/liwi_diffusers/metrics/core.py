"""Metric core: the layer-decomposition protocol of LayerD, alpha boundary, shadow and background errors.

Everything here works on whole images at once (NumPy, with OpenCV's exact integer reductions and
Pillow's compositing where they are faster); the `evaluate` modules, `liwi evaluate` and the
benchmarks all call these functions, so they all report the same numbers.

Layer protocol (LayerD, "Decomposing Raster Graphic Designs into Layers", `layerd.evaluation`):

1. Layers are 8-bit straight RGBA images, back to front (float input is rounded to 8 bits, as a
   PNG file holds it). Every layer counts, the opaque background included.
2. On each side, layers whose hard masks (alpha > 0) do not overlap are grouped: repeatedly, every
   remaining layer that no remaining layer in front of it overlaps is peeled off into one group;
   each group is flattened with Pillow's integer `alpha_composite` (bit-exact here).
3. The two sequences of groups are aligned by dynamic time warping with the cost
   ``(RGB L1 + (1 - soft IoU)) / 2``; a sample's scores are the means over the warping path.
   RGB L1 is the mean over channels of ``|rgb_pred - rgb_gt|`` (straight colour, the prediction's
   alpha plays no part) over pixels where the ground truth alpha > 0; soft IoU is
   ``sum(min(a, b)) / sum(max(a, b))`` (0 when both alphas are empty).
4. Up to ``max_edits`` greedy merges of two adjacent groups, on the prediction or the ground truth,
   each followed by a new alignment; scores after every merge are the levels 1, 2, ... A sample
   stops early when no merge improves its matching; the aggregate then carries its last level forward.
5. Samples with fewer than two layers on either side are skipped (and counted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..layers import to_uint8

__all__ = [
    "DEFAULT_MAX_EDITS",
    "MIN_LAYERS",
    "LayerLevel",
    "LayerSampleResult",
    "MetricInputError",
    "aggregate_alpha_errors",
    "aggregate_layer_results",
    "aggregate_shadow_errors",
    "alpha_composite",
    "alpha_matting_errors",
    "alpha_soft_iou",
    "background_errors",
    "combine_shadows",
    "connectivity_error",
    "dtw_path",
    "evaluate_layers",
    "foreground_matte",
    "gaussian_gradient_kernel",
    "gradient_error",
    "group_non_overlapping",
    "layer_cost",
    "layered_to_stack",
    "merge_layers",
    "mse_error",
    "recomposition_error",
    "rgb_l1",
    "sad_error",
    "shadow_errors",
    "skip_reason",
    "to_alpha",
    "to_rgba8",
    "to_rgba8_stack",
    "trimap_unknown_region",
]

DEFAULT_MAX_EDITS = 5
MIN_LAYERS = 2
# LayerD adds this to the pixel count of RGB L1's denominator (so an empty mask gives 0, not NaN).
_L1_EPS = 1e-8
# A merge never leaves a side with fewer layers than this (LayerD's `EditOp.min_layers`).
_MIN_LAYERS_AFTER_MERGE = 2
_RANGE_TOLERANCE = 1e-5


class MetricInputError(ValueError):
    """Input a metric cannot score: wrong shape or mode, mismatched sizes, NaN, empty stacks."""


# ---------------------------------------------------------------------------------------------- inputs
def _check_float(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise MetricInputError(f"{what}: contains NaN or infinite values")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise MetricInputError(f"{what}: float values must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    return np.clip(array, 0.0, 1.0)


def to_rgba8(layer: Any, what: str = "layer") -> np.ndarray:
    """One layer as ``(H, W, 4)`` uint8 straight RGBA.

    Accepts an RGBA PIL image, a uint8 array, or a float array in [0, 1] (rounded to 8 bits, as a
    PNG file stores it). RGB input is refused: say what its alpha is (``.convert("RGBA")`` for opaque).
    """
    if isinstance(layer, Image.Image):
        if layer.mode != "RGBA":
            raise MetricInputError(
                f"{what}: expected an RGBA image, got mode {layer.mode!r} "
                "(use .convert('RGBA') if the layer is meant to be opaque)"
            )
        array = np.asarray(layer)
    else:
        array = np.asarray(layer)
    if array.ndim != 3 or array.shape[2] != 4:
        raise MetricInputError(f"{what}: expected an (H, W, 4) RGBA layer, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MetricInputError(f"{what}: empty image (shape {array.shape})")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return np.round(_check_float(array.astype(np.float64), what) * 255.0).astype(np.uint8)
    raise MetricInputError(f"{what}: unsupported dtype {array.dtype}; use uint8 or float in [0, 1]")


def to_rgba8_stack(layers: Iterable[Any], what: str = "layers") -> list[np.ndarray]:
    """A back-to-front stack as uint8 RGBA arrays, all the same size (at least one layer)."""
    if isinstance(layers, np.ndarray) and layers.ndim == 3:
        raise MetricInputError(f"{what}: expected a sequence of layers, got one array of shape {layers.shape}")
    stack = [to_rgba8(layer, f"{what}[{k}]") for k, layer in enumerate(layers)]
    if not stack:
        raise MetricInputError(f"{what}: empty layer stack")
    size = stack[0].shape
    for k, layer in enumerate(stack):
        if layer.shape != size:
            raise MetricInputError(
                f"{what}[{k}] is {layer.shape[1]}x{layer.shape[0]} but {what}[0] is {size[1]}x{size[0]}; "
                "all layers must be full-canvas and the same size"
            )
    return stack


def to_alpha(matte: Any, what: str = "alpha") -> np.ndarray:
    """A matte as float64 ``(H, W)`` in [0, 1]: PIL L (or the alpha band of LA/RGBA), uint8 or float arrays."""
    if isinstance(matte, Image.Image):
        if matte.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
            matte = matte.getchannel("A")
        elif matte.mode != "L":
            raise MetricInputError(f"{what}: expected a matte (mode L or an image with alpha), got {matte.mode!r}")
    array = np.asarray(matte)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise MetricInputError(f"{what}: expected an (H, W) matte, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MetricInputError(f"{what}: empty image (shape {array.shape})")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == bool:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        return _check_float(array.astype(np.float64), what)
    raise MetricInputError(f"{what}: unsupported dtype {array.dtype}; use uint8 or float in [0, 1]")


def _to_rgb(image: Any, what: str) -> np.ndarray:
    """An RGB image as float64 ``(H, W, 3)`` in [0, 1]."""
    if isinstance(image, Image.Image) and image.mode != "RGB":
        raise MetricInputError(f"{what}: expected an RGB image, got mode {image.mode!r}")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise MetricInputError(f"{what}: expected an (H, W, 3) RGB image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if np.issubdtype(array.dtype, np.floating):
        return _check_float(array.astype(np.float64), what)
    raise MetricInputError(f"{what}: unsupported dtype {array.dtype}; use uint8 or float in [0, 1]")


def _same_size(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise MetricInputError(
            f"{what_a} is {a.shape[1]}x{a.shape[0]} but {what_b} is {b.shape[1]}x{b.shape[0]}; sizes must match"
        )


# ---------------------------------------------------------------------------------------------- layer maths
def alpha_composite(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``src`` over ``dst`` for uint8 straight RGBA: Pillow's ``Image.alpha_composite``.

    The protocol merges layers with Pillow's integer arithmetic, so Pillow does it here too (the
    results are then bit-exact with the reference's). Where ``src`` alpha is 0 the output is ``dst``
    unchanged, colour included.
    """
    dst, src = to_rgba8(dst, "dst"), to_rgba8(src, "src")
    if dst.shape != src.shape:
        raise MetricInputError(f"cannot composite layers of shapes {src.shape} and {dst.shape}")
    merged = Image.alpha_composite(Image.fromarray(dst, "RGBA"), Image.fromarray(src, "RGBA"))
    return np.asarray(merged)


def merge_layers(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Flatten uint8 RGBA layers back to front (``alpha_composite`` folded left)."""
    if not len(layers):
        raise MetricInputError("nothing to merge: empty layer list")
    merged = layers[0]
    for layer in layers[1:]:
        merged = alpha_composite(merged, layer)
    return merged


def group_non_overlapping(alphas: Sequence[np.ndarray] | np.ndarray) -> list[list[int]]:
    """Group layer indices into sets of mutually non-overlapping layers, back to front.

    Repeatedly, every remaining layer whose hard mask (alpha > 0) overlaps no remaining layer in
    front of it is taken into one group (the topmost layers first); groups are returned back to
    front, indices ascending within a group. An empty layer overlaps nothing and joins the top group.
    """
    if not len(alphas):
        return []
    masks = np.packbits(np.stack([np.asarray(alpha).reshape(-1) > 0 for alpha in alphas]), axis=1)
    overlaps = np.array([[bool(np.bitwise_and(a, b).any()) for b in masks] for a in masks])
    remaining = list(range(len(masks)))
    groups: list[list[int]] = []
    while remaining:
        top = [
            index for position, index in enumerate(remaining) if not overlaps[index, remaining[position + 1 :]].any()
        ]
        groups.append(top)
        remaining = [index for index in remaining if index not in top]
    return groups[::-1]


def _scores_of(pred: Any, gt: Any) -> tuple[float, float]:
    pred, gt = to_rgba8(pred, "prediction"), to_rgba8(gt, "ground truth")
    _same_size(pred, gt, "the prediction", "the ground truth")
    return _pair_scores(_Layer(pred), _Layer(gt))


def rgb_l1(pred: Any, gt: Any) -> float:
    """Mean over channels of ``|rgb_pred - rgb_gt|`` over pixels with ground-truth alpha > 0, in [0, 1]."""
    return _scores_of(pred, gt)[0]


def alpha_soft_iou(pred: Any, gt: Any) -> float:
    """``sum(min(a_pred, a_gt)) / sum(max(a_pred, a_gt))`` of the alpha channels; 0 when both are empty."""
    return _scores_of(pred, gt)[1]


def layer_cost(pred: Any, gt: Any) -> float:
    """The alignment cost ``(RGB L1 + (1 - soft IoU)) / 2`` of one layer pair, in [0, 1]."""
    return _cost(*_scores_of(pred, gt))


def _cost(l1: float, iou: float) -> float:
    return (l1 + (1.0 - iou)) / 2.0


class _Layer:
    """A uint8 RGBA layer with what the pair scores need, computed once."""

    __slots__ = ("alpha", "alpha_sum", "box", "count", "key", "mask", "rgb", "rgba")
    _keys = itertools.count()

    def __init__(self, rgba: np.ndarray) -> None:
        self.key = next(_Layer._keys)
        self.rgba = rgba
        self.rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)  # contiguous copies, much faster than NumPy's
        self.alpha = cv2.extractChannel(rgba, 3)
        self.mask = (self.alpha > 0).view(np.uint8)
        self.count = int(cv2.countNonZero(self.alpha))
        self.alpha_sum = int(self.alpha.sum(dtype=np.int64))
        self.box: tuple[slice, slice] | None = None
        if self.count:
            rows = np.flatnonzero(self.mask.any(axis=1))
            cols = np.flatnonzero(self.mask.any(axis=0))
            self.box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))


def _pair_scores(pred: _Layer, gt: _Layer) -> tuple[float, float]:
    """(RGB L1, soft IoU) with the ground truth's mask.

    Both are ratios of exact integer sums (OpenCV accumulates 8-bit differences and minima exactly),
    restricted to the ground truth's bounding box, where every contributing pixel lies.
    """
    abs_sum = intersection = 0.0
    if gt.box is not None:
        rows, cols = gt.box
        abs_sum = cv2.norm(pred.rgb[rows, cols], gt.rgb[rows, cols], cv2.NORM_L1, gt.mask[rows, cols])
        intersection = cv2.sumElems(cv2.min(pred.alpha[rows, cols], gt.alpha[rows, cols]))[0]
    l1 = abs_sum / 765.0 / (gt.count + _L1_EPS)
    union = pred.alpha_sum + gt.alpha_sum - intersection
    iou = intersection / union if union > 0 else 0.0
    return l1, iou


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Dynamic-time-warping path through a cost matrix, from (0, 0) to (n-1, m-1).

    Steps are (1, 1), (1, 0) and (0, 1); tracing back, ties prefer the diagonal, then a step in the
    first index, as the reference does.
    """
    cost_rows = np.asarray(cost, dtype=np.float64).tolist()
    n, m = len(cost_rows), len(cost_rows[0])
    acc = [[0.0] * m for _ in range(n)]
    acc[0][0] = cost_rows[0][0]
    for i in range(1, n):
        acc[i][0] = acc[i - 1][0] + cost_rows[i][0]
    for j in range(1, m):
        acc[0][j] = acc[0][j - 1] + cost_rows[0][j]
    for i in range(1, n):
        for j in range(1, m):
            acc[i][j] = cost_rows[i][j] + min(acc[i - 1][j], acc[i][j - 1], acc[i - 1][j - 1])
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1]
            if diagonal <= up and diagonal <= left:
                i, j = i - 1, j - 1
            elif up <= diagonal and up <= left:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    path.reverse()
    return path


# ---------------------------------------------------------------------------------------------- protocol
@dataclass
class LayerLevel:
    """Scores of one sample after ``edits`` merges: means over the warping path."""

    edits: int
    cost: float
    rgb_l1: float
    alpha_iou: float
    path: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class LayerSampleResult:
    """One sample under the layer protocol.

    ``levels`` holds one entry per merge actually made (as the reference reports it: a sample stops
    early when no merge helps); `level` carries the last one forward. ``merges`` records each merge
    as ``(side, index)``: groups ``index`` and ``index + 1`` of ``"pred"`` or ``"gt"``.
    """

    levels: list[LayerLevel]
    num_pred_layers: int
    num_gt_layers: int
    num_pred_groups: int
    num_gt_groups: int
    merges: list[tuple[str, int]] = field(default_factory=list)

    def level(self, edits: int) -> LayerLevel:
        """Scores at ``edits`` merges, or at the last merge made when the sample stopped earlier."""
        return self.levels[min(edits, len(self.levels) - 1)]

    def to_dict(self, max_edits: int | None = None) -> dict[str, Any]:
        """JSON-ready; with ``max_edits``, levels 0..max_edits (carried forward, ``edits`` says how many were made)."""
        data = asdict(self)
        if max_edits is not None:
            data["levels"] = [asdict(self.level(k)) | {"merges": k} for k in range(max_edits + 1)]
        for level in data["levels"]:
            level["path"] = [list(pair) for pair in level["path"]]
        data["merges"] = [list(merge) for merge in self.merges]
        return data


class _Protocol:
    """The reference's align-then-merge loop for one sample, with pair scores and merges cached."""

    def __init__(self) -> None:
        self._scores: dict[tuple[int, int], tuple[float, float]] = {}
        self._merged: dict[tuple[int, int], _Layer] = {}

    def scores(self, pred: _Layer, gt: _Layer) -> tuple[float, float]:
        key = (pred.key, gt.key)
        if key not in self._scores:
            self._scores[key] = _pair_scores(pred, gt)
        return self._scores[key]

    def similarity(self, a: _Layer, b: _Layer) -> float:
        return 1.0 - _cost(*self.scores(a, b))

    def merged(self, back: _Layer, front: _Layer) -> _Layer:
        key = (back.key, front.key)
        if key not in self._merged:
            self._merged[key] = _Layer(alpha_composite(back.rgba, front.rgba))
        return self._merged[key]

    def merge_at(self, layers: list[_Layer], index: int) -> list[_Layer]:
        return [*layers[:index], self.merged(layers[index], layers[index + 1]), *layers[index + 2 :]]

    def align(self, pred: list[_Layer], gt: list[_Layer], edits: int) -> LayerLevel:
        table = [[self.scores(p, g) for g in gt] for p in pred]
        costs = np.array([[_cost(l1, iou) for l1, iou in row] for row in table])
        path = dtw_path(costs)
        return LayerLevel(
            edits=edits,
            cost=float(np.mean([costs[i, j] for i, j in path])),
            rgb_l1=float(np.mean([table[i][j][0] for i, j in path])),
            alpha_iou=float(np.mean([table[i][j][1] for i, j in path])),
            path=path,
        )

    def best_merge(
        self, layers: list[_Layer], others: list[_Layer], pairs: list[tuple[int, int]]
    ) -> tuple[int | None, float]:
        """Index i whose merge with i + 1 gains most similarity (first on ties), and the gain."""
        best: tuple[int | None, float] = (None, -math.inf)
        if len(layers) <= _MIN_LAYERS_AFTER_MERGE:
            return best
        for i in range(len(layers) - 1):
            merged = self.merged(layers[i], layers[i + 1])
            candidates = [merged] if i + 2 >= len(layers) else [merged, layers[i + 2]]
            matched = (
                [others[q] for p, q in pairs if p == i],
                [others[q] for p, q in pairs if p == i + 1],
            )
            current = sum(self.similarity(layers[i], o) for o in matched[0]) + sum(
                self.similarity(layers[i + 1], o) for o in matched[1]
            )
            # The reference's heuristic: the merged layer keeps the first group's matches; either it
            # also takes the second group's, or the next layer (i + 2) takes one of the groups.
            totals = [sum(self.similarity(c, o) for o in group) for c in candidates for group in matched]
            proposal = max(total + totals[0] for total in totals[1:])
            if proposal > current and proposal - current > best[1]:
                best = (i, proposal - current)
        return best

    def run(
        self, pred: list[_Layer], gt: list[_Layer], max_edits: int
    ) -> tuple[list[LayerLevel], list[tuple[str, int]]]:
        level = self.align(pred, gt, 0)
        levels: list[LayerLevel] = [level]
        merges: list[tuple[str, int]] = []
        for edit in range(1, max_edits + 1):
            pred_index, pred_gain = self.best_merge(pred, gt, level.path)
            gt_index, gt_gain = self.best_merge(gt, pred, [(j, i) for i, j in level.path])
            if pred_index is None and gt_index is None:
                break
            if pred_gain > gt_gain:  # ties go to the ground truth, as in the reference
                pred = self.merge_at(pred, pred_index)
                merges.append(("pred", pred_index))
            else:
                gt = self.merge_at(gt, gt_index)
                merges.append(("gt", gt_index))
            level = self.align(pred, gt, edit)
            levels.append(level)
        return levels, merges


def _grouped(stack: list[np.ndarray]) -> list[_Layer]:
    groups = group_non_overlapping([layer[:, :, 3] for layer in stack])
    return [_Layer(merge_layers([stack[i] for i in group])) for group in groups]


def evaluate_layers(
    pred_layers: Iterable[Any], gt_layers: Iterable[Any], max_edits: int = DEFAULT_MAX_EDITS
) -> LayerSampleResult:
    """Score one predicted layer stack against the ground truth (both back to front) under the protocol.

    Any non-empty stacks are scored; the skip of samples with fewer than `MIN_LAYERS` layers is the
    caller's (see `skip_reason`). Raises `MetricInputError` for unusable input.
    """
    if max_edits < 0:
        raise MetricInputError(f"max_edits must be >= 0, got {max_edits}")
    pred = to_rgba8_stack(pred_layers, "prediction")
    gt = to_rgba8_stack(gt_layers, "ground truth")
    _same_size(pred[0], gt[0], "the prediction", "the ground truth")
    pred_groups, gt_groups = _grouped(pred), _grouped(gt)
    levels, merges = _Protocol().run(pred_groups, gt_groups, max_edits)
    return LayerSampleResult(levels, len(pred), len(gt), len(pred_groups), len(gt_groups), merges)


def skip_reason(num_pred_layers: int, num_gt_layers: int, min_layers: int = MIN_LAYERS) -> str | None:
    """Why the protocol skips a sample (prediction checked first, as the reference does), or None."""
    if num_pred_layers < min_layers:
        return f"prediction has fewer than {min_layers} layers"
    if num_gt_layers < min_layers:
        return f"ground truth has fewer than {min_layers} layers"
    return None


def aggregate_layer_results(
    results: Sequence[LayerSampleResult], max_edits: int = DEFAULT_MAX_EDITS
) -> list[dict[str, Any]]:
    """Per merge level 0..max_edits, the means over samples as the reference aggregates them.

    A sample that stopped before level k contributes its last level. ``count`` is the number of
    samples that made k merges; ``avg_edits`` the mean number of merges made (capped at k). The
    reference lists only levels some sample reached; here every level is listed (``count`` 0 beyond
    them, with the carried-forward means). Means are ``None`` when there are no samples.
    """
    levels = []
    for k in range(max_edits + 1):
        picked = [result.level(k) for result in results]

        def mean(values: list[float]) -> float | None:
            return float(np.mean(values)) if values else None

        levels.append(
            {
                "merges": k,
                "rgb_l1": mean([level.rgb_l1 for level in picked]),
                "alpha_iou": mean([level.alpha_iou for level in picked]),
                "cost": mean([level.cost for level in picked]),
                "avg_edits": mean([level.edits for level in picked]),
                "count": sum(len(result.levels) > k for result in results),
            }
        )
    return levels


# ---------------------------------------------------------------------------------------------- alpha boundary
def trimap_unknown_region(gt_alpha: Any, width: int = 10) -> np.ndarray:
    """The unknown band of a trimap made from the ground truth: dilated (alpha > 0) minus eroded (alpha == 1).

    Dilation and erosion are ``width`` steps of the 4-neighbour cross (a diamond of radius ``width``),
    as matting benchmarks generate trimaps from ground-truth mattes.
    """
    from scipy import ndimage  # imported here: `import liwi_diffusers.metrics` stays light

    alpha = to_alpha(gt_alpha, "ground-truth alpha")
    cross = ndimage.generate_binary_structure(2, 1)
    if width <= 0:
        return (alpha > 0) & (alpha < 1)
    outer = ndimage.binary_dilation(alpha > 0, cross, iterations=width)
    inner = ndimage.binary_erosion(alpha >= 1, cross, iterations=width, border_value=1)
    return outer & ~inner


def _region(region: Any, gt: np.ndarray, width: int) -> np.ndarray:
    if region is None:
        return trimap_unknown_region(gt, width)
    if isinstance(region, str):
        if region == "all":
            return np.ones(gt.shape, bool)
        raise MetricInputError(f"region must be None, 'all', a boolean mask or a trimap, got {region!r}")
    array = np.asarray(region)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.shape != gt.shape:
        raise MetricInputError(f"region/trimap shape {array.shape} does not match the matte {gt.shape}")
    if array.dtype == bool:
        return array
    if array.dtype == np.uint8:
        return array == 128  # a trimap: 0 background, 128 unknown, 255 foreground
    return (array > 0) & (array < 1)  # a float trimap: unknown strictly between 0 and 1


def gaussian_gradient_kernel(sigma: float = 1.4, epsilon: float = 1e-2) -> np.ndarray:
    """The x-derivative-of-Gaussian kernel of the matting benchmarks' ``gaussgradient`` (unit L2 norm).

    Half size ``ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma epsilon)))`` (4 for sigma 1.4): a Gaussian
    along rows times its first derivative along columns; the y kernel is its transpose.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(offsets**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dgauss = -offsets * gauss / sigma**2
    kernel = np.outer(gauss, dgauss)
    return kernel / np.sqrt((kernel**2).sum())


def _gradient_magnitude(alpha: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # imported here: `import liwi_diffusers.metrics` stays light

    gx = ndimage.convolve(alpha, kernel, mode="nearest")
    gy = ndimage.convolve(alpha, kernel.T, mode="nearest")
    return np.sqrt(gx**2 + gy**2)


def _prepared(pred_alpha: Any, gt_alpha: Any, region: Any, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = to_alpha(pred_alpha, "predicted alpha")
    gt = to_alpha(gt_alpha, "ground-truth alpha")
    _same_size(pred, gt, "the predicted alpha", "the ground-truth alpha")
    return pred, gt, _region(region, gt, width)


def _sad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(pred - gt)[mask].sum() / 1000.0)


def _mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    count = int(mask.sum())
    return float(((pred - gt) ** 2)[mask].sum() / count) if count else 0.0


def _gradient(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, sigma: float) -> float:
    kernel = gaussian_gradient_kernel(sigma)
    difference = _gradient_magnitude(pred, kernel) - _gradient_magnitude(gt, kernel)
    return float((difference**2)[mask].sum() / 1000.0)


def _connectivity(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, step: float) -> float:
    level = _connectivity_levels(pred, gt, step)
    pred_distance, gt_distance = pred - level, gt - level
    pred_phi = 1.0 - pred_distance * (pred_distance >= 0.15)
    gt_phi = 1.0 - gt_distance * (gt_distance >= 0.15)
    return float(np.abs(pred_phi - gt_phi)[mask].sum() / 1000.0)


def _connectivity_levels(pred: np.ndarray, gt: np.ndarray, step: float) -> np.ndarray:
    """Per pixel, the last threshold at which it still lies in the largest common component (1 if always)."""
    from scipy import ndimage  # imported here: `import liwi_diffusers.metrics` stays light

    level = np.full(pred.shape, -1.0)
    tolerance = 1e-6  # 8-bit values that sit on a threshold (153/255 = 0.6) count as reaching it
    for k in range(1, round(1.0 / step) + 1):
        threshold = k * step
        both = (pred >= threshold - tolerance) & (gt >= threshold - tolerance)
        # Label the transpose: components are then numbered in column-major order, as MATLAB's
        # bwconncomp numbers them, so ties for the largest component resolve the same way.
        labels, count = ndimage.label(both.T)
        omega = np.zeros(pred.shape, bool)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            omega = (labels == int(np.argmax(sizes)) + 1).T
        level[(level == -1) & ~omega] = (k - 1) * step
    level[level == -1] = 1.0
    return level


def sad_error(pred_alpha: Any, gt_alpha: Any, region: Any = None, width: int = 10) -> float:
    """Sum of absolute differences over the region, divided by 1000 (alpha in [0, 1])."""
    return _sad(*_prepared(pred_alpha, gt_alpha, region, width))


def mse_error(pred_alpha: Any, gt_alpha: Any, region: Any = None, width: int = 10) -> float:
    """Mean squared difference over the region (alpha in [0, 1]); 0 for an empty region."""
    return _mse(*_prepared(pred_alpha, gt_alpha, region, width))


def gradient_error(pred_alpha: Any, gt_alpha: Any, region: Any = None, width: int = 10, sigma: float = 1.4) -> float:
    """Sum over the region of the squared difference of Gaussian-gradient magnitudes, divided by 1000."""
    return _gradient(*_prepared(pred_alpha, gt_alpha, region, width), sigma)


def connectivity_error(pred_alpha: Any, gt_alpha: Any, region: Any = None, width: int = 10, step: float = 0.1) -> float:
    """Connectivity error (Rhemann et al. 2009) over the region, divided by 1000.

    For thresholds t = step, 2 step, ..., 1, the largest 4-connected component of
    ``(pred >= t) & (gt >= t)`` is found; a pixel's level l is the last threshold before it leaves
    that component (1 if it never does). ``phi = 1 - d * (d >= 0.15)`` with ``d = alpha - l``; the
    error sums ``|phi_pred - phi_gt|``.
    """
    return _connectivity(*_prepared(pred_alpha, gt_alpha, region, width), step)


def alpha_matting_errors(
    pred_alpha: Any, gt_alpha: Any, region: Any = None, width: int = 10, sigma: float = 1.4, step: float = 0.1
) -> dict[str, float]:
    """SAD, MSE, gradient and connectivity errors of one matte, as alphamatting.com defines them.

    ``region``: None (the unknown band of a trimap made from the ground truth, ``width`` px),
    ``"all"``, a boolean mask, or a trimap (uint8 with 128 = unknown, or float with 0 < value < 1 =
    unknown). Alpha is in [0, 1]; SAD, gradient and connectivity are sums divided by 1000 and MSE is
    a mean: the Deep Image Matting (Composition-1k) convention for the quantities alphamatting.com
    ranks. ``num_pixels`` is the size of the region (0: nothing to measure, every error 0).
    """
    pred, gt, mask = _prepared(pred_alpha, gt_alpha, region, width)
    return {
        "sad": _sad(pred, gt, mask),
        "mse": _mse(pred, gt, mask),
        "gradient": _gradient(pred, gt, mask, sigma),
        "connectivity": _connectivity(pred, gt, mask, step),
        "num_pixels": int(mask.sum()),
    }


def aggregate_alpha_errors(errors: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Means over mattes with a non-empty region; ``num_empty`` counts those left out."""
    scored = [error for error in errors if error["num_pixels"] > 0]
    means: dict[str, Any] = {
        name: (float(np.mean([error[name] for error in scored])) if scored else None)
        for name in ("sad", "mse", "gradient", "connectivity")
    }
    return means | {"num_mattes": len(scored), "num_empty": len(errors) - len(scored)}


# ---------------------------------------------------------------------------------------------- shadows
def combine_shadows(shadows: Sequence[Any], shape: tuple[int, int] | None = None) -> np.ndarray:
    """The image's total shadow alpha ``1 - prod_k (1 - sigma_k)`` (the light all shadows remove together).

    Order-free, so predictions and ground truth need no object correspondence. ``shape`` gives the
    size when there are no shadows.
    """
    maps = [to_alpha(shadow, f"shadow {k}") for k, shadow in enumerate(shadows)]
    if not maps:
        if shape is None:
            raise MetricInputError("no shadow layers and no shape given")
        return np.zeros(shape)
    for k, shadow in enumerate(maps):
        _same_size(shadow, maps[0], f"shadow {k}", "shadow 0")
    lit = np.ones(maps[0].shape)
    for shadow in maps:
        lit *= 1.0 - shadow
    return 1.0 - lit


def shadow_errors(pred_shadow: Any, gt_shadow: Any, threshold: float = 0.1) -> dict[str, Any]:
    """Balanced error rate of the shadow masks ``sigma >= threshold``, and the L1 of the shadow alpha.

    Takes two total shadow maps (see `combine_shadows`). ``ber = 1 - (TPR + TNR) / 2`` as a fraction
    (x100 for the percentages of the shadow-detection literature), over the classes present in the
    ground truth; the counts are returned so that a dataset's BER can be pooled (`aggregate_shadow_errors`).
    """
    pred = to_alpha(pred_shadow, "predicted shadow")
    gt = to_alpha(gt_shadow, "ground-truth shadow")
    _same_size(pred, gt, "the predicted shadow", "the ground-truth shadow")
    pred_mask, gt_mask = pred >= threshold, gt >= threshold
    counts = {
        "tp": int((pred_mask & gt_mask).sum()),
        "fn": int((~pred_mask & gt_mask).sum()),
        "tn": int((~pred_mask & ~gt_mask).sum()),
        "fp": int((pred_mask & ~gt_mask).sum()),
    }
    return _ber(counts) | {"shadow_l1": float(np.abs(pred - gt).mean())} | counts


def _ber(counts: dict[str, int]) -> dict[str, float | None]:
    positives, negatives = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    shadow_rate = counts["fn"] / positives if positives else None
    lit_rate = counts["fp"] / negatives if negatives else None
    present = [rate for rate in (shadow_rate, lit_rate) if rate is not None]
    return {
        "ber": float(np.mean(present)) if present else None,
        "shadow_error_rate": shadow_rate,
        "non_shadow_error_rate": lit_rate,
    }


def aggregate_shadow_errors(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dataset BER from pooled counts (the shadow-detection convention) and the mean shadow L1."""
    counts = {name: sum(error[name] for error in errors) for name in ("tp", "fn", "tn", "fp")}
    l1 = float(np.mean([error["shadow_l1"] for error in errors])) if errors else None
    return (_ber(counts) if errors else {"ber": None, "shadow_error_rate": None, "non_shadow_error_rate": None}) | {
        "shadow_l1": l1,
        "num_images": len(errors),
    }


# ---------------------------------------------------------------------------------------------- layered images
def background_errors(pred_background: Any, gt_background: Any, hidden: Any = None) -> dict[str, Any]:
    """L1 of the background over all pixels, and over ``hidden`` (a mask of what objects covered).

    Images RGB in [0, 1] (uint8 is divided by 255). ``hidden_l1`` is None when ``hidden`` is None
    or empty: the inpainted region is where a background method is really tested.
    """
    pred = _to_rgb(pred_background, "predicted background")
    gt = _to_rgb(gt_background, "ground-truth background")
    _same_size(pred, gt, "the predicted background", "the ground-truth background")
    difference = np.abs(pred - gt).mean(axis=2)
    result: dict[str, Any] = {"background_l1": float(difference.mean()), "hidden_l1": None, "hidden_pixels": 0}
    if hidden is not None:
        mask = np.asarray(hidden, dtype=bool)
        if mask.shape != difference.shape:
            raise MetricInputError(f"hidden mask shape {mask.shape} does not match the background {difference.shape}")
        count = int(mask.sum())
        result |= {"hidden_l1": float(difference[mask].mean()) if count else None, "hidden_pixels": count}
    return result


def foreground_matte(layered: Any) -> np.ndarray:
    """The union matte of a `LayeredImage`'s objects, ``1 - prod_k (1 - a_k)``, float64 (H, W)."""
    clear = np.ones((layered.height, layered.width))
    for foreground in layered.foregrounds:
        clear *= 1.0 - foreground[:, :, 3].astype(np.float64)
    return 1.0 - clear


def layered_to_stack(layered: Any, include_shadows: bool = False) -> list[np.ndarray]:
    """A `LayeredImage` as the uint8 RGBA stack the layer protocol scores: background, then objects.

    With ``include_shadows`` every non-empty shadow layer (black, alpha sigma) comes before its
    object, as in an exported PNG stack; by default shadows are left to the shadow metrics.
    """
    stack = []
    for name, rgba in layered.to_rgba_stack():
        if name.startswith("shadow") and (not include_shadows or not float(rgba[:, :, 3].max()) > 0):
            continue
        stack.append(to_uint8(rgba))
    return stack


def recomposition_error(layered: Any, image: Any) -> dict[str, float]:
    """How far the layers recompose from ``image``: mean/max absolute error and PSNR (`check_decomposition`)."""
    from ..layers import LayeredImageError, check_decomposition

    try:
        report = check_decomposition(layered, image)
    except LayeredImageError as error:
        raise MetricInputError(str(error)) from error
    return {"mean_abs_error": report.mean_abs_error, "max_abs_error": report.max_abs_error, "psnr": report.psnr}
