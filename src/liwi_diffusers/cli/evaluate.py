"""`liwi evaluate`: score layer decompositions with LayerD's protocol, plus boundary, shadow and background errors.

Predictions come from folders in LayerD's layout (``<dir>/<sample>/*.png``, back to front, every PNG a
layer) or from a method run here on each sample's image (trivial baselines, the tool-chain decomposer,
a pipeline checkpoint). Ground truth comes from folders in the same layout or from a LiWi-format
dataset (a folder of parquet shards with a README ``configs:``). The numbers are those of
`liwi_diffusers.metrics` (the `evaluate` modules report the same).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import CLIError

METHODS = {
    "single-layer": "the whole image as one opaque layer (skipped by the protocol unless --min-layers 1)",
    "gt-alpha": "ground-truth alphas with colours copied from the image, the image as background "
    "(an upper bound for methods without colour estimation or inpainting)",
    "oracle": "the ground truth itself (a sanity check: RGB L1 0, IoU 1 at every level)",
    "toolchain": "the weight-free tool-chain decomposer (liwi_diffusers.tools.decomposer)",
    "pipeline": "LiWiDecompositionPipeline.from_pretrained(--checkpoint)",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def add_parser(subparsers: Any) -> None:
    method_list = "; ".join(f"{name}: {text}" for name, text in METHODS.items())
    parser = subparsers.add_parser(
        "evaluate",
        help="score layer decompositions (RGB L1 / alpha IoU after alignment and merges, and more)",
        description=(
            "Score predicted layers against ground truth with LayerD's protocol: non-overlapping layers "
            "grouped, sequences aligned by dynamic time warping on (RGB L1 + 1 - alpha IoU) / 2, then up "
            "to --max-edits greedy merges of adjacent layers, reported at every level. Samples with fewer "
            "than --min-layers layers on either side are skipped and counted. With a LiWi dataset and a "
            "method, also alpha boundary (SAD, MSE, gradient, connectivity), shadow (BER, L1), background "
            f"and recomposition errors. Methods: {method_list}."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", type=Path, metavar="DIR", help="predictions: DIR/<sample>/*.png, back to front")
    source.add_argument("--method", choices=sorted(METHODS), help="run this method on each ground-truth image")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--gt", type=Path, metavar="DIR", help="ground truth: DIR/<sample>/*.png, back to front")
    truth.add_argument("--dataset", metavar="PATH", help="a LiWi-format dataset folder (parquet shards + README)")
    parser.add_argument("--split", default="test", help="dataset split (default: %(default)s)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="JSON",
        help="write the result here (and the markdown table next to it, .md)",
    )
    parser.add_argument(
        "--max-edits", type=int, default=5, help="largest number of merges: levels 0..N (default: %(default)s)"
    )
    parser.add_argument(
        "--min-layers",
        type=int,
        default=2,
        help="skip samples with fewer layers on either side (default: %(default)s, as published)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="PX",
        help="evaluate at this size: ground truth resized so its longer side is PX, "
        "predictions to the same size (default: the native size)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N ground-truth samples")
    parser.add_argument(
        "--include-shadows",
        action="store_true",
        help="count the non-empty shadow layers of LiWi layered images as layers (use when "
        "predicted PNG stacks contain shadow layers); default: shadows are scored separately",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="pipeline folder, or a checkpoint shipped with the package (liwi-small), for --method pipeline",
    )
    parser.add_argument(
        "--num-layers",
        default=None,
        metavar="auto|gt|N",
        help="objects to ask the method for: auto (the method decides), gt (as many as the "
        "ground truth has) or a number; default: auto for toolchain, gt for pipeline",
    )
    parser.add_argument("--steps", type=int, default=50, help="pipeline denoising steps (default: %(default)s)")
    parser.add_argument(
        "--pipeline-resolution",
        type=int,
        default=None,
        help="pipeline processing resolution (default: a shipped checkpoint's training resolution, else 640)",
    )
    parser.add_argument("--device", default=None, help="pipeline device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--seed", type=int, default=0, help="pipeline noise seed, the same for every sample (default: %(default)s)"
    )
    parser.add_argument(
        "--boundary-width",
        type=int,
        default=10,
        help="half width (px) of the band where alpha boundary errors are measured (default: %(default)s)",
    )
    parser.add_argument(
        "--shadow-threshold",
        type=float,
        default=0.1,
        help="shadow mask for the balanced error rate: shadow alpha >= this (default: %(default)s)",
    )
    parser.add_argument(
        "--save-layers",
        type=Path,
        metavar="DIR",
        help="also write the scored stacks as DIR/pred/<sample>/NNNN.png and DIR/gt/<sample>/...",
    )
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="count samples whose prediction fails or cannot be scored instead of stopping",
    )
    parser.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------- samples
@dataclass
class _Sample:
    """One ground-truth sample: the protocol stack, and for datasets the layered image and composite."""

    id: str
    stack: list[Any]  # uint8 (H, W, 4) RGBA, back to front
    layered: Any = None  # LayeredImage (datasets)
    composite: Any = None  # uint8 (H, W, 3)


def _safe_name(sample_id: str) -> str:
    return _SAFE_NAME.sub("_", sample_id) or "_"


def _read_png(path: Path) -> Any:
    """A PNG as uint8 RGBA, converted as the reference converts (``.convert("RGBA")``)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _HIGH_BIT_MODES:
                raise CLIError(f"{path}: a {image.mode} (16/32-bit) image; the protocol scores 8-bit RGBA PNGs")
            return np.asarray(image.convert("RGBA"))
    except (OSError, UnidentifiedImageError) as error:
        raise CLIError(f"{path}: not a readable PNG ({error})") from error


def _read_stack(folder: Path) -> list[Any]:
    return [_read_png(path) for path in sorted(folder.glob("*.png"))]


def _sample_folders(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise CLIError(f"{what} folder {root} does not exist")
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if not folders:
        loose = (
            "; it holds PNG files directly: put each sample's layers in its own folder"
            if any(root.glob("*.png"))
            else ""
        )
        raise CLIError(f"{what} folder {root} has no sample folders (expected {root}/<sample>/*.png{loose})")
    return folders


def _folder_samples(root: Path) -> Iterator[_Sample]:
    for folder in _sample_folders(root, "ground-truth"):
        yield _Sample(folder.name, _read_stack(folder))


def _open_dataset(path: str, split: str) -> Any:
    import datasets

    if not Path(path).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raise CLIError(f"dataset folder {path} does not exist")
    try:
        # Streaming reads the shards directly: no cache that could serve stale rewritten shards.
        return datasets.load_dataset(path, split=split, streaming=True)
    except ValueError as error:
        raise CLIError(f"dataset {path}: {error}") from error
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise CLIError(f"dataset {path} could not be loaded: {error}") from error


def _row_id(row: dict[str, Any], index: int) -> str:
    for key in ("id", "sample_id", "key", "name"):
        if isinstance(row.get(key), (str, int)) and str(row[key]):
            return str(row[key])
    return f"{index:06d}"


def _dataset_samples(dataset: Any, include_shadows: bool) -> Iterator[_Sample]:
    import numpy as np

    from ..layers import LayeredImage, LayeredImageError
    from ..metrics import layered_to_stack

    for index, row in enumerate(dataset):
        missing = [name for name in ("background", "foregrounds") if name not in row]
        if missing:
            raise CLIError(f"not a LiWi-format dataset: rows have no {', '.join(missing)} column")
        sample_id = _row_id(row, index)
        try:
            layered = LayeredImage.from_pil(row["background"], row["foregrounds"], row.get("shadows") or None)
        except LayeredImageError as error:
            raise CLIError(f"dataset sample {sample_id}: {error}") from error
        composite = row.get("composite")
        composite = np.asarray(composite.convert("RGB")) if composite is not None else _to_uint8(layered.compose())
        yield _Sample(sample_id, layered_to_stack(layered, include_shadows), layered, composite)


def _to_uint8(array: Any) -> Any:
    import numpy as np

    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _flatten(stack: list[Any]) -> Any:
    """The image a PNG stack shows, over white (as LayerD renders designs whose bottom is not opaque)."""
    import numpy as np

    from ..metrics import merge_layers

    white = np.full_like(stack[0], 255)
    return merge_layers([white, *stack])[:, :, :3]


# ---------------------------------------------------------------------------------------------- resizing
def _target_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    if resolution is None:
        return width, height
    scale = resolution / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: Any, size: tuple[int, int]) -> Any:
    """Resize uint8 L/RGB/RGBA (PIL premultiplies RGBA while resampling)."""
    import numpy as np
    from PIL import Image

    if (array.shape[1], array.shape[0]) == size:
        return array
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return np.asarray(Image.fromarray(array, mode).resize(size, Image.Resampling.LANCZOS))


def _resize_layered(layered: Any, size: tuple[int, int]) -> Any:
    from ..layers import LayeredImage

    if layered.size == size:
        return layered
    return LayeredImage(
        _resize(_to_uint8(layered.background), size),
        [_resize(_to_uint8(fg), size) for fg in layered.foregrounds],
        [_resize(_to_uint8(shadow), size) for shadow in layered.shadows],
        list(layered.labels),
    )


def _fit_sample(sample: _Sample, resolution: int | None, include_shadows: bool) -> _Sample:
    from ..metrics import layered_to_stack

    if resolution is None or not sample.stack:
        return sample
    height, width = sample.stack[0].shape[:2]
    size = _target_size(width, height, resolution)
    if sample.layered is not None:
        layered = _resize_layered(sample.layered, size)
        return _Sample(sample.id, layered_to_stack(layered, include_shadows), layered, _resize(sample.composite, size))
    composite = None if sample.composite is None else _resize(sample.composite, size)
    return _Sample(sample.id, [_resize(layer, size) for layer in sample.stack], None, composite)


def _fit_prediction(prediction: Any, size: tuple[int, int], allow_resize: bool) -> Any:
    """Bring a prediction (stack or LayeredImage) to the ground truth's ``(width, height)``.

    Layers of a stack must share one size; a different size than the ground truth is resized only
    when ``allow_resize`` (methods, or --resolution) and the aspect ratio agrees to about a pixel.
    """
    from ..layers import LayeredImage

    if isinstance(prediction, LayeredImage):
        current = prediction.size
    else:
        sizes = {(layer.shape[1], layer.shape[0]) for layer in prediction}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise CLIError(f"prediction layers have different sizes ({listed}); all must be full-canvas")
        current = sizes.pop() if sizes else size
    if current == size:
        return prediction
    shown = f"prediction is {current[0]}x{current[1]} but the ground truth is {size[0]}x{size[1]}"
    if not allow_resize:
        raise CLIError(f"{shown}; give --resolution to evaluate both at one size")
    if abs(current[0] * size[1] - size[0] * current[1]) > max(*current, *size):
        raise CLIError(f"{shown} (a different aspect ratio)")
    if isinstance(prediction, LayeredImage):
        return _resize_layered(prediction, size)
    return [_resize(layer, size) for layer in prediction]


# ---------------------------------------------------------------------------------------------- methods
def _num_layers(option: str | None, method: str, sample: _Sample) -> int | None:
    choice = option or ("gt" if method == "pipeline" else "auto")
    if choice == "auto":
        return None
    if choice == "gt":
        count = sample.layered.num_objects if sample.layered is not None else len(sample.stack) - 1
        return max(1, count)
    return int(choice)


def _make_method(args: argparse.Namespace) -> Callable[[_Sample], Any]:
    """A function sample -> prediction (a LayeredImage, or a uint8 RGBA stack)."""
    import numpy as np
    from PIL import Image

    from ..layers import LayeredImage

    name = args.method
    if name == "single-layer":
        return lambda sample: LayeredImage(sample.composite)
    if name == "oracle":
        return lambda sample: sample.layered if sample.layered is not None else list(sample.stack)
    if name == "gt-alpha":

        def gt_alpha(sample: _Sample) -> Any:
            alphas = (
                [fg[:, :, 3] for fg in sample.layered.foregrounds]
                if sample.layered is not None
                else [layer[:, :, 3].astype(np.float32) / 255.0 for layer in sample.stack[1:]]
            )
            color = sample.composite.astype(np.float32) / 255.0
            return LayeredImage(color, [np.concatenate([color, alpha[:, :, None]], axis=2) for alpha in alphas])

        return gt_alpha
    if name == "toolchain":
        try:
            from ..tools.decomposer import ToolChainDecomposer
        except ImportError as error:
            raise CLIError(f"the tool-chain decomposer is not available in this installation ({error})") from error
        decomposer = ToolChainDecomposer()
        return lambda sample: decomposer(
            Image.fromarray(sample.composite, "RGB"), num_layers=_num_layers(args.num_layers, name, sample)
        )
    if name == "pipeline":
        return _pipeline_method(args)
    raise CLIError(f"unknown method {name!r}")  # argparse's choices make this unreachable


def _pipeline_method(args: argparse.Namespace) -> Callable[[_Sample], Any]:
    from PIL import Image

    try:
        import torch

        from ..pipelines.pipeline_liwi import LiWiDecompositionPipeline
    except ImportError as error:
        raise CLIError(f"the LiWi pipeline is not available in this installation ({error})") from error
    from ..checkpoints import resolve_model

    try:
        source, trained_resolution = resolve_model(args.checkpoint)
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None
    if not Path(source).exists():
        raise CLIError(
            f"checkpoint {args.checkpoint} does not exist (a pipeline folder or a shipped name such as liwi-small)"
        )
    resolution = args.pipeline_resolution if args.pipeline_resolution is not None else trained_resolution or 640
    args.pipeline_resolution = resolution  # the resolved value goes into the report
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipeline = LiWiDecompositionPipeline.from_pretrained(source).to(device)
    except (OSError, ValueError) as error:
        raise CLIError(f"could not load the pipeline from {args.checkpoint}: {error}") from error
    if resolution < pipeline.size_multiple:
        raise CLIError(
            f"--pipeline-resolution must be at least {pipeline.size_multiple} for this model, got {resolution}"
        )

    def run_pipeline(sample: _Sample) -> Any:
        generator = torch.Generator("cpu").manual_seed(args.seed)
        output = pipeline(
            Image.fromarray(sample.composite, "RGB"),
            num_layers=_num_layers(args.num_layers, "pipeline", sample),
            resolution=resolution,
            num_inference_steps=args.steps,
            generator=generator,
        )
        return output.layers[0]

    return run_pipeline


# ---------------------------------------------------------------------------------------------- scoring
def _extras(prediction: Any, sample: _Sample, args: argparse.Namespace) -> dict[str, Any]:
    """Boundary, shadow, background and recomposition errors when the prediction is a LayeredImage."""
    from ..layers import LayeredImage
    from ..metrics import (
        alpha_matting_errors,
        background_errors,
        combine_shadows,
        foreground_matte,
        recomposition_error,
        shadow_errors,
    )

    extras: dict[str, Any] = {}
    if not isinstance(prediction, LayeredImage):
        return extras
    if sample.composite is not None:
        extras["recomposition"] = recomposition_error(prediction, sample.composite)
    gt = sample.layered
    if gt is not None:
        shape = (gt.height, gt.width)
        gt_matte, pred_matte = foreground_matte(gt), foreground_matte(prediction)
        gt_shadow = combine_shadows(gt.shadows, shape)
        extras["alpha_boundary"] = alpha_matting_errors(pred_matte, gt_matte, width=args.boundary_width)
        extras["shadows"] = shadow_errors(
            combine_shadows(prediction.shadows, shape), gt_shadow, threshold=args.shadow_threshold
        )
        extras["background"] = background_errors(
            prediction.background, gt.background, hidden=(gt_matte > 0) | (gt_shadow > 0)
        )
    return extras


def _mean(values: list[float]) -> float | None:
    import numpy as np

    return float(np.mean(values)) if values else None


def _aggregate_extras(samples: list[dict[str, Any]]) -> dict[str, Any]:
    from ..metrics import aggregate_alpha_errors, aggregate_shadow_errors

    def collect(name: str) -> list[dict[str, Any]]:
        return [sample[name] for sample in samples if sample.get(name) is not None]

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
    return extras


def _save_stack(root: Path, sample_id: str, stack: list[Any]) -> None:
    from PIL import Image

    folder = root / _safe_name(sample_id)
    folder.mkdir(parents=True, exist_ok=True)
    for index, layer in enumerate(stack):
        Image.fromarray(layer, "RGBA").save(folder / f"{index:04d}.png")


def _check_args(args: argparse.Namespace) -> None:
    if args.max_edits < 0:
        raise CLIError(f"--max-edits must be >= 0, got {args.max_edits}")
    if args.min_layers < 1:
        raise CLIError(f"--min-layers must be >= 1, got {args.min_layers}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.resolution is not None and args.resolution < 8:
        raise CLIError(f"--resolution must be >= 8 pixels, got {args.resolution}")
    if args.method == "pipeline" and not args.checkpoint:
        raise CLIError("--method pipeline needs --checkpoint PATH (a saved LiWiDecompositionPipeline)")
    if args.checkpoint and args.method != "pipeline":
        raise CLIError("--checkpoint is only used with --method pipeline")
    layer_count = args.num_layers
    if layer_count not in (None, "auto", "gt") and (not layer_count.isdigit() or int(layer_count) < 1):
        raise CLIError(f"--num-layers must be auto, gt or a positive number, got {args.num_layers!r}")
    if args.method == "pipeline" and args.num_layers == "auto":
        raise CLIError("the pipeline needs a layer count: --num-layers gt or a number")
    if not 0.0 < args.shadow_threshold <= 1.0:
        raise CLIError(f"--shadow-threshold must be in (0, 1], got {args.shadow_threshold}")
    if args.output is not None and args.output.suffix.lower() != ".json":
        raise CLIError(f"--output should name a .json file, got {args.output}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from tqdm import tqdm

    from .. import __version__
    from ..metrics import MetricInputError, aggregate_layer_results, evaluate_layers, layered_to_stack, skip_reason

    total = None
    if args.dataset is not None:
        dataset = _open_dataset(args.dataset, args.split)
        splits = getattr(dataset.info, "splits", None) or {}
        total = getattr(splits.get(args.split), "num_examples", None) or None
        ground_truth: Iterator[_Sample] = _dataset_samples(dataset, args.include_shadows)
    else:
        total = len(_sample_folders(args.gt, "ground-truth"))
        ground_truth = _folder_samples(args.gt)
    if args.limit is not None:
        total = min(total, args.limit) if total else args.limit
    pred_folders: set[str] = set()
    if args.pred is not None:
        pred_folders = {folder.name for folder in _sample_folders(args.pred, "prediction")}
    method = _make_method(args) if args.method else None

    results, records, skipped, seen = [], [], Counter(), set()
    samples = itertools.islice(ground_truth, args.limit)
    for sample in tqdm(samples, total=total, desc="liwi evaluate", unit="sample"):
        sample = _fit_sample(sample, args.resolution, args.include_shadows)
        if not sample.stack:
            raise CLIError(f"ground-truth sample {sample.id} has no layers")
        if method is not None and sample.composite is None:
            sample.composite = _flatten(sample.stack)
        record: dict[str, Any] = {"id": sample.id}
        size = (sample.stack[0].shape[1], sample.stack[0].shape[0])
        start = time.perf_counter()
        try:
            if args.pred is not None:
                name = _safe_name(sample.id)
                seen.add(name)
                if name not in pred_folders:
                    skipped["no prediction folder"] += 1
                    records.append(record | {"status": "skipped", "reason": "no prediction folder"})
                    continue
                stack = _read_stack(args.pred / name)
                prediction: Any = _fit_prediction(stack, size, allow_resize=args.resolution is not None)
            else:
                prediction = _fit_prediction(method(sample), size, allow_resize=True)
        except CLIError as error:
            if not args.skip_errors:
                raise CLIError(f"sample {sample.id}: {error}") from error
            skipped["prediction failed"] += 1
            records.append(record | {"status": "skipped", "reason": "prediction failed", "error": str(error)})
            continue
        except Exception as error:
            if not args.skip_errors:
                raise CLIError(f"sample {sample.id}: {args.method} failed: {type(error).__name__}: {error}") from error
            skipped["prediction failed"] += 1
            records.append(record | {"status": "skipped", "reason": "prediction failed", "error": repr(error)})
            continue
        record["seconds"] = time.perf_counter() - start
        pred_stack = prediction if isinstance(prediction, list) else layered_to_stack(prediction, args.include_shadows)
        if args.save_layers is not None:
            _save_stack(args.save_layers / "pred", sample.id, pred_stack)
            _save_stack(args.save_layers / "gt", sample.id, sample.stack)
        record |= {"num_pred_layers": len(pred_stack), "num_gt_layers": len(sample.stack)}
        try:
            record |= _extras(prediction, sample, args)
            reason = skip_reason(len(pred_stack), len(sample.stack), args.min_layers)
            if reason is not None:
                skipped[reason] += 1
                records.append(record | {"status": "skipped", "reason": reason})
                continue
            result = evaluate_layers(pred_stack, sample.stack, max_edits=args.max_edits)
        except MetricInputError as error:
            if not args.skip_errors:
                raise CLIError(f"sample {sample.id}: {error}") from error
            skipped["cannot be scored"] += 1
            records.append(record | {"status": "skipped", "reason": "cannot be scored", "error": str(error)})
            continue
        results.append(result)
        records.append(record | {"status": "evaluated"} | result.to_dict(args.max_edits))

    unmatched = sorted(pred_folders - seen) if args.limit is None else []
    report = {
        "liwi_diffusers_version": __version__,
        "protocol": {
            "name": "LayerD layer protocol (grouping, DTW alignment, greedy merges)",
            "max_edits": args.max_edits,
            "min_layers": args.min_layers,
            "include_shadows": args.include_shadows,
            "resolution": args.resolution,
            "boundary_width": args.boundary_width,
            "shadow_threshold": args.shadow_threshold,
        },
        "source": {
            "predictions": str(args.pred) if args.pred else None,
            "method": args.method,
            "checkpoint": args.checkpoint,
            "pipeline": (
                {"resolution": args.pipeline_resolution, "steps": args.steps, "seed": args.seed}
                if args.method == "pipeline"
                else None
            ),
            "ground_truth": str(args.gt) if args.gt else None,
            "dataset": args.dataset,
            "split": args.split if args.dataset else None,
        },
        "num_samples": len(records),
        "num_evaluated": len(results),
        "num_skipped": sum(skipped.values()),
        "skipped": dict(skipped),
        "predictions_without_ground_truth": unmatched,
        "levels": aggregate_layer_results(results, args.max_edits),
        "extras": _aggregate_extras(records),
        "samples": records,
    }
    table = markdown_table(report)
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")
        args.output.with_suffix(".md").write_text(table + "\n")
        print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


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


def markdown_table(report: dict[str, Any]) -> str:
    """The per-level table (and the extra metrics) of a `liwi evaluate` report, as markdown."""
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
