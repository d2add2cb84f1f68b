"""Load on the Gradio Space: concurrent `gradio_client` users calling ``/decompose`` on 127.0.0.1.

The app (``spaces_demo/app.py``, its real entry point, default tool-chain model, default queue limits)
runs in a subprocess; each user is a thread with its own `Client` that sends its requests one after
another. Reported: failed requests (target 0), latency p50/p95/max as a client sees it (queue wait
included), throughput, and the server's own decomposition time from its report.

    python benchmarks/bench_space_load.py                   # 20 users x 5 requests; table + results JSON
    python benchmarks/bench_space_load.py --users 4 --requests 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "space_load.json"
APP = ROOT / "spaces_demo" / "app.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int, workdir: Path, env_overrides: dict[str, str]) -> subprocess.Popen:
    """``python spaces_demo/app.py`` on 127.0.0.1:``port``; waits (bounded) until it answers."""
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "LIWI_OUTPUT_DIR": str(workdir / "out"),
        **env_overrides,
    }
    log = open(workdir / "server.log", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}; see {workdir / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the app did not answer within 120 s")


def make_photo(path: Path, name: str, width: int) -> Path:
    from PIL import Image

    from liwi_diffusers.sample_images import load_sample_image

    image = load_sample_image(name)
    image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS).save(path, quality=92)
    return path


def run_user(
    url: str,
    photo: Path,
    requests: int,
    timeout_s: float,
    records: list[dict[str, Any]],
    lock: threading.Lock,
    start_gate: threading.Barrier,
) -> None:
    """One user: a client, then ``requests`` decompositions one after another."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as error:  # a failed connection counts as failed requests
        client, setup_error = None, f"{type(error).__name__}: {error}"
    start_gate.wait(timeout=120)
    for _ in range(requests):
        start = time.perf_counter()
        record: dict[str, Any] = {"ok": False}
        try:
            if client is None:
                raise RuntimeError(setup_error)
            job = client.submit(handle_file(str(photo)), "tools", 0, 20, 0, api_name="/decompose")
            layers, _, report, psd = job.result(timeout=timeout_s)
            count = len(layers)
            record.update(ok=count >= 1 and count % 2 == 1 and bool(psd), layers=count)
            found = re.search(r"in ([0-9.]+) s with", report)
            record["server_s"] = float(found.group(1)) if found else None
            if not record["ok"]:
                record["error"] = f"unexpected result: {count} layers, psd {psd!r}"
        except Exception as error:
            record["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        record["latency_s"] = time.perf_counter() - start
        with lock:
            records.append(record)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5, help="requests per user, sent one after another")
    parser.add_argument("--photo", default="coffee", help="bundled photo (liwi_diffusers.sample_images)")
    parser.add_argument("--width", type=int, default=192, help="photo width in px")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.users < 1 or args.requests < 1:
        parser.error("--users and --requests must be positive")

    import gradio

    with tempfile.TemporaryDirectory(prefix="liwi_space_load_") as tmp:
        workdir = Path(tmp)
        photo = make_photo(workdir / f"{args.photo}.jpg", args.photo, args.width)
        port = free_port()
        server = start_server(port, workdir, {})
        url = f"http://127.0.0.1:{port}"
        try:
            # One warm-up request (model construction, first pymatting call) outside the measurement.
            warm: list[dict[str, Any]] = []
            run_user(url, photo, 1, args.timeout, warm, threading.Lock(), threading.Barrier(1))
            if not warm[0]["ok"]:
                raise RuntimeError(f"warm-up request failed: {warm[0].get('error')}")
            records: list[dict[str, Any]] = []
            lock, gate = threading.Lock(), threading.Barrier(args.users)
            threads = [
                threading.Thread(
                    target=run_user, args=(url, photo, args.requests, args.timeout, records, lock, gate), daemon=True
                )
                for _ in range(args.users)
            ]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=args.timeout * args.requests + 180)
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    total = args.users * args.requests
    ok = [r for r in records if r["ok"]]
    latencies = [r["latency_s"] for r in ok]
    server_times = [r["server_s"] for r in ok if r.get("server_s") is not None]
    errors: dict[str, int] = {}
    for record in records:
        if not record["ok"]:
            errors[record["error"]] = errors.get(record["error"], 0) + 1
    missing = total - len(records)
    if missing:
        errors["no answer (thread still waiting at the end)"] = missing
    from PIL import Image

    result = {
        "benchmark": "Gradio Space under load (benchmarks/bench_space_load.py)",
        "setup": {
            "users": args.users,
            "requests_per_user": args.requests,
            "model": "tools (ToolChainDecomposer)",
            "photo": f"{args.photo}, {args.width} px wide",
            "server": "python spaces_demo/app.py on 127.0.0.1",
            "queue": "defaults: LIWI_QUEUE_SIZE=64, LIWI_CONCURRENCY=2",
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "gradio": gradio.__version__,
            "pillow": Image.__version__,
        },
        "requests": total,
        "succeeded": len(ok),
        "failures": total - len(ok),
        "errors": errors,
        "latency_s": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "max": max(latencies, default=float("nan")),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
        },
        "server_decompose_s": {"p50": percentile(server_times, 0.5), "p95": percentile(server_times, 0.95)},
        "wall_s": wall,
        "throughput_rps": len(ok) / wall if wall > 0 else float("nan"),
    }
    print(
        f"{'users':>6} {'requests':>9} {'failures':>9} {'p50 s':>8} {'p95 s':>8} {'max s':>8} "
        f"{'server p50 s':>13} {'wall s':>8} {'req/s':>7}"
    )
    print(
        f"{args.users:>6} {total:>9} {result['failures']:>9} {result['latency_s']['p50']:>8.2f} "
        f"{result['latency_s']['p95']:>8.2f} {result['latency_s']['max']:>8.2f} "
        f"{result['server_decompose_s']['p50']:>13.2f} {wall:>8.1f} {result['throughput_rps']:>7.2f}"
    )
    for error, count in errors.items():
        print(f"  {count} x {error}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
