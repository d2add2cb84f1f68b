"""Load on the Gradio Space: concurrent `gradio_client` users calling ``/decompose`` on 127.0.0.1.

The app (``spaces_demo/app.py``, its real entry point, default tool-chain model, default queue limits)
runs in a subprocess; each user is a thread with its own `Client` that sends its requests one after
another. Two phases run against the same server:

- unloaded: only the ordinary users (a small photo each time);
- loaded: the same ordinary users, plus ``--blank-users`` hostile users who upload blank 4K photos
  (3840x2160, pure white: slow for the tool chain), all at once.

Reported per phase: failed ordinary requests (target 0), their latency p50/p95/max as a client sees it
(queue wait included) and throughput; the loaded p95 over the unloaded p95 (target at most 3); and what
became of the blank uploads (decomposed, or stopped at the Space's time limit with its message).

    python benchmarks/bench_space_load.py                   # 20 users (2 blank) x 5 requests; table + JSON
    python benchmarks/bench_space_load.py --users 4 --requests 2 --blank-users 1
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


def make_blank(path: Path, size: tuple[int, int] = (3840, 2160)) -> Path:
    """A pure white 4K PNG (a few kB on disk: it passes every upload limit)."""
    from PIL import Image

    Image.new("RGB", size, (255, 255, 255)).save(path)
    return path


def run_user(
    url: str,
    photo: Path,
    requests: int,
    timeout_s: float,
    records: list[dict[str, Any]],
    lock: threading.Lock,
    start_gate: threading.Barrier,
    kind: str = "ordinary",
) -> None:
    """One user: a client, then ``requests`` decompositions one after another (``kind`` goes into the records)."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as error:  # a failed connection counts as failed requests
        client, setup_error = None, f"{type(error).__name__}: {error}"
    start_gate.wait(timeout=120)
    for _ in range(requests):
        start = time.perf_counter()
        record: dict[str, Any] = {"ok": False, "kind": kind}
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
            record["time_limit"] = "time limit" in str(error).lower() or "took longer than" in str(error)
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


def sample_load(samples: list[float], stop: threading.Event, every_s: float = 5.0) -> None:
    """The 1-minute load average, every ``every_s`` seconds until ``stop`` (the machine may be shared)."""
    while not stop.is_set():
        samples.append(os.getloadavg()[0])
        stop.wait(every_s)


def run_phase(url: str, users: list[tuple[str, Path]], requests: int, timeout_s: float) -> dict[str, Any]:
    """``users`` (kind, photo) all at once, ``requests`` each: their records, the wall time and the load average."""
    records: list[dict[str, Any]] = []
    load: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(load, stop), daemon=True)
    sampler.start()
    lock, gate = threading.Lock(), threading.Barrier(len(users))
    threads = [
        threading.Thread(
            target=run_user, args=(url, photo, requests, timeout_s, records, lock, gate, kind), daemon=True
        )
        for kind, photo in users
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s * requests + 180)
    stop.set()
    sampler.join()
    return {"records": records, "wall_s": time.perf_counter() - start, "load_average": load}


def summarize(phase: dict[str, Any], ordinary_users: int, requests: int) -> dict[str, Any]:
    """Failures and latency of the ordinary requests of a phase; outcomes of its blank uploads."""
    records = phase["records"]
    ordinary = [r for r in records if r["kind"] == "ordinary"]
    ok = [r for r in ordinary if r["ok"]]
    latencies = [r["latency_s"] for r in ok]
    server_times = [r["server_s"] for r in ok if r.get("server_s") is not None]
    errors: dict[str, int] = {}
    for record in ordinary:
        if not record["ok"]:
            errors[record["error"]] = errors.get(record["error"], 0) + 1
    missing = ordinary_users * requests - len(ordinary)
    if missing:
        errors["no answer (thread still waiting at the end)"] = missing
    blank = [r for r in records if r["kind"] == "blank"]
    blank_other = [r["error"] for r in blank if not r["ok"] and not r.get("time_limit")]
    return {
        "ordinary_requests": ordinary_users * requests,
        "failures": ordinary_users * requests - len(ok),
        "errors": errors,
        "latency_s": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "max": max(latencies, default=float("nan")),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
        },
        "server_decompose_s": {"p50": percentile(server_times, 0.5), "p95": percentile(server_times, 0.95)},
        "blank_uploads": {
            "sent": len(blank),
            "decomposed": sum(r["ok"] for r in blank),
            "stopped_at_time_limit": sum(bool(r.get("time_limit")) for r in blank),
            "other_errors": blank_other,
            "latency_p50_s": percentile([r["latency_s"] for r in blank], 0.5),
        },
        "wall_s": phase["wall_s"],
        "throughput_rps": len(ok) / phase["wall_s"] if phase["wall_s"] > 0 else float("nan"),
        "load_average_1min": {
            "min": min(phase["load_average"], default=float("nan")),
            "mean": statistics.fmean(phase["load_average"]) if phase["load_average"] else float("nan"),
            "max": max(phase["load_average"], default=float("nan")),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help="users in the loaded phase, blank ones included")
    parser.add_argument("--blank-users", type=int, default=2, help="of --users, those who upload blank 4K photos")
    parser.add_argument("--requests", type=int, default=5, help="requests per user, sent one after another")
    parser.add_argument("--photo", default="coffee", help="bundled photo (liwi_diffusers.sample_images)")
    parser.add_argument("--width", type=int, default=192, help="photo width in px")
    parser.add_argument("--time-limit", type=float, default=None, help="LIWI_TIME_LIMIT of the app (default: its own)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.users < 1 or args.requests < 1:
        parser.error("--users and --requests must be positive")
    if not 0 <= args.blank_users < args.users:
        parser.error("--blank-users must be at least 0 and fewer than --users")

    import gradio

    ordinary_users = args.users - args.blank_users
    env = {} if args.time_limit is None else {"LIWI_TIME_LIMIT": str(args.time_limit)}
    with tempfile.TemporaryDirectory(prefix="liwi_space_load_") as tmp:
        workdir = Path(tmp)
        photo = make_photo(workdir / f"{args.photo}.jpg", args.photo, args.width)
        blank = make_blank(workdir / "blank_4k.png")
        port = free_port()
        server = start_server(port, workdir, env)
        url = f"http://127.0.0.1:{port}"
        try:
            # One warm-up request (worker start, first pymatting call) outside the measurement.
            warm: list[dict[str, Any]] = []
            run_user(url, photo, 1, args.timeout, warm, threading.Lock(), threading.Barrier(1))
            if not warm[0]["ok"]:
                raise RuntimeError(f"warm-up request failed: {warm[0].get('error')}")
            ordinary = [("ordinary", photo)] * ordinary_users
            unloaded = run_phase(url, ordinary, args.requests, args.timeout)
            loaded = run_phase(url, ordinary + [("blank", blank)] * args.blank_users, args.requests, args.timeout)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log_tail = (workdir / "server.log").read_text(errors="replace").splitlines()[-20:]
    from PIL import Image

    phases = {
        "unloaded": summarize(unloaded, ordinary_users, args.requests),
        "loaded": summarize(loaded, ordinary_users, args.requests),
    }
    ratio = phases["loaded"]["latency_s"]["p95"] / phases["unloaded"]["latency_s"]["p95"]
    failures = phases["unloaded"]["failures"] + phases["loaded"]["failures"]
    result = {
        "benchmark": "Gradio Space under load, blank 4K uploads mixed in (benchmarks/bench_space_load.py)",
        "setup": {
            "users": args.users,
            "blank_users": args.blank_users,
            "requests_per_user": args.requests,
            "model": "tools (ToolChainDecomposer, in the Space's worker processes)",
            "photo": f"{args.photo}, {args.width} px wide; blank: 3840x2160 pure white PNG",
            "server": "python spaces_demo/app.py on 127.0.0.1",
            "queue": "defaults: LIWI_QUEUE_SIZE=64, LIWI_CONCURRENCY=2",
            "time_limit": "app default" if args.time_limit is None else f"LIWI_TIME_LIMIT={args.time_limit:g}",
        },
        "command": "python benchmarks/bench_space_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "gradio": gradio.__version__,
            "pillow": Image.__version__,
        },
        "phases": phases,
        "loaded_over_unloaded_p95": ratio,
        "targets": {"failures": 0, "loaded_over_unloaded_p95_at_most": 3.0},
        "met": failures == 0 and ratio <= 3.0,
        "server_log_tail": log_tail,
    }
    print(
        f"{'phase':>9} {'users':>6} {'ordinary':>9} {'failures':>9} {'p50 s':>8} {'p95 s':>8} {'max s':>8} "
        f"{'server p50 s':>13} {'blank sent/ok/stopped':>22} {'wall s':>8}"
    )
    for name, phase in phases.items():
        users = ordinary_users + (args.blank_users if name == "loaded" else 0)
        blank_text = "{sent}/{decomposed}/{stopped_at_time_limit}".format(**phase["blank_uploads"])
        print(
            f"{name:>9} {users:>6} {phase['ordinary_requests']:>9} {phase['failures']:>9} "
            f"{phase['latency_s']['p50']:>8.2f} {phase['latency_s']['p95']:>8.2f} {phase['latency_s']['max']:>8.2f} "
            f"{phase['server_decompose_s']['p50']:>13.2f} {blank_text:>22} {phase['wall_s']:>8.1f}"
        )
        load = phase["load_average_1min"]
        print(f"  load average (1 min) min/mean/max: {load['min']:.1f}/{load['mean']:.1f}/{load['max']:.1f}")
        for error, count in phase["errors"].items():
            print(f"  {count} x {error}")
        for error in phase["blank_uploads"]["other_errors"]:
            print(f"  blank upload: {error}")
    print(f"loaded p95 / unloaded p95 = {ratio:.2f} (target <= 3); ordinary failures {failures} (target 0)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
