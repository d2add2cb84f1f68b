"""Benchmark of the ADD dataset builder: layered samples per minute with 1 and 2 workers, peak RSS.

Each configuration is a fresh `liwi-build` run (a subprocess, as users run it) on the photos that
installed packages ship, at 512 px by default, every process limited to one thread (so W workers
use W cores). The whole process tree is polled for its summed resident memory and CPU time.

Wall-clock figures depend on what else the machine runs; the load average is recorded with each
run, and a contention-free estimate is derived from the 1-worker run's per-task times (each task's
duration, scheduled greedily on W workers, plus the run's fixed overhead).

    python benchmarks/bench_dataset_builder.py                       # 512 px, 1 and 2 workers
    python benchmarks/bench_dataset_builder.py --samples 60 --contact-sheet docs/images/dataset_samples.png
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from liwi_dataset_builder import __version__
from liwi_dataset_builder.sample_data import export_sample_photos
from liwi_dataset_builder.writer import read_chunk_meta

RESULTS = Path(__file__).parent / "results" / "dataset_builder.json"
SINGLE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"), "1")


def run_build(
    photos: Path, out: Path, samples: int, resolution: int, workers: int, chunk_size: int, engine: str = "local"
) -> dict:
    """One fresh build as a subprocess; wall time, peak summed RSS and CPU time of the process tree.

    ``work_s`` is the span from the first curation task's start to the last shard's write (start-up
    and the card left out), from the files' modification times and the first task's duration.
    """
    command = [
        sys.executable,
        "-m",
        "liwi_dataset_builder",
        str(photos),
        "-o",
        str(out),
        "--num-samples",
        str(samples),
        "--resolution",
        str(resolution),
        "--workers",
        str(workers),
        "--chunk-size",
        str(chunk_size),
        "-q",
        *(["--engine", engine] if engine != "local" else []),
    ]
    load_before = os.getloadavg()[0]
    start, start_epoch = time.perf_counter(), time.time()
    process = subprocess.Popen(
        command, env={**os.environ, **SINGLE_THREAD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    root = psutil.Process(process.pid)
    peak_rss, cpu = 0, {}
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for proc in tree:
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        peak_rss = max(peak_rss, rss)
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"build failed ({process.returncode}): {stderr[-2000:]}")
    report = json.loads((out / "build_report.json").read_text())
    shards = sorted((out / "data").glob("*.parquet"))
    chunks = [read_chunk_meta(path) for path in shards]
    # Timings live beside the shards (.build/timings), so that a shard's bytes depend on its rows alone.
    timings = [json.loads((out / ".build" / "timings" / f"{path.name}.json").read_text()) for path in shards]
    rows = sum(chunk["rows"] for chunk in chunks)
    assets = sorted((out / ".build" / "assets").glob("*.npz"), key=lambda path: path.stat().st_mtime)
    first = next(c for c in report["curation"] if c["photo_id"] == assets[0].stem)
    work_start = assets[0].stat().st_mtime - first["seconds"]
    work = max(path.stat().st_mtime for path in shards) - work_start
    return {
        "engine": engine,
        "workers": workers,
        "wall_s": round(wall, 2),
        "rows": rows,
        "samples_per_min": round(rows / wall * 60.0, 1),
        "startup_s": round(work_start - start_epoch, 2),
        "work_s": round(work, 2),
        "work_samples_per_min": round(rows / work * 60.0, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "cpu_s": round(sum(cpu.values()), 1),
        "main_process_cpu_s": round(cpu.get(process.pid, 0.0), 2),
        "curation_s": [round(c["seconds"], 3) for c in report["curation"]],
        "curation_cpu_s": [round(c["cpu_seconds"], 3) for c in report["curation"]],
        "chunk_s": [t["seconds"] for t in timings],
        "chunk_cpu_s": [t["cpu_seconds"] for t in timings],
        "rejected_attempts": report["statistics"]["rejections"],
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "summary": stdout.strip(),
    }


def greedy_makespan(durations: list[float], workers: int) -> float:
    """Finish time of tasks handed out in order to the first free of ``workers`` (what a pool does)."""
    free = [0.0] * workers
    for duration in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + duration)
    return max(free)


def estimate(run: dict) -> float:
    """Wall time the run would take on idle cores, from CPU times (contention removed).

    Serial part: the main process's CPU time (imports, scan, writing the card) and one worker's
    start-up (the workers' CPU time outside tasks, divided by their number). Parallel part: the CPU
    times of curation tasks, then of chunk tasks, handed out in order to the first free worker.
    """
    workers = run["workers"]
    tasks = sum(run["curation_cpu_s"]) + sum(run["chunk_cpu_s"])
    serial = run["main_process_cpu_s"] + (run["cpu_s"] - run["main_process_cpu_s"] - tasks) / workers
    return serial + greedy_makespan(run["curation_cpu_s"], workers) + greedy_makespan(run["chunk_cpu_s"], workers)


def contact_sheet(out: Path, path: Path, count: int = 5) -> None:
    """A sheet of ``count`` train samples with as many different object counts as possible."""
    from liwi_dataset_builder.io import read_shard
    from liwi_dataset_builder.preview import contact_sheet as sheet

    rows = [row for shard in sorted((out / "data").glob("train-*.parquet")) for row in read_shard(shard)]
    chosen, seen = [], set()
    for row in rows:  # first one sample per object count, then fill up in order
        if row["num_objects"] not in seen:
            seen.add(row["num_objects"])
            chosen.append(row)
    chosen += [row for row in rows if row not in chosen][: max(0, count - len(chosen))]
    chosen = sorted(chosen[:count], key=lambda row: row["id"])
    image = sheet(chosen, cell=176)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    print(f"contact sheet: {path} ({path.stat().st_size / 2**20:.2f} MB, {image.width}x{image.height})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is reported")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--contact-sheet", type=Path, default=None, help="also save a contact sheet PNG here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-builder-") as scratch:
        photos = Path(scratch) / "photos"
        count = len(export_sample_photos(photos))
        tries: dict[int, list[dict]] = {workers: [] for workers in args.workers}
        for attempt in range(args.repeats):  # interleaved, so load changes hit every configuration alike
            for workers in args.workers:
                out = Path(scratch) / f"out-w{workers}-{attempt}"
                print(
                    f"building {args.samples} samples at {args.resolution} px from {count} photos, "
                    f"{workers} worker(s), run {attempt + 1} of {args.repeats}"
                )
                tries[workers].append(run_build(photos, out, args.samples, args.resolution, workers, args.chunk_size))
                if args.contact_sheet is not None and attempt == 0 and workers == args.workers[0]:
                    contact_sheet(out, args.contact_sheet)
        runs = []
        for results in tries.values():  # the fastest run of each configuration
            best = dict(min(results, key=lambda run: run["wall_s"]))
            best["all_wall_s"] = [run["wall_s"] for run in results]
            runs.append(best)

    single = next((run for run in runs if run["workers"] == 1), None)
    for run in runs:
        run["estimated_wall_s"] = round(estimate(run), 2)
        run["estimated_samples_per_min"] = round(run["rows"] / run["estimated_wall_s"] * 60.0, 1)
        if single:
            run["speedup_vs_1"] = round(single["wall_s"] / run["wall_s"], 2)
            run["estimated_speedup_vs_1"] = round(single["estimated_wall_s"] / run["estimated_wall_s"], 2)
    print()
    print(
        "| workers | wall s | samples/min | speed-up | samples/min, idle cores (est.) | speed-up (est.) "
        "| peak RSS MB | CPU s | load avg before -> after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        print(
            f"| {run['workers']} | {run['wall_s']} | {run['samples_per_min']} | {run.get('speedup_vs_1', '-')}x "
            f"| {run['estimated_samples_per_min']} | {run.get('estimated_speedup_vs_1', '-')}x "
            f"| {run['peak_rss_mb']} | {run['cpu_s']} "
            f"| {run['load_average_before']} -> {run['load_average_after']} |"
        )
    result = {
        "benchmark": "liwi-build: layered samples per minute",
        "builder_version": __version__,
        "samples": args.samples,
        "resolution": args.resolution,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "photos": count,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "threads_per_process": 1,
        "targets": {"samples_per_min_1_worker": 30, "speedup_2_workers": 1.7},
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
