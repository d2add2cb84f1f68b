"""Running a build: photos in, a LiWi dataset folder out; deterministic, parallel and resumable.

The work is cut into fixed, deterministic pieces that do not depend on the number of workers or
machines:

1. **scan**: list the sources, load each photo once, skip bad ones (with a reason), drop
   duplicates by content hash, assign each photo a split (hash of its id) and a pool;
2. **curate** each photo needed (plan, foreground and background curation) into an asset file;
3. **compose** chunks: chunk ``c`` of a split holds samples ``[c * chunk_size, ...)``, drawn from
   the assets of one pool of photos of that split; sample ``i``, attempt ``a`` uses the random
   generator seeded by ``(seed, split, i, a)``; rejected attempts are retried with ``a + 1``;
4. **finalize**: when every chunk exists, write ``build_report.json`` and, last, ``README.md``.

A chunk whose samples were all rejected writes no shard (`datasets` cannot load a 0-row parquet
file) but a marker, ``.build/empty-chunks/<shard name>.json``, with its statistics. A split left
without rows is thus absent from ``data/`` and the card, and the build says so; a build without
any row is an error, not a dataset.

Every file is written to a temporary name and renamed, so a build killed at any moment (SIGKILL
included) leaves only whole files; rerunning the same command redoes the missing pieces and gives
the same rows as an uninterrupted run. A build stopped by an exception in this process (Ctrl-C, or
SIGTERM raised as `liwi_diffusers.cli.Terminated` by ``liwi-build``) stops its worker processes and
removes the temporary files they were writing. ``num_shards``/``shard_index`` give each machine a
contiguous range of chunks (and so mostly its own pools of photos to curate).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import multiprocessing
import os
import shlex
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liwi_diffusers._extras import require

from . import __version__
from .assets import BackgroundAsset, ForegroundAsset, PhotoAssets
from .atomic import atomic_write_json, remove_stale_temporaries
from .composition import CompositionConfig, compose_sample
from .sources import SPLITS, Photo, SourceRef, assign_splits, expand_sources, scan_photo
from .toolset import Tools, ToolSpec
from .writer import (
    arrow_schema,
    collect_statistics,
    read_chunk_meta,
    sample_row,
    shard_name,
    write_card,
    write_chunk,
)

__all__ = ["BuildConfig", "BuildError", "BuildResult", "Chunk", "build_dataset", "check_output_folder", "plan_chunks"]

_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
STATE_DIR = ".build"
EMPTY_CHUNKS_DIR = "empty-chunks"  # in STATE_DIR: markers of chunks that gave no row


class BuildError(RuntimeError):
    """A build that cannot go on (output folder holds another build, a lock is held, no photos)."""


@dataclass
class BuildConfig:
    """Everything a build needs. Fields marked *layout* change the rows; the others only the speed."""

    sources: list[str]
    output: str
    num_samples: int = 1000  # layout
    seed: int = 0  # layout
    resolution: int = 512  # layout
    chunk_size: int = 32  # layout: samples per shard
    pool_size: int = 64  # layout: photos whose assets one chunk draws from
    test_fraction: float = 0.1  # layout (share of photos, and of samples)
    validation_fraction: float = 0.0  # layout
    min_objects: int = 1  # layout
    max_objects: int = 3  # layout
    max_attempts: int = 6  # layout: composition attempts per sample before it is dropped
    curation_size: int | None = None  # layout: long side photos are curated at (default: resolution)
    min_side: int = 64  # layout: smaller photos are skipped
    max_pixels: int = 40_000_000  # layout: larger photos are skipped
    image_column: str | None = None  # layout
    tools: ToolSpec = field(default_factory=ToolSpec)  # layout
    workers: int = 1
    num_shards: int = 1
    shard_index: int = 0
    license: str = "other"
    license_notes: list[str] = field(default_factory=list)
    name: str | None = None
    keep_assets: bool = True
    progress: bool = True
    in_process: bool = False  # work in this process, with its thread settings (debugging, profiling)
    engine: str = "local"  # local (process pool) | ray (Ray Data, see ray_engine.py): same rows either way
    ray_address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else a new local Ray)
    ray_num_gpus: float | None = None  # GPUs per model actor (default: 1 when --device is cuda, else 0)

    def __post_init__(self) -> None:
        if isinstance(self.tools, dict):
            self.tools = ToolSpec(**self.tools)
        checks = [
            (self.num_samples >= 1, "num_samples must be >= 1 (a build of 0 samples makes no dataset)"),
            (self.resolution >= 32, "resolution must be >= 32"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (self.pool_size >= 1, "pool_size must be >= 1"),
            (self.workers >= 1, "workers must be >= 1"),
            (self.engine in ("local", "ray"), f"unknown engine {self.engine!r}; choose local or ray"),
            (self.engine == "ray" or self.ray_address is None, "--ray-address needs --engine ray"),
            (self.ray_num_gpus is None or self.ray_num_gpus >= 0, "--ray-num-gpus must be >= 0"),
            (
                self.num_shards >= 1 and 0 <= self.shard_index < self.num_shards,
                "need num_shards >= 1 and 0 <= shard_index < num_shards",
            ),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (self.max_attempts >= 1, "max_attempts must be >= 1"),
            (
                self.test_fraction >= 0
                and self.validation_fraction >= 0
                and self.test_fraction + self.validation_fraction < 1,
                "split fractions must be >= 0 and sum below 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def working_size(self) -> int:
        return self.curation_size or self.resolution

    def layout(self) -> dict[str, Any]:
        """The settings that decide the rows (a rerun must match them to resume)."""
        keys = (
            "sources",
            "num_samples",
            "seed",
            "resolution",
            "chunk_size",
            "pool_size",
            "test_fraction",
            "validation_fraction",
            "min_objects",
            "max_objects",
            "max_attempts",
            "min_side",
            "max_pixels",
            "image_column",
        )
        return {
            **{key: getattr(self, key) for key in keys},
            "curation_size": self.working_size,
            "tools": asdict(self.tools),
            "builder_version": __version__,
        }

    def command(self) -> str:
        """The `liwi-build` command that reproduces this build."""
        parts = [
            "liwi-build",
            *self.sources,
            "-o",
            self.output,
            "--num-samples",
            str(self.num_samples),
            "--seed",
            str(self.seed),
            "--resolution",
            str(self.resolution),
        ]
        defaults = BuildConfig(sources=[], output="")
        for key in (
            "chunk_size",
            "pool_size",
            "test_fraction",
            "validation_fraction",
            "min_objects",
            "max_objects",
            "max_attempts",
            "curation_size",
            "min_side",
            "max_pixels",
            "image_column",
        ):
            if getattr(self, key) != getattr(defaults, key):
                parts += [f"--{key.replace('_', '-')}", str(getattr(self, key))]
        for key, value in asdict(self.tools).items():
            if value != getattr(ToolSpec(), key):
                parts += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, tuple) else str(value)]
        return shlex.join(parts)


@dataclass(frozen=True)
class Chunk:
    """A fixed piece of the dataset: samples ``[first, first + count)`` of ``split``, one shard."""

    split: str
    index: int
    total: int  # chunks in this split
    first: int
    count: int
    pools: tuple[int, ...]  # pools of this split whose assets it draws from (normally one)

    @property
    def file_name(self) -> str:
        return shard_name(self.split, self.index, self.total)


@dataclass
class BuildResult:
    """What a run did."""

    output: Path
    complete: bool
    rows: dict[str, int]
    chunks_written: int
    chunks_total: int
    photos: int
    skipped_sources: int
    seconds: float
    rejections: dict[str, int] = field(default_factory=dict)  # rejected composition attempts by reason
    dropped: int = 0  # samples dropped after every attempt was rejected
    # Splits asked for that got no row (left out of data/ and the card): split -> its rejections by reason.
    empty_splits: dict[str, dict[str, int]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- planning
def samples_per_split(config: BuildConfig, photos: list[Photo]) -> dict[str, int]:
    """How many samples each split gets: its fraction of ``num_samples`` (train takes the rest)."""
    present = {photo.split for photo in photos}
    counts = {"validation": 0, "test": 0}
    for name, fraction in (("validation", config.validation_fraction), ("test", config.test_fraction)):
        if name in present:
            counts[name] = round(config.num_samples * fraction)
    counts["train"] = config.num_samples - counts["validation"] - counts["test"]
    if "train" not in present:
        counts["train"] = 0
    return {name: counts[name] for name in SPLITS if counts[name] > 0}


def assign_pools(photos: list[Photo], config: BuildConfig, chunks_per_split: dict[str, int]) -> None:
    """Cut each split's photos (sorted by id) into contiguous pools, at most one per chunk."""
    for split in SPLITS:
        members = sorted((p for p in photos if p.split == split), key=lambda p: p.photo_id)
        if not members:
            continue
        count = max(1, min(math.ceil(len(members) / config.pool_size), chunks_per_split.get(split, 1)))
        for position, photo in enumerate(members):
            photo.pool = position * count // len(members)


def plan_chunks(config: BuildConfig, photos: list[Photo]) -> list[Chunk]:
    """All chunks of the build, in a fixed order (train, validation, test)."""
    counts = samples_per_split(config, photos)
    chunks_per_split = {split: math.ceil(n / config.chunk_size) for split, n in counts.items()}
    assign_pools(photos, config, chunks_per_split)
    chunks = []
    for split, n in counts.items():
        total = chunks_per_split[split]
        pools = max(p.pool for p in photos if p.split == split) + 1
        for index in range(total):
            first = index * config.chunk_size
            pool = index * pools // total
            chunks.append(Chunk(split, index, total, first, min(config.chunk_size, n - first), (pool,)))
    return chunks


def shard_chunks(chunks: list[Chunk], num_shards: int, shard_index: int) -> list[Chunk]:
    """The contiguous range of chunks machine ``shard_index`` of ``num_shards`` builds."""
    total = len(chunks)
    return chunks[shard_index * total // num_shards : (shard_index + 1) * total // num_shards]


# ------------------------------------------------------------------------------------- workers
@dataclass
class _WorkerState:
    config: BuildConfig
    photos: dict[str, Photo]  # by id
    assets_dir: Path
    data_dir: Path
    empty_dir: Path  # markers of chunks without rows
    schema: Any = None  # the shards' arrow schema, made once in the parent process
    tools: Tools | None = None
    cache: dict[tuple[str, tuple[int, ...]], tuple[list[BackgroundAsset], list[ForegroundAsset]]] = field(
        default_factory=dict
    )

    def get_tools(self) -> Tools:
        if self.tools is None:
            from .toolset import build_tools

            self.tools = build_tools(self.config.tools)
        return self.tools


_STATE: _WorkerState | None = None


def _limit_threads() -> dict[str, int]:
    """One worker, one core: no hidden thread pools. Returns the previous settings."""
    import sys

    import cv2

    previous = {"cv2": cv2.getNumThreads()}
    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # never import torch just for this
        torch = sys.modules["torch"]
        previous["torch"] = torch.get_num_threads()
        torch.set_num_threads(1)
    return previous


def _restore_threads(previous: dict[str, int]) -> None:
    import sys

    import cv2

    cv2.setNumThreads(previous["cv2"])
    if "torch" in previous:
        sys.modules["torch"].set_num_threads(previous["torch"])


def _init_worker(state: _WorkerState) -> None:
    global _STATE
    _limit_threads()
    _STATE = state


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Processes started inside inherit one-thread settings for their BLAS, OpenMP and numba pools."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _sigterm_deferred() -> Iterator[None]:
    """A SIGTERM that arrives inside is handled on leaving, once a pool being started exists.

    `multiprocessing.pool.Pool` stops the workers it started only when an `Exception` interrupts
    its start-up; a `Terminated` raised there would leave them running, unknown to the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if received:
            signal.raise_signal(signal.SIGTERM)  # the previous handler's turn (liwi-build: Terminated)


def _asset_path(assets_dir: Path, photo_id: str) -> Path:
    return assets_dir / f"{photo_id}.npz"


def _curate_task(photo_id: str) -> dict[str, Any]:
    """Curate one photo into its asset file; returns its summary."""
    assert _STATE is not None
    return _curate(_STATE, photo_id).summary()


def _curate(state: _WorkerState, photo_id: str) -> PhotoAssets:
    """Curate one photo and save its assets (a failure gives a photo without assets, never a crash)."""
    from .curation import curate_photo
    from .sources import load_source_image

    photo = state.photos[photo_id]
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        image = load_source_image(photo.ref, state.config.max_pixels, state.config.min_side)
        assets = curate_photo(image, photo, state.get_tools(), state.config.working_size)
    except Exception as error:  # one bad photo must not stop the build: it just gives no assets
        assets = PhotoAssets(
            photo.photo_id, photo.ref.describe(), notes=[f"curation failed: {type(error).__name__}: {str(error)[:200]}"]
        )
    assets.seconds = time.perf_counter() - start
    assets.cpu_seconds = time.process_time() - cpu_start
    assets.save(_asset_path(state.assets_dir, photo_id))
    return assets


def _pool_assets(
    state: _WorkerState, split: str, pools: tuple[int, ...]
) -> tuple[list[BackgroundAsset], list[ForegroundAsset]]:
    """Backgrounds and foregrounds of the photos in ``pools`` of ``split`` (ordered by photo id)."""
    key = (split, pools)
    if key not in state.cache:
        if len(state.cache) >= 2:
            state.cache.pop(next(iter(state.cache)))
        backgrounds: list[BackgroundAsset] = []
        foregrounds: list[ForegroundAsset] = []
        members = sorted(
            (p for p in state.photos.values() if p.split == split and p.pool in pools), key=lambda p: p.photo_id
        )
        for photo in members:
            path = _asset_path(state.assets_dir, photo.photo_id)
            # A pool widened to its neighbours may reach photos nobody curated yet: curate them here.
            assets = PhotoAssets.load(path) if path.exists() else _curate(state, photo.photo_id)
            if assets.background is not None:
                backgrounds.append(assets.background)
            foregrounds.extend(assets.foregrounds)
        state.cache[key] = (backgrounds, foregrounds)
    return state.cache[key]


def _usable_pools(state: _WorkerState, chunk: Chunk) -> tuple[int, ...]:
    """The chunk's pool, widened to its neighbours until it has a background and a foreground."""
    split_pools = sorted({p.pool for p in state.photos.values() if p.split == chunk.split})
    low = high = split_pools.index(chunk.pools[0])
    while True:
        pools = tuple(split_pools[low : high + 1])
        backgrounds, foregrounds = _pool_assets(state, chunk.split, pools)
        if (backgrounds and foregrounds) or (low == 0 and high == len(split_pools) - 1):
            return pools
        low, high = max(0, low - 1), min(len(split_pools) - 1, high + 1)


def _chunk_task(chunk: Chunk) -> dict[str, Any]:
    """Compose, verify and write one chunk; returns its statistics."""
    state = _STATE
    assert state is not None
    config, start, cpu_start = state.config, time.perf_counter(), time.process_time()
    pools = _usable_pools(state, chunk)
    backgrounds, foregrounds = _pool_assets(state, chunk.split, pools)
    tools = state.get_tools()
    composition = CompositionConfig(
        resolution=config.resolution, min_objects=config.min_objects, max_objects=config.max_objects
    )
    rows, rejections, dropped, examples = [], Counter(), 0, []
    for sample in range(chunk.first, chunk.first + chunk.count):
        if not backgrounds or not foregrounds:
            dropped += 1
            rejections["split has no " + ("backgrounds" if not backgrounds else "foregrounds")] += 1
            continue
        for attempt in range(config.max_attempts):
            rng = np.random.default_rng([config.seed, _SPLIT_CODES[chunk.split], sample, attempt])
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            count = min(int(rng.integers(config.min_objects, config.max_objects + 1)), len(foregrounds))
            chosen = [foregrounds[int(k)] for k in sorted(rng.choice(len(foregrounds), size=count, replace=False))]
            composed = compose_sample(background, chosen, rng, composition)
            verdict = tools.verifier.verify(composed.layered, composed.composite)
            if verdict.accepted:
                rows.append(
                    sample_row(
                        composed,
                        verdict,
                        row_id=f"{chunk.split}-{sample:07d}",
                        split=chunk.split,
                        seed=config.seed,
                        rejected_attempts=attempt,
                        builder_version=__version__,
                        tools=tools.names(),
                    )
                )
                break
            rejections[verdict.reason.split()[0].rstrip(":")] += 1
            if len(examples) < 5:
                examples.append(f"{chunk.split}-{sample:07d} attempt {attempt}: {verdict.reason}")
        else:
            dropped += 1
    meta = {
        "split": chunk.split,
        "chunk": chunk.index,
        "of": chunk.total,
        "first_sample": chunk.first,
        "samples": chunk.count,
        "rows": len(rows),
        "dropped": dropped,
        "rejections": dict(sorted(rejections.items())),
        "rejection_examples": examples,
        "pools": list(pools),
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
    }
    if rows:
        # Timings stay out of the shard: its bytes depend on the layout alone (any engine, any run).
        timings = {key: meta[key] for key in ("seconds", "cpu_seconds")}
        atomic_write_json(_timings_path(state.data_dir, chunk), timings)
        shard_meta = {key: value for key, value in meta.items() if key not in timings}
        write_chunk(state.data_dir / chunk.file_name, rows, shard_meta, state.schema)
    else:  # no 0-row shard: `datasets` cannot load one (nor any split beside it)
        atomic_write_json(_empty_marker(state.empty_dir, chunk), meta)
    return meta


def _empty_marker(empty_dir: Path, chunk: Chunk) -> Path:
    return empty_dir / f"{chunk.file_name}.json"


def _chunk_done(out: Path, chunk: Chunk) -> bool:
    """Whether the chunk was built: its shard, or its marker when it gave no row, exists."""
    return (out / "data" / chunk.file_name).exists() or _empty_marker(
        out / STATE_DIR / EMPTY_CHUNKS_DIR, chunk
    ).exists()


def _chunk_meta(out: Path, chunk: Chunk) -> dict[str, Any]:
    """The statistics of a built chunk (from its shard's footer or its empty-chunk marker)."""
    shard = out / "data" / chunk.file_name
    if shard.exists():
        return read_chunk_meta(shard)
    return json.loads(_empty_marker(out / STATE_DIR / EMPTY_CHUNKS_DIR, chunk).read_text())


def _timings_path(data_dir: Path, chunk: Chunk) -> Path:
    """``OUT/.build/timings/<shard>.json``: how long a chunk took (benchmarks read it)."""
    folder = data_dir.parent / STATE_DIR / "timings"
    folder.mkdir(exist_ok=True)
    return folder / f"{chunk.file_name}.json"


# ------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive lock that the OS releases when the process dies (even by SIGKILL)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"{what} is locked by another running build ({path})") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _progress(iterable: Any, total: int, desc: str, enabled: bool, unit: str = "it") -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)


def _map(pool: Any, function: Any, items: list[Any]) -> Iterator[Any]:
    """``function`` over ``items``: in a process pool, or here when there is none."""
    if pool is None:
        return map(function, items)
    return pool.imap_unordered(function, items)


# ------------------------------------------------------------------------------------- stages
_PARALLEL_SCAN = 64  # fewer sources than this are scanned here: starting a pool would cost more


def _scan(config: BuildConfig, state_dir: Path, context: Any) -> tuple[list[Photo], list[dict[str, str]], int]:
    """Photos (deduplicated, split), skipped sources with reasons, and the number of sources found.

    Cached in ``.build/sources.json``, so a resumed build does not read every photo again.
    """
    cache = state_dir / "sources.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return [Photo.from_dict(p) for p in data["photos"]], data["skipped"], data["found"]
    refs = expand_sources(config.sources, config.image_column)
    photos: list[Photo] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    scan = _ScanCall(config.max_pixels, config.min_side)
    pool = None
    if config.workers > 1 and len(refs) >= _PARALLEL_SCAN:
        with _single_threaded_children(), _sigterm_deferred():
            pool = context.Pool(config.workers, _limit_threads)
    try:
        results = list(
            _progress(
                pool.imap(scan, refs, chunksize=4) if pool is not None else map(scan, refs),
                len(refs),
                "scan",
                config.progress,
                "photo",
            )
        )
    except BaseException:
        if pool is not None:  # stopped (an error, Ctrl-C, SIGTERM): the workers stop now, not after the scan
            pool.terminate()
            pool.join()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    for ref, (photo, reason) in zip(refs, results):
        if photo is None:
            skipped.append({"source": ref.describe(), "reason": reason})
        elif photo.photo_id in seen:
            skipped.append({"source": ref.describe(), "reason": f"duplicate of {seen[photo.photo_id]}"})
        else:
            seen[photo.photo_id] = ref.describe()
            photos.append(photo)
    assign_splits(photos, {"validation": config.validation_fraction, "test": config.test_fraction})
    atomic_write_json(cache, {"found": len(refs), "photos": [p.to_dict() for p in photos], "skipped": skipped})
    return photos, skipped, len(refs)


@dataclass
class _ScanCall:
    """Picklable ``scan_photo`` with the size limits bound."""

    max_pixels: int
    min_side: int

    def __call__(self, ref: SourceRef) -> tuple[Photo | None, str]:
        return scan_photo(ref, self.max_pixels, self.min_side)


def _check_layout(config: BuildConfig, state_dir: Path) -> None:
    """Refuse to mix two different builds in one folder; record the layout of a new one."""
    path = state_dir / "config.json"
    layout = json.loads(json.dumps(config.layout()))  # normalise tuples to lists
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != layout:
            changed = sorted(k for k in set(previous) | set(layout) if previous.get(k) != layout.get(k))
            raise BuildError(
                f"{config.output} holds a build with different settings ({', '.join(changed)}); "
                "rerun with the same settings to resume, or choose a new output folder"
            )
    else:
        atomic_write_json(path, layout)


def _finalize(
    config: BuildConfig,
    out: Path,
    state_dir: Path,
    chunks: list[Chunk],
    photos: list[Photo],
    skipped: list[dict[str, str]],
    found: int,
) -> bool:
    """Write the report and, last, the card, once every chunk of every machine exists.

    Raises `BuildError` when no chunk gave a row: there is no dataset to describe.
    """
    data_dir = out / "data"
    if not all(_chunk_done(out, chunk) for chunk in chunks):
        return False
    empty = [_chunk_meta(out, chunk) for chunk in chunks if not (data_dir / chunk.file_name).exists()]
    if len(empty) == len(chunks):
        rejections = Counter()
        for meta in empty:
            rejections.update(meta.get("rejections", {}))
        raise BuildError(
            f"no sample passed verification in any split (rejected attempts: {_counts(rejections)}); "
            "nothing to write. Add photos with clear objects, or try another --seed"
        )
    try:
        with _lock(state_dir / "finalize.lock", "finalizing"):
            stats = collect_statistics(data_dir, empty_chunks=empty)
            curation = []
            for photo in sorted(photos, key=lambda p: p.photo_id):
                path = _asset_path(state_dir / "assets", photo.photo_id)
                if path.exists():
                    curation.append(PhotoAssets.load(path).summary())
            tools = json.loads(json.dumps(asdict(config.tools)))
            build = {
                "name": config.name or out.name,
                "builder_version": __version__,
                "seed": config.seed,
                "resolution": config.resolution,
                "num_samples": config.num_samples,
                "command": config.command(),
                "tools": tools,
                "skipped_sources": len(skipped),
            }
            report = {
                **build,
                "sources": {"found": found, "usable": len(photos), "skipped": skipped},
                "photos_per_split": dict(Counter(p.split for p in photos)),
                "statistics": stats,
                "curation": curation,
            }
            atomic_write_json(out / "build_report.json", report)
            notes = list(config.license_notes) or [
                "Source photos: "
                + ", ".join(sorted({_root(p.ref) for p in photos}))
                + ". Their licences apply; check them before sharing this dataset."
            ]
            write_card(out, stats, build, config.license, notes)
    except BuildError:
        return False  # another process is finalizing
    if not config.keep_assets:
        for path in (state_dir / "assets").glob("*.npz"):
            path.unlink()
    return True


def _counts(counts: dict[str, int]) -> str:
    """``"reason a 3, reason b 1"`` (most common first), or ``"none"``."""
    return ", ".join(f"{reason} {count}" for reason, count in Counter(counts).most_common()) or "none"


def _root(ref: SourceRef) -> str:
    from .sources import source_root_note

    return source_root_note(ref)


def build_dataset(config: BuildConfig) -> BuildResult:
    """Run (or resume) a build; see the module docstring for how the work is cut."""
    start = time.perf_counter()
    if config.engine == "ray":  # before anything is written: Ray installed, its cluster reachable
        from .ray_engine import check_ray

        check_ray(config)
    out = Path(config.output)
    require("datasets", "build", "liwi-build")  # before any work, not when the card is written
    check_output_folder(out)
    fresh = not out.exists()
    try:
        return _build(config, out, start)
    except BaseException:
        # A new build that failed (or was stopped) before any work product (a missing source, no usable
        # photo) leaves nothing: a rerun with other sources must not find "a build with different settings".
        # (Not with several machines: another one may be starting in the same folder.)
        if fresh and config.num_shards == 1 and not _has_work(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _has_work(out: Path) -> bool:
    """Whether a build folder holds anything worth resuming from (assets, shards, empty-chunk markers)."""
    state_dir = out / STATE_DIR
    return any(
        any(folder.glob(pattern))
        for folder, pattern in (
            (state_dir / "assets", "*.npz"),
            (out / "data", "*.parquet"),
            (state_dir / EMPTY_CHUNKS_DIR, "*.json"),
        )
        if folder.is_dir()
    )


def _build(config: BuildConfig, out: Path, start: float) -> BuildResult:
    state_dir, data_dir = out / STATE_DIR, out / "data"
    assets_dir, empty_dir = state_dir / "assets", state_dir / EMPTY_CHUNKS_DIR
    for folder in (state_dir, data_dir, assets_dir, empty_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shard_tag = f"shard {config.shard_index} of {config.num_shards}"
    with _lock(state_dir / f"lock-{config.shard_index}-of-{config.num_shards}", f"{out} ({shard_tag})"):
        _check_layout(config, state_dir)
        if (out / "README.md").exists():
            complete_result = _complete_result(config, out, state_dir, start)
            if complete_result is not None:
                return complete_result
        for folder in (state_dir, data_dir, assets_dir, empty_dir):
            remove_stale_temporaries(folder)
        context = multiprocessing.get_context("spawn")
        pool = None
        old_threads = _limit_threads()  # this process scans (and works, when in_process)
        try:
            photos, skipped, found = _scan(config, state_dir, context)
            if not photos:
                raise BuildError(f"no usable photo among {found} sources ({len(skipped)} skipped)")
            chunks = plan_chunks(config, photos)
            mine = shard_chunks(chunks, config.num_shards, config.shard_index)
            todo = [chunk for chunk in mine if not _chunk_done(out, chunk)]
            needed_pools = {(chunk.split, pool_id) for chunk in todo for pool_id in chunk.pools}
            to_curate = [
                p.photo_id
                for p in sorted(photos, key=lambda p: p.photo_id)
                if (p.split, p.pool) in needed_pools and not _asset_path(assets_dir, p.photo_id).exists()
            ]
            state = _WorkerState(
                config, {p.photo_id: p for p in photos}, assets_dir, data_dir, empty_dir, arrow_schema()
            )
            work = todo
            if config.engine == "ray":
                from .ray_engine import run_on_ray

                run_on_ray(state, to_curate, todo)
                to_curate, work = [], []
            if config.in_process:
                _init_worker(state)
            elif to_curate or work:
                # Workers are single-threaded processes even when there is one: BLAS and OpenMP
                # reductions then run in the same order on every machine, so rows never depend on
                # the number of workers or cores.
                with _single_threaded_children(), _sigterm_deferred():
                    pool = context.Pool(config.workers, _init_worker, (state,))
            for _ in _progress(_map(pool, _curate_task, to_curate), len(to_curate), "curate", config.progress, "photo"):
                pass
            bar = _progress(None, sum(c.count for c in work), "compose", config.progress, "sample")
            for meta in _map(pool, _chunk_task, work):
                if bar is not None:
                    bar.update(meta["samples"])
            if bar is not None:
                bar.close()
        finally:
            if pool is not None:
                pool.terminate()  # SIGTERM to each worker, then wait for them: none is left running
                pool.join()
                # A worker stopped mid-write leaves its temporary file: its process is gone now.
                for folder in (state_dir, data_dir, assets_dir, empty_dir, state_dir / "timings"):
                    if folder.is_dir():
                        remove_stale_temporaries(folder)
            _restore_threads(old_threads)
        complete = _finalize(config, out, state_dir, chunks, photos, skipped, found)
        return _result(out, complete, chunks, len(todo), len(photos), len(skipped), start)


def _result(
    out: Path, complete: bool, chunks: list[Chunk], written: int, photos: int, skipped: int, start: float
) -> BuildResult:
    """Rows, rejections and empty splits of the chunks built so far (by any machine)."""
    rows, rejections, dropped = Counter(), Counter(), 0
    by_split: dict[str, Counter] = {}
    for chunk in chunks:
        if _chunk_done(out, chunk):
            meta = _chunk_meta(out, chunk)
            rows[chunk.split] += meta.get("rows", 0)
            rejections.update(meta.get("rejections", {}))
            by_split.setdefault(chunk.split, Counter()).update(meta.get("rejections", {}))
            dropped += meta.get("dropped", 0)
    empty = {split: dict(counts.most_common()) for split, counts in by_split.items() if complete and not rows[split]}
    return BuildResult(
        output=out,
        complete=complete,
        rows={split: count for split, count in rows.items() if count},
        chunks_written=written,
        chunks_total=len(chunks),
        photos=photos,
        skipped_sources=skipped,
        seconds=time.perf_counter() - start,
        rejections=dict(rejections.most_common()),
        dropped=dropped,
        empty_splits=empty,
    )


def check_output_folder(out: Path) -> None:
    """Raise `BuildError` unless the build can write in ``out`` (checked before any work).

    ``out`` must be a folder or not exist yet, and files must be creatable in it (or in the
    nearest folder above it that exists, where it will be made). A probe file is created and
    removed, which also catches read-only mounts and what permission bits do not show (root).
    """
    if out.exists() and not out.is_dir():
        raise BuildError(f"output {out} exists and is not a folder; give a new or existing folder with -o")
    folder = out
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise BuildError(f"cannot create the output folder {out}: {folder} is a file, not a folder")
    probe = folder / f".liwi-build-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as error:
        raise BuildError(
            f"cannot write in {folder} ({error.strerror or error}); choose a writable output folder with -o"
        ) from None
    probe.unlink(missing_ok=True)


def _complete_result(config: BuildConfig, out: Path, state_dir: Path, start: float) -> BuildResult | None:
    """The result of an already finished build (None when something is missing after all)."""
    cache = state_dir / "sources.json"
    if not cache.exists():
        return None
    data = json.loads(cache.read_text())
    photos = [Photo.from_dict(p) for p in data["photos"]]
    chunks = plan_chunks(config, photos)
    if not all(_chunk_done(out, chunk) for chunk in chunks):
        return None
    return _result(out, True, chunks, 0, len(photos), len(data["skipped"]), start)
