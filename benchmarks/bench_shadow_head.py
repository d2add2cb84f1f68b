"""Shadow-head ablation (issue 12, items 3 and 5: the shadow rows), on held-out synthetic composites.

    OMP_NUM_THREADS=1 python benchmarks/bench_shadow_head.py                       # 3 seeds x 150 composites
    OMP_NUM_THREADS=1 python benchmarks/bench_shadow_head.py --sheet docs/images/shadow_head_real.jpg
    OMP_NUM_THREADS=1 python benchmarks/bench_shadow_head.py --head shadow-guided s1/shadow-guided s2/shadow-guided

Rows (every row gets the same photo, the object's matte as a segmenter would give it and the union of all mattes):

- ``classical``: `DarkeningShadowExtractor` (the tool chain's default);
- ``shadow head``: the shipped ``shadow-guided`` head alone (`LearnedShadowExtractor`, mode ``alone``);
- ``head refining classical``: the same head given the classical estimate as well (mode ``refine``).

Data: composites made like the head's training data (`liwi_diffusers.training.shadow_head.make_shadow_sample`)
but only from photos the head never saw: cut-outs of chelsea, china and flower, grounds from chelsea, china, flower
and gravel (``examples/train_shadow_head.py`` trains on the others). Each seed draws its own composites; figures are
the mean +- sample standard deviation over the 3 seeds. The composites come from the same synthesizer as the
training data, which favours the head: this measures generalisation to new photos and objects, not to real shadows.
With several ``--head`` folders (the recipe run with ``--seed 0 1 2``), the head rows are scored for each head on the
same composites: the figures are over every (head, composite seed) pair, and "IoU std over heads" is the spread of
the heads' own means, i.e. what the training seed changes.

Scores per object, over the pixels where its shadow can be seen (not under the object itself):

- shadow IoU: IoU of ``sigma > 0.1`` against the true ``sigma > 0.1``, over the objects that cast a visible shadow;
- recomposition error: mean |object + (1 - alpha)(1 - sigma)(beneath) - the exact composite| over the image (in
  [0, 1]; with the true sigma it is 0);
- false shadow: on the objects without a shadow, the predicted shadow area (sigma > 0.1) over the object's area.

The real-photo benchmark (``benchmarks/data/real``) has no shadow masks (its README), so the real-photo shadow
target cannot be measured; ``--sheet`` renders a contact sheet of real photos from it instead (photo, classical
shadow, head shadow, head refining classical; the human object masks as the mattes). Results:
``benchmarks/results/shadow_head.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))
from results_io import mean_std, write_results  # noqa: E402

RESULTS = ROOT / "results" / "shadow_head.json"
ROWS = ("classical", "shadow head", "head refining classical")
THRESHOLD = 0.1
SHEET_PHOTOS = (  # real photos of objects in direct light with visible cast or contact shadows (chosen by eye)
    "coco000000214753",
    "coco000000352257",
    "coco000000360452",
    "coco000000434204",
    "coco000000311303",
    "coco000000261888",
    "coco000000234748",
    "coco000000458756",
)


def build_rows(heads: list[str]) -> dict[str, list[Any]]:
    """Per row, its extractors: one for the classical row, one per head (training seed) for the head rows."""
    from liwi_diffusers.tools import DarkeningShadowExtractor, LearnedShadowExtractor

    return {
        "classical": [DarkeningShadowExtractor()],
        "shadow head": [LearnedShadowExtractor.from_pretrained(head, mode="alone") for head in heads],
        "head refining classical": [LearnedShadowExtractor.from_pretrained(head, mode="refine") for head in heads],
    }


def held_out_data(cutouts_path: Path) -> tuple[list, list, list[str]]:
    from train_shadow_head import HELD_OUT_PHOTOS, load_cutouts

    return load_cutouts(cutouts_path, HELD_OUT_PHOTOS)


def score(sample: Any, sigma: np.ndarray) -> dict[str, float | None]:
    visible = sample.alpha < 0.5
    truth = (sample.sigma > THRESHOLD) & visible
    predicted = (sigma > THRESHOLD) & visible
    union = int((truth | predicted).sum())
    exact = sample.premultiplied + (1 - sample.alpha[:, :, None]) * (1 - sample.sigma[:, :, None]) * sample.beneath
    recomposed = sample.premultiplied + (1 - sample.alpha[:, :, None]) * (1 - sigma[:, :, None]) * sample.beneath
    object_area = max(1.0, float((sample.alpha >= 0.5).sum()))
    return {
        "iou": float((truth & predicted).sum() / union) if truth.any() else None,
        "recomposition": float(np.abs(recomposed - exact).mean()),
        "false_shadow": float(predicted.sum() / object_area) if not truth.any() else None,
    }


def evaluate(
    rows: dict[str, list[Any]], heads: list[str], data: tuple, seeds: list[int], count: int, size: int
) -> dict[str, Any]:
    """Every row's extractors on the same composites of each seed.

    ``summary[row][metric]``: mean +- sample std over every (head, composite seed) pair; with more than one head,
    ``summary[row]["over_heads"][metric]``: the same over the heads' own means (the spread of training seeds).
    """
    from liwi_diffusers.training.shadow_head import make_shadow_sample

    cutouts, backgrounds, _ = data
    per_seed: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        samples = [make_shadow_sample(cutouts, backgrounds, rng, size) for _ in range(count)]
        for row, extractors in rows.items():
            for index, extractor in enumerate(extractors):
                scores, start = [], time.perf_counter()
                for sample in samples:
                    scores.append(score(sample, extractor(sample.photo, sample.matte, sample.occupied)))
                seconds = (time.perf_counter() - start) / count
                ious = [s["iou"] for s in scores if s["iou"] is not None]
                false = [s["false_shadow"] for s in scores if s["false_shadow"] is not None]
                head = None if row == "classical" else heads[index]
                result = {
                    "seed": seed,
                    "head": head,
                    "iou": float(np.mean(ious)),
                    "recomposition": float(np.mean([s["recomposition"] for s in scores])),
                    "false_shadow": float(np.mean(false)) if false else 0.0,
                    "with_shadow": len(ious),
                    "without_shadow": len(false),
                    "seconds_per_object": seconds,
                }
                per_seed[row].append(result)
                name = row if head is None or len(heads) == 1 else f"{row} [{'/'.join(Path(head).parts[-2:])}]"
                print(
                    f"  seed {seed} {name:40s} IoU {result['iou']:.3f} recomposition {result['recomposition']:.4f} "
                    f"false shadow {result['false_shadow']:.3f} ({seconds * 1000:.0f} ms/object)",
                    flush=True,
                )
    metrics = ("iou", "recomposition", "false_shadow", "seconds_per_object")
    summary: dict[str, Any] = {}
    for row, results in per_seed.items():
        summary[row] = {key: mean_std([r[key] for r in results]) for key in metrics}
        if row != "classical" and len(heads) > 1:
            means = {key: [np.mean([r[key] for r in results if r["head"] == h]) for h in heads] for key in metrics}
            summary[row]["over_heads"] = {key: mean_std(values) for key, values in means.items()}
    return {"summary": summary, "per_seed": per_seed}


def contact_sheet(rows: dict[str, Any], path: Path, photos: tuple[str, ...], side: int = 400) -> None:
    """Photo | classical | head | head refining classical, shadows drawn in red over the photo (human masks)."""
    import cv2
    from PIL import Image, ImageDraw
    from real_data import load_real_benchmark

    by_id = {sample.id: sample for sample in load_real_benchmark()}
    lines = []
    for photo_id in photos:
        sample = by_id[photo_id]
        image = sample.image
        scale = side / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        masks = [cv2.resize(m, size, interpolation=cv2.INTER_AREA) for m in sample.object_masks]
        occupied = np.max(masks, axis=0)
        tiles = [small]
        for extractor in rows.values():
            extractor = extractor[0]  # the first head
            sigma = np.max([extractor(small, mask, occupied) for mask in masks], axis=0)
            tile = small * (1 - 0.35 * occupied[:, :, None])  # objects dimmed a little
            red = np.clip(sigma / 0.6, 0, 1)[:, :, None]
            tiles.append(tile * (1 - red) + red * np.array([1.0, 0.0, 0.0], np.float32))
        canvas = np.full((small.shape[0] + 4, side * len(tiles), 3), 1.0, np.float32)
        for k, tile in enumerate(tiles):
            canvas[: tile.shape[0], k * side : k * side + tile.shape[1]] = tile
        lines.append(canvas)
    sheet = Image.fromarray(np.round(np.clip(np.vstack(lines), 0, 1) * 255).astype(np.uint8))
    header = Image.new("RGB", (sheet.width, 24), "white")
    draw = ImageDraw.Draw(header)
    for k, title in enumerate(("photo", *rows)):
        draw.text((k * side + 6, 6), title, fill="black")
    full = Image.new("RGB", (sheet.width, sheet.height + 24), "white")
    full.paste(header, (0, 0))
    full.paste(sheet, (0, 24))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp" + path.suffix)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        full.save(tmp, quality=88)
    else:
        full.save(tmp)
    tmp.replace(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--head",
        nargs="+",
        default=["shadow-guided"],
        help="shipped name or ShadowHead folder; several (one per training seed): figures over all of them",
    )
    parser.add_argument("--cutouts", type=Path, default=Path("shadow-out/cutouts.npz"), help="the recipe's cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--count", type=int, default=150, help="composites per seed")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--sheet", type=Path, default=None, help="also render the real-photo contact sheet here")
    parser.add_argument("--skip-synthetic", action="store_true", help="only the contact sheet")
    args = parser.parse_args()
    rows = build_rows(args.head)
    if args.sheet is not None:
        contact_sheet(rows, args.sheet, SHEET_PHOTOS)
    if args.skip_synthetic:
        return
    data = held_out_data(args.cutouts)
    print(f"held-out cut-outs: {', '.join(data[2])}; {len(data[1])} grounds; seeds {args.seeds} x {args.count}")
    results = evaluate(rows, args.head, data, args.seeds, args.count, args.size)
    spread = len(args.head) > 1
    lines = [
        "| row | shadow IoU (sigma > 0.1) | recomposition error | false shadow (no-shadow objects) | ms/object |"
        + (" IoU std over heads |" if spread else ""),
        "| --- | --- | --- | --- | --- |" + (" --- |" if spread else ""),
    ]
    for row, s in results["summary"].items():
        over = s.get("over_heads")
        lines.append(
            f"| {row} | {s['iou']['mean']:.3f} +- {s['iou']['std']:.3f} | {s['recomposition']['mean']:.4f} +- "
            f"{s['recomposition']['std']:.4f} | {s['false_shadow']['mean']:.3f} +- {s['false_shadow']['std']:.3f} | "
            f"{s['seconds_per_object']['mean'] * 1000:.0f} |"
            + ((f" {over['iou']['std']:.3f} |" if over else " - |") if spread else "")
        )
    print("\n".join(lines))
    payload = {
        "command": " ".join(["python", "benchmarks/bench_shadow_head.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "head": args.head if len(args.head) > 1 else args.head[0],
        "held_out_cutouts": data[2],
        "threshold": THRESHOLD,
        "composites_per_seed": args.count,
        "size": args.size,
        "real_photo_shadow_iou": "not measurable: benchmarks/data/real has no shadow masks (see its README)",
        **results,
    }
    write_results(args.output, payload)


if __name__ == "__main__":
    main()
