"""Box and point prompts on real photos: does a prompt give back the object it points at?

    python benchmarks/bench_prompts.py --per-group 10 --segmenter-cache DIR
    python benchmarks/bench_prompts.py --per-group 10 --segmenter-cache DIR --masks-only   # the prompt masks only

Data: the real-photo benchmark (``benchmarks/data/real/``, read by ``benchmarks/real_data.py``). For every
annotated object of every photo, one decomposition with one prompt and ``only_prompts=True``:

- ``box``: the object's bounding box (of its mask >= 0.5), with the learned segmenter (ISNet);
- ``point``: one point at the object's interior (the pixel farthest from its edge: maximum of the distance
  transform), with the learned segmenter;
- ``point-no-detector``: ``point`` without the object detector's boxes (which points try first when NanoDet is
  downloaded; `PromptSegmenter.segment_point`);
- ``box-weight-free``: the bounding box without learned weights (GrabCut seeded by the box);
- ``box-rules`` / ``point-rules``: as ``box`` / ``point``, always with `PromptSegmenter`'s selection rules over the
  segmenter's regions and GrabCut (the default), to compare with ``--prompt-head`` in one run.

``--prompt-head FOLDER`` puts a trained prompt head (``examples/train_prompt_head.py``) in the ``box`` / ``point`` rows
(`liwi_diffusers.tools.learned_prompts`); without it those rows use the decomposer's default, the rules.

Score: soft IoU (as in ``bench_real_photos.py``, whose scoring and segmenter cache are reused) of the prompted
object layer's alpha against the true mask; a prompt that gave no layer scores 0. With ``--masks-only`` the
prompt's mask (`PromptSegmenter`) is scored before matting and shadows, which is quick for trying crop settings.
Results go to ``benchmarks/results/prompts.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_photos import MemoisedSegmenter, soft_iou
from real_data import load_real_benchmark
from results_io import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "prompts.json"
ROWS = ("box", "point", "point-no-detector", "box-weight-free", "box-rules", "point-rules")
GROUPS = ("single", "pair", "multi")


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The pixel bounding box ``(x0, y0, x1, y1)`` (exclusive right/bottom) of ``mask >= 0.5``."""
    rows = np.flatnonzero((mask >= 0.5).any(axis=1))
    cols = np.flatnonzero((mask >= 0.5).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel ``(x, y)`` of ``mask >= 0.5`` farthest from its edge."""
    solid = np.pad((mask >= 0.5).astype(np.uint8), 1)
    distance = cv2.distanceTransform(solid, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def prompt_for(row: str, truth: np.ndarray) -> dict[str, Any]:
    if row.startswith("point"):
        return {"points": [interior_point(truth)]}
    return {"boxes": [box_of(truth)]}


def run_row(row: str, decomposer: Any, samples: list[Any], masks_only: bool) -> list[dict[str, Any]]:
    from liwi_diffusers.tools.prompts import parse_prompts

    records = []
    for sample in samples:
        image = sample.image
        height, width = image.shape[:2]
        for index, truth in enumerate(sample.object_masks):
            if not (truth >= 0.5).any():
                continue
            prompt = prompt_for(row, truth)
            start = time.perf_counter()
            if masks_only:
                prompts = parse_prompts(size=(width, height), **prompt)
                detector = decomposer.detector  # its boxes are what points try first, as in a decomposition
                detected = [d.box for d in detector(image, max_detections=decomposer.max_objects)] if detector else []
                alpha = decomposer.prompt_segmenter(image, prompts, decomposer.segmenter, detected)[0]
            else:
                layered = decomposer(image, only_prompts=True, **prompt)
                layer = layered.metadata["prompt_layers"][0]
                alpha = layered.foregrounds[layer][:, :, 3] if layer is not None else np.zeros_like(truth)
            seconds = time.perf_counter() - start
            iou = soft_iou(alpha, truth)
            records.append(
                {
                    "id": sample.id,
                    "object": index,
                    "label": sample.labels[index],
                    "groups": list(sample.groups),
                    "prompt": {k: [list(v) for v in vs] for k, vs in prompt.items()},
                    "iou": iou,
                    "seconds": seconds,
                }
            )
            print(
                f"  {row:16s} {sample.id:28s} object {index} ({sample.labels[index]}): IoU {iou:.3f} ({seconds:.1f} s)"
            )
        sample.release()
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for group in (*GROUPS, "all"):
        chosen = [r for r in records if group == "all" or group in r["groups"]]
        ious = [r["iou"] for r in chosen]
        out[group] = {
            "objects": len(ious),
            "mean_iou": float(np.mean(ious)) if ious else None,
            "median_iou": float(np.median(ious)) if ious else None,
            "found": float(np.mean([v >= 0.5 for v in ious])) if ious else None,
            "seconds_mean": float(np.mean([r["seconds"] for r in chosen])) if chosen else None,
        }
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| row | group | objects | mean IoU | median IoU | IoU >= 0.5 | s/prompt |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, groups in summary.items():
        for group, s in groups.items():
            if not s["objects"]:
                continue
            lines.append(
                f"| {row} | {group} | {s['objects']} | {s['mean_iou']:.3f} | {s['median_iou']:.3f} | "
                f"{s['found']:.3f} | {s['seconds_mean']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=["box", "point"])
    parser.add_argument("--per-group", type=int, default=None, help="at most this many photos of each group")
    parser.add_argument("--limit", type=int, default=None, help="at most this many photos")
    parser.add_argument("--masks-only", action="store_true", help="score the prompt masks before matting")
    parser.add_argument("--segmenter-cache", type=Path, default=None, help="keep segmenter answers here")
    parser.add_argument("--prompt-head", type=Path, default=None, help="a trained prompt head's folder")
    parser.add_argument("--sharpness", type=float, default=None, help="LearnedPromptSegmenter's sharpness")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from liwi_diffusers import load_decomposer
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    samples = load_real_benchmark()
    if args.per_group:
        chosen: list[Any] = []
        for group in GROUPS:
            chosen += [s for s in samples if group in s.groups and s not in chosen][: args.per_group]
        samples = chosen
    if args.limit:
        samples = samples[: args.limit]
    learned = raw = None
    if {"box", "point", "point-no-detector", "box-rules", "point-rules"} & set(args.rows):
        raw = OnnxSegmenter.from_cache()
        learned = MemoisedSegmenter(raw, args.segmenter_cache)
    print(f"{len(samples)} photos, {sum(len(s.mask_paths) for s in samples)} objects; rows: {', '.join(args.rows)}")
    records: dict[str, list[dict[str, Any]]] = {}
    for row in args.rows:
        if row == "box-weight-free":
            decomposer = load_decomposer("weight-free")
        else:
            detector = {"detector": None} if row == "point-no-detector" else {}
            decomposer = load_decomposer("tools", segmenter=learned, **detector)
            if row in ("box", "point") and args.prompt_head is not None:
                from liwi_diffusers.tools.learned_prompts import LearnedPromptSegmenter
                from liwi_diffusers.tools.prompts import PromptSegmenter

                options = {} if args.sharpness is None else {"sharpness": args.sharpness}
                head = LearnedPromptSegmenter.from_pretrained(args.prompt_head, segmenter=raw, **options)
                decomposer.prompt_segmenter = PromptSegmenter(learned=head)
            else:
                from liwi_diffusers.tools.prompts import PromptSegmenter

                decomposer.prompt_segmenter = PromptSegmenter(learned=None)
        records[row] = run_row(row, decomposer, samples, args.masks_only)
    summary = {row: summarise(rows) for row, rows in records.items()}
    print(table(summary))
    payload = {
        "command": " ".join(["python", "benchmarks/bench_prompts.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "masks_only": args.masks_only,
        "prompt_head": None if args.prompt_head is None else str(args.prompt_head),
        "sharpness": args.sharpness,
        "targets": {"box": 0.85, "point": 0.75},
        "summary": summary,
        "records": records,
    }
    write_results(args.output, payload)


if __name__ == "__main__":
    main()
