"""What a Space request costs in computing time, to choose ``LIWI_TIME_LIMIT`` for a machine.

Runs the example photos (and a blank one) at ``--side`` px through one tool-chain worker process of
``worker_pool.py``, as the Space does, and prints per photo and depth the worker's CPU seconds (what the
time limit counts, per worker thread) and the wall-clock seconds (which grow with the machine's load)::

    python spaces_demo/request_cost.py                      # depth 1 to 3, 1024 px, 1 thread per worker
    python spaces_demo/request_cost.py --depths 1 --threads 2

The learned segmenter is used when it is in the model cache (``liwi models download isnet``), as in the Space.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image
from worker_pool import WorkerPool, _cpu_seconds, decompose_in_worker, warm_up_tool_chain

from liwi_diffusers.sample_images import load_sample_image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos(side: int) -> dict[str, Image.Image]:
    """The example photos with their longer side at ``side`` px, and a blank (white) ``side`` x ``side`` one."""
    images = {}
    for name in PHOTOS:
        image = load_sample_image(name)
        factor = side / max(image.size)
        images[name] = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    images["blank"] = Image.new("RGB", (side, side), "white")
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1,2,3", help="comma-separated depths (1 to 3)")
    parser.add_argument("--side", type=int, default=1024, help="longer side of the photos in px (the Space's limit)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (the Space: cores / workers)")
    args = parser.parse_args()
    depths = [int(depth) for depth in args.depths.split(",")]
    pool = WorkerPool(1, initializer=warm_up_tool_chain, threads=args.threads)
    try:
        pool.run(int, ("1",), time_limit_s=600)  # started and warmed up
        (pid,) = pool.pids()
        print(f"{'photo':>10} {'depth':>5} {'objects':>7} {'parts':>5} {'CPU s':>7} {'wall s':>7} {'load':>5}")
        for depth in depths:
            for name, image in photos(args.side).items():
                if depth > 1 and name == "blank":
                    continue  # nothing to split
                cpu, start = _cpu_seconds(pid), time.monotonic()
                layered = pool.run(decompose_in_worker, ("tools", image, None, None, depth), time_limit_s=3600)
                wall = time.monotonic() - start
                used = (_cpu_seconds(pid) or 0.0) - (cpu or 0.0)
                parts = sum(len(part.leaves()) for tree in (layered.parts or {}).values() for part in tree)
                row = f"{name:>10} {depth:>5} {layered.num_objects:>7} {parts:>5} {used:>7.1f} {wall:>7.1f}"
                print(f"{row} {os.getloadavg()[0]:>5.1f}", flush=True)
    finally:
        pool.close()


if __name__ == "__main__":
    main()
