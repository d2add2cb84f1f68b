"""Time of the tool-chain decomposer on hostile and ordinary inputs, against the median of each size.

Corpus, per size (256, 512, 1024 px square by default): pure white, black, blue, mid grey, uniform
noise, gaussian noise, a checkerboard, a gradient, a black rectangle on white, bundled photos
(resized) and a synthetic photo with 20 small objects; plus a 1x1, a 2x2000 strip and one 4000x3000 photo (``--huge``).

Each input runs through ``ToolChainDecomposer(segmenter=None)`` (weight-free) and, when the learned
segmenter is in the model cache, ``ToolChainDecomposer()`` (``--learned``). ``--before`` also times the
weight-free path with the proposer as it was before the flat-image fix (no dither, no contrast check,
no GrabCut budget) in a subprocess per input, stopped after ``--before-timeout`` seconds.

    OMP_NUM_THREADS=1 python benchmarks/bench_input_times.py --sizes 256 512 --before

Prints a table (input, size, seconds, objects, ratio to the median of its size) and writes
benchmarks/results/input_times.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from liwi_diffusers.sample_images import load_sample_image
from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools import proposals as proposals_module
from liwi_diffusers.tools.proposals import SaliencyProposer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")
RESULTS = Path(__file__).parent / "results" / "input_times.json"


def many_objects(size: int, count: int = 20, seed: int = 0) -> np.ndarray:
    """A textured floor with ``count`` small coloured discs and boxes, each with a soft shadow."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.55 + 0.1 * rows, 0.5 + 0.05 * cols, 0.45 + 0.0 * rows], axis=2)
    image = image + rng.normal(0, 0.01, image.shape)
    for _ in range(count):
        cy, cx = rng.uniform(0.08, 0.92, 2)
        radius = rng.uniform(0.02, 0.05)
        color = rng.uniform(0, 1, 3)
        shadow = (rows - cy - 0.6 * radius) ** 2 + (cols - cx - 0.6 * radius) ** 2 < (1.1 * radius) ** 2
        image[shadow] *= 0.7
        if rng.random() < 0.5:
            shape = (rows - cy) ** 2 + (cols - cx) ** 2 < radius**2
        else:
            shape = (np.abs(rows - cy) < radius) & (np.abs(cols - cx) < 0.8 * radius)
        image[shape] = color
    return np.clip(image, 0, 1).astype(np.float32)


def flat_square(size: int) -> np.ndarray:
    """A black rectangle on white: flat colours with contrast (no shortcut applies)."""
    image = np.ones((size, size, 3), np.float32)
    image[3 * size // 8 : 5 * size // 8, 5 * size // 16 : 11 * size // 16] = 0.0
    return image


def corpus(sizes: list[int], huge: bool) -> list[tuple[str, np.ndarray]]:
    """(name, float RGB image) pairs; the name ends with the size group."""
    rng = np.random.default_rng(0)
    items: list[tuple[str, np.ndarray]] = []
    photos = {name: np.asarray(load_sample_image(name), np.float32) / 255.0 for name in PHOTOS}
    for size in sizes:
        shape = (size, size, 3)
        rows, cols = np.mgrid[0:size, 0:size]
        checker = (((rows // max(1, size // 8)) + (cols // max(1, size // 8))) % 2).astype(np.float32)
        items += [
            ("white", np.ones(shape, np.float32)),
            ("black", np.zeros(shape, np.float32)),
            ("blue", np.broadcast_to(np.array([0, 0, 1], np.float32), shape).copy()),
            ("grey", np.full(shape, 0.5, np.float32)),
            ("uniform-noise", rng.uniform(0, 1, shape).astype(np.float32)),
            ("gaussian-noise", np.clip(rng.normal(0.5, 0.2, shape), 0, 1).astype(np.float32)),
            ("checkerboard", np.repeat(checker[:, :, None], 3, axis=2)),
            ("gradient", np.repeat((cols / max(size - 1, 1)).astype(np.float32)[:, :, None], 3, axis=2)),
            ("flat-square", flat_square(size)),
            ("many-objects", many_objects(size)),
        ]
        items += [
            (name, cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)) for name, photo in photos.items()
        ]
    items = [(f"{name}@{image.shape[0]}", image) for name, image in items]
    items += [("1x1@tiny", np.full((1, 1, 3), 0.5, np.float32)), ("2x2000@tiny", rng.uniform(0, 1, (2, 2000, 3)))]
    if huge:
        photo = cv2.resize(photos["astronaut"], (4000, 3000), interpolation=cv2.INTER_CUBIC)
        items.append(("astronaut-4000x3000@huge", np.clip(photo, 0, 1).astype(np.float32)))
    return items


class LegacyProposer(SaliencyProposer):
    """The proposer before the fix: raw colours into GrabCut, no GrabCut budget (for the "before" column)."""

    def _grabcut(self, small: np.ndarray, init: np.ndarray) -> np.ndarray:
        is_fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if is_fg.all() or not is_fg.any():
            return np.zeros(init.shape, bool)
        image8 = np.round(small * 255).astype(np.uint8)[:, :, ::-1].copy()
        mask = init.copy()
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(image8, mask, None, bgd, fgd, self.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return is_fg
        return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _time(decomposer: ToolChainDecomposer, image: np.ndarray) -> tuple[float, int]:
    start = time.perf_counter()
    layered = decomposer(image)
    return time.perf_counter() - start, layered.num_objects


def _before_worker(image: np.ndarray, queue: multiprocessing.Queue) -> None:
    proposals_module._has_contrast = lambda small, min_spread=0.0: True  # no flat-image shortcut
    decomposer = ToolChainDecomposer(segmenter=None, proposer=LegacyProposer(max_objects=8))
    decomposer(many_objects(64))  # imports and numba kernels out of the timing
    queue.put("ready")
    queue.put(_time(decomposer, image))


def time_before(image: np.ndarray, timeout: float) -> tuple[float | None, int | None]:
    """Seconds and objects of the pre-fix weight-free path, or (None, None) past ``timeout``.

    A fresh (spawned, not forked: OpenMP) process per input, so a runaway GrabCut can be stopped.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_before_worker, args=(image, queue))
    process.start()
    try:
        queue.get(timeout=180)  # "ready"
        return queue.get(timeout=timeout)
    except Exception:  # queue.Empty: past the timeout (or the worker died)
        return None, None
    finally:
        if process.is_alive():
            process.kill()
        process.join()


def ratios(rows: list[dict], key: str) -> None:
    """Add ``{key}_ratio``: seconds over the median of the same size group."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            groups.setdefault(row["group"], []).append(row[key])
    for row in rows:
        values = groups.get(row["group"], [])
        if row.get(key) is not None and len(values) >= 3:
            row[f"{key}_ratio"] = row[key] / max(statistics.median(values), 1e-3)


def _write(path: Path, result: dict) -> None:
    """Atomic JSON write (rows so far are kept if the run is stopped)."""
    write_results(path, result, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--huge", action="store_true", help="add the 4000x3000 photo")
    parser.add_argument("--learned", action="store_true", help="also time the learned path (if cached)")
    parser.add_argument("--before", action="store_true", help="also time the pre-fix weight-free path")
    parser.add_argument("--before-only", nargs="*", default=None, help="input names (no size) for --before")
    parser.add_argument("--before-timeout", type=float, default=60.0)
    parser.add_argument("--inputs", nargs="*", default=None, help="input names (no size) to run; default all")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    weight_free = ToolChainDecomposer(segmenter=None)
    learned = None
    if args.learned:
        candidate = ToolChainDecomposer()
        learned = candidate if candidate.segmenter is not None else None
    weight_free(many_objects(64))  # warm-up: pymatting's numba compile, imports
    if learned is not None:
        learned(many_objects(64))
    rows = []
    load = os.getloadavg()[0]
    for name, image in corpus(args.sizes, args.huge):
        base, group = name.split("@")
        if args.inputs is not None and base not in args.inputs and group not in ("tiny", "huge"):
            continue
        row: dict = {"input": base, "group": group, "shape": list(image.shape[:2])}
        try:
            row["after_s"], row["objects"] = _time(weight_free, image)
            if learned is not None:
                row["learned_s"], row["learned_objects"] = _time(learned, image)
        except Exception as error:  # report, don't stop: a failing input is a finding
            row["error"] = f"{type(error).__name__}: {error}"
            print(f"  {name}: {row['error']}", file=sys.stderr, flush=True)
            rows.append(row)
            continue
        if args.before and (args.before_only is None or base in args.before_only):
            row["before_s"], row["before_objects"] = time_before(image, args.before_timeout)
            row["before_timed_out"] = row["before_s"] is None
        rows.append(row)
        print(f"  {name:28s} {row['after_s']:7.2f} s  {row['objects']} objects", file=sys.stderr, flush=True)
        _write(args.output, {"partial": True, "load_average_at_start": load, "rows": rows})
    for key in ("after_s", "learned_s", "before_s"):
        ratios(rows, key)

    header = f"{'input':26s} {'size':>10s} {'after s':>8s} {'obj':>4s} {'ratio':>6s}"
    header += f" {'learned s':>10s} {'ratio':>6s}" if learned is not None else ""
    header += f" {'before s':>9s} {'ratio':>6s}" if args.before else ""
    print(header)
    for row in rows:
        if "error" in row:
            print(f"{row['input']:26s} {'x'.join(map(str, row['shape'])):>10s} error: {row['error']}")
            continue
        line = f"{row['input']:26s} {'x'.join(map(str, row['shape'])):>10s} {row['after_s']:8.2f} {row['objects']:4d}"
        line += f" {row.get('after_s_ratio', float('nan')):6.2f}"
        if learned is not None:
            line += f" {row['learned_s']:10.2f} {row.get('learned_s_ratio', float('nan')):6.2f}"
        if args.before:
            before = row.get("before_s")
            text = (
                "-" if "before_s" not in row else (f">{args.before_timeout:.0f}" if before is None else f"{before:.2f}")
            )
            line += f" {text:>9s} {row.get('before_s_ratio', float('nan')):6.2f}"
        print(line)
    summary = {}
    for group in dict.fromkeys(row["group"] for row in rows):
        members = [row for row in rows if row["group"] == group]
        entry = {}
        for key in ("after_s", "learned_s"):
            scored = [row for row in members if f"{key}_ratio" in row]
            if scored:
                worst = max(scored, key=lambda row: row[f"{key}_ratio"])
                entry[key] = {
                    "median_s": statistics.median(row[key] for row in scored),
                    "worst": worst["input"],
                    "worst_ratio": worst[f"{key}_ratio"],
                }
        summary[group] = entry
        print(
            f"{group}: " + "; ".join(f"{k} worst {v['worst']} {v['worst_ratio']:.2f}x median" for k, v in entry.items())
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg()[0],
        "rows": rows,
        "summary": summary,
    }
    _write(args.output, result)
    print(f"wrote {args.output} (load average {load:.1f} -> {result['load_average_at_end']:.1f})")


if __name__ == "__main__":
    main()
