"""Fill benchmark: which inpainting method restores real photo pixels best in object-shaped holes?

    python benchmarks/bench_fill.py                      # 30 photos (20 holes), slow methods on 3
    python benchmarks/bench_fill.py --limit 105 --slow-limit 105
    python benchmarks/bench_fill.py --contact-sheet docs/images/fill_comparison.png
    python benchmarks/bench_fill.py --limit 105 --max-area 0.6 --slow-limit 0 \
        --methods smooth telea@256 telea@1024 ns@1024 biharmonic@256 fsr_fast@128 \
        --output benchmarks/results/fill_large_holes.json    # every photo, holes up to 60 % of it

There are no redistributable clean plates to score a fill against, so the holes are made where the truth is
known. For each photo of ``benchmarks/data/real/`` (read by ``benchmarks/real_data.py``), an annotated object's
mask (dilated by ``--dilation`` px, like the decomposer's holes) is moved to a place in the same photo where it
overlaps no annotated object; that hole is filled by each method and the fill is scored against the photo's
own pixels. The largest object of at most ``--max-area`` of the photo that fits somewhere is used; photos
where none fits are skipped. ``--limit`` photos are taken evenly spread over the manifest.

Metrics, inside the hole (means over the holes scored):

- ``L1``: mean |fill - truth| per channel, in 8-bit levels;
- ``SSIM``: skimage's structural similarity of the luminance, averaged over the hole's pixels;
- ``grad err``: mean |gradient magnitude of the fill - that of the truth| (Sobel on luminance, 8-bit levels);
- ``texture``: the fill's mean gradient magnitude over the truth's (1: as much detail as the photo; a smear is
  well below 1);
- ``wall s/fill`` and ``CPU s/fill``: wall-clock and process CPU seconds per fill of the whole photo (at most
  1024 px on the long side: the size the decomposer fills at), through `OpenCVInpainter` as the decomposer calls
  it (with ``dilation=0``: the hole is already dilated). On a shared, loaded machine the CPU figure is the one
  to trust (every method here runs single-threaded).

Rows named ``method@N`` run with ``working_size=N``. Methods in ``SLOW`` run on the first ``--slow-limit`` holes
only; the second table compares every method on those holes. Results go to ``benchmarks/results/fill.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load_real_benchmark

from liwi_diffusers.tools.inpainting import OpenCVInpainter

RESULTS = Path(__file__).resolve().parent / "results" / "fill.json"
# label -> OpenCVInpainter keyword arguments
METHODS: dict[str, dict[str, Any]] = {
    "smooth": {"method": "smooth"},  # the default, OpenCVInpainter()
    "smooth+texture": {"method": "smooth", "texture": True},  # the smooth fill with the photo's detail transferred
    "telea@1024+texture": {"method": "telea", "working_size": 1024, "texture": True},
    "telea@256": {"method": "telea", "working_size": 256},
    "ns@256": {"method": "ns", "working_size": 256},
    "telea@1024": {"method": "telea", "working_size": 1024},
    "ns@1024": {"method": "ns", "working_size": 1024},
    "biharmonic@256": {"method": "biharmonic", "working_size": 256},
    "fsr_fast@128": {"method": "fsr_fast", "working_size": 128},
    "fsr_fast@256": {"method": "fsr_fast", "working_size": 256},
    "shiftmap@128": {"method": "shiftmap", "working_size": 128},
    "shiftmap@256": {"method": "shiftmap", "working_size": 256},
    "fsr_best@128": {"method": "fsr_best", "working_size": 128},
}
SLOW = ("shiftmap@256", "fsr_best@128")


# ---------------------------------------------------------------------------------------------- holes
def place_hole(objects: list[np.ndarray], dilation: int, max_area: float, rng: np.random.Generator) -> Any:
    """An object-shaped hole moved to where it overlaps no annotated object, or None when none fits."""
    height, width = objects[0].shape
    occupied = np.zeros((height, width), bool)
    for mask in objects:
        occupied |= mask > 0.5
    occupied = cv2.dilate(occupied.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
    candidates = sorted(objects, key=lambda m: -float((m > 0.5).sum()))
    for mask in candidates:
        shape = cv2.dilate((mask > 0.5).astype(np.uint8), kernel) > 0
        area = shape.mean()
        if area > max_area or (mask > 0.5).sum() < 200:
            continue
        rows, cols = np.flatnonzero(shape.any(1)), np.flatnonzero(shape.any(0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        patch = shape[top:bottom, left:right]
        ys = np.arange(0, height - patch.shape[0] + 1, max(1, height // 24))
        xs = np.arange(0, width - patch.shape[1] + 1, max(1, width // 24))
        spots = [(y, x) for y in ys for x in xs]
        for index in rng.permutation(len(spots)):
            y, x = spots[index]
            if not (occupied[y : y + patch.shape[0], x : x + patch.shape[1]] & patch).any():
                hole = np.zeros((height, width), bool)
                hole[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
                return hole
    return None


# ---------------------------------------------------------------------------------------------- metrics
def luma(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114).astype(np.float32)


def gradient_magnitude(grey: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def score(fill: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    top, bottom = max(0, rows[0] - 8), min(hole.shape[0], rows[-1] + 9)
    left, right = max(0, cols[0] - 8), min(hole.shape[1], cols[-1] + 9)
    box = (slice(top, bottom), slice(left, right))
    grey_fill, grey_true = luma(fill)[box], luma(truth)[box]
    _, ssim_map = structural_similarity(grey_true, grey_fill, data_range=1.0, full=True)
    grad_fill, grad_true = gradient_magnitude(grey_fill), gradient_magnitude(grey_true)
    inside = hole[box]
    return {
        "l1": float(np.abs(fill - truth)[hole].mean() * 255.0),
        "ssim": float(ssim_map[inside].mean()),
        "grad_err": float(np.abs(grad_fill - grad_true)[inside].mean() * 255.0),
        "texture": float(grad_fill[inside].mean() / max(grad_true[inside].mean(), 1e-6)),
    }


# ---------------------------------------------------------------------------------------------- report
def summarise(records: list[dict], names: list[str], holes: set[int] | None = None) -> dict[str, dict[str, float]]:
    table = {}
    for name in names:
        rows = [r["methods"][name] for r in records if name in r["methods"] and (holes is None or r["index"] in holes)]
        if rows:
            table[name] = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
            table[name]["holes"] = len(rows)
    return table


def markdown(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| method | holes | L1 (8-bit) | SSIM | grad err | texture | wall s/fill | CPU s/fill |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['holes']} | {row['l1']:.2f} | {row['ssim']:.3f} | {row['grad_err']:.2f} "
            f"| {row['texture']:.2f} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} |"
        )
    return "\n".join(lines)


def contact_sheet(path: Path, examples: list[dict], names: list[str], tile: int = 200) -> None:
    """One row per example: the hole, the truth, then each method's fill (crops around the hole; grey: not run)."""
    from PIL import Image, ImageDraw

    columns = ["hole", "truth", *names]
    label_height = 14
    sheet = Image.new("RGB", (tile * len(columns), (tile + label_height) * len(examples) + label_height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * tile + 3, 1), name, fill="black")
    for r, example in enumerate(examples):
        hole, truth = example["hole"], example["truth"]
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        half = (max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1) * 3 // 5 + 8
        cy, cx = (rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2
        top, left = max(0, cy - half), max(0, cx - half)
        bottom, right = min(hole.shape[0], cy + half), min(hole.shape[1], cx + half)
        shown = truth.copy()
        shown[hole] = (1.0, 0.0, 1.0)
        grey = np.full_like(truth, 0.5)
        images = [shown, truth, *[example["fills"].get(n, grey) for n in names]]
        y = label_height + r * (tile + label_height)
        for c, image in enumerate(images):
            crop = np.round(np.clip(image[top:bottom, left:right], 0, 1) * 255).astype(np.uint8)
            thumb = Image.fromarray(crop)
            thumb.thumbnail((tile - 4, tile - 4))
            sheet.paste(thumb, (c * tile + 2, y + 2))
        draw.text((3, y + tile - 2), f"{example['id']} (hole {hole.mean():.1%})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=30, help="photos to try, evenly spread (default 30)")
    parser.add_argument("--slow-limit", type=int, default=3, help=f"holes for the slow methods {', '.join(SLOW)}")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--dilation", type=int, default=4, help="px the object mask is dilated by (default 4)")
    parser.add_argument("--max-area", type=float, default=0.15, help="largest hole, as a share of the photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact-sheet", type=Path, default=None, help="PNG of a few fills per method")
    parser.add_argument("--sheet-rows", type=int, default=6, help="examples on the contact sheet")
    parser.add_argument("--sheet-min-share", type=float, default=0.04, help="smallest hole (share) shown on it")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    samples = load_real_benchmark()
    picks = np.unique(np.linspace(0, len(samples) - 1, min(args.limit, len(samples))).round().astype(int))
    rng = np.random.default_rng(args.seed)
    inpainters = {name: OpenCVInpainter(dilation=0, **METHODS[name]) for name in args.methods}
    records: list[dict] = []
    examples: list[dict] = []
    skipped = 0
    for pick in picks:
        sample = samples[int(pick)]
        truth = sample.image
        hole = place_hole(sample.object_masks, args.dilation, args.max_area, rng)
        if hole is None:
            skipped += 1
            sample.release()
            continue
        index = len(records)
        record: dict[str, Any] = {"index": index, "id": sample.id, "hole_share": float(hole.mean()), "methods": {}}
        damaged = np.where(hole[:, :, None], 0.0, truth).astype(np.float32)
        fills = {}
        for name, inpainter in inpainters.items():
            if name in SLOW and index >= args.slow_limit:
                continue
            start, start_cpu = time.perf_counter(), time.process_time()
            fill = inpainter(damaged, hole)
            seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if not np.array_equal(fill[~hole], truth[~hole]):
                raise AssertionError(f"{name} changed pixels outside the hole on {sample.id}")
            record["methods"][name] = {**score(fill, truth, hole), "seconds": seconds, "cpu_seconds": cpu}
            fills[name] = fill
        black = score(damaged, truth, hole)
        record["methods"]["(black)"] = {**black, "seconds": 0.0, "cpu_seconds": 0.0}
        records.append(record)
        big = record["hole_share"] >= args.sheet_min_share
        if args.contact_sheet is not None and len(examples) < args.sheet_rows and big:
            examples.append({"id": sample.id, "hole": hole, "truth": truth, "fills": fills})
        print(f"{sample.id}: hole {record['hole_share']:.1%}", file=sys.stderr, flush=True)
        sample.release()

    names = [*args.methods, "(black)"]
    table = summarise(records, names)
    subset = summarise(records, names, set(range(min(args.slow_limit, len(records)))))
    print(f"## All {len(records)} holes ({skipped} photos skipped: no free place for an object's shape)\n")
    print(markdown(table))
    if subset:
        print(f"\n## The first {min(args.slow_limit, len(records))} holes, every method\n")
        print(markdown(subset))
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "holes": len(records),
        "skipped": skipped,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "table": table,
        "subset_table": subset,
        "records": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, args.output)
    if args.contact_sheet is not None and examples:
        contact_sheet(args.contact_sheet, examples, list(args.methods))
        print(f"\ncontact sheet: {args.contact_sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
