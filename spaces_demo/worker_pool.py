"""Decompositions in worker processes, each with a time limit: a call past its limit is stopped and its worker replaced.

A Python thread cannot be stopped from outside, so a decomposition run in one of the server's threads holds
its Gradio worker until it ends (two blank 1024 px uploads once kept both workers of the Space busy for two
minutes). Here every call runs in one of ``size`` worker processes. When a call is not done in time, its
process is killed, which frees its CPU and memory at once; a fresh process takes its place and the caller
gets `TimeLimitExceeded`. The pool never runs more than ``size`` calls at once: callers beyond that wait.

"In time" is measured in computing time where the system reports it (Linux's ``/proc``): a call may use
``time_limit_s`` CPU seconds per worker thread, however long the machine's load stretches them in wall-clock
time, and is stopped at the latest after ``WALL_LIMIT_FACTOR`` times the limit in wall-clock time (a call
that waits on something and computes nothing). On a shared, loaded machine a wall-clock limit stops ordinary
requests: at a load average of 9 on 2 cores a 1024 px photo took 34.6 s for 12.5 CPU s of work.

    pool = WorkerPool(size=2, initializer=warm_up_tool_chain)
    layered = pool.run(decompose_in_worker, ("tools", image, None), time_limit_s=60)

Functions and arguments travel by pickle, so they must be importable by name (module-level functions).
A worker is a fresh ``python worker_pool.py`` process (not a `multiprocessing` one: spawning would import the
server's main module, Gradio included, into every worker), connected to the server by a socket pair.

The workers share the machine's cores: each runs ``threads`` threads (default: the cores divided among the
workers, at least one), set for its BLAS, OpenMP, OpenCV and numba pools and for ONNX Runtime's session.
Left at their defaults, two workers on 2 cores each ran the segmenter on 2 spinning threads: an ISNet pass
(at its fixed 1024x1024 input, whatever the photo's size) cost about 8 % more CPU and competed with the
other worker's. A tool-chain request makes 2 to 6 such passes (peeling rounds, the first round's crops).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = [
    "TimeLimitExceeded",
    "WorkerCrashed",
    "WorkerPool",
    "decompose_in_worker",
    "tool_chain_tiles",
    "warm_up_tool_chain",
]

WALL_LIMIT_FACTOR = 10.0  # a call is stopped after this many times its limit in wall-clock time, computing or not
STARTUP_LIMIT_S = 300.0  # a worker that is not ready after this long (imports, model loading) counts as crashed
THREADS_VARIABLE = "LIWI_WORKER_THREADS"  # threads per worker, in the worker's environment
TILES_VARIABLE = "LIWI_TILES"  # the tool chain's grid of crops (0: whole photo only, the Space's default)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class TimeLimitExceeded(TimeoutError):
    """A call ran past its time limit; its worker process was killed and replaced."""


class WorkerCrashed(RuntimeError):
    """A worker process died during a call (killed from outside, out of memory, a crash in native code)."""


class CallFailed(Exception):
    """An exception raised inside a worker that cannot be sent back as itself: its type name and message."""


# ---------------------------------------------------------------------------------------------- in the worker
_DECOMPOSERS: dict[str, Any] = {}


def worker_threads() -> int | None:
    """Threads this worker process may run (set by its pool), or None outside a pool's worker."""
    value = os.environ.get(THREADS_VARIABLE, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _limit_threads(threads: int) -> None:
    """OpenCV's (and torch's, when loaded) thread pools at ``threads``; BLAS and OpenMP read the environment."""
    import cv2

    cv2.setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def tool_chain_tiles(environ: Mapping[str, str] | None = None) -> int:
    """The tool chain's ``tiles`` in this Space, from ``LIWI_TILES`` (0 to 4; default 0).

    The Space looks at the whole photo only by default: the 2 x 2 grid of crops of `liwi decompose` costs four
    more segmenter passes per request (three times the time of a small photo on 2 cores), which a shared
    Space's time limit and queue cannot afford. ``LIWI_TILES=2`` turns them on, on hardware that can.
    """
    raw = (os.environ if environ is None else environ).get(TILES_VARIABLE, "").strip()
    if not raw:
        return 0
    if raw not in {"0", "1", "2", "3", "4"}:
        raise ValueError(f"{TILES_VARIABLE} must be a whole number from 0 to 4 (0: whole photo only), got {raw!r}")
    return int(raw)


def _tool_chain_options(name: str, threads: int | None) -> dict[str, Any]:
    """`load_decomposer` options for the tool chain ``name`` ("tools" or "fast"): the grid of crops of "tools"
    (`tool_chain_tiles`; "fast" keeps its preset's), and the learned segmenter with ``threads`` threads.

    The segmenter only when it is downloaded and intact; otherwise the tool chain's own "auto" choice stands
    (it falls back to the weight-free tools and says why).
    """
    if name not in ("tools", "fast"):
        return {}
    options: dict[str, Any] = {"tiles": tool_chain_tiles()} if name == "tools" else {}  # "fast": its own tiles
    if threads is None:
        return options
    from liwi_diffusers.model_zoo import DEFAULT_SEGMENTER, ModelError, find_model
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    try:
        if find_model(DEFAULT_SEGMENTER) is None:
            return options
        return {**options, "segmenter": OnnxSegmenter.from_cache(DEFAULT_SEGMENTER, threads=threads)}
    except ModelError:
        return options


def _decomposer(name: str) -> Any:
    """The decomposer ``name``, loaded once per worker process through `liwi_diffusers.load_decomposer`."""
    if name not in _DECOMPOSERS:
        from liwi_diffusers.loading import TOOL_CHAIN_NAMES, load_decomposer

        threads = worker_threads()
        if threads is not None:
            _limit_threads(threads)
        options = _tool_chain_options(name, threads) if name in TOOL_CHAIN_NAMES else {}
        _DECOMPOSERS[name] = load_decomposer(name, device="cpu", **options)
    return _DECOMPOSERS[name]


def decompose_in_worker(
    name: str, image: Any, num_layers: int | None, options: Mapping[str, Any] | None = None, depth: int = 1
) -> Any:
    """``load_decomposer(name)(image, num_layers, **options)`` in a worker process: the `LayeredImage`.

    ``depth`` above 1 then splits every object into parts ``depth - 1`` times with the same decomposer
    (`liwi_diffusers.tools.decompose_to_depth`, as ``liwi decompose --depth``), inside the same call and so
    under the same time limit.
    """
    decomposer = _decomposer(name)
    layered = decomposer(image, num_layers=num_layers, **dict(options or {}))
    if depth > 1:
        from liwi_diffusers.tools.recursive import decompose_to_depth

        layered = decompose_to_depth(layered, depth, decomposer)
    return layered


def warm_up_tool_chain() -> None:
    """Load the tool chain, its ONNX session and its compiled matting kernels before the first request."""
    decomposer = _decomposer("tools")
    decomposer.segmenter  # noqa: B018  (creates the ONNX Runtime session: 1-2 s, else paid by the first request)
    import pymatting  # noqa: F401  (numba kernels: loaded from numba's cache, compiled the very first time)


def _serve(conn: Connection) -> None:
    """A worker process: take the server's ``sys.path`` and initializer, say "ready", then run the calls it
    receives, one at a time, until its pipe closes."""
    try:
        here = sys.path[0]  # this file's folder: the functions of this module unpickle from it
        sys.path[:] = conn.recv()
        if here not in sys.path:
            sys.path.append(here)
        initializer = conn.recv()
        if initializer is not None:
            initializer()
        conn.send(("ready", None))
    except (EOFError, OSError):
        return
    except Exception as error:
        conn.send(("error", _portable(error)))
        return
    while True:
        try:
            function, args = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe or went away
            return
        try:
            reply = ("ok", function(*args))
        except Exception as error:
            reply = ("error", _portable(error))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as error:  # an unpicklable result
            conn.send(("error", CallFailed(f"the result could not be sent back: {type(error).__name__}: {error}")))


def _portable(error: Exception) -> Exception:
    """``error`` itself when it survives pickling (ValueError, TypeError, ...), else a `CallFailed` naming it."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return CallFailed(f"{type(error).__name__}: {error}")
    return error


# ---------------------------------------------------------------------------------------------- in the server
class _Worker:
    """One worker process and the server's end of the socket pair it talks over."""

    def __init__(self, initializer: Callable[[], None] | None, threads: int) -> None:
        ours, theirs = socket.socketpair()
        environment = {**os.environ, THREADS_VARIABLE: str(threads), **dict.fromkeys(_THREAD_VARIABLES, str(threads))}
        with ours, theirs:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                env=environment,
            )
            self.conn = Connection(ours.detach())
        self.conn.send(list(sys.path))
        self.conn.send(initializer)
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the worker has run its initializer (raises `WorkerCrashed` if it fails or never does)."""
        if self.ready:
            return
        if not self.conn.poll(STARTUP_LIMIT_S):
            raise WorkerCrashed(f"the worker process was not ready after {STARTUP_LIMIT_S:.0f} s")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerCrashed(f"the worker process stopped while starting ({self.exit_text()})") from None
        if status != "ready":
            raise WorkerCrashed(f"the worker process could not start: {payload}")
        self.ready = True

    def exit_text(self) -> str:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"exit code {code}"

    def stop(self) -> None:
        """Kill the process at once (SIGKILL: a decomposition in native code ignores gentler signals)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.conn.close()


class WorkerPool:
    """``size`` worker processes; `run` calls into one of them.

    Args:
        size: calls that run at once; further callers wait for a free worker.
        initializer: run once in every new worker before it takes calls (load models there).
        threads: threads per worker (see `worker_threads`); None: this machine's cores divided by ``size``,
            at least 1.
    """

    def __init__(self, size: int, initializer: Callable[[], None] | None = None, threads: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {size}")
        if threads is not None and threads < 1:
            raise ValueError(f"a worker needs at least 1 thread, got {threads}")
        self.size = size
        self.threads = threads or max(1, _usable_cores() // size)
        self._initializer = initializer
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(size):
            self._idle.put(self._start())
        weakref.finalize(self, _stop_all, self._all)  # at exit too: no worker outlives the server

    def _start(self) -> _Worker:
        worker = _Worker(self._initializer, self.threads)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
        if not closed:
            self._idle.put(self._start())

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        with self._lock:
            return sorted(worker.process.pid for worker in self._all)

    def run(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        time_limit_s: float,
        wall_limit_s: float | None = None,
    ) -> Any:
        """``function(*args)`` in a worker process, stopped once it has computed for ``time_limit_s`` seconds.

        Computing time is the worker's CPU time divided by its threads (so on an idle machine it is the
        wall-clock time of a call that keeps its threads busy); where the system does not report it, wall-clock
        time counts instead. Either way the call is stopped after ``wall_limit_s`` seconds of wall-clock time
        (default `WALL_LIMIT_FACTOR` x ``time_limit_s``). The wait for a free worker and a new worker's start-up
        do not count towards either limit.

        Raises:
            TimeLimitExceeded: the call was still running at its limit (its worker was killed and replaced).
            WorkerCrashed: the worker died during the call (it is replaced).
            Exception: what ``function`` raised, re-raised here (as `CallFailed` when it cannot be pickled).
        """
        if not 0 < time_limit_s < float("inf"):
            raise ValueError(f"time_limit_s must be a positive number of seconds, got {time_limit_s}")
        wall_limit_s = WALL_LIMIT_FACTOR * time_limit_s if wall_limit_s is None else wall_limit_s
        if not wall_limit_s >= time_limit_s:
            raise ValueError(f"wall_limit_s must be at least time_limit_s ({time_limit_s:g}), got {wall_limit_s}")
        if self._closed:
            raise RuntimeError("this worker pool is closed")
        worker = self._idle.get()
        sent = False
        try:
            worker.wait_ready()
            worker.conn.send((function, args))  # pickles first: arguments that cannot be pickled send nothing
            sent = True
            self._wait_for_answer(worker, time_limit_s, wall_limit_s)
            status, payload = worker.conn.recv()
        except TimeLimitExceeded:
            self._replace(worker)
            raise
        except (EOFError, OSError, WorkerCrashed) as error:
            detail = str(error) if isinstance(error, WorkerCrashed) else f"the worker stopped ({worker.exit_text()})"
            self._replace(worker)
            raise WorkerCrashed(detail) from None
        except BaseException:
            if sent:  # interrupted while the worker runs the call: its answer would reach the next caller
                self._replace(worker)
            else:
                self._idle.put(worker)
            raise
        self._idle.put(worker)
        if status == "error":
            raise payload
        return payload

    def _wait_for_answer(self, worker: _Worker, time_limit_s: float, wall_limit_s: float) -> None:
        """Return once ``worker`` has answered; raise `TimeLimitExceeded` once it is past either limit.

        The worker is looked at when it could first have spent its computing time (it runs at most
        ``threads`` CPU seconds per second), so an unloaded call is checked about once, a slowed one a few
        times more.
        """
        start = time.monotonic()
        cpu_start = _cpu_seconds(worker.process.pid)
        while True:
            wall = time.monotonic() - start
            cpu = _cpu_seconds(worker.process.pid)
            computed = wall if cpu is None or cpu_start is None else (cpu - cpu_start) / self.threads
            if computed >= time_limit_s:
                raise TimeLimitExceeded(
                    f"stopped after {computed:.1f} s of computing in {wall:.1f} s (limit {time_limit_s:g} s)"
                )
            if wall >= wall_limit_s:
                raise TimeLimitExceeded(
                    f"stopped after {wall:.1f} s with {computed:.1f} s of computing "
                    f"(limit {time_limit_s:g} s of computing, {wall_limit_s:g} s in all)"
                )
            if worker.conn.poll(max(0.05, min(time_limit_s - computed, wall_limit_s - wall))):
                return

    def close(self) -> None:
        """Stop every worker (waiting callers get `WorkerCrashed`)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        _stop_all(workers)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process ``pid`` has used, from ``/proc``; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of proc(5)
    except (IndexError, ValueError):
        return None


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _stop_all(workers: Any) -> None:
    for worker in list(workers):
        worker.stop()


def _exit_with_the_server(server_pid: int, every_s: float = 1.0) -> None:
    """Exit this worker once the server that started it is gone (it was killed: SIGKILL, SIGTERM, a crash).

    A server that stops normally stops its workers itself; one that is killed cannot, and its workers would
    finish their calls (past any time limit, which the server enforces) before noticing the closed pipe.
    """

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


if __name__ == "__main__":  # a worker process, started by `_Worker` with its socket's file descriptor and server pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then stops its workers
    _exit_with_the_server(int(sys.argv[2]))
    _serve(Connection(int(sys.argv[1])))
