"""``liwi-build``: photos in, a LiWi layered dataset folder out (resumable, parallel, deterministic)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from . import __version__

EPILOG = """\
examples:
  liwi-build photos/ -o liwi-100k --num-samples 100000 --workers 8
  liwi-build "shots/**/*.jpg" other/ -o my-layers --num-samples 500 --resolution 768
  liwi-build dataset:/data/coco-images --image-column image -o coco-layers --num-samples 5000
  liwi-build photos/ -o liwi-100k --num-samples 100000 --num-shards 16 --shard-index $SLURM_ARRAY_TASK_ID
  liwi-build photos/ -o liwi-100k --num-samples 100000 --engine ray --ray-address auto   # a Ray cluster

Rerun the same command after an interruption (even kill -9) to finish the build: finished shards
are kept and the result is the same as an uninterrupted run. The build is complete when
OUT/README.md exists; OUT/build_report.json lists skipped photos and rejected samples.
Ctrl-C (exit status 130) and SIGTERM (143) stop the workers and remove temporary files first.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liwi-build",
        description=(
            "ADD (agent-driven data decomposition): cut objects, their shadows and clean backgrounds out of "
            "photos, compose them into layered samples with exact ground truth, verify each, and write a "
            "dataset folder that datasets.load_dataset reads (parquet shards + README card)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders (recursive), glob patterns, or a datasets folder "
        "(save_to_disk output or parquet shards; prefix with dataset: to force)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="dataset folder to create or resume")
    parser.add_argument("-n", "--num-samples", type=int, default=1000, help="samples to make (default: 1000)")
    parser.add_argument("-w", "--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool (default); ray: Ray Data, on this machine (--workers CPUs) or a cluster; "
        'same rows either way (needs pip install "liwi-diffusers[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster for --engine ray: host:port, ray://host:port or auto (default: $RAY_ADDRESS, else a "
        "new local Ray); OUT and the sources must be on storage every node mounts at the same path",
    )
    parser.add_argument(
        "--ray-num-gpus",
        type=float,
        default=None,
        metavar="N",
        help="GPUs per model actor for --engine ray (default: 1 when --device is cuda, else 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same rows (default: 0)")
    parser.add_argument("-r", "--resolution", type=int, default=512, help="side of the square samples (default: 512)")
    parser.add_argument(
        "--num-shards", type=int, default=1, help="split the build across this many machines (default: 1)"
    )
    parser.add_argument("--shard-index", type=int, default=0, help="which of --num-shards this machine builds")
    parser.add_argument("--chunk-size", type=int, default=32, help="samples per parquet shard (default: 32)")
    parser.add_argument("--pool-size", type=int, default=64, help="photos whose assets a chunk mixes (default: 64)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of photos (and samples) in test")
    parser.add_argument("--validation-fraction", type=float, default=0.0, help="share in validation")
    parser.add_argument("--min-objects", type=int, default=1, help="objects per sample, at least (default: 1)")
    parser.add_argument("--max-objects", type=int, default=3, help="objects per sample, at most (default: 3)")
    parser.add_argument(
        "--curation-size", type=int, default=None, help="long side photos are curated at (default: --resolution)"
    )
    parser.add_argument("--min-side", type=int, default=64, help="skip photos smaller than this (default: 64 px)")
    parser.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="skip photos with more pixels than this (default: 40 MP)"
    )
    parser.add_argument("--image-column", default=None, help="image column of a datasets source")
    tools = parser.add_argument_group("tools (weight-free defaults; MODEL is a Hub id or local folder)")
    tools.add_argument(
        "--proposer",
        default="auto",
        help="auto (peeling:isnet when downloaded with `liwi models download isnet`, else saliency) | saliency | "
        "peeling:NAME (the learned segmenter with crops and peeling, as liwi decompose runs it) | segmenter:NAME "
        "(one pass of it) | mask-generation:MODEL | image-segmentation:MODEL | "
        "zero-shot-object-detection:MODEL | object-detection:MODEL",
    )
    tools.add_argument("--labels", default="", help="comma-separated labels for zero-shot detection")
    tools.add_argument("--inpainting", default="opencv", help="opencv | diffusers:MODEL")
    tools.add_argument("--shadows", default="darkening", help="darkening | none")
    tools.add_argument("--depth", default="bottom-edge", help="bottom-edge | depth-estimation:MODEL")
    tools.add_argument("--planner", default="rules", help="rules | vlm:MODEL (image-text-to-text)")
    tools.add_argument("--verifier", default="rules", help="rules | vlm:MODEL")
    tools.add_argument("--device", default=None, help="device for model adapters (cpu, cuda, ...)")
    card = parser.add_argument_group("dataset card")
    card.add_argument("--name", default=None, help="dataset name on the card (default: the folder name)")
    card.add_argument("--license", default="other", help="licence id for the card (default: other)")
    card.add_argument(
        "--license-note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line about the sources' licences (repeatable)",
    )
    parser.add_argument(
        "--no-keep-assets",
        action="store_true",
        help="delete the curated assets (.build/assets) once the build is complete",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=f"liwi-dataset-builder {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``liwi-build``; returns the exit status (0 done, 2 usage error, 130 interrupted, 143 terminated).

    SIGTERM is handled like Ctrl-C, with `liwi decompose`'s mechanism: it raises `Terminated` in
    this (main) thread, so the build unwinds: worker processes are stopped, temporary files removed,
    and every finished asset and shard is kept for a rerun to resume from.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from liwi_diffusers.cli import Terminated, _sigterm_raises

    try:
        with _sigterm_raises():
            return _run(args)
    except KeyboardInterrupt:
        print("liwi-build: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("liwi-build: terminated; rerun the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM


def _run(args: argparse.Namespace) -> int:
    """The build ``args`` asks for, with its summary printed; returns the exit status."""
    from liwi_diffusers._extras import MissingExtraError

    try:
        from .build import BuildConfig, BuildError, build_dataset
        from .sources import SourceError
        from .toolset import ToolSpec, resolve_proposer
    except MissingExtraError as error:
        print(f"liwi-build: error: {error}", file=sys.stderr)
        return 2

    try:
        proposer = resolve_proposer(args.proposer)
        if proposer.startswith(("segmenter:", "peeling:")):  # a missing or damaged model file: say so before any work
            from liwi_diffusers.model_zoo import ModelError, verify_model

            try:
                verify_model(proposer.partition(":")[2])
            except ModelError as error:
                print(f"liwi-build: error: {error}", file=sys.stderr)
                return 2
        if args.proposer == "auto" and proposer == "saliency":
            print(
                "liwi-build: note: the learned segmenter is not downloaded, so objects are proposed by the "
                "weight-free saliency tools: run `liwi models download isnet` for better foregrounds",
                file=sys.stderr,
            )
        spec = ToolSpec(
            proposer=proposer,
            inpainting=args.inpainting,
            shadows=args.shadows,
            depth=args.depth,
            planner=args.planner,
            verifier=args.verifier,
            device=args.device,
            max_objects=args.max_objects,
            labels=tuple(label.strip() for label in args.labels.split(",") if label.strip()),
        )
        config = BuildConfig(
            sources=list(args.sources),
            output=args.output,
            num_samples=args.num_samples,
            seed=args.seed,
            resolution=args.resolution,
            chunk_size=args.chunk_size,
            pool_size=args.pool_size,
            test_fraction=args.test_fraction,
            validation_fraction=args.validation_fraction,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            curation_size=args.curation_size,
            min_side=args.min_side,
            max_pixels=args.max_pixels,
            image_column=args.image_column,
            tools=spec,
            workers=args.workers,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            license=args.license,
            license_notes=args.license_note,
            name=args.name,
            keep_assets=not args.no_keep_assets,
            progress=not args.quiet,
            engine=args.engine,
            ray_address=args.ray_address,
            ray_num_gpus=args.ray_num_gpus,
        )
        result = build_dataset(config)
    except (ValueError, SourceError, BuildError, MissingExtraError) as error:
        print(f"liwi-build: error: {error}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{split} {count}" for split, count in result.rows.items()) or "none"
    status = "complete" if result.complete else "partial (other shards still to build)"
    print(
        f"liwi-build: {status}: {result.output} | rows: {rows} | chunks written now {result.chunks_written} "
        f"of {result.chunks_total} | photos {result.photos} (skipped {result.skipped_sources}) "
        f"| {result.seconds:.1f} s"
    )
    rejections = ", ".join(f"{reason} {count}" for reason, count in result.rejections.items()) or "none"
    print(f"liwi-build: rejected composition attempts by reason: {rejections}; samples dropped: {result.dropped}")
    for split, reasons in result.empty_splits.items():
        why = ", ".join(f"{reason} {count}" for reason, count in reasons.items()) or "no sample"
        print(
            f"liwi-build: note: split {split!r} got no rows ({why}), so it is left out of data/ and the card; "
            "more photos (a larger share for it) would give it some"
        )
    return 0
