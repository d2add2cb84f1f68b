"""Matte-refiner ablation on the real-photo benchmark (issue 12, item 5: the refiner rows).

    python benchmarks/bench_refiner.py --segmenter-cache /work/segcache            # all 105 photos
    python benchmarks/bench_refiner.py --segmenter-cache /work/segcache --limit 10  # a quick look
    python benchmarks/bench_refiner.py --segmenter-cache /work/segcache --rows segmenter "+refiner (restoration)" \
        --restoration-seeds s1/restoration s2/restoration     # the shipped refiner and two other training seeds

Rows (the tool chain with the learned segmenter: one whole-photo pass, no crops, no peeling, so that only the
refiner differs):

- ``segmenter``: the segmenter's matte as it is (then band matting, as ``liwi decompose`` does);
- ``+refiner (restoration)``: the shipped ``restoration`` refiner after the segmenter;
- ``+refiner (clean-only)``: the ablation's control, trained on clean inputs only (no degradation);
- ``+refiner (restoration, edge band)``: the restoration refiner on the matte's 0.5 level only (``edge_only``);
- ``--restoration-seeds FOLDER ...``: one more row per folder, restoration refiners that the recipe trained with
  other seeds (``examples/train_matte_refiner.py --seed N``). With the shipped row, the summary then gives the
  gains over the segmenter as mean +- sample std over the training seeds ("over_training_seeds").

Scores per annotated object, for the predicted layer with the best object IoU (the protocol of
``bench_real_photos.py``, whose metrics and segmenter cache this script imports):

- object IoU: soft IoU over the pixels where the annotation is sure;
- boundary-band IoU: the same soft IoU restricted to a band of ``--band`` (5) pixels either side of the annotated
  edge (the edge of the annotation's >= 0.5 region), unsure annotation pixels left out;
- refiner seconds per photo (on the working resolution, at most 1024 px).

The annotations are COCO polygons (rasterised, 0/255) and Oxford-IIIT Pet trimaps (an unsure band of a few pixels
along the outline, left out), so the true edge is itself only accurate to a few pixels: the band IoU measures
agreement with a coarse human outline, not with the photo's real edge. Results: ``benchmarks/results/refiner.json``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_photos import UNSURE, MemoisedSegmenter, soft_iou
from real_data import load_real_benchmark
from results_io import mean_std, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "refiner.json"
ROWS = ("segmenter", "+refiner (restoration)", "+refiner (clean-only)", "+refiner (restoration, edge band)")
WEIGHTS = {
    "+refiner (restoration)": "restoration",
    "+refiner (clean-only)": "clean-only",
    "+refiner (restoration, edge band)": "restoration",
}


def edge_band(truth: np.ndarray, radius: int) -> np.ndarray:
    """Sure annotation pixels within ``radius`` of the annotated edge (both sides).

    The edge is the outline of ``truth >= 0.5`` together with any unsure band (a trimap's "not classified"
    outline), so a trimap's band reaches ``radius`` pixels into the sure object and the sure background.
    """
    from liwi_diffusers.tools import dilate, erode

    solid = truth >= 0.5
    sure = (truth <= UNSURE[0]) | (truth >= UNSURE[1])
    edge = (dilate(solid, 1) & ~erode(solid, 1)) | ~sure
    return dilate(edge, radius) & sure


def band_iou(prediction: np.ndarray, truth: np.ndarray, radius: int) -> float:
    """Soft IoU of ``prediction`` against the (sure, binarised) annotation inside its edge band."""
    band = edge_band(truth, radius)
    gt = np.where(truth >= 0.5, 1.0, 0.0)
    low, high = np.minimum(prediction, gt)[band].sum(), np.maximum(prediction, gt)[band].sum()
    return float(low / high) if high > 0 else 0.0


class TimedRefiner:
    """A refiner that adds up the seconds it spends."""

    def __init__(self, refiner: Any) -> None:
        self.refiner, self.seconds = refiner, 0.0

    def __call__(self, image: np.ndarray, coverage: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.refiner(image, coverage)
        self.seconds += time.perf_counter() - start
        return out


def seed_row(folder: str) -> str:
    """The row name of a restoration refiner trained with another seed."""
    return f"+refiner (restoration) [{'/'.join(Path(folder).parts[-2:])}]"


def build_rows(
    names: list[str], cache_dir: Path | None, seed_folders: list[str] = ()
) -> dict[str, tuple[Any, TimedRefiner | None]]:
    from liwi_diffusers import load_decomposer
    from liwi_diffusers.tools import ToolChainDecomposer
    from liwi_diffusers.tools.refiner import MatteRefiner
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    learned = MemoisedSegmenter(OnnxSegmenter.from_cache(), cache_dir)
    options: dict[str, Any] = {"segmenter": learned, "max_rounds": 1}
    if "tiles" in inspect.signature(ToolChainDecomposer).parameters:
        options["tiles"] = 0  # one whole-photo segmenter pass (the cached one): only the refiner differs
    weights = {**WEIGHTS, **{seed_row(folder): folder for folder in seed_folders}}
    rows: dict[str, tuple[Any, TimedRefiner | None]] = {}
    for name in [*names, *(seed_row(folder) for folder in seed_folders)]:
        edge_only = name.endswith("edge band)")
        timed = (
            TimedRefiner(MatteRefiner.from_pretrained(weights[name], edge_only=edge_only)) if name in weights else None
        )
        rows[name] = (load_decomposer("tools", refiner=timed, **options), timed)
    return rows


def over_training_seeds(
    summary: dict[str, Any], differences: dict[str, Any], seed_folders: list[str]
) -> dict[str, Any] | None:
    """Mean +- sample std, over the shipped restoration refiner and ``seed_folders``, of each group's scores and
    of the paired gains over the segmenter (None without other seeds, the shipped row or the segmenter row)."""
    names = ["+refiner (restoration)", *(seed_row(folder) for folder in seed_folders)]
    if len(names) < 2 or any(name not in summary for name in names) or "segmenter" not in summary:
        return None

    result: dict[str, Any] = {"rows": names}
    for group in summary["segmenter"]:
        if summary["segmenter"][group]["object_iou"] is None:  # no photo of this group
            continue
        result[group] = {
            key: mean_std([summary[name][group][key] - summary["segmenter"][group][key] for name in names])
            for key in ("object_iou", "band_iou")
        }
    result["paired_band_gain"] = mean_std([differences[name]["band_ious"]["mean"] for name in names])
    return result


def evaluate(rows: dict[str, Any], samples: list[Any], radius: int) -> dict[str, list[dict[str, Any]]]:
    per_row: dict[str, list[dict[str, Any]]] = {}
    for name, (decomposer, timed) in rows.items():
        records = []
        for sample in samples:
            before = timed.seconds if timed is not None else 0.0
            layered = decomposer(sample.image)
            alphas = [fg[:, :, 3] for fg in layered.foregrounds]
            objects, bands = [], []
            for truth in sample.object_masks:
                scores = [soft_iou(alpha, truth) for alpha in alphas]
                best = int(np.argmax(scores)) if scores else None
                objects.append(scores[best] if best is not None else 0.0)
                bands.append(band_iou(alphas[best], truth, radius) if best is not None else 0.0)
            records.append(
                {
                    "id": sample.id,
                    "groups": list(sample.groups),
                    "object_ious": objects,
                    "band_ious": bands,
                    "refiner_seconds": (timed.seconds - before) if timed is not None else 0.0,
                    "recomposition_max": layered.check(sample.image).max_abs_error,
                }
            )
            print(f"  {name:24s} {sample.id:28s} IoU {np.mean(objects):.3f} band {np.mean(bands):.3f}", flush=True)
        per_row[name] = records
    return per_row


def summarise(records: list[dict[str, Any]], group: str | None) -> dict[str, Any]:
    chosen = [r for r in records if group is None or group in r["groups"]]
    ious = [v for r in chosen for v in r["object_ious"]]
    bands = [v for r in chosen for v in r["band_ious"]]
    return {
        "photos": len(chosen),
        "objects": len(ious),
        "object_iou": float(np.mean(ious)) if ious else None,
        "band_iou": float(np.mean(bands)) if bands else None,
        "refiner_seconds_mean": float(np.mean([r["refiner_seconds"] for r in chosen])) if chosen else None,
        "recomposition_max": float(np.max([r["recomposition_max"] for r in chosen])) if chosen else None,
    }


def paired(records: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per-object differences against the baseline row: mean, standard error, wins and losses (> 0.005)."""
    diffs = np.array([a - b for r, s in zip(records, baseline) for a, b in zip(r[key], s[key])])
    if not len(diffs):
        return {}
    return {
        "mean": float(diffs.mean()),
        "stderr": float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0,
        "better": int((diffs > 0.005).sum()),
        "worse": int((diffs < -0.005).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many photos (in manifest order)")
    parser.add_argument("--band", type=int, default=5, help="half width in pixels of the boundary band")
    parser.add_argument("--segmenter-cache", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--restoration-seeds",
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="restoration refiners trained with other seeds: a row each, and the spread over training seeds",
    )
    args = parser.parse_args()

    samples = load_real_benchmark()
    if args.limit:
        samples = samples[: args.limit]
    print(f"{len(samples)} photos; rows: {', '.join(args.rows)}")
    records = evaluate(build_rows(args.rows, args.segmenter_cache, args.restoration_seeds), samples, args.band)
    summary = {
        row: {group or "all": summarise(recs, group) for group in ("single", "pair", "multi", None)}
        for row, recs in records.items()
    }
    baseline = records.get("segmenter")
    differences = {
        row: {key: paired(recs, baseline, key) for key in ("object_ious", "band_ious")}
        for row, recs in records.items()
        if baseline is not None and row != "segmenter"
    }

    def cell(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| row | group | photos | objects | object IoU | boundary-band IoU | refiner s/photo |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, groups in summary.items():
        for group, s in groups.items():
            lines.append(
                f"| {row} | {group} | {s['photos']} | {s['objects']} | {cell(s['object_iou'])} | "
                f"{cell(s['band_iou'])} | {cell(s['refiner_seconds_mean'], 2)} |"
            )
    print("\n".join(lines))
    for row, diff in differences.items():
        for key, d in diff.items():
            if d:
                print(
                    f"{row} - segmenter, {key}: {d['mean']:+.4f} +- {d['stderr']:.4f} (s.e.), "
                    f"{d['better']} objects better, {d['worse']} worse"
                )
    seeds = over_training_seeds(summary, differences, args.restoration_seeds)
    if seeds is not None:
        for group in (group for group in summary["segmenter"] if group in seeds):
            band, obj = seeds[group]["band_iou"], seeds[group]["object_iou"]
            print(
                f"restoration - segmenter over {len(seeds['rows'])} training seeds, {group}: band IoU "
                f"{band['mean']:+.4f} +- {band['std']:.4f}, object IoU {obj['mean']:+.4f} +- {obj['std']:.4f}"
            )
    payload = {
        "command": " ".join(["python", "benchmarks/bench_refiner.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "band_pixels": args.band,
        "summary": summary,
        "paired_differences": differences,
        "over_training_seeds": seeds,
        "records": records,
    }
    write_results(args.output, payload)


if __name__ == "__main__":
    main()
