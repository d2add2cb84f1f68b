"""Real-photo benchmark: do the decomposers find the objects in real photos, their shadows, the empty scene?

    python benchmarks/bench_real_photos.py                          # every row, every photo
    python benchmarks/bench_real_photos.py --rows full --limit 20   # a quick look
    python benchmarks/bench_real_photos.py --contact-sheet docs/images/real_photos.png

Data: ``benchmarks/data/real/`` (real photos with human-made instance masks; SOURCES.md gives the origin and
licence of every file), read by ``benchmarks/real_data.py``. Rows:

- ``weight-free``: the tool chain without learned weights (saliency + GrabCut proposals);
- ``segmenter``: the learned segmenter (ISNet), one pass on the whole photo: no crops, no peeling;
- ``no-tiles``: the learned segmenter with peeling, but no crops (``--tiles 0``);
- ``no-detector``: ``full`` without the object detector's boxes;
- ``full``: the learned segmenter on the whole photo with peeling, plus the object detector's boxes (NanoDet, when
  downloaded) each segmented on its crop (the default of ``liwi decompose``; without the detector it also segments
  the crops of a 2 x 2 grid in the first round);
- ``fast``: the fast preset (``load_decomposer("fast")``, ``liwi decompose --method fast``).

Metrics, per photo group:

- objects: for every annotated object, the best soft IoU of any predicted object layer's alpha; "found" is the
  share with IoU >= 0.5. Pixels where the annotation itself is unsure (values strictly between 0.3 and 0.7,
  e.g. the outline band of Oxford-IIIT Pet trimaps) are left out of both sums. Annotations are not exhaustive
  (COCO labels only some things), so this is recall of the annotated objects: extra layers are not penalised.
- layers: how many object layers were predicted, and "matched", the share of them whose alpha has soft IoU >= 0.5
  with some annotated object. COCO annotates every instance of its 80 classes (at least 0.4 % of the photo here),
  so an unmatched layer is an object of another kind (a tree, a sign), a part, a merge, or nothing: a lower bound
  of the layers' precision, for weighing what a setting adds against what it finds. A layer under 0.4 % of the
  photo cannot match (smaller instances are not in the annotations), whatever it shows.
- shadows: for every annotated cast shadow, the best IoU of any predicted shadow layer thresholded at 0.1;
- background: mean |background - clean plate| over the objects-and-shadows region, divided by the same figure
  for the input photo (below 1: closer to the empty scene than leaving the photo as it is);
- seconds per photo and the process's peak RSS.

The learned rows share one segmenter pass on the original photo (memoised), which is also what they would
compute; timings are per row and include it. Results go to ``benchmarks/results/real_photos.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load_real_benchmark
from results_io import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "real_photos.json"
ROWS = ("weight-free", "segmenter", "no-tiles", "no-detector", "full", "fast")
UNSURE = (0.3, 0.7)


# ---------------------------------------------------------------------------------------------- metrics
def soft_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Soft IoU ``sum min / sum max`` over the pixels where the annotation is sure."""
    sure = (truth <= UNSURE[0]) | (truth >= UNSURE[1])
    truth = np.where(truth >= UNSURE[1], 1.0, 0.0) if np.any(~sure) else truth
    low = np.minimum(prediction, truth)[sure].sum()
    high = np.maximum(prediction, truth)[sure].sum()
    return float(low / high) if high > 0 else 0.0


def best_object_ious(alphas: list[np.ndarray], truths: list[np.ndarray]) -> list[float]:
    """Per annotated object, the best soft IoU of any predicted alpha (0 when nothing was predicted)."""
    return [max((soft_iou(alpha, truth) for alpha in alphas), default=0.0) for truth in truths]


def best_layer_ious(alphas: list[np.ndarray], truths: list[np.ndarray]) -> list[float]:
    """Per predicted alpha, the best soft IoU with any annotated object (0 when nothing is annotated)."""
    return [max((soft_iou(alpha, truth) for truth in truths), default=0.0) for alpha in alphas]


def best_shadow_ious(shadows: list[np.ndarray], truths: list[np.ndarray], threshold: float = 0.1) -> list[float]:
    """Per annotated shadow, the best IoU of a predicted shadow layer (sigma > ``threshold``)."""
    out = []
    for truth in truths:
        gt = truth >= 0.5
        scores = []
        for shadow in shadows:
            pred = shadow > threshold
            union = (pred | gt).sum()
            scores.append(float((pred & gt).sum() / union) if union else 0.0)
        out.append(max(scores, default=0.0))
    return out


def background_ratio(background: np.ndarray, photo: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    """Mean |background - clean| over ``region`` divided by mean |photo - clean| there."""
    if not region.any():
        return float("nan")
    ours = np.abs(background - clean).mean(axis=2)[region].mean()
    baseline = np.abs(photo - clean).mean(axis=2)[region].mean()
    return float(ours / baseline) if baseline > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- methods
class MemoisedSegmenter:
    """A segmenter that remembers its answers by image content (the learned rows share the first pass).

    With ``cache_dir`` the answers also persist on disk (``<sha1 of model name + pixels>.npy``), so a rerun
    of the benchmark only pays for segmenter passes it has not made before; timings then exclude those passes.
    """

    def __init__(self, segmenter: Any, cache_dir: Path | None = None) -> None:
        self.segmenter = segmenter
        self.name = getattr(segmenter, "name", "segmenter")
        self.memory: dict[str, np.ndarray] = {}
        self.cache_dir = cache_dir
        self.passes = 0
        self.views: dict[str, MemoisedSegmenter] = {}

    def at_side(self, side: int) -> MemoisedSegmenter:
        """The wrapped segmenter at another input side (`OnnxSegmenter.at_side`), remembered under its own name."""
        sized = self.segmenter.at_side(side) if hasattr(self.segmenter, "at_side") else self.segmenter
        if sized is self.segmenter:
            return self
        if sized.name not in self.views:
            self.views[sized.name] = MemoisedSegmenter(sized, self.cache_dir)
        return self.views[sized.name]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        digest = hashlib.sha1(self.name.encode())
        digest.update(np.ascontiguousarray(image, np.float32).tobytes())
        key = digest.hexdigest()
        if key not in self.memory:
            stored = self.cache_dir / f"{key}.npy" if self.cache_dir is not None else None
            if stored is not None and stored.is_file():
                self.memory[key] = np.load(stored)
            else:
                self.passes += 1
                self.memory[key] = self.segmenter(image)
                if stored is not None:
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    np.save(stored.with_suffix(".tmp.npy"), self.memory[key])
                    os.replace(stored.with_suffix(".tmp.npy"), stored)
        return self.memory[key].copy()


def build_rows(names: list[str], cache_dir: Path | None = None) -> dict[str, Any]:
    from liwi_diffusers import load_decomposer
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    rows: dict[str, Any] = {}
    learned = None
    if {"segmenter", "no-tiles", "no-detector", "full", "fast"} & set(names):
        learned = MemoisedSegmenter(OnnxSegmenter.from_cache(), cache_dir)
    for name in names:
        if name == "weight-free":
            rows[name] = load_decomposer("weight-free")
        elif name == "segmenter":
            rows[name] = load_decomposer("tools", segmenter=learned, max_rounds=1, tiles=0)
        elif name == "no-tiles":
            rows[name] = load_decomposer("tools", segmenter=learned, tiles=0)
        elif name == "no-detector":
            rows[name] = load_decomposer("tools", segmenter=learned, detector=None)
        elif name == "full":
            rows[name] = load_decomposer("tools", segmenter=learned)
        elif name == "fast":
            rows[name] = load_decomposer("fast", segmenter=learned)
    return rows


# ---------------------------------------------------------------------------------------------- run
def evaluate(rows: dict[str, Any], samples: list[Any], keep_layers: set[str] | None = None) -> dict[str, Any]:
    per_row: dict[str, Any] = {}
    kept: dict[str, dict[str, Any]] = {}
    for name, decomposer in rows.items():
        records = []
        for sample in samples:
            start = time.perf_counter()
            layered = decomposer(sample.image)
            seconds = time.perf_counter() - start
            alphas = [fg[:, :, 3] for fg in layered.foregrounds]
            record: dict[str, Any] = {
                "id": sample.id,
                "groups": list(sample.groups),
                "seconds": seconds,
                "objects_predicted": layered.num_objects,
                "stop_reason": layered.metadata.get("stop_reason", ""),
                "object_ious": best_object_ious(alphas, sample.object_masks),
                "layer_ious": best_layer_ious(alphas, sample.object_masks),
                "recomposition_max": layered.check(sample.image).max_abs_error,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            shadows = [m for m in sample.shadow_masks if m is not None]
            if shadows:
                record["shadow_ious"] = best_shadow_ious(layered.shadows, shadows)
            if sample.clean_plate is not None:
                region = np.max(sample.object_masks + shadows, axis=0) >= 0.5
                record["background_ratio"] = background_ratio(
                    layered.background, sample.image, sample.clean_plate, region
                )
            records.append(record)
            if keep_layers is not None and sample.id in keep_layers:
                kept.setdefault(sample.id, {})[name] = layered
            print(
                f"  {name:12s} {sample.id:28s} {layered.num_objects} objects, best IoUs "
                f"{', '.join(f'{v:.2f}' for v in record['object_ious'])} ({seconds:.1f} s)",
                flush=True,
            )
        per_row[name] = records
    return {"rows": per_row, "layers": kept}


def summarise(records: list[dict[str, Any]], group: str | None) -> dict[str, Any]:
    chosen = [r for r in records if group is None or group in r["groups"]]
    ious = [v for r in chosen for v in r["object_ious"]]
    shadow = [v for r in chosen for v in r.get("shadow_ious", [])]
    ratios = [r["background_ratio"] for r in chosen if np.isfinite(r.get("background_ratio", np.nan))]
    layers = [v for r in chosen for v in r.get("layer_ious", [])]
    return {
        "photos": len(chosen),
        "objects": len(ious),
        "found": float(np.mean([v >= 0.5 for v in ious])) if ious else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "layers": len(layers),
        "layers_matched": float(np.mean([v >= 0.5 for v in layers])) if layers else None,
        "shadows": len(shadow),
        "shadow_iou": float(np.mean(shadow)) if shadow else None,
        "clean_plates": len(ratios),
        "background_ratio": float(np.mean(ratios)) if ratios else None,
        "seconds_mean": float(np.mean([r["seconds"] for r in chosen])) if chosen else None,
        "seconds_max": float(np.max([r["seconds"] for r in chosen])) if chosen else None,
        "peak_rss_mb": float(np.max([r["peak_rss_mb"] for r in chosen])) if chosen else None,
    }


def table(summary: dict[str, dict[str, Any]]) -> str:
    def cell(value: Any, digits: int = 3) -> str:
        return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    lines = [
        "| row | group | photos | objects | found | mean IoU | layers | matched | shadow IoU | background ratio "
        "| s/photo | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, groups in summary.items():
        for group, s in groups.items():
            lines.append(
                f"| {row} | {group} | {s['photos']} | {s['objects']} | {cell(s['found'])} | {cell(s['mean_iou'])} | "
                f"{s['layers']} | {cell(s['layers_matched'])} | "
                f"{cell(s['shadow_iou'])} | {cell(s['background_ratio'])} | {cell(s['seconds_mean'], 1)} | "
                f"{cell(s['peak_rss_mb'], 0)} |"
            )
    return "\n".join(lines)


def contact_sheet(layers: dict[str, dict[str, Any]], samples: list[Any], path: Path, row: str) -> None:
    """Photos with their layers (background, objects over a checkerboard, shadows), one photo a line."""
    import cv2
    from PIL import Image

    height = 160
    by_id = {s.id: s for s in samples}
    lines = []
    for sample_id, per_row in layers.items():
        layered = per_row[row]
        photo = by_id[sample_id].image
        yy, xx = np.mgrid[: photo.shape[0], : photo.shape[1]]
        checker = np.where(((yy // 16 + xx // 16) % 2)[:, :, None] == 0, 0.85, 0.65).astype(np.float32)
        checker = np.repeat(checker, 3, axis=2)
        tiles = [photo, layered.background]
        for fg, shadow in zip(layered.foregrounds, layered.shadows):
            tiles.append(fg[:, :, :3] * fg[:, :, 3:] + checker * (1 - fg[:, :, 3:]))
            if shadow.max() > 0.05:
                tiles.append(checker * (1 - shadow[:, :, None]))
        scaled = [cv2.resize(t, (max(1, round(t.shape[1] * height / t.shape[0])), height)) for t in tiles[:9]]
        gap = np.ones((height, 6, 3), np.float32)
        lines.append(np.concatenate([x for t in scaled for x in (t, gap)], axis=1))
    width = max(line.shape[1] for line in lines)
    sheet = np.concatenate(
        [np.pad(line, ((0, 6), (0, width - line.shape[1]), (0, 0)), constant_values=1.0) for line in lines]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(sheet, 0, 1) * 255).astype(np.uint8)).save(path, optimize=True)
    print(f"contact sheet: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--groups", nargs="+", default=None, help="photo groups to use (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many photos (in manifest order)")
    parser.add_argument(
        "--per-group", type=int, default=None, help="at most this many photos of each of single, pair, multi"
    )
    parser.add_argument("--contact-sheet", type=Path, default=None, help="PNG of eight photos and their layers")
    parser.add_argument("--sheet-row", default="full", choices=ROWS)
    parser.add_argument("--sheet-only", action="store_true", help="decompose only the contact sheet's photos")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--segmenter-cache",
        type=Path,
        default=None,
        help="keep segmenter answers here between runs (timings then exclude the cached passes)",
    )
    parser.add_argument("--segment-only", action="store_true", help="only fill --segmenter-cache (first passes)")
    args = parser.parse_args()

    samples = load_real_benchmark(groups=args.groups)
    if args.per_group:
        chosen = []
        for group in ("single", "pair", "multi"):
            chosen += [s for s in samples if group in s.groups and s not in chosen][: args.per_group]
        samples = chosen
    if args.limit:
        samples = samples[: args.limit]
    print(f"{len(samples)} photos; rows: {', '.join(args.rows)}")
    rows = build_rows(args.rows, args.segmenter_cache)
    if args.segment_only:
        learned = next(r.segmenter for r in rows.values() if isinstance(r.segmenter, MemoisedSegmenter))
        for index, sample in enumerate(samples):
            learned(sample.image)
            print(f"  segmented {index + 1}/{len(samples)} {sample.id}", flush=True)
        return
    sheet_ids = None
    if args.contact_sheet is not None:
        singles = [s.id for s in samples if "single" in s.groups][:3]
        multis = [s.id for s in samples if "multi" in s.groups or "pair" in s.groups][:5]
        sheet_ids = set(singles + multis)
        if args.sheet_only:
            samples = [s for s in samples if s.id in sheet_ids]
    result = evaluate(rows, samples, sheet_ids)
    summary = {
        row: {group: summarise(records, group) for group in ("single", "pair", "multi", None) if group != "x"}
        for row, records in result["rows"].items()
    }
    for groups in summary.values():
        groups["all"] = groups.pop(None)
    print(table(summary))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python", "benchmarks/bench_real_photos.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "summary": summary,
        "records": result["rows"],
        "note": "No shadow or clean-plate photos with a redistributable licence were found (see "
        "benchmarks/data/real/README.md): shadow IoU and background ratio are not measured on real photos.",
    }
    write_results(args.output, payload)
    if args.contact_sheet is not None and result["layers"]:
        contact_sheet(result["layers"], samples, args.contact_sheet, args.sheet_row)


if __name__ == "__main__":
    main()
