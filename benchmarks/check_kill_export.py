"""Kill `liwi decompose` during the PSD export of a 6000x6000 photo (SIGTERM, then SIGKILL) and rerun it.

The decomposition is replaced by an instant stand-in (one object): what is measured is the export.
Prints, per signal, the exit status, what the kill left in the output folder and, after SIGKILL,
what a rerun of the same command left.

    python benchmarks/check_kill_export.py /tmp/kill-export
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

WRAPPER = """
import sys, numpy as np
import liwi_diffusers.tools.decomposer as d
from liwi_diffusers import LayeredImage
from liwi_diffusers.cli import main
class Instant:
    def __init__(self, *a, **k): pass
    def __call__(self, image, *a, **k):
        photo = np.asarray(image.convert("RGB"))
        fg = np.zeros((*photo.shape[:2], 4), np.float32); fg[1000:5000, 1000:5000] = 0.8
        return LayeredImage(photo, [fg], None, ["box"])
d.ToolChainDecomposer = Instant  # the decomposition itself is not what is measured
sys.exit(main(sys.argv[1:]))
"""


def main() -> None:
    root = Path(sys.argv[1])
    root.mkdir(exist_ok=True)
    photo = root / "big.png"
    if not photo.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (6000, 6000, 3), dtype=np.uint8)).save(photo, compress_level=1)
    results = {}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        out = root / f"out-{signum.name}"
        command = [sys.executable, "-c", WRAPPER, "decompose", str(photo), "-o", str(out), "-q", "--overwrite"]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        while True:
            temps = list(out.glob(".*.tmp")) if out.exists() else []
            if temps and temps[0].stat().st_size > 20 << 20:
                break
            assert process.poll() is None
            time.sleep(0.05)
        size = temps[0].stat().st_size
        process.send_signal(signum)
        _, stderr = process.communicate()
        left = {p.name: p.stat().st_size for p in out.iterdir()}
        entry = {
            "temp_bytes_when_killed": size,
            "exit_status": process.returncode,
            "stderr": stderr.strip()[-200:],
            "left_after_kill": left,
        }
        if signum == signal.SIGKILL:
            start = time.perf_counter()
            rerun = subprocess.run(command, capture_output=True, text=True)
            entry["rerun_exit_status"] = rerun.returncode
            entry["rerun_seconds"] = round(time.perf_counter() - start, 1)
            entry["left_after_rerun"] = {p.name: p.stat().st_size for p in out.iterdir()}
        results[signum.name] = entry
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
