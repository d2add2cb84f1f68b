"""Benchmark of `liwi-build --engine ray` against the local engine: samples per minute, same bytes.

Both engines build the same dataset (same photos, seed and layout) on the same cores: the local
engine with ``--workers W`` processes, the Ray engine on a local Ray with W CPUs. Runs alternate
in ABBA order (local, ray, ray, local, ...), so that load from other programs, even when it drifts,
hits both alike; the fastest run of each is reported. Each run is a fresh `liwi-build` subprocess, as users run it (see
`bench_dataset_builder.run_build`): end-to-end samples/min, and samples/min over the work phase
(first curation task to last shard, so without start-up: Python imports, the process pool or
``ray.init`` and Ray Data's actors). Every shard of every Ray run is compared, byte for byte, with
the local run's.

    python benchmarks/bench_ray_engine.py                      # 120 samples at 512 px, 2 workers
    python benchmarks/bench_ray_engine.py --samples 240 --repeats 2
    python benchmarks/bench_ray_engine.py --photos DIR --samples 1200   # a folder of photos instead of the bundled ones

Curation uses `liwi-build`'s default proposer: with ISNet downloaded, `peeling:isnet` (about 40 CPU seconds a
photo), so the engines' fixed start-up weighs less than with the weight-free tools.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_dataset_builder import SINGLE_THREAD, run_build
from results_io import write_results

from liwi_dataset_builder import __version__
from liwi_dataset_builder.sample_data import export_sample_photos
from liwi_dataset_builder.sources import expand_sources

RESULTS = Path(__file__).parent / "results" / "ray_engine.json"


def same_shards(first: Path, second: Path) -> tuple[int, int]:
    """(shards with identical bytes, shards) of two builds' ``data/`` folders."""
    names = sorted(path.name for path in (first / "data").glob("*.parquet"))
    if names != sorted(path.name for path in (second / "data").glob("*.parquet")):
        return 0, max(len(names), 1)
    same = sum((first / "data" / name).read_bytes() == (second / "data" / name).read_bytes() for name in names)
    return same, len(names)


def machine_load(runs: dict[str, dict]) -> dict:
    """The highest load average seen around the runs; ``noisy`` when it was above the number of cores."""
    highest = max(run[key] for run in runs.values() for key in ("load_average_before", "load_average_after"))
    cpus = os.cpu_count() or 1
    return {"max_load_average": highest, "cpus": cpus, "noisy": highest > cpus}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="local worker processes = Ray CPUs")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine; the fastest is reported")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: the bundled ones)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.update(SINGLE_THREAD)

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    identical: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        photos = args.photos or Path(scratch) / "photos"
        count = len(export_sample_photos(photos)) if args.photos is None else len(expand_sources([str(photos)]))
        for attempt in range(args.repeats):
            outs = {}
            for engine in list(runs) if attempt % 2 == 0 else list(runs)[::-1]:
                outs[engine] = Path(scratch) / f"{engine}-{attempt}" / "out"
                print(
                    f"{engine}: {args.samples} samples at {args.resolution} px, "
                    f"{args.workers} workers/CPUs, run {attempt + 1}"
                )
                run = run_build(
                    photos, outs[engine], args.samples, args.resolution, args.workers, args.chunk_size, engine
                )
                runs[engine].append(run)
                print(f"  {run['wall_s']} s, {run['samples_per_min']} samples/min (work phase {run['work_s']} s)")
            identical.append(same_shards(outs["local"], outs["ray"]))

    best = {engine: dict(min(results, key=lambda run: run["wall_s"])) for engine, results in runs.items()}
    for engine, run in best.items():
        run["all_wall_s"] = [r["wall_s"] for r in runs[engine]]
        run["all_work_s"] = [r["work_s"] for r in runs[engine]]
    ratio = round(best["ray"]["samples_per_min"] / best["local"]["samples_per_min"], 3)
    work_ratio = round(best["ray"]["work_samples_per_min"] / best["local"]["work_samples_per_min"], 3)
    same, total = sum(s for s, _ in identical), sum(t for _, t in identical)
    load = machine_load(best)
    print()
    print(
        "| engine | wall s | samples/min | start-up s | work s | samples/min, work phase | peak RSS MB | CPU s "
        "| load avg before -> after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for engine, run in best.items():
        print(
            f"| {engine} | {run['wall_s']} | {run['samples_per_min']} | {run['startup_s']} | {run['work_s']} "
            f"| {run['work_samples_per_min']} | {run['peak_rss_mb']} | {run['cpu_s']} "
            f"| {run['load_average_before']} -> {run['load_average_after']} |"
        )
    print(f"\nray / local: {ratio}x end to end, {work_ratio}x in the work phase (target >= 0.9x)")
    print(f"byte-identical shards, ray vs local: {same} of {total}")
    if load["noisy"]:
        print(
            f"load average up to {load['max_load_average']} on {load['cpus']} cores: other programs' load weighs "
            "on these ratios as much as the engines do"
        )
    result = {
        "benchmark": "liwi-build --engine ray vs local: layered samples per minute",
        "builder_version": __version__,
        "samples": args.samples,
        "resolution": args.resolution,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "photos": count,
        "photo_folder": str(args.photos) if args.photos else "bundled",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "threads_per_process": 1,
        "target": {"ray_vs_local": 0.9},
        "ray_vs_local": ratio,
        "ray_vs_local_work_phase": work_ratio,
        "byte_identical_shards": {"same": same, "of": total},
        "machine_load": load,
        "runs": best,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_results(args.output, result, indent=2)
    print(f"written: {args.output}")
    return 0 if same == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
