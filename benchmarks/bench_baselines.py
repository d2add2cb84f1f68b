"""Baselines table: trivial baselines and the tool-chain decomposer on the sample dataset.

Builds the LiWi sample dataset from photos bundled with installed packages (ADD builder, seeded),
scores each method on each split with `liwi_diffusers.metrics.evaluation.evaluate_method` (what
`liwi evaluate` runs), prints a markdown table (RGB L1 and alpha IoU at 0 and 5 merges, plus
boundary, shadow and background errors) beside the published Crello figures, and writes
``benchmarks/results/baselines.json``.

    python benchmarks/bench_baselines.py                       # 64 samples at 256 px
    python benchmarks/bench_baselines.py --num-samples 128 --resolution 384
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from liwi_dataset_builder.sample_data import build_sample_dataset
from liwi_diffusers import __version__
from liwi_diffusers.loading import load_decomposer
from liwi_diffusers.metrics.evaluation import evaluate_method

RESULTS = Path(__file__).parent / "results"

# (name in the table, method: a baseline name or a decomposer, evaluate_method options)
METHODS = [
    ("single layer (whole image, scored with --min-layers 1)", "single-layer", {"min_layers": 1}),
    ("ground-truth alpha, colours copied from the image", "gt-alpha", {}),
    ("tool chain, weight-free (no learned segmenter)", "weight-free", {}),
]

# Published figures on Crello (a different dataset: graphic designs), RGB L1 / alpha soft IoU.
PUBLISHED_CRELLO = [
    {"method": "LayerD", "rgb_l1_0": 0.0709, "iou_0": 0.7520, "rgb_l1_5": 0.0396, "iou_5": 0.8650},
    {"method": "Qwen-Image-Layered", "rgb_l1_0": 0.0594, "iou_0": 0.8705, "rgb_l1_5": 0.0363, "iou_5": 0.9160},
    {"method": "LiWi (paper)", "rgb_l1_0": 0.0321, "iou_0": None, "rgb_l1_5": None, "iou_5": None},
]


def level(result: dict, merges: int) -> dict:
    return next(row for row in result["levels"] if row["merges"] == merges)


def run(dataset: Path, split: str, method: Any, options: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    report = evaluate_method(method, dataset, split=split, **options)
    return report, time.perf_counter() - start


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, default=None, help="use this built dataset instead of building one")
    parser.add_argument("--output", type=Path, default=RESULTS / "baselines.json")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        dataset = options.dataset
        if dataset is None:
            dataset = Path(scratch) / "liwi-sample"
            build_sample_dataset(
                dataset, num_samples=options.num_samples, resolution=options.resolution, seed=options.seed
            )
        rows = []
        for split in ("test", "train"):
            for name, method, method_options in METHODS:
                decomposer = load_decomposer(method) if method == "weight-free" else method
                result, seconds = run(dataset, split, decomposer, method_options)
                extras = result.get("extras", {})
                rows.append(
                    {
                        "method": name,
                        "split": split,
                        "samples": result["num_samples"],
                        "scored": result["num_evaluated"],
                        "rgb_l1_0": level(result, 0)["rgb_l1"],
                        "iou_0": level(result, 0)["alpha_iou"],
                        "rgb_l1_5": level(result, 5)["rgb_l1"],
                        "iou_5": level(result, 5)["alpha_iou"],
                        "extras": extras,
                        "seconds_per_sample": seconds / max(1, result["num_samples"]),
                    }
                )

    header = "| split | method | scored | RGB L1 @0 ↓ | IoU @0 ↑ | RGB L1 @5 ↓ | IoU @5 ↑ | s/sample |"
    print(f"\nLiWi sample dataset ({options.num_samples} samples at {options.resolution} px, seed {options.seed})\n")
    print(header)
    print("| --- " * 8 + "|")
    for row in rows:
        print(
            f"| {row['split']} | {row['method']} | {row['scored']}/{row['samples']} | {fmt(row['rgb_l1_0'])} | "
            f"{fmt(row['iou_0'])} | {fmt(row['rgb_l1_5'])} | {fmt(row['iou_5'])} | {row['seconds_per_sample']:.2f} |"
        )
    print("\nPublished, on Crello (graphic designs; a different dataset, not comparable row by row)\n")
    print("| method | RGB L1 @0 | IoU @0 | RGB L1 @5 | IoU @5 |\n| --- | --- | --- | --- | --- |")
    for row in PUBLISHED_CRELLO:
        print(
            f"| {row['method']} | {fmt(row['rgb_l1_0'])} | {fmt(row['iou_0'])} | {fmt(row['rgb_l1_5'])} | "
            f"{fmt(row['iou_5'])} |"
        )

    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(
        json.dumps(
            {
                "benchmark": "baselines on the LiWi sample dataset (benchmarks/bench_baselines.py)",
                "liwi_diffusers": __version__,
                "dataset": {"num_samples": options.num_samples, "resolution": options.resolution, "seed": options.seed},
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
                "rows": rows,
                "published_crello": PUBLISHED_CRELLO,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {options.output}")


if __name__ == "__main__":
    main()
