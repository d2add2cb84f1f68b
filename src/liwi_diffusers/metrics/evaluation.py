"""Evaluation of layer decompositions: read samples, run a method, score, aggregate, report.

Ground truth comes from a LiWi-format dataset (a folder of parquet shards with a README
``configs:``, a shard file, a Hub id, or rows already loaded) or from folders in LayerD's layout
(``<root>/<sample>/*.png``, back to front, every PNG a layer: `LayerFolders`). Predictions come from
a decomposer run on each sample's image (`evaluate_method`) or from folders in LayerD's layout
(`evaluate_predictions`). Every number is one of `liwi_diffusers.metrics.core`.

    >>> from liwi_diffusers import ToolChainDecomposer
    >>> from liwi_diffusers.metrics.evaluation import evaluate_method, markdown_table, write_report
    >>> report = evaluate_method(ToolChainDecomposer(), "liwi-sample", split="test")
    >>> print(markdown_table(report))
    >>> write_report(report, "results/toolchain.json")  # and results/toolchain.md
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..layered_dataset import decode_image, load_layered_dataset, read_shard, row_to_layered
from ..layers import LayeredImage, LayeredImageError, to_uint8
from .core import (
    DEFAULT_MAX_EDITS,
    MIN_LAYERS,
    LayerLevel,
    LayerSampleResult,
    MetricInputError,
    aggregate_alpha_errors,
    aggregate_layer_results,
    aggregate_shadow_errors,
    alpha_matting_errors,
    background_errors,
    combine_shadows,
    evaluate_layers,
    foreground_matte,
    layered_to_stack,
    merge_layers,
    recomposition_error,
    shadow_errors,
    skip_reason,
)

if TYPE_CHECKING:
    from ..loading import Decomposer  # (image, num_layers=None) -> LayeredImage

__all__ = [
    "BASELINES",
    "EvaluationError",
    "GroundTruth",
    "LayerFolders",
    "Sample",
    "aggregate_records",
    "baseline",
    "build_report",
    "check_report_path",
    "dataset_samples",
    "evaluate_method",
    "evaluate_predictions",
    "fit_prediction",
    "fit_sample",
    "markdown_table",
    "open_dataset",
    "open_ground_truth",
    "read_layer_folder",
    "read_png_layer",
    "resize_array",
    "resize_layered",
    "score_layered",
    "target_size",
    "write_report",
]

BASELINES = {
    "single-layer": "the whole image as one opaque layer (skipped by the protocol unless min_layers is 1)",
    "gt-alpha": "ground-truth alphas with colours copied from the image, the image as background "
    "(an upper bound for methods without colour estimation or inpainting)",
    "oracle": "the ground truth itself (a sanity check: RGB L1 0, IoU 1 at every level)",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class EvaluationError(ValueError):
    """A problem with the input of an evaluation (a path, a sample, an option), in one line."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One ground-truth sample: the protocol stack, and for datasets the layered image and composite."""

    id: str
    stack: list[np.ndarray]  # uint8 (H, W, 4) RGBA, back to front
    layered: LayeredImage | None = None
    composite: np.ndarray | None = None  # uint8 (H, W, 3)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.stack[0].shape[1], self.stack[0].shape[0]

    @property
    def num_objects(self) -> int:
        return self.layered.num_objects if self.layered is not None else len(self.stack) - 1

    def image(self) -> np.ndarray:
        """The photo a method sees: the composite, or the PNG stack flattened over white (as LayerD renders)."""
        if self.composite is None:
            white = np.full_like(self.stack[0], 255)
            self.composite = merge_layers([white, *self.stack])[:, :, :3]
        return self.composite


def safe_name(sample_id: str) -> str:
    """The folder name of a sample in LayerD's layout."""
    return _SAFE_NAME.sub("_", sample_id) or "_"


def read_png_layer(path: str | os.PathLike[str]) -> np.ndarray:
    """A PNG as uint8 RGBA, converted as the reference converts (``.convert("RGBA")``)."""
    try:
        with Image.open(path) as image:
            if image.mode in _HIGH_BIT_MODES:
                raise EvaluationError(f"{path}: a {image.mode} (16/32-bit) image; the protocol scores 8-bit RGBA PNGs")
            return np.asarray(image.convert("RGBA"))
    except (OSError, UnidentifiedImageError) as error:
        raise EvaluationError(f"{path}: not a readable PNG ({error})") from error


def read_layer_folder(folder: str | os.PathLike[str]) -> list[np.ndarray]:
    """A sample folder in LayerD's layout: every PNG a layer, back to front in name order."""
    return [read_png_layer(path) for path in sorted(Path(folder).glob("*.png"))]


class LayerFolders:
    """Samples in LayerD's layout, ``root/<sample>/*.png``; iterating yields `Sample` objects."""

    def __init__(self, root: str | os.PathLike[str], what: str = "ground-truth") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise EvaluationError(f"{what} folder {self.root} does not exist")
        self.folders = sorted(path for path in self.root.iterdir() if path.is_dir())
        if not self.folders:
            loose = "; it holds PNG files directly: put each sample's layers in its own folder"
            loose = loose if any(self.root.glob("*.png")) else ""
            raise EvaluationError(
                f"{what} folder {self.root} has no sample folders (expected {self.root}/<sample>/*.png{loose})"
            )

    def __len__(self) -> int:
        return len(self.folders)

    def names(self) -> set[str]:
        return {folder.name for folder in self.folders}

    def __iter__(self) -> Iterator[Sample]:
        for folder in self.folders:
            yield Sample(folder.name, read_layer_folder(folder))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _cached_hub_dataset(repo_id: str) -> str:
    """The local snapshot of Hub dataset ``repo_id``, or an `EvaluationError` (offline, so nothing to fetch)."""
    from huggingface_hub import constants

    problem = EvaluationError(
        f"dataset {repo_id} is not a local folder and is not in the Hub cache, and the Hub is offline "
        "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); give a dataset folder, or go online"
    )
    if not (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir():
        raise problem  # checked first: no need to import the download machinery
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise problem from None


def open_dataset(path: str | os.PathLike[str], split: str = "test") -> Any:
    """Rows of a LiWi dataset split: a folder, a ``.parquet`` shard, or a Hub id (from the cache when offline).

    Fails at once, without touching the network, on a path that is not a dataset and on a Hub id
    that is neither cached nor reachable because the Hub is offline. Folders are streamed (the shards
    are read directly, so rewritten shards are never served from a stale cache).
    """
    name = str(path)
    local = Path(path)
    if local.is_file():
        if local.suffix == ".parquet":
            return read_shard(local)
        raise EvaluationError(
            f"dataset {name} is a file, not a dataset: give a LiWi dataset folder (parquet shards and a "
            "README.md), one .parquet shard or a Hub id"
        )
    if not local.exists():
        if not _HUB_ID.fullmatch(name):
            raise EvaluationError(f"dataset folder {name} does not exist")
        if _hub_offline():
            name = _cached_hub_dataset(name)
    from .._extras import require

    datasets = require("datasets", "eval", "liwi evaluate")

    try:
        return load_layered_dataset(name, split=split, streaming=True)
    except ValueError as error:
        raise EvaluationError(f"dataset {path}: {_one_line(error)}") from error
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise EvaluationError(f"dataset {path} could not be loaded: {_one_line(error)}") from error


def _dataset_total(rows: Any, split: str) -> int | None:
    if hasattr(rows, "__len__"):
        return len(rows)
    splits = getattr(getattr(rows, "info", None), "splits", None) or {}
    return getattr(splits.get(split), "num_examples", None) or None


def _row_id(row: Mapping[str, Any], index: int) -> str:
    for key in ("id", "sample_id", "key", "name"):
        if isinstance(row.get(key), (str, int)) and str(row[key]):
            return str(row[key])
    return f"{index:06d}"


def _rows(rows: Iterable[Any], name: str) -> Iterator[Any]:
    """The rows, with a failure to read one (a corrupt or 0-row shard) as one `EvaluationError`."""
    iterator = iter(rows)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            if "BatchSize must be greater than 0" in str(error):  # pyarrow on a 0-row parquet shard
                message = f"dataset {name} has no rows: its shard holds 0 rows (remove it, or rebuild the dataset)"
            else:
                message = f"dataset {name} could not be read: {_described(error)}"
            raise EvaluationError(message) from error
        yield row


def dataset_samples(
    dataset: Any, split: str = "test", include_shadows: bool = False, name: str | None = None
) -> Iterator[Sample]:
    """`Sample` objects from a LiWi dataset (anything `open_dataset` takes, or loaded rows).

    Rows are read with `layered_dataset.row_to_layered`; an empty split is an `EvaluationError`.
    ``name`` names loaded rows in messages.
    """
    is_path = isinstance(dataset, (str, os.PathLike))
    name = f"{dataset} ({split})" if is_path else (name or "the dataset")
    rows = open_dataset(dataset, split) if is_path else dataset
    count = 0
    for index, row in enumerate(_rows(rows, name)):
        missing = [column for column in ("background", "foregrounds") if column not in row]
        if missing:
            raise EvaluationError(f"not a LiWi-format dataset: rows have no {', '.join(missing)} column")
        sample_id = _row_id(row, index)
        try:
            layered = row_to_layered(row)
            composite = decode_image(row["composite"], "RGB") if row.get("composite") is not None else None
        except LayeredImageError as error:
            raise EvaluationError(f"dataset sample {sample_id}: {error}") from error
        if composite is None:
            composite = to_uint8(layered.compose())
        count += 1
        yield Sample(sample_id, layered_to_stack(layered, include_shadows), layered, composite)
    if count == 0:
        raise EvaluationError(f"{name} has no rows: nothing to evaluate")


# ---------------------------------------------------------------------------------------------- resizing
def target_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """``(width, height)`` with the longer side ``resolution`` (unchanged for None)."""
    if resolution is None:
        return width, height
    scale = resolution / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 L/RGB/RGBA to ``(width, height)`` with Lanczos (PIL premultiplies RGBA while resampling)."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return np.asarray(Image.fromarray(array, mode).resize(size, Image.Resampling.LANCZOS))


def resize_layered(layered: LayeredImage, size: tuple[int, int]) -> LayeredImage:
    """Every layer of ``layered`` resized to ``(width, height)`` through 8 bits."""
    if layered.size == size:
        return layered
    return LayeredImage(
        resize_array(to_uint8(layered.background), size),
        [resize_array(to_uint8(fg), size) for fg in layered.foregrounds],
        [resize_array(to_uint8(shadow), size) for shadow in layered.shadows],
        list(layered.labels),
    )


def fit_sample(sample: Sample, resolution: int | None, include_shadows: bool = False) -> Sample:
    """The sample with its longer side ``resolution`` (unchanged for None)."""
    if resolution is None or not sample.stack:
        return sample
    size = target_size(*sample.size, resolution)
    composite = None if sample.composite is None else resize_array(sample.composite, size)
    if sample.layered is not None:
        layered = resize_layered(sample.layered, size)
        return Sample(sample.id, layered_to_stack(layered, include_shadows), layered, composite)
    return Sample(sample.id, [resize_array(layer, size) for layer in sample.stack], None, composite)


def fit_prediction(prediction: Any, size: tuple[int, int], allow_resize: bool) -> Any:
    """Bring a prediction (uint8 RGBA stack or `LayeredImage`) to the ground truth's ``(width, height)``.

    Layers of a stack must share one size; a different size than the ground truth is resized only
    when ``allow_resize`` and the aspect ratio agrees to about a pixel.
    """
    if isinstance(prediction, LayeredImage):
        current = prediction.size
    else:
        sizes = {(layer.shape[1], layer.shape[0]) for layer in prediction}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise EvaluationError(f"prediction layers have different sizes ({listed}); all must be full-canvas")
        current = sizes.pop() if sizes else size
    if current == size:
        return prediction
    shown = f"prediction is {current[0]}x{current[1]} but the ground truth is {size[0]}x{size[1]}"
    if not allow_resize:
        raise EvaluationError(f"{shown}; give --resolution to evaluate both at one size")
    if abs(current[0] * size[1] - size[0] * current[1]) > max(*current, *size):
        raise EvaluationError(f"{shown} (a different aspect ratio)")
    if isinstance(prediction, LayeredImage):
        return resize_layered(prediction, size)
    return [resize_array(layer, size) for layer in prediction]


# ---------------------------------------------------------------------------------------------- methods
def baseline(name: str) -> Callable[[Sample], Any]:
    """A trivial method of `BASELINES`: a function ``Sample -> prediction`` (it may look at the ground truth)."""
    if name == "single-layer":
        return lambda sample: LayeredImage(sample.image())
    if name == "oracle":
        return lambda sample: sample.layered if sample.layered is not None else list(sample.stack)
    if name == "gt-alpha":

        def gt_alpha(sample: Sample) -> LayeredImage:
            alphas = (
                [fg[:, :, 3] for fg in sample.layered.foregrounds]
                if sample.layered is not None
                else [layer[:, :, 3].astype(np.float32) / 255.0 for layer in sample.stack[1:]]
            )
            color = sample.image().astype(np.float32) / 255.0
            return LayeredImage(color, [np.concatenate([color, alpha[:, :, None]], axis=2) for alpha in alphas])

        return gt_alpha
    raise EvaluationError(f"unknown baseline {name!r}; available: {', '.join(BASELINES)}")


def _layer_count(num_layers: int | str | None, sample: Sample) -> int | None:
    if num_layers in (None, "auto"):
        return None
    if num_layers == "gt":
        return max(1, sample.num_objects)
    return int(num_layers)


def _check_num_layers(num_layers: int | str | None) -> None:
    if num_layers in (None, "auto", "gt"):
        return
    if isinstance(num_layers, str) and num_layers.isdigit():
        num_layers = int(num_layers)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise EvaluationError(f"num_layers must be 'auto', 'gt' or a positive number, got {num_layers!r}")


def _decomposer_method(decomposer: Decomposer, num_layers: int | str | None) -> Callable[[Sample], Any]:
    def run(sample: Sample) -> LayeredImage:
        result = decomposer(Image.fromarray(sample.image(), "RGB"), num_layers=_layer_count(num_layers, sample))
        if not isinstance(result, LayeredImage):
            raise EvaluationError(f"the decomposer returned a {type(result).__name__}; expected a LayeredImage")
        return result

    return run


# ---------------------------------------------------------------------------------------------- scoring
def _extras(
    prediction: Any, truth: LayeredImage | None, composite: Any, boundary_width: int, shadow_threshold: float
) -> dict[str, Any]:
    """Boundary, shadow, background and recomposition errors when the prediction is a `LayeredImage`."""
    extras: dict[str, Any] = {}
    if not isinstance(prediction, LayeredImage):
        return extras
    if composite is not None:
        extras["recomposition"] = recomposition_error(prediction, composite)
    if truth is not None:
        shape = (truth.height, truth.width)
        gt_matte, pred_matte = foreground_matte(truth), foreground_matte(prediction)
        gt_shadow = combine_shadows(truth.shadows, shape)
        extras["alpha_boundary"] = alpha_matting_errors(pred_matte, gt_matte, width=boundary_width)
        extras["shadows"] = shadow_errors(
            combine_shadows(prediction.shadows, shape), gt_shadow, threshold=shadow_threshold
        )
        extras["background"] = background_errors(
            prediction.background, truth.background, hidden=(gt_matte > 0) | (gt_shadow > 0)
        )
    return extras


def score_layered(
    pred: LayeredImage | list[np.ndarray],
    truth: LayeredImage | list[np.ndarray],
    *,
    composite: Any = None,
    max_edits: int = DEFAULT_MAX_EDITS,
    min_layers: int = MIN_LAYERS,
    include_shadows: bool = False,
    boundary_width: int = 10,
    shadow_threshold: float = 0.1,
) -> dict[str, Any]:
    """One sample's record: layer counts, the extra errors (when ``pred`` is a `LayeredImage`), and
    ``status`` "evaluated" with the protocol's levels 0..max_edits, or "skipped" with a ``reason``.

    ``pred`` and ``truth`` are `LayeredImage` objects or uint8 RGBA stacks of one size; ``composite``
    (the photo) adds the recomposition error. Raises `MetricInputError` on input that cannot be scored.
    """
    pred_stack = layered_to_stack(pred, include_shadows) if isinstance(pred, LayeredImage) else list(pred)
    gt_stack = layered_to_stack(truth, include_shadows) if isinstance(truth, LayeredImage) else list(truth)
    gt_layered = truth if isinstance(truth, LayeredImage) else None
    record: dict[str, Any] = {"num_pred_layers": len(pred_stack), "num_gt_layers": len(gt_stack)}
    record |= _extras(pred, gt_layered, composite, boundary_width, shadow_threshold)
    reason = skip_reason(len(pred_stack), len(gt_stack), min_layers)
    if reason is not None:
        return record | {"status": "skipped", "reason": reason}
    result = evaluate_layers(pred_stack, gt_stack, max_edits=max_edits)
    return record | {"status": "evaluated"} | result.to_dict(max_edits)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _levels_of(record: Mapping[str, Any]) -> LayerSampleResult:
    """The `LayerSampleResult` behind an evaluated record (its levels up to the last merge made)."""
    made = [level for level in record["levels"] if level["edits"] == level["merges"]]
    levels = [LayerLevel(level["edits"], level["cost"], level["rgb_l1"], level["alpha_iou"]) for level in made]
    return LayerSampleResult(levels, record["num_pred_layers"], record["num_gt_layers"], 0, 0)


def aggregate_records(records: Iterable[Mapping[str, Any]], max_edits: int = DEFAULT_MAX_EDITS) -> dict[str, Any]:
    """Per-level means of the evaluated records, skip counts, and the pooled extra errors."""
    records = list(records)
    skipped = Counter(record["reason"] for record in records if record.get("status") == "skipped")
    results = [_levels_of(record) for record in records if record.get("status") == "evaluated"]

    def collect(name: str) -> list[dict[str, Any]]:
        return [record[name] for record in records if record.get(name) is not None]

    extras: dict[str, Any] = {}
    if boundary := collect("alpha_boundary"):
        extras["alpha_boundary"] = aggregate_alpha_errors(boundary)
    if shadows := collect("shadows"):
        extras["shadows"] = aggregate_shadow_errors(shadows)
    if background := collect("background"):
        extras["background"] = {
            "background_l1": _mean([b["background_l1"] for b in background]),
            "hidden_l1": _mean([b["hidden_l1"] for b in background if b["hidden_l1"] is not None]),
            "num_images": len(background),
        }
    if recomposition := collect("recomposition"):
        finite = [r["psnr"] for r in recomposition if math.isfinite(r["psnr"])]
        extras["recomposition"] = {
            "mean_abs_error": _mean([r["mean_abs_error"] for r in recomposition]),
            "max_abs_error": max(r["max_abs_error"] for r in recomposition),
            "psnr": _mean(finite),
            "num_exact": len(recomposition) - len(finite),
            "num_images": len(recomposition),
        }
    return {
        "num_samples": len(records),
        "num_evaluated": len(results),
        "num_skipped": sum(skipped.values()),
        "skipped": dict(skipped),
        "levels": aggregate_layer_results(results, max_edits),
        "extras": extras,
    }


def build_report(
    records: list[dict[str, Any]],
    protocol: Mapping[str, Any],
    source: Mapping[str, Any],
    predictions_without_ground_truth: Iterable[str] = (),
) -> dict[str, Any]:
    """The report `liwi evaluate` prints and writes: protocol, source, counts, levels, extras, samples."""
    from .. import __version__

    aggregate = aggregate_records(records, protocol.get("max_edits", DEFAULT_MAX_EDITS))
    return {
        "liwi_diffusers_version": __version__,
        "protocol": dict(protocol),
        "source": dict(source),
        **{key: aggregate[key] for key in ("num_samples", "num_evaluated", "num_skipped", "skipped")},
        "predictions_without_ground_truth": sorted(predictions_without_ground_truth),
        "levels": aggregate["levels"],
        "extras": aggregate["extras"],
        "samples": records,
    }


# ---------------------------------------------------------------------------------------------- the loop
def _check_options(max_edits: int, min_layers: int, limit: int | None, resolution: int | None, threshold: float):
    if max_edits < 0:
        raise EvaluationError(f"max_edits must be >= 0, got {max_edits}")
    if min_layers < 1:
        raise EvaluationError(f"min_layers must be >= 1, got {min_layers}")
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be >= 1, got {limit}")
    if resolution is not None and resolution < 8:
        raise EvaluationError(f"resolution must be >= 8 pixels, got {resolution}")
    if not 0.0 < threshold <= 1.0:
        raise EvaluationError(f"shadow_threshold must be in (0, 1], got {threshold}")


@dataclass
class GroundTruth:
    """Ground-truth samples ready to score (`open_ground_truth`): an iterator, its length when known, and
    the ground-truth entries of a report's ``source``."""

    samples: Iterator[Sample]
    total: int | None
    source: dict[str, Any]
    include_shadows: bool = False


def open_ground_truth(
    dataset: Any, split: str = "test", include_shadows: bool = False, name: str | None = None
) -> GroundTruth:
    """Open ``dataset`` and read its first sample, so that a bad path, an unreadable shard or an empty
    split fails here, before any model loads.

    ``dataset``: a LiWi dataset (anything `open_dataset` takes, or loaded rows), a `LayerFolders`, or an
    iterable of `Sample`. ``name`` names loaded rows in the report and in messages.
    """
    if isinstance(dataset, GroundTruth):
        return dataset
    if isinstance(dataset, LayerFolders):
        source = {"ground_truth": str(dataset.root), "dataset": None, "split": None}
        return GroundTruth(iter(dataset), len(dataset), source, include_shadows)
    if isinstance(dataset, (str, os.PathLike)):
        name = name or str(dataset)
        dataset = open_dataset(dataset, split)
    total = _dataset_total(dataset, split)
    shown = f"{name or 'the dataset'} ({split})"
    items = _rows(dataset, shown)
    first = next(items, None)
    if isinstance(first, Sample):
        source = {"ground_truth": name or "samples", "dataset": None, "split": None}
        return GroundTruth(itertools.chain([first], items), total, source, include_shadows)
    rows = itertools.chain([first], items) if first is not None else iter(())
    samples = dataset_samples(rows, split, include_shadows, name=shown)
    first_sample = next(samples)  # raises for an empty split
    source = {"ground_truth": None, "dataset": name or "dataset", "split": split}
    return GroundTruth(itertools.chain([first_sample], samples), total, source, include_shadows)


def _save_stack(root: Path, sample_id: str, stack: list[np.ndarray]) -> None:
    from ..export.atomic import atomic_write

    folder = root / safe_name(sample_id)
    folder.mkdir(parents=True, exist_ok=True)
    for index, layer in enumerate(stack):
        with atomic_write(folder / f"{index:04d}.png") as file:
            Image.fromarray(layer, "RGBA").save(file, format="PNG")


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {_one_line(error)}"


def _predict(
    sample: Sample, predict: Callable[[Sample], Any] | None, folders: LayerFolders | None, resolution: int | None
) -> Any:
    """The prediction for ``sample`` at its size: from its folder, or from running ``predict``."""
    if folders is not None:
        stack = read_layer_folder(folders.root / safe_name(sample.id))
        return fit_prediction(stack, sample.size, allow_resize=resolution is not None)
    return fit_prediction(predict(sample), sample.size, allow_resize=True)


def _evaluate(
    predict: Callable[[Sample], Any] | None,
    predictions: LayerFolders | None,
    dataset: Any,
    *,
    split: str,
    resolution: int | None,
    limit: int | None,
    max_edits: int,
    min_layers: int,
    include_shadows: bool,
    boundary_width: int,
    shadow_threshold: float,
    skip_errors: bool,
    save_layers: str | os.PathLike[str] | None,
    source: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    _check_options(max_edits, min_layers, limit, resolution, shadow_threshold)
    truth = open_ground_truth(dataset, split, include_shadows)
    if truth.include_shadows != include_shadows:
        raise EvaluationError(f"the ground truth was opened with include_shadows={truth.include_shadows}")
    samples, total, truth_source = truth.samples, truth.total, truth.source
    if limit is not None:
        total = min(total, limit) if total else limit
    save_root = None if save_layers is None else Path(save_layers)
    created = save_root is not None and not save_root.exists()
    pred_folders = predictions.names() if predictions is not None else set()
    iterator: Iterable[Sample] = itertools.islice(samples, limit)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=total, desc="liwi evaluate", unit="sample")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        for sample in iterator:
            sample = fit_sample(sample, resolution, include_shadows)
            if not sample.stack:
                raise EvaluationError(f"ground-truth sample {sample.id} has no layers")
            record: dict[str, Any] = {"id": sample.id}
            start = time.perf_counter()
            if predictions is not None:
                seen.add(safe_name(sample.id))
                if safe_name(sample.id) not in pred_folders:
                    records.append(record | {"status": "skipped", "reason": "no prediction folder"})
                    continue
            try:
                prediction = _predict(sample, predict, predictions, resolution)
            except Exception as error:
                ours = isinstance(error, EvaluationError)  # else a failure inside the method
                if not skip_errors:
                    failed = str(error) if ours else f"{source.get('method')} failed: {_described(error)}"
                    raise EvaluationError(f"sample {sample.id}: {failed}") from error
                shown = str(error) if ours else repr(error)
                records.append(record | {"status": "skipped", "reason": "prediction failed", "error": shown})
                continue
            record["seconds"] = time.perf_counter() - start
            if save_root is not None:
                pred_stack = (
                    prediction if isinstance(prediction, list) else layered_to_stack(prediction, include_shadows)
                )
                _save_stack(save_root / "pred", sample.id, pred_stack)
                _save_stack(save_root / "gt", sample.id, sample.stack)
            reference = sample.layered if sample.layered is not None else sample.stack
            try:
                record |= score_layered(
                    prediction,
                    reference,
                    composite=sample.composite,
                    max_edits=max_edits,
                    min_layers=min_layers,
                    include_shadows=include_shadows,
                    boundary_width=boundary_width,
                    shadow_threshold=shadow_threshold,
                )
            except MetricInputError as error:
                if not skip_errors:
                    raise EvaluationError(f"sample {sample.id}: {error}") from error
                record |= {"status": "skipped", "reason": "cannot be scored", "error": str(error)}
            records.append(record)
    except BaseException:
        if created and save_root is not None:
            shutil.rmtree(save_root, ignore_errors=True)
        raise
    protocol = {
        "name": "LayerD layer protocol (grouping, DTW alignment, greedy merges)",
        "max_edits": max_edits,
        "min_layers": min_layers,
        "include_shadows": include_shadows,
        "resolution": resolution,
        "boundary_width": boundary_width,
        "shadow_threshold": shadow_threshold,
    }
    predictions_root = str(predictions.root) if predictions is not None else None
    base = {"predictions": predictions_root, "method": None, "checkpoint": None, "pipeline": None}
    full_source = base | truth_source | dict(source)
    unmatched = sorted(pred_folders - seen) if limit is None else []
    return build_report(records, protocol, full_source, unmatched)


def evaluate_method(
    decomposer: Decomposer | str,
    dataset: Any,
    *,
    split: str = "test",
    num_layers: int | str | None = "auto",
    resolution: int | None = None,
    limit: int | None = None,
    max_edits: int = DEFAULT_MAX_EDITS,
    min_layers: int = MIN_LAYERS,
    include_shadows: bool = False,
    boundary_width: int = 10,
    shadow_threshold: float = 0.1,
    skip_errors: bool = False,
    save_layers: str | os.PathLike[str] | None = None,
    source: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``decomposer`` on every ground-truth sample and score it; returns the report (`build_report`).

    Args:
        decomposer: a callable ``(image, num_layers=None) -> LayeredImage`` (the tool chain, a pipeline
            loaded with `load_decomposer`, ...), or the name of one of `BASELINES`.
        dataset: a LiWi dataset (folder, ``.parquet`` shard, Hub id, or loaded `datasets` rows), a
            `LayerFolders`, an iterable of `Sample`, or a `GroundTruth` from `open_ground_truth`.
        split: the dataset split. num_layers: objects to ask for: "auto" (the decomposer decides), "gt"
            (as many as the ground truth has) or a number.
        resolution: evaluate with the ground truth's longer side at this size (default: native size).
        limit: only the first samples. max_edits, min_layers: the protocol's merge levels and skip rule.
        include_shadows: count non-empty shadow layers as layers of the stacks.
        boundary_width, shadow_threshold: the alpha-boundary band (px) and the shadow mask threshold.
        skip_errors: count samples whose prediction fails or cannot be scored instead of raising.
        save_layers: also write the scored stacks as ``save_layers/{pred,gt}/<sample>/NNNN.png``.
        source: entries that replace or add to the report's ``source`` (e.g. the method's name).
        progress: show a progress bar.
    Raises:
        EvaluationError: bad options, a dataset that cannot be read, an empty split, a failed sample.
    """
    _check_num_layers(num_layers)
    if isinstance(decomposer, str):
        predict = baseline(decomposer)
        source = {"method": decomposer, **(source or {})}
    else:
        predict = _decomposer_method(decomposer, num_layers)
        name = getattr(decomposer, "__name__", None) or type(decomposer).__name__
        source = {"method": name, **(source or {})}
    return _evaluate(
        predict,
        None,
        dataset,
        split=split,
        resolution=resolution,
        limit=limit,
        max_edits=max_edits,
        min_layers=min_layers,
        include_shadows=include_shadows,
        boundary_width=boundary_width,
        shadow_threshold=shadow_threshold,
        skip_errors=skip_errors,
        save_layers=save_layers,
        source=source,
        progress=progress,
    )


def evaluate_predictions(
    predictions: str | os.PathLike[str] | LayerFolders,
    dataset: Any,
    *,
    split: str = "test",
    resolution: int | None = None,
    limit: int | None = None,
    max_edits: int = DEFAULT_MAX_EDITS,
    min_layers: int = MIN_LAYERS,
    include_shadows: bool = False,
    boundary_width: int = 10,
    shadow_threshold: float = 0.1,
    skip_errors: bool = False,
    save_layers: str | os.PathLike[str] | None = None,
    source: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score predictions saved in LayerD's layout (``predictions/<sample>/*.png``) against ``dataset``.

    A sample without a prediction folder is skipped and counted. A prediction of another size than
    the ground truth is an error unless ``resolution`` is given. Other arguments: see `evaluate_method`.
    """
    folders = predictions if isinstance(predictions, LayerFolders) else LayerFolders(predictions, "prediction")
    return _evaluate(
        None,
        folders,
        dataset,
        split=split,
        resolution=resolution,
        limit=limit,
        max_edits=max_edits,
        min_layers=min_layers,
        include_shadows=include_shadows,
        boundary_width=boundary_width,
        shadow_threshold=shadow_threshold,
        skip_errors=skip_errors,
        save_layers=save_layers,
        source=source or {},
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------- the report
def _json_ready(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, tuples to lists, non-finite floats (PSNR of exact recomposition) to null."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The per-level table (and the extra metrics) of a report, as markdown."""
    source = report["source"]
    what = source["method"] or source["predictions"]
    truth = f"{source['dataset']} ({source['split']})" if source["dataset"] else source["ground_truth"]
    lines = [
        f"**{what}** vs {truth}: {report['num_evaluated']} of {report['num_samples']} samples scored",
        "",
        "| merges | RGB L1 ↓ | alpha IoU ↑ | cost ↓ | mean merges made | samples that made them |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for level in report["levels"]:
        lines.append(
            f"| {level['merges']} | {_fmt(level['rgb_l1'])} | {_fmt(level['alpha_iou'])} | {_fmt(level['cost'])} | "
            f"{_fmt(level['avg_edits'], 2)} | {level['count']} |"
        )
    if report["skipped"]:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report["skipped"].items()))
        lines += ["", f"skipped: {reasons}"]
    extras = report["extras"]
    rows = []
    if "background" in extras:
        background = extras["background"]
        rows += [("background L1", background["background_l1"]), ("background L1 (hidden)", background["hidden_l1"])]
    if "alpha_boundary" in extras:
        boundary = extras["alpha_boundary"]
        rows += [
            ("alpha SAD (/1000)", boundary["sad"]),
            ("alpha MSE", boundary["mse"]),
            ("alpha gradient (/1000)", boundary["gradient"]),
            ("alpha connectivity (/1000)", boundary["connectivity"]),
        ]
    if "shadows" in extras:
        rows += [("shadow BER", extras["shadows"]["ber"]), ("shadow L1", extras["shadows"]["shadow_l1"])]
    if "recomposition" in extras:
        recomposition = extras["recomposition"]
        rows += [("recomposition mean abs error", recomposition["mean_abs_error"])]
        rows += [("recomposition PSNR (finite)", recomposition["psnr"])]
    if rows:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    return "\n".join(lines)


def _existing_ancestor(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Raise `EvaluationError` unless `write_report` can write ``path`` (a ``.json`` file); cheap, no folder made.

    Call it before evaluating so that a bad output path fails at once rather than after the work.
    """
    from ..export.atomic import OutputPathError, check_writable

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise EvaluationError(f"the report should be a .json file, got {path}")
    if path.is_dir():
        raise EvaluationError(f"cannot write {str(path)!r}: it is a folder; give a .json file name inside it instead")
    table = path.with_suffix(".md")
    if table.is_dir():
        raise EvaluationError(f"cannot write the table beside the report, {str(table)!r}: it is a folder")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise EvaluationError(f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        check_writable(folder / path.name)
    except OutputPathError as error:
        raise EvaluationError(str(error)) from None
    return path


def write_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the report as JSON at ``path`` and its `markdown_table` beside it (``.md``); both atomic.

    Missing folders are created; on failure, neither file nor any folder made here is left behind.
    Returns the two paths.
    """
    from ..export.atomic import atomic_write

    path = check_report_path(path)
    table_path = path.with_suffix(".md")
    created = []
    folder = path.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as file:
            file.write((json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n").encode())
        with atomic_write(table_path) as file:
            file.write((markdown_table(report) + "\n").encode())
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        for made in created:  # deepest first
            if made.exists() and not any(made.iterdir()):
                made.rmdir()
        raise
    return path, table_path
