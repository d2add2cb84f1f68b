"""`liwi evaluate`: score layer decompositions with LayerD's protocol, plus boundary, shadow and background errors.

Argument parsing and printing only: reading samples, running methods, scoring and the report are
`liwi_diffusers.metrics.evaluation`; models load through `liwi_diffusers.load_decomposer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import CLIError

METHODS = {
    "single-layer": "the whole image as one opaque layer (skipped by the protocol unless --min-layers 1)",
    "gt-alpha": "ground-truth alphas with colours copied from the image, the image as background "
    "(an upper bound for methods without colour estimation or inpainting)",
    "oracle": "the ground truth itself (a sanity check: RGB L1 0, IoU 1 at every level)",
    "toolchain": "the tool-chain decomposer (liwi_diffusers.tools.decomposer; its learned segmenter when it is "
    "in the model cache, see liwi models, else weight-free)",
    "pipeline": "LiWiDecompositionPipeline.from_pretrained(--checkpoint)",
}


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
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", type=Path, metavar="DIR", help="predictions: DIR/<sample>/*.png, back to front")
    source.add_argument("--method", choices=sorted(METHODS), help="run this method on each ground-truth image")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--gt", type=Path, metavar="DIR", help="ground truth: DIR/<sample>/*.png, back to front")
    truth.add_argument("--dataset", metavar="PATH", help="a LiWi-format dataset folder (parquet shards + README)")
    add("--split", default="test", help="dataset split (default: %(default)s)")
    add(
        "-o",
        "--output",
        type=Path,
        metavar="JSON",
        help="write the result here (and the markdown table next to it, .md)",
    )
    add("--max-edits", type=int, default=5, help="largest number of merges: levels 0..N (default: %(default)s)")
    add(
        "--min-layers",
        type=int,
        default=2,
        help="skip samples with fewer layers on either side (default: %(default)s, as published)",
    )
    add(
        "--resolution",
        type=int,
        metavar="PX",
        help="evaluate at this size: ground truth resized so its longer side is PX, "
        "predictions to the same size (default: the native size)",
    )
    add("--limit", type=int, metavar="N", help="only the first N ground-truth samples")
    add(
        "--include-shadows",
        action="store_true",
        help="count the non-empty shadow layers of LiWi layered images as layers (use when "
        "predicted PNG stacks contain shadow layers); default: shadows are scored separately",
    )
    add(
        "--checkpoint",
        metavar="PATH",
        help="pipeline folder, a checkpoint shipped with the package (liwi-small) or a Hub id, for --method pipeline",
    )
    add(
        "--num-layers",
        default=None,
        metavar="auto|gt|N",
        help="objects to ask the method for: auto (the method decides), gt (as many as the "
        "ground truth has) or a number; default: auto for toolchain, gt for pipeline",
    )
    add("--steps", type=int, default=50, help="pipeline denoising steps (default: %(default)s)")
    add(
        "--pipeline-resolution",
        type=int,
        default=None,
        help="pipeline processing resolution (default: the checkpoint's training resolution)",
    )
    add("--device", default=None, help="pipeline device (default: cuda when available, else cpu)")
    add("--seed", type=int, default=0, help="pipeline noise seed, the same for every sample (default: %(default)s)")
    add(
        "--boundary-width",
        type=int,
        default=10,
        help="half width (px) of the band where alpha boundary errors are measured (default: %(default)s)",
    )
    add(
        "--shadow-threshold",
        type=float,
        default=0.1,
        help="shadow mask for the balanced error rate: shadow alpha >= this (default: %(default)s)",
    )
    add(
        "--save-layers",
        type=Path,
        metavar="DIR",
        help="also write the scored stacks as DIR/pred/<sample>/NNNN.png and DIR/gt/<sample>/...",
    )
    add(
        "--skip-errors",
        action="store_true",
        help="count samples whose prediction fails or cannot be scored instead of stopping",
    )
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    """Option errors, named as options, before any work."""
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
    if not 0.0 < args.shadow_threshold <= 1.0:
        raise CLIError(f"--shadow-threshold must be in (0, 1], got {args.shadow_threshold}")
    if args.output is not None and args.output.suffix.lower() != ".json":
        raise CLIError(f"--output should name a .json file, got {args.output}")
    if args.save_layers is not None and args.save_layers.exists() and not args.save_layers.is_dir():
        raise CLIError(f"--save-layers {args.save_layers} is a file; give a folder")


def _load_method(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The method to run (a baseline name or a decomposer) and its part of the report's source."""
    if args.method not in ("toolchain", "pipeline"):
        return args.method, {}
    from ..loading import DecomposerLoadError, load_decomposer

    try:
        if args.method == "toolchain":
            return load_decomposer("tools"), {}
        options = {"resolution": args.pipeline_resolution, "steps": args.steps, "seed": args.seed}
        decomposer = load_decomposer(args.checkpoint, device=args.device or "auto", **options)
    except DecomposerLoadError as error:
        message = str(error)
        for option in ("resolution", "steps"):  # the loader's option names, as this command spells them
            if message.startswith(f"{option} must"):
                message = ("--pipeline-" if option == "resolution" else "--") + message
        raise CLIError(message) from None
    except ImportError as error:
        raise CLIError(f"the LiWi pipeline is not available in this installation ({error})") from error
    resolution = decomposer.resolution or decomposer.pipeline.config.default_resolution
    pipeline = {"resolution": resolution, "steps": args.steps, "seed": args.seed}
    return decomposer, {"checkpoint": args.checkpoint, "pipeline": pipeline}


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from ..metrics.evaluation import (
        EvaluationError,
        LayerFolders,
        check_report_path,
        evaluate_method,
        evaluate_predictions,
        markdown_table,
        open_ground_truth,
        write_report,
    )

    try:
        if args.output is not None:
            check_report_path(args.output)  # before any work: a bad path fails now, not after the evaluation
        # Opened (and its first sample read) before a model loads: a bad dataset or an empty split fails fast.
        truth = open_ground_truth(LayerFolders(args.gt) if args.gt else args.dataset, args.split, args.include_shadows)
        options: dict[str, Any] = {
            "split": args.split,
            "resolution": args.resolution,
            "limit": args.limit,
            "max_edits": args.max_edits,
            "min_layers": args.min_layers,
            "include_shadows": args.include_shadows,
            "boundary_width": args.boundary_width,
            "shadow_threshold": args.shadow_threshold,
            "skip_errors": args.skip_errors,
            "save_layers": args.save_layers,
            "progress": True,
        }
        if args.pred is not None:
            report = evaluate_predictions(args.pred, truth, **options)
        else:
            method, source = _load_method(args)
            num_layers = args.num_layers or ("gt" if args.method == "pipeline" else "auto")
            source = {"method": args.method, **source}
            report = evaluate_method(method, truth, num_layers=num_layers, source=source, **options)
        print(markdown_table(report))
        if args.output is not None:
            json_path, table_path = write_report(report, args.output)
            print(f"wrote {json_path} and {table_path}")
    except EvaluationError as error:
        raise CLIError(str(error)) from None
    return 0
