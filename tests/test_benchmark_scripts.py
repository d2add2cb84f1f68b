"""The timing benchmarks still run end to end on tiny models: they patch pipeline internals by name, so a renamed
function must break a test, not a GPU session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_benchmark_runs_tiny_on_the_cpu_and_times_liwi_heads_and_reconcile(tmp_path):
    output = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCHMARKS / "gpu" / "bench_gpu.py"), "--tiny", "--steps", "2"]
    command += ["--modes", "gpu", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    runs = {run["pipeline"]: run for run in json.loads(output.read_text())["runs"]}
    assert set(runs) == {"liwi", "qwen"}
    assert runs["liwi"]["reconcile_s"] > 0 and runs["liwi"]["heads_s"] > 0
    assert runs["liwi"]["recomposition_max_abs_error"] < 1 / 255


def test_pipeline_overhead_benchmark_times_every_part():
    command = [sys.executable, str(BENCHMARKS / "bench_pipeline.py"), "--one", "64", "--repeats", "1", "--threads", "1"]
    result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(row["parts_s"][name] > 0 for name in ("transformer", "vae", "heads", "reconcile", "check")), row
    assert row["recomposition_max_abs_error"] < 1 / 255
