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

Start-up: ``ray.init`` of a local Ray takes 7 s on 2 idle cores (20 s when they are busy), mostly
waiting for Ray's own processes. It runs in a background thread while a driver thread curates
photos (weight-free or ONNX tools only, one thread, so the same bytes as a worker's), taking them
from the end of the list until Ray's curate stage starts with the others. Once Ray is up, one
warm-up task per CPU imports Ray Data and loads the tools in the workers, and Ray Data's two
cluster actors are started, which its first execution would otherwise wait for.

Ray starts locally (``--workers`` CPUs) unless ``--ray-address`` or ``RAY_ADDRESS`` names a
cluster. On a cluster, the output folder and the sources must be on storage that every node
mounts at the same path (as for ``--num-shards``), and every node needs liwi-diffusers installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
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
# A local Ray's workers run at nice 15 by default, below its own driver, raylet and GCS at nice 0: on a machine with
# as many CPUs as workers, every wake-up of those preempts the curation. The build's workers are the work, so they
# run at the niceness the user started the build with (unless ``RAY_worker_niceness`` is set).
_LOCAL_WORKER_NICENESS = {"RAY_worker_niceness": "0"}


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
def _warm_worker(token: str, state: Any) -> None:
    """Ready a worker for its first Ray Data task: Ray Data's modules, the build's state and its tools."""
    with contextlib.suppress(Exception):  # a real failure shows in the stage's own task
        import ray.data  # noqa: F401  (what a Ray Data task's worker imports first)

        from . import build

        _use_state(token, state)
        assert build._STATE is not None
        build._STATE.get_tools()


def _start_ray_data_actors() -> None:
    """Ray Data's two cluster actors, started now rather than by the first execution, which waits for them.

    Its scheduler sees no CPU until the autoscaling coordinator answers, and it asks the stats actor
    for a dataset id; each is a new process (2-4 s on 2 cores). Ray Data internals: when they move,
    the first execution starts them, only later.
    """
    with contextlib.suppress(Exception):
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.stats import get_or_create_stats_actor

        get_or_create_stats_actor()
        get_or_create_autoscaling_coordinator()


class _Start(threading.Thread):
    """``ray.init`` in a background thread: it mostly waits for Ray's processes, while the driver curates.

    Once Ray is up, it puts the build's state in the object store and, on a new local Ray whose
    stages run as tasks, starts a warm-up task per CPU (the workers import Ray Data and load the
    tools) and Ray Data's cluster actors. ``ray.init`` outside the main thread also keeps the
    caller's SIGTERM handler (Ray replaces it only from the main thread).

    The thread then waits for `stop`: Ray's own processes (GCS, raylet) die with the thread that
    started them (Linux's parent-death signal follows the thread), so it lives until Ray is shut down.
    """

    def __init__(self, ray: ModuleType, init: dict[str, Any] | None, state: _WorkerState, warm: bool) -> None:
        super().__init__(name="liwi-ray-start", daemon=True)
        self.ray, self.init, self.state, self.warm = ray, init, state, warm
        self.token = uuid.uuid4().hex
        self.reference: Any = None
        self.error: BaseException | None = None
        self.warming: list[Any] = []  # the warm-up tasks' references (kept until the build ends)
        self.started = threading.Event()  # set when Ray is up (or failed to start)
        self.released = threading.Event()  # set once Ray is shut down: the thread may end

    def run(self) -> None:
        try:
            if self.init is not None:  # else the caller's Ray
                self.ray.init(**self.init)
            self.reference = self.ray.put(self.state)
            if self.warm:
                warm = self.ray.remote(num_cpus=1, max_retries=0)(_warm_worker)
                cpus = int(self.ray.cluster_resources().get("CPU", 1))
                self.warming = [warm.remote(self.token, self.reference) for _ in range(cpus)]
                _start_ray_data_actors()
        except BaseException as error:  # reported by the driver's thread
            self.error = error
        finally:
            self.started.set()
        if self.init is not None:
            self.released.wait()

    def wait(self) -> None:
        """Start Ray (unless the caller did) and wait for it, or raise a one-line `BuildError`."""
        from .build import BuildError

        if self.init is None:  # the caller's Ray: only the state to put
            self.run()
        else:
            logging.getLogger("ray").setLevel(logging.ERROR)  # as ray.init sets it; no warning about the thread
            self.start()
            try:
                self.started.wait()
            except BaseException:  # stopped (Ctrl-C, SIGTERM): a Ray half started is shut down, not left running
                self.stop()
                raise
        if self.error is not None:
            self.stop()  # whatever it started
            message = str(self.error).strip().splitlines()[0] if str(self.error).strip() else type(self.error).__name__
            where = self.init.get("address", "local") if self.init else "the caller's Ray"
            raise BuildError(f"could not start Ray ({where}): {message}") from None

    def stop(self) -> None:
        """Shut down the Ray this thread started, once it is up, then let the thread end."""
        if self.init is None:
            return
        self.started.wait()
        self.ray.shutdown()  # a local Ray's processes (workers included) are stopped
        self.released.set()
        self.join()


class _DriverCuration(threading.Thread):
    """The driver as one more curation worker while Ray starts: photos from the end of the list.

    Only for weight-free or ONNX curation, and with every BLAS pool limited to one thread (as in
    the workers; OpenCV's is already), so the assets are the same, byte for byte, as a worker's.
    """

    def __init__(self, state: _WorkerState, photo_ids: list[str]) -> None:
        super().__init__(name="liwi-driver-curation", daemon=True)
        self.state = dataclasses.replace(state, tools=None, cache={})  # its own tools, never pickled
        self.todo = list(photo_ids)
        self.claimed: list[str] = []  # curated here, or being curated
        self.lock = threading.Lock()
        self.closed = False

    def run(self) -> None:
        from threadpoolctl import threadpool_limits

        from . import build

        with threadpool_limits(1):
            while (photo_id := self._claim()) is not None:
                build._curate(self.state, photo_id)
        self.state.tools = None  # its models' memory back before the compose stage

    def _claim(self) -> str | None:
        with self.lock:
            if self.closed or not self.todo:
                return None
            self.claimed.append(self.todo.pop())
            return self.claimed[-1]

    def close(self) -> set[str]:
        """Take no more photos; returns those curated here or being curated (join to wait for them)."""
        with self.lock:
            self.closed = True
            return set(self.claimed)


def _driver_curation(ray: ModuleType, state: _WorkerState, photo_ids: list[str]) -> _DriverCuration | None:
    """A `_DriverCuration` when Ray has to start here, locally, and curation loads no model weights."""
    if not photo_ids or ray.is_initialized() or ray_address(state.config) is not None:
        return None
    if curation_uses_models(state.config.tools) or importlib.util.find_spec("threadpoolctl") is None:
        return None
    return _DriverCuration(state, photo_ids)


@contextlib.contextmanager
def _session(
    config: BuildConfig, state: _WorkerState, meanwhile: threading.Thread | None = None
) -> Iterator[tuple[ModuleType, _Start]]:
    """Ray, initialised (unless the caller already did it), with the build's state in its object store.

    ``meanwhile`` is started while Ray starts, with the one-thread settings of a local Ray's workers
    (numba reads its own when first imported).
    """
    ray = import_ray()
    address = ray_address(config)
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    single = dict.fromkeys(_THREAD_VARIABLES, "1")
    if ray.is_initialized():
        init: dict[str, Any] | None = None
    elif address is None:  # a new local Ray: its workers inherit one-thread settings from here
        init = {"address": "local", "num_cpus": config.workers, **options}
    else:
        init = {"address": address, "runtime_env": {"env_vars": single}, **options}
    saved = {name: os.environ.get(name) for name in (*_THREAD_VARIABLES, *_NO_TELEMETRY, *_LOCAL_WORKER_NICENESS)}
    # No usage-stats reporting (unless asked for): on 2 cores its extra actor costs seconds of start-up.
    os.environ.update({name: os.environ.get(name, value) for name, value in _NO_TELEMETRY.items()})
    if address is None:
        os.environ.update(single)
        os.environ.update({name: os.environ.get(name, value) for name, value in _LOCAL_WORKER_NICENESS.items()})
    models = curation_uses_models(config.tools) or verifier_uses_models(config.tools)
    start = _Start(ray, init, state, warm=init is not None and address is None and not models)
    try:
        if meanwhile is not None:
            meanwhile.start()
        start.wait()
        try:
            yield ray, start
        finally:
            start.stop()
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
    ray = import_ray()
    helper = _driver_curation(ray, state, to_curate)  # the driver curates while a local Ray starts
    try:
        with _session(state.config, state, helper) as (ray, start):
            import ray.data

            context = ray.data.DataContext.get_current()
            logger = logging.getLogger("ray.data")
            saved = (context.enable_progress_bars, context.memory_usage_poll_interval_s, logger.level)
            context.enable_progress_bars = False  # ours (per stage) instead
            context.memory_usage_poll_interval_s = None  # no per-second polling of every task's memory
            logger.setLevel(logging.ERROR)
            try:
                _run_stages(ray, state, start, to_curate, helper, todo)
            finally:
                context.enable_progress_bars, context.memory_usage_poll_interval_s = saved[:2]
                logger.setLevel(saved[2])
    finally:  # after ray.shutdown, which stops a local Ray's workers; also when the build was stopped
        if helper is not None and helper.is_alive():  # its photo finished (seconds): no temporary of it is left
            helper.close()
            helper.join()
        _remove_temporaries(state)


def _remove_temporaries(state: _WorkerState) -> None:
    """Temporaries of workers that died (retried, or stopped with the build): their processes are gone."""
    for folder in (state.assets_dir, state.data_dir, state.empty_dir, state.data_dir.parent / ".build" / "timings"):
        if folder.exists():
            remove_stale_temporaries(folder)


def _run_stages(
    ray: ModuleType,
    state: _WorkerState,
    start: _Start,
    to_curate: list[str],
    helper: _DriverCuration | None,
    todo: list[Chunk],
) -> None:
    """The curate stage (but for the driver's photos), then the compose stage, each one Ray Data execution."""
    from .build import BuildError, _progress

    config = state.config
    gpus = _gpus_per_actor(config)
    here = helper.close() if helper is not None else set()  # from now on, every photo left goes to Ray
    stages = [
        ("curate", [{"photo_id": photo_id} for photo_id in to_curate if photo_id not in here], _curate_row),
        ("compose", [_chunk_row(chunk) for chunk in todo], _compose_row),
    ]
    for name, rows, function in stages:
        unit = "photo" if name == "curate" else "sample"
        total = len(to_curate) if name == "curate" else sum(chunk.count for chunk in todo)
        bar = _progress(None, total, name, config.progress and total > 0, unit)
        try:
            if rows:
                models = curation_uses_models(config.tools) if name == "curate" else verifier_uses_models(config.tools)
                actors = _actors(ray, len(rows), gpus) if models else 0
                dataset = _stage(rows, function, start.token, start.reference, actors, gpus)
                try:
                    for result in dataset.iter_rows():
                        if bar is not None:
                            bar.update(1 if name == "curate" else result["samples"])
                except Exception as error:  # a task that failed even after Ray's retries
                    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise BuildError(
                        f"the Ray {name} stage failed: {first[:300]}; rerun the same command to resume"
                    ) from None
            if name == "curate" and helper is not None:
                helper.join()  # the driver's last photo, before any chunk needs it
                if bar is not None:
                    bar.update(len(here))
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
