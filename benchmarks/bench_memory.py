"""Peak memory and time of a whole decomposition (load, decompose, check, write a PSD) by photo size.

    python benchmarks/bench_memory.py                       # 1, 4, 12 MP, the default decomposer
    python benchmarks/bench_memory.py --megapixels 1 4 12 36 64 --method weight-free
    python benchmarks/bench_memory.py --megapixels 1 12 --stage-seconds 3   # seconds of the full-size stage instead

Each size runs in a fresh process (peak RSS is the child's high-water mark, `ru_maxrss`), on a real photo
(scikit-image's astronaut, upscaled to the size: the objects scale with it) saved as JPEG and decomposed through
the `liwi decompose` code path (its seconds include pymatting's and ONNX Runtime's start-up in that process).
With the learned segmenter, one more segmenter pass on the working-size photo is timed afterwards, in the same
process, for the ratio "whole decomposition / one segmenter pass". The 1-minute load average before each size is
recorded too (seconds on a shared machine depend on it; peak RSS does not). Results: ``benchmarks/results/memory.json``.

``--stage-seconds N`` times, instead, what the photo's size costs beyond the segmenter: the full-size stage
(``ToolChainDecomposer._assemble``, the reconcile included), the PSD write and the check, N times on the same photo
with the segmenter's answers memoised (whole photo only, ``tiles=0``) after a first, untimed run. Results:
``benchmarks/results/memory_stage_seconds.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_io import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"

CHILD = r"""
import contextlib, io, json, re, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from skimage import data

megapixels, method, folder = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
width = int(round(height * 4 / 3))
photo = Image.fromarray(data.astronaut()).resize((width, height), Image.LANCZOS)
path = folder / f"photo_{megapixels:g}mp.jpg"
photo.save(path, quality=92)
del photo
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from liwi_diffusers.cli import main
start = time.perf_counter()
line = io.StringIO()
with contextlib.redirect_stdout(line):  # the CLI's result line: objects found, recomposition error
    code = main(["decompose", str(path), "-o", str(folder / "out"), "--overwrite", "--method", method,
                 "--max-pixels", str(width * height + 1)])
seconds = time.perf_counter() - start
found = re.search(r"\((\d+) objects?,.*recomposition error mean ([\d.]+) max ([\d.]+)", line.getvalue())
objects, mean_error, max_error = (int(found[1]), float(found[2]), float(found[3])) if found else (None, None, None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
segmenter_s = None
if method == "tools":  # one segmenter pass on the working-size photo, for the ratio
    from liwi_diffusers.image_io import load_image
    from liwi_diffusers.tools._utils import as_rgb, resize, scale_for
    from liwi_diffusers.tools.segmenter import OnnxSegmenter
    rgb = as_rgb(load_image(path, max_pixels=width * height + 1))
    scale = scale_for(rgb.shape, 1024)
    work = resize(rgb, (round(rgb.shape[0] * scale), round(rgb.shape[1] * scale)))
    segmenter = OnnxSegmenter.from_cache()
    segmenter(work)
    tick = time.perf_counter()
    segmenter(work)
    segmenter_s = time.perf_counter() - tick
print(json.dumps({"megapixels": megapixels, "width": width, "height": height, "exit": code, "seconds": seconds,
                  "peak_rss_mb": peak, "rss_before_mb": baseline, "segmenter_pass_s": segmenter_s,
                  "objects": objects, "recomposition_max_error": max_error, "recomposition_mean_error": mean_error}))
"""

STAGE_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
from PIL import Image
from skimage import data
from liwi_diffusers.export import save_layered
from liwi_diffusers.image_io import load_image
from liwi_diffusers.tools import ToolChainDecomposer

megapixels, repeats, folder = float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
width = int(round(height * 4 / 3))
path = folder / f"photo_{megapixels:g}mp.jpg"
Image.fromarray(data.astronaut()).resize((width, height), Image.LANCZOS).save(path, quality=92)
image = load_image(path, max_pixels=width * height + 1)
decomposer = ToolChainDecomposer(tiles=0)
segmenter, answers = decomposer.segmenter, {}

class Memoised:  # the segmenter's answers, kept: only the first run pays for its passes
    name = getattr(segmenter, "name", "segmenter")

    def __call__(self, work):
        key = hash(work.tobytes())
        if key not in answers:
            answers[key] = segmenter(work)
        return answers[key]

if segmenter is not None:
    decomposer._segmenter = Memoised()
seconds = {"full_size_stage": [], "write_psd": [], "check": []}
assemble = decomposer._assemble

def timed_assemble(*args):
    start = time.perf_counter()
    layered = assemble(*args)
    seconds["full_size_stage"].append(time.perf_counter() - start)
    return layered

decomposer._assemble = timed_assemble
for _ in range(repeats + 1):
    layered = decomposer(image)
    start = time.perf_counter()
    save_layered(layered, folder / "stage.psd")
    seconds["write_psd"].append(time.perf_counter() - start)
    start = time.perf_counter()
    report = layered.check(image)
    seconds["check"].append(time.perf_counter() - start)
print(json.dumps({"megapixels": megapixels, "width": width, "height": height, "objects": layered.num_objects,
                  "recomposition_max_error": report.max_abs_error,
                  **{name: values[1:] for name, values in seconds.items()}}))
"""


def run_child(code: str, args: list[str], megapixels: float, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Run ``code`` in a fresh interpreter; its last JSON line as a dict, or None (the failure goes to ``rows``)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"{megapixels} MP: failed ({done.stderr.strip().splitlines()[-1:]})")
        rows.append({"megapixels": megapixels, "error": done.stderr[-2000:]})
        return None
    return json.loads(lines[-1])


def stage_seconds(megapixels: list[float], repeats: int, output: Path) -> None:
    """``--stage-seconds``: seconds of the full-size stage, the PSD write and the check per size (see the docstring)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in megapixels:
            load = os.getloadavg()[0]
            child = run_child(STAGE_CHILD, [str(size), str(repeats), folder], size, rows)
            if child is None:
                continue
            row = {**child, "load_average_before": load}
            rows.append(row)
            print(
                f"{size:5g} MP: full-size stage {min(row['full_size_stage']):.2f}-{max(row['full_size_stage']):.2f} s, "
                f"PSD {min(row['write_psd']):.2f}-{max(row['write_psd']):.2f} s, check "
                f"{min(row['check']):.2f}-{max(row['check']):.2f} s, max error {row['recomposition_max_error']:.2g} "
                f"(load average before: {load:.1f})",
                flush=True,
            )
    write_results(output, {"repeats": repeats, "cpu_count": os.cpu_count(), "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", nargs="+", type=float, default=[1, 4, 12])
    parser.add_argument("--method", default="tools", choices=("tools", "fast", "weight-free"))
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/memory*.json")
    parser.add_argument("--stage-seconds", type=int, default=0, metavar="N", help="time the full-size stage N times")
    args = parser.parse_args()
    if args.stage_seconds:
        output = args.output or RESULTS.with_name("memory_stage_seconds.json")
        stage_seconds(args.megapixels, args.stage_seconds, output)
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in args.megapixels:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            row = run_child(CHILD, [str(megapixels), args.method, folder], megapixels, rows)
            if row is None:
                continue
            row["wall_with_start_s"] = time.perf_counter() - started
            row["load_average_before"] = load
            rows.append(row)
            print(
                f"{megapixels:5g} MP ({row['width']}x{row['height']}): {row['seconds']:.1f} s, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['objects']} objects, recomposition max error "
                f"{row['recomposition_max_error']}, exit {row['exit']} (load average before: {load:.1f})",
                flush=True,
            )
    print(
        "\n| MP | size | objects | seconds | s/MP | segmenter pass s | decomposition / pass | peak RSS MB | load |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for row in rows:
        if "seconds" in row:
            segmenter = row.get("segmenter_pass_s")
            ratio = f"{row['seconds'] / segmenter:.1f}" if segmenter else "n/a"
            print(
                f"| {row['megapixels']:g} | {row['width']}x{row['height']} | {row['objects']} | {row['seconds']:.1f} | "
                f"{row['seconds'] / row['megapixels']:.2f} | {segmenter or float('nan'):.1f} | {ratio} | "
                f"{row['peak_rss_mb']:.0f} | {row['load_average_before']:.1f} |"
            )
    write_results(args.output or RESULTS, {"method": args.method, "cpu_count": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
