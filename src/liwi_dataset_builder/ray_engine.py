"""``liwi-build --engine ray``: the build's parallel stages as Ray Data operations.

The driver does what it does for the local engine (`build.py`): lock the folder, scan the sources,
plan the chunks, and at the end write the report and the card. Ray runs the two parallel stages,
each a Ray Data ``map`` over fixed pieces of work:

1. **curate**, one row per photo: plan (proposer + planner), then foreground and background
   curation, saved as the photo's asset file;
2. **compose**, one row per chunk: compose each sample, verify it (retrying rejected attempts),
   and write the chunk's parquet shard.

A stage whose tools load model weights (``MODEL`` proposers, depth, inpainting, a VLM planner or
verifier) runs on an actor pool, so each actor loads the models once (with ``num_gpus`` each when
asked); a stage of weight-free (or ONNX) tools runs as plain tasks. Both call the very functions
the local engine's worker processes call, in single-threaded workers, so for a seed the shards are
the same, byte for byte, as the local engine's. Every file is written atomically by the worker
that made it: Ray retries the task of a worker that died, and a build stopped any other way is
resumed by rerunning the same command (with either engine).

Ray starts locally (``--workers`` CPUs) unless ``--ray-address`` or ``RAY_ADDRESS`` names a
cluster. On a cluster, the output folder and the sources must be on storage that every node
mounts at the same path (as for ``--num-shards``), and every node needs liwi-diffusers installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .atomic import remove_stale_temporaries

if TYPE_CHECKING:
    from .build import BuildConfig, Chunk, _WorkerState
    from .toolset import ToolSpec

__all__ = ["check_ray", "curation_uses_models", "import_ray", "ray_address", "run_on_ray", "verifier_uses_models"]

CONNECT_TIMEOUT_S = 5.0  # an unreachable cluster fails within this, not after Ray's own retries
_MODEL_PREFIXES = ("mask-generation", "image-segmentation", "zero-shot-object-detection", "object-detection")
_MODEL_PREFIXES += ("diffusers", "depth-estimation", "vlm")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_NO_TELEMETRY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}


# ------------------------------------------------------------------------------------- checks
def import_ray() -> ModuleType:
    """The ``ray`` module, or a `BuildError` naming the extra that installs it."""
    from .build import BuildError

    try:
        import ray
    except ImportError as error:
        if (error.name or "ray").split(".")[0] != "ray":
            raise  # a broken install of something Ray needs: not a missing extra
        raise BuildError('--engine ray needs Ray: pip install "liwi-diffusers[ray]"') from None
    return ray


def ray_address(config: BuildConfig) -> str | None:
    """The cluster to join: ``--ray-address``, else ``$RAY_ADDRESS``; None starts a local Ray."""
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else address


def _host_port(address: str) -> tuple[str, int]:
    """``host`` and ``port`` of ``[ray://]host[:port]`` (Ray's defaults: 10001 for ray://, else 6379)."""
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").rstrip("/")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host or (port and not port.isdigit()):
        from .build import BuildError

        raise BuildError(f"bad Ray address {address!r}; give host:port, ray://host:port, auto or local")
    return host, int(port) if port else (10001 if client else 6379)


def check_ray(config: BuildConfig) -> None:
    """Fail fast, before anything is written: Ray missing, or its cluster unreachable."""
    from .build import BuildError

    import_ray()
    address = ray_address(config)
    if address is None or address == "auto":
        return  # a local Ray is started; "auto" finds a running one (or fails at once)
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise BuildError(
            f"cannot reach the Ray cluster at {address} ({reason}); start it (ray start --head) "
            "or fix --ray-address / RAY_ADDRESS"
        ) from None


def _uses_model(name: str) -> bool:
    return name.partition(":")[0] in _MODEL_PREFIXES and ":" in name


def curation_uses_models(spec: ToolSpec) -> bool:
    """Whether the curate stage loads model weights (then it runs on an actor pool)."""
    return any(_uses_model(name) for name in (spec.proposer, spec.inpainting, spec.depth, spec.planner))


def verifier_uses_models(spec: ToolSpec) -> bool:
    """Whether the compose stage loads model weights (a VLM verifier)."""
    return _uses_model(spec.verifier)


# ------------------------------------------------------------------------------------- workers
_LOADED: str | None = None  # token of the build whose state this worker process holds


def _use_state(token: str, state: Any) -> None:
    """Make this worker process a build worker (state, one thread) once per build."""
    global _LOADED
    if token == _LOADED:
        return
    import ray

    from . import build

    if isinstance(state, ray.ObjectRef):
        state = ray.get(state)
    build._init_worker(state)  # the local engine's worker set-up: one thread for OpenCV and torch
    with contextlib.suppress(ImportError):  # and for BLAS pools started before the env was set
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    _LOADED = token


def _chunk_of(row: dict[str, Any]) -> Chunk:
    from .build import Chunk

    return Chunk(row["split"], row["index"], row["total"], row["first"], row["count"], tuple(row["pools"]))


def _curate_row(row: dict[str, Any], token: str, state: Any) -> dict[str, Any]:
    """Curate one photo (a Ray task)."""
    from . import build

    _use_state(token, state)
    summary = build._curate_task(row["photo_id"])
    return {"photo_id": row["photo_id"], "foregrounds": len(summary["foregrounds"])}


def _compose_row(row: dict[str, Any], token: str, state: Any) -> dict[str, Any]:
    """Compose, verify and write one chunk (a Ray task)."""
    from . import build

    _use_state(token, state)
    meta = build._chunk_task(_chunk_of(row))
    return {"split": row["split"], "index": row["index"], "samples": meta["samples"], "rows": meta["rows"]}


class _ModelActor:
    """A Ray Data actor: loads the build's tools (and their models) once, then runs rows."""

    def __init__(self, function: Any, token: str, state: Any) -> None:
        from . import build

        _use_state(token, state)
        assert build._STATE is not None
        build._STATE.get_tools()
        self.function, self.token = function, token

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.function(row, self.token, None)


# ------------------------------------------------------------------------------------- driver
@contextlib.contextmanager
def _session(config: BuildConfig) -> Iterator[ModuleType]:
    """Ray, initialised: as it is when the caller already did it, else local or on the cluster."""
    from .build import BuildError

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = ray_address(config)
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    single = dict.fromkeys(_THREAD_VARIABLES, "1")
    saved = {name: os.environ.get(name) for name in (*_THREAD_VARIABLES, *_NO_TELEMETRY)}
    # No usage-stats reporting (unless asked for): on 2 cores its extra actor costs seconds of start-up.
    os.environ.update({name: os.environ.get(name, value) for name, value in _NO_TELEMETRY.items()})
    # ray.init replaces the SIGTERM handler with one that exits (status 15, no clean-up message):
    # the caller's (liwi-build: raise Terminated) is put back as soon as Ray has started.
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        try:
            if address is None:  # a new local Ray: its workers inherit one-thread settings from here
                os.environ.update(single)
                ray.init(address="local", num_cpus=config.workers, **options)
            else:
                ray.init(address=address, runtime_env={"env_vars": single}, **options)
        except SystemExit as stop:  # Ray's SIGTERM handler, while Ray started: stop Ray, then as the caller would
            if stop.code != signal.SIGTERM:
                raise
            ray.shutdown()
            if main_thread and callable(sigterm):
                signal.signal(signal.SIGTERM, sigterm)
                signal.raise_signal(signal.SIGTERM)  # liwi-build: raises Terminated here
            raise
        except Exception as error:  # Ray's own errors span lines; keep the first
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BuildError(f"could not start Ray ({address or 'local'}): {message}") from None
        finally:  # the caller's handler back (unless it already ran and ignores further SIGTERMs)
            if main_thread and sigterm is not None and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
                signal.signal(signal.SIGTERM, sigterm)
        try:
            yield ray
        finally:
            ray.shutdown()  # a local Ray's processes (workers included) are stopped
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _gpus_per_actor(config: BuildConfig) -> float:
    if config.ray_num_gpus is not None:
        return config.ray_num_gpus
    return 1.0 if (config.tools.device or "").startswith("cuda") else 0.0


def _stage(rows: list[dict[str, Any]], function: Any, token: str, state: Any, actors: int, gpus: float) -> Any:
    """A Ray Data ``map`` of ``function`` over ``rows``: tasks, or a pool of ``actors`` (model stages)."""
    import ray.data

    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # a block per row: a task each
    if not actors:
        return dataset.map(function, fn_args=(token, state), num_cpus=1)  # Ray Data retries dead workers' tasks
    return dataset.map(
        _ModelActor,
        fn_constructor_args=(function, token, state),
        num_cpus=1,
        num_gpus=gpus or None,
        concurrency=actors,
    )


def _actors(ray: ModuleType, rows: int, gpus: float) -> int:
    """Actors for a model stage: one per CPU (or per ``gpus`` share of the GPUs), at most one per row."""
    resources = ray.cluster_resources()
    count = int(resources.get("CPU", 1))
    if gpus > 0:
        count = min(count, int(resources.get("GPU", 0) // gpus))
        if count < 1:
            from .build import BuildError

            raise BuildError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than {gpus:g} per actor")
    return max(1, min(count, rows))


def run_on_ray(state: _WorkerState, to_curate: list[str], todo: list[Chunk]) -> None:
    """Curate ``to_curate`` and build the chunks ``todo`` on Ray (files land where the local engine puts them)."""
    if not to_curate and not todo:
        return
    config = state.config
    try:
        with _session(config) as ray:
            import ray.data

            context = ray.data.DataContext.get_current()
            logger = logging.getLogger("ray.data")
            saved = (context.enable_progress_bars, context.memory_usage_poll_interval_s, logger.level)
            context.enable_progress_bars = False  # ours (per stage) instead
            context.memory_usage_poll_interval_s = None  # no per-second polling of every task's memory
            logger.setLevel(logging.ERROR)
            try:
                _run_stages(ray, state, to_curate, todo)
            finally:
                context.enable_progress_bars, context.memory_usage_poll_interval_s = saved[:2]
                logger.setLevel(saved[2])
    finally:  # after ray.shutdown, which stops a local Ray's workers; also when the build was stopped
        _remove_temporaries(state)


def _remove_temporaries(state: _WorkerState) -> None:
    """Temporaries of workers that died (retried, or stopped with the build): their processes are gone."""
    for folder in (state.assets_dir, state.data_dir, state.empty_dir, state.data_dir.parent / ".build" / "timings"):
        if folder.exists():
            remove_stale_temporaries(folder)


def _run_stages(ray: ModuleType, state: _WorkerState, to_curate: list[str], todo: list[Chunk]) -> None:
    """The curate stage, then the compose stage, each one Ray Data execution."""
    from .build import BuildError, _progress

    config = state.config
    token, reference = uuid.uuid4().hex, ray.put(state)
    gpus = _gpus_per_actor(config)
    stages = [
        ("curate", [{"photo_id": photo_id} for photo_id in to_curate], _curate_row),
        ("compose", [_chunk_row(chunk) for chunk in todo], _compose_row),
    ]
    for name, rows, function in stages:
        if not rows:
            continue
        models = curation_uses_models(config.tools) if name == "curate" else verifier_uses_models(config.tools)
        actors = _actors(ray, len(rows), gpus) if models else 0
        dataset = _stage(rows, function, token, reference, actors, gpus)
        unit = "photo" if name == "curate" else "sample"
        total = len(rows) if name == "curate" else sum(chunk.count for chunk in todo)
        bar = _progress(None, total, name, config.progress, unit)
        try:
            for result in dataset.iter_rows():
                if bar is not None:
                    bar.update(1 if name == "curate" else result["samples"])
        except Exception as error:  # a task that failed even after Ray's retries
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BuildError(f"the Ray {name} stage failed: {first[:300]}; rerun the same command to resume") from None
        finally:
            if bar is not None:
                bar.close()


def _chunk_row(chunk: Chunk) -> dict[str, Any]:
    return {
        "split": chunk.split,
        "index": chunk.index,
        "total": chunk.total,
        "first": chunk.first,
        "count": chunk.count,
        "pools": list(chunk.pools),
    }
