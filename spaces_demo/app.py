"""LiWi Space: take a photo apart into background, shadow and object layers, edit them, download a PSD.

Runs on a Hugging Face Space (a GPU when there is one; ``spaces.GPU`` when the ``spaces`` package is
installed) and locally on a CPU with nothing downloaded::

    python spaces_demo/app.py            # http://127.0.0.1:7860

The model is chosen in the page or by environment variable (see `SpaceConfig.from_env`): the
tool-chain decomposer by default, or any `LiWiDecompositionPipeline` folder or Hub id; every model loads
through `liwi_diffusers.load_decomposer`. The tool chain runs in worker processes (``worker_pool.py``), so
that a request past its time limit is stopped and its worker freed. Edits live in ``editing.py`` as plain
functions; this module only wires them to Gradio.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # a Space runs app.py from its own folder; tests load it by path
    sys.path.insert(0, str(HERE))

from editing import (  # noqa: E402
    MAX_SCALE,
    MAX_SHADOW_STRENGTH,
    MIN_SCALE,
    EditSession,
    ObjectEdit,
    apply_edits,
    delete_object,
    object_choices,
    reset_edits,
    shown_layer_names,
    update_edit,
)
from prompt_clicks import (  # noqa: E402
    add_click,
    empty_prompts,
    prompt_options,
    prompt_preview,
    prompt_summary,
)
from worker_pool import (  # noqa: E402
    TimeLimitExceeded,
    WorkerCrashed,
    WorkerPool,
    decompose_in_worker,
    tool_chain_tiles,
    warm_up_tool_chain,
)

from liwi_diffusers.image_io import ImageInputWarning, ImageLoadError, load_image  # noqa: E402
from liwi_diffusers.layers import LayeredImage, LayerPart, layer_name  # noqa: E402
from liwi_diffusers.loading import TOOL_CHAIN_NAMES, DecomposerLoadError, PipelineDecomposer, load_decomposer  # noqa: E402
from liwi_diffusers.sample_images import load_sample_image  # noqa: E402
from liwi_diffusers.tools.recursive import MAX_DEPTH  # noqa: E402

__all__ = ["SpaceConfig", "build_demo", "decompose", "export_layers", "launch_options", "main"]

LOGGER = logging.getLogger("liwi_space")
TOOLS = "tools"  # the tool-chain decomposer (learned segmenter when it is in the model cache, else weight-free)
TINY = "tiny"  # a tiny random pipeline: exercises the diffusion path in seconds, output is noise
# The trained checkpoint shipped inside liwi-diffusers (liwi_diffusers.checkpoints): always in the model list,
# not the default, because the tool chain still scores better on the held-out benchmark (see the README).
SHIPPED_CHECKPOINT = "liwi-small"
# Bundled photos that are public domain or CC0 (see liwi_diffusers.sample_images.SAMPLE_IMAGE_LICENCES).
EXAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
EXPORT_FORMATS = {"PSD": "psd", "ORA": "ora", "ZIP of PNGs": "zip"}
OUTPUT_TTL_S = 3600  # files written for downloads are removed after this long
MOVE_STEP = 0.5  # steps of the move sliders (percent of the picture's size)
FACTOR_STEP = 0.05  # steps of the scale and shadow-strength sliders
AUTO = "auto"  # the object-count choice "the model decides"; 0 means the same, as in the CLI and the Python API


@dataclass(frozen=True)
class SpaceConfig:
    """Settings of the Space; `from_env` reads them from ``LIWI_*`` environment variables.

    ``time_limit_s`` (``LIWI_TIME_LIMIT``) counts seconds of computing, not of waiting: a tool-chain request
    may use that many CPU seconds per worker thread (`worker_pool.WorkerPool.run`), however long a loaded
    machine stretches them, and is stopped after `worker_pool.WALL_LIMIT_FACTOR` times as long in wall-clock
    time at the latest; a pipeline stops at its first denoising step past it in wall-clock time (a GPU is not
    shared like the CPUs). Waiting in the queue never counts.

    Why: a wall-clock limit stopped ordinary requests whenever the machine was busy, since the time a request
    takes there grows with the load, not with the photo (the last session's 20-user run saw ~90 s per request
    at a load average of 8-20, and its 60 s limit stopped ordinary requests). Measured on 2 cores, one thread
    per worker, with the learned segmenter, for 1024 px versions of the four example photos (a blank one: 7.0;
    ``python spaces_demo/request_cost.py`` measures a machine):

        depth 1:  9.6-13.0 CPU s   (wall-clock 20-38 s at a load average of 9-17)
        depth 2: 23.9-47.8 CPU s   (74-147 s at 11-12; the most for the rocket's 4 objects)
        depth 3: 36.0-99.0 CPU s   (113-292 s at 11-16)

    The default, 120 s of computing, lets every one of these through (depth 1 nine times over, the costliest
    depth 3 with 20 % to spare) whatever the load, while a hostile upload still holds a worker for at most
    2 CPU minutes.
    """

    default_model: str = TOOLS
    models: tuple[str, ...] = (TOOLS,)
    max_side: int = 1024  # larger photos are downscaled (with a notice)
    max_pixels: int = 50_000_000  # larger photos are refused before decoding
    max_file_size: str = "20mb"  # larger uploads are refused by the server
    max_layers: int = 8
    max_steps: int = 50
    resolution: int | None = None  # working resolution of diffusion pipelines (None: the checkpoint's own)
    queue_size: int = 64  # waiting requests beyond this are turned away ("queue full")
    concurrency: int = 2  # decompositions running at once (tool-chain worker processes)
    time_limit_s: float = 120.0  # seconds of computing a decomposition may use; then it is stopped, its worker freed
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "liwi_space")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpaceConfig:
        """Read ``LIWI_MODEL`` (``tools``, ``tiny``, a pipeline folder or Hub id), ``LIWI_MODELS`` (more
        choices, comma-separated), ``LIWI_MAX_SIDE``, ``LIWI_MAX_PIXELS``, ``LIWI_MAX_FILE_SIZE``,
        ``LIWI_MAX_STEPS``, ``LIWI_RESOLUTION``, ``LIWI_QUEUE_SIZE``, ``LIWI_CONCURRENCY``, ``LIWI_TIME_LIMIT``
        (seconds of computing, decimals allowed; see the class docstring), ``LIWI_OUTPUT_DIR``; ``LIWI_TILES``
        (the tool chain's crops, read by the workers) is checked here."""
        env = os.environ if environ is None else environ
        tool_chain_tiles(env)  # read by the worker processes; a bad value stops the Space here, not per request
        default = env.get("LIWI_MODEL", "").strip() or TOOLS
        extra = [name.strip() for name in env.get("LIWI_MODELS", "").split(",") if name.strip()]
        models = list(dict.fromkeys([default, TOOLS, SHIPPED_CHECKPOINT, *extra]))
        base = cls()

        def number(name: str, fallback: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return fallback
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
            return value

        def seconds(name: str, fallback: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return fallback
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {raw}")
            return value

        return cls(
            default_model=default,
            models=tuple(models),
            max_side=number("LIWI_MAX_SIDE", base.max_side),
            max_pixels=number("LIWI_MAX_PIXELS", base.max_pixels),
            max_file_size=env.get("LIWI_MAX_FILE_SIZE", "").strip() or base.max_file_size,
            max_steps=number("LIWI_MAX_STEPS", base.max_steps),
            resolution=number("LIWI_RESOLUTION", 0) or base.resolution,
            queue_size=number("LIWI_QUEUE_SIZE", base.queue_size),
            concurrency=number("LIWI_CONCURRENCY", base.concurrency),
            time_limit_s=seconds("LIWI_TIME_LIMIT", base.time_limit_s),
            output_dir=Path(env.get("LIWI_OUTPUT_DIR", "").strip() or base.output_dir),
        )


def _how_chosen(wanted: int | None, prompts: Mapping[str, Any] | None) -> str:
    """How the report says the objects were chosen: by the model ("auto"), by clicks, or both."""
    clicked = bool((prompts or {}).get("points"))
    if clicked and (prompts or {}).get("only_prompts"):
        return " (your clicks)"
    if clicked:
        return " (your clicks + auto)" if wanted is None else " (your clicks + found)"
    return " (auto)" if wanted is None else ""


def model_label(name: str) -> str:
    """What the model dropdown shows for a model name."""
    if name == TOOLS:
        return "Tool chain (CPU; no download needed)"
    if name == "weight-free":
        return "Tool chain, weight-free (CPU)"
    if name == "fast":
        return "Tool chain, fast preset (CPU; fewer, smaller segmenter passes)"
    if name == TINY:
        return "Tiny random pipeline (testing only: outputs noise)"
    if name == SHIPPED_CHECKPOINT:
        return f"LiWi checkpoint {name} (shipped; small demonstration model)"
    return f"LiWi pipeline: {name}"


# ---------------------------------------------------------------------------------------------- models
def _gpu(function: Callable[..., Any]) -> Callable[..., Any]:
    """``spaces.GPU`` (ZeroGPU on Hugging Face) when the ``spaces`` package is installed, else unchanged."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=120)(function)


def user_error(message: str, title: str = "Error") -> gr.Error:
    """A `gr.Error` for something the user can fix: shown to them, logged as one line (no traceback)."""
    return gr.Error(message, title=title, print_exception=False)


def _logged(endpoint: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler``, logging each user error it raises as one line (Gradio prints no traceback for them)."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            LOGGER.info("%s: %s: %s", endpoint, error.title, " ".join(str(error.message).split()))
            raise

    return wrapped


class _Models:
    """Loaded pipelines by name, each loaded once; a pipeline runs one call at a time (its scheduler has state).

    The tool chain is not loaded here: it runs in the worker processes of `tool_chain_pool`.
    """

    def __init__(self) -> None:
        self._models: dict[str, PipelineDecomposer] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._loading = threading.Lock()

    def get(self, name: str) -> tuple[PipelineDecomposer, threading.Lock]:
        if name in self._models:  # loaded: no need to wait behind another model's loading
            return self._models[name], self._locks[name]
        with self._loading:
            if name not in self._models:
                self._locks[name] = threading.Lock()
                self._models[name] = _load_model(name)
            return self._models[name], self._locks[name]


def _load_model(name: str) -> PipelineDecomposer:
    """The pipeline ``name`` through `load_decomposer` (bfloat16 on a GPU); ``tiny`` is built here, for testing."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == TINY:
        from liwi_diffusers.pipelines.tiny import build_tiny_pipeline

        return PipelineDecomposer(build_tiny_pipeline(seed=0).to(device), resolution=128, name=TINY)
    try:
        decomposer = load_decomposer(name, device=device, dtype="bfloat16" if device == "cuda" else None)
    except DecomposerLoadError as error:
        raise user_error(f"Cannot load {name!r}: {error}", title="Cannot load the model") from None
    if not isinstance(decomposer, PipelineDecomposer):
        raise user_error(f"{name!r} is not a diffusion pipeline; choose it as the tool chain.")
    return decomposer


MODELS = _Models()
_POOLS: dict[int, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def tool_chain_pool(size: int) -> WorkerPool:
    """The worker processes (``size`` of them, started on first use) that run tool-chain decompositions."""
    with _POOLS_LOCK:
        if size not in _POOLS:
            _POOLS[size] = WorkerPool(size, initializer=warm_up_tool_chain)
        return _POOLS[size]


class _PastTimeLimit(Exception):
    """Raised from a pipeline's step callback once its request is past the time limit."""


@_gpu
def run_pipeline(
    name: str,
    image: Image.Image,
    num_layers: int | None,
    steps: int,
    seed: int,
    resolution: int | None,
    time_limit_s: float,
    progress: Any = None,
) -> LayeredImage:
    """One pipeline call (on the GPU when there is one): the `LayeredImage` of ``image``.

    The time limit is checked after every denoising step: past it, the call stops and the worker is free.
    """
    import torch

    decomposer, lock = MODELS.get(name)

    with lock:
        deadline = time.monotonic() + time_limit_s

        def on_step(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if progress is not None:
                progress((step + 1, steps), desc="Denoising")
            if time.monotonic() > deadline:
                raise _PastTimeLimit
            return {}

        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        resolution = resolution or decomposer.resolution
        output = decomposer.pipeline(
            image,
            num_layers=num_layers or AUTO,
            num_inference_steps=steps,
            generator=generator,
            callback_on_step_end=on_step,
            **({"resolution": resolution} if resolution else {}),
        )
    return output.layers[0]


def run_model(
    name: str,
    image: Image.Image,
    num_layers: int | None,
    steps: int,
    seed: int,
    config: SpaceConfig,
    progress: Any = None,
    prompts: Mapping[str, Any] | None = None,
    depth: int = 1,
) -> LayeredImage:
    """Decompose ``image`` with model ``name`` (``num_layers`` None: automatic, the model decides).

    ``prompts`` are the page's clicks (see ``prompt_clicks.py``); only the tool chain takes them. ``depth``
    above 1 splits every object into parts, and those again at 3 (`decompose_to_depth`): tool chain only, in
    the same worker call, so under the same time limit.

    The tool chain runs in a worker process of `tool_chain_pool`, pipelines in this thread; either is stopped
    at ``config.time_limit_s``. A model that refuses the request (a `ValueError`, e.g. more layers than it
    supports), a request past the time limit and a worker that died give a one-line `gr.Error`.
    """
    try:
        if name in TOOL_CHAIN_NAMES:
            if progress is not None:
                progress(0.2, desc="Finding objects, matting, inpainting")
            pool = tool_chain_pool(config.concurrency)
            arguments = (name, image, num_layers, prompt_options(prompts), depth)
            return pool.run(decompose_in_worker, arguments, config.time_limit_s)
        if depth > 1:
            raise user_error(
                f"Objects are split into parts by the tool chain only; choose it as the model, or set "
                f"'Split objects into parts' to 1 to decompose with {model_label(name)}."
            )
        if prompt_options(prompts):
            raise user_error(
                f"Clicked objects are taken out by the tool chain only; choose it as the model, or press "
                f"Clear prompts to decompose with {model_label(name)}."
            )
        if progress is not None:
            progress(0.0, desc="Loading the pipeline")
        MODELS.get(name)  # load outside the GPU function: a ZeroGPU slot is then spent on denoising only
        return run_pipeline(name, image, num_layers, steps, seed, config.resolution, config.time_limit_s, progress)
    except (TimeLimitExceeded, _PastTimeLimit):
        LOGGER.warning("/decompose: stopped at the time limit (%g s), model %s", config.time_limit_s, name)
        fewer = "a lower 'Split objects into parts' depth, " if depth > 1 else ""
        raise user_error(
            f"This photo took longer than {config.time_limit_s:g} s of computing, this Space's limit per request, "
            f"and was stopped. Try {fewer}a smaller or busier photo, fewer objects, or another model.",
            title="Time limit",
        ) from None
    except WorkerCrashed as error:
        LOGGER.error("/decompose: worker process lost (%s), model %s", error, name)
        raise user_error(
            "The decomposition stopped unexpectedly (its worker process was lost); please try again.",
            title="Decomposition failed",
        ) from None
    except ValueError as error:
        raise user_error(f"{model_label(name)} could not decompose this photo: {error}") from None


# ---------------------------------------------------------------------------------------------- handlers
def upload_path(value: str | Mapping[str, Any] | None) -> str | None:
    """The file path of an image input: a path, or Gradio's un-preprocessed ``{"path": ...}`` payload."""
    if isinstance(value, Mapping):
        if value.get("path"):
            return str(value["path"])
        if str(value.get("url") or "").startswith("data:"):
            raise user_error("Upload the photo as a file (drag it in or click the upload area).", title="No photo")
        return None
    return value


def prepare_image(value: str | Mapping[str, Any] | None, config: SpaceConfig) -> tuple[Image.Image, list[str]]:
    """Open an uploaded photo for decomposition: RGB, at most ``config.max_side`` px, plus notices for the user.

    ``value`` is a file path or Gradio's file payload (the page hands the handler the upload without
    decoding it, so that `load_image` can turn corrupt, truncated, huge or non-image uploads into
    readable messages). Raises `gr.Error` with such a message.
    """
    path = upload_path(value)
    if path is None or not path.strip():
        raise user_error("Upload a photo or pick an example first.", title="No photo")
    name = Path(path).name
    notices: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageInputWarning)
        try:
            image = load_image(path, max_pixels=config.max_pixels)
        except ImageLoadError as error:
            raise user_error(str(error).replace(str(path), name), title="Cannot read this photo") from None
    notices += [
        str(warning.message).replace(str(path), name)
        for warning in caught
        if issubclass(warning.category, ImageInputWarning)
    ]
    width, height = image.size
    if max(width, height) > config.max_side:
        factor = config.max_side / max(width, height)
        new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
        notices.append(
            f"Your photo ({width}x{height}) was downscaled to {new_size[0]}x{new_size[1]}: "
            f"this Space works on at most {config.max_side} px per side."
        )
    return image, notices


def plural(count: int, noun: str) -> str:
    """``1 object``, ``2 objects``, ``0 objects``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def object_count_choices(max_layers: int) -> list[tuple[str, str | int]]:
    """Choices of the object-count control: "auto" (the model decides), then 1 to ``max_layers``."""
    return [("auto (the model decides)", AUTO)] + [(plural(k, "object"), k) for k in range(1, max_layers + 1)]


def parse_object_count(value: Any, max_layers: int) -> int | None:
    """The object count a request asks for: None for "auto", 0, "0" or nothing; else a whole number 1..max."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or not 0 <= number <= max_layers:
        raise user_error(
            f'Number of objects must be "{AUTO}" or a whole number between 0 (automatic) and {max_layers}, '
            f"got {value!r}."
        )
    return int(number) or None


def depth_choices() -> list[tuple[str, int]]:
    """Choices of the depth control: 1 (objects only) to `MAX_DEPTH`."""
    names = {1: "1: objects only", 2: "2: objects and their parts", 3: "3: parts of parts too"}
    return [(names.get(depth, str(depth)), depth) for depth in range(1, MAX_DEPTH + 1)]


def parse_depth(value: Any) -> int:
    """The depth a request asks for (`decompose_to_depth`): 1 (objects only; also for nothing) to `MAX_DEPTH`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or not 1 <= number <= MAX_DEPTH:
        raise user_error(
            f"Split objects into parts: the depth must be a whole number from 1 (objects only) to {MAX_DEPTH} "
            f"(parts of parts), got {value!r}."
        )
    return int(number)


def _whole_number(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or not low <= number <= high:
        raise user_error(f"{what} must be between {low} and {high}, got {value!r}.")
    return int(number)


def _plain_labels(layered: LayeredImage) -> LayeredImage:
    """``layered`` without the tool chain's placeholder label "object" (it has no classifier): layer names
    then read ``object 1``, not ``object 1: object``, and ``part 1.2``, not ``part 1.2: object``, in the page
    and in exported files."""

    def plain(part: LayerPart) -> LayerPart:
        return LayerPart(part.rgba, "" if part.label == "object" else part.label, [plain(p) for p in part.parts])

    layered.labels = ["" if label == "object" else label for label in layered.labels]
    layered.parts = {k: [plain(part) for part in tree] for k, tree in (layered.parts or {}).items()}
    return layered


def _part_text(part: LayerPart, path: tuple[int, ...]) -> str:
    """A part and its own parts: ``part 1.2: wheel`` or ``part 1.2 (part 1.2.1, part 1.2.2)``."""
    name = f"part {'.'.join(map(str, path))}" + (f": {part.label}" if part.label else "")
    if not part.parts:
        return name
    return f"{name} ({', '.join(_part_text(p, (*path, j)) for j, p in enumerate(part.parts, start=1))})"


def parts_report(layered: LayeredImage, depth: int) -> str:
    """The report's line on the split into parts (``depth`` above 1): per object its parts, as a tree, or why it
    stayed whole. Empty at depth 1."""
    if depth <= 1:
        return ""
    notes = layered.metadata.get("parts", {})
    parts = layered.parts or {}
    leaves = sum(len(part.leaves()) for tree in parts.values() for part in tree)
    head = (
        f"**Parts** (depth {depth}): {len(parts)} of {plural(layered.num_objects, 'object')} split into "
        f"{plural(leaves, 'part')}."
    )
    lines = [head]
    for k, label in enumerate(layered.labels):
        name = layer_name("object", k + 1, label)
        if k in parts:
            tree = ", ".join(_part_text(part, (k + 1, j)) for j, part in enumerate(parts[k], start=1))
            lines.append(f"- {name} → {tree}")
        else:
            reasons = sorted({str(note.get("stop_reason", "")) for note in notes.get(str(k + 1), [])} - {""})
            lines.append(f"- {name} stays whole" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return "\n".join(lines)


def write_images(
    layered: LayeredImage, folder: Path, captions: list[str] | None = None
) -> tuple[list[tuple[str, str]], str]:
    """Write the layers (RGBA PNGs) and their composite (RGB PNG) into ``folder``: the gallery and composite paths.

    The page gets files, not PIL images: Gradio stores a PIL image under a name made from its content and
    rewrites that file each time the same picture comes back, which can cut off a download of it in flight;
    files are copied into its cache once and never rewritten. ``captions`` default to `LayeredImage.layer_names`.
    """
    captions = layered.layer_names() if captions is None else captions
    gallery = []
    for index, ((_, image), caption) in enumerate(zip(layered.to_pil(), captions)):
        path = folder / f"{index:02d}_{_slug(caption)}.png"
        image.save(path, compress_level=3)
        gallery.append((str(path), caption))
    composite = folder / "composite.png"
    layered.composite_pil().save(composite, compress_level=3)
    return gallery, str(composite)


def decompose(
    image: str | Mapping[str, Any] | None,
    model: str,
    num_layers: str | float | None,
    steps: float,
    seed: float,
    config: SpaceConfig,
    progress: Any = None,
    prompts: Mapping[str, Any] | None = None,
    depth: Any = 1,
) -> tuple[list[tuple[str, str]], str, str, str, EditSession]:
    """The ``/decompose`` endpoint: layers (RGBA PNG files, named), their recomposition, a report, a PSD and
    an edit session. ``num_layers`` is "auto" (or 0: the model decides, up to its limit) or a count.
    ``prompts``: the page's clicks (``prompt_clicks.py``; not part of the API), one object per object click.
    ``depth`` (1 to 3, `parse_depth`): 2 splits every object into parts, 3 those parts again; an object split
    into parts shows its leaf parts (``part 1.2``) instead of its object layer, in the gallery, and a group of
    them in the PSD."""
    if model not in config.models:
        raise user_error(f"Unknown model {model!r}; this Space offers: {', '.join(config.models)}.")
    wanted = parse_object_count(num_layers, config.max_layers)
    depth = parse_depth(depth)
    steps = _whole_number(1 if steps is None else steps, "Steps", 1, config.max_steps)
    seed = _whole_number(0 if seed is None else seed, "Seed", 0, 2**63 - 1)
    picture, notices = prepare_image(image, config)
    start = time.perf_counter()
    layered = _plain_labels(run_model(model, picture, wanted, steps, seed, config, progress, prompts, depth))
    seconds = time.perf_counter() - start
    if wanted and layered.num_objects < wanted:
        notices.append(
            f"You asked for {plural(wanted, 'object')}; the model found {layered.num_objects} it could separate."
        )
    if progress is not None:
        progress(0.95, desc="Writing the layers and the PSD")
    for notice in notices:
        gr.Warning(notice)
    report = layered.check(picture)
    folder = new_output_folder(config.output_dir)
    gallery, composite = write_images(layered, folder)
    psd = save_layered_file(layered, folder / f"{_safe_stem(upload_path(image))}_layers.psd")
    lines = [f"> ⚠️ {notice}" for notice in notices]
    lines += [
        f"**{plural(layered.num_objects, 'object')}**{_how_chosen(wanted, prompts)} "
        f"({plural(len(gallery), 'layer')}, {layered.width}x{layered.height}) "
        f"in {seconds:.1f} s with *{model_label(model)}*.",
        f"Recomposition error: mean {report.mean_abs_error * 255:.2f}, max {report.max_abs_error * 255:.1f} "
        f"(of 255 levels), PSNR {_psnr_text(report.psnr)}.",
    ]
    if prompt_options(prompts):
        lines.append(f"Your clicks: {prompt_summary(prompts)}")
    if depth > 1:
        lines.append(parts_report(layered, depth))
    return gallery, composite, "\n\n".join(lines), str(psd), EditSession.from_layered(layered)


def render_edits(session: EditSession | None, output_dir: Path) -> tuple[str | None, list[tuple[str, str]], str]:
    """The edited picture and its layers (files in a new folder of ``output_dir``), and a summary of the edits."""
    if session is None:
        return None, [], "Decompose a photo first; its objects then appear here."
    edited = apply_edits(session)
    # Captions keep the original object numbers: "object 3" stays object 3 after object 1 is hidden.
    gallery, composite = write_images(edited, new_output_folder(output_dir), shown_layer_names(session))
    hidden = sum(not e.visible and not e.deleted for e in session.edits)
    deleted = sum(e.deleted for e in session.edits)
    moved = sum(e.moves and not e.deleted for e in session.edits)
    shadows = sum(e.shadow_strength != 1.0 and not e.deleted for e in session.edits)
    parts = [f"{edited.num_objects} of {plural(session.num_objects, 'object')} shown"]
    parts += [
        f"{count} {what}"
        for count, what in (
            (hidden, "hidden"),
            (deleted, "deleted"),
            (moved, "moved or scaled"),
            (shadows, "with a new shadow"),
        )
        if count
    ]
    return composite, gallery, ", ".join(parts) + "."


def edit_object(
    session: EditSession | None,
    index: int | None,
    visible: bool,
    dx_percent: float,
    dy_percent: float,
    scale: float,
    shadow_strength: float,
) -> EditSession:
    """Set every edit of object ``index`` from the controls (moves are in percent of the image size)."""
    if session is None:
        raise user_error("Decompose a photo first.")
    if index is None:
        raise user_error("Pick an object to edit.")
    width, height = session.size
    return update_edit(
        session,
        int(index),
        visible=bool(visible),
        dx=float(dx_percent) / 100.0 * width,
        dy=float(dy_percent) / 100.0 * height,
        scale=float(np.clip(scale, MIN_SCALE, MAX_SCALE)),
        shadow_strength=float(np.clip(shadow_strength, 0.0, MAX_SHADOW_STRENGTH)),
    )


def edit_controls(session: EditSession | None, index: int | None) -> tuple[bool, float, float, float, float]:
    """Control values (visible, dx %, dy %, scale, shadow strength) showing object ``index``'s edit."""
    edit = ObjectEdit() if session is None or index is None else session.edits[int(index)]
    width, height = session.size if session is not None else (1, 1)
    return (
        edit.visible,
        _on_step(edit.dx / width * 100.0, MOVE_STEP),
        _on_step(edit.dy / height * 100.0, MOVE_STEP),
        _on_step(edit.scale, FACTOR_STEP),
        _on_step(edit.shadow_strength, FACTOR_STEP),
    )


def _on_step(value: float, step: float) -> float:
    """``value`` rounded to a slider's ``step`` (sliders show 12.5, not 12.4999...)."""
    return round(round(value / step) * step, 6)


def export_layers(session: EditSession | None, format_label: str, config: SpaceConfig) -> str:
    """Write the current (edited) layers as PSD, ORA or a zip of PNGs; the file's path."""
    if session is None:
        raise user_error("Decompose a photo first; then download its layers.")
    if format_label not in EXPORT_FORMATS:
        raise user_error(f"Unknown format {format_label!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    suffix = EXPORT_FORMATS[format_label]
    name = "liwi_layers_edited" if session.is_edited() else "liwi_layers"
    return str(save_layered_file(apply_edits(session), new_output_folder(config.output_dir) / f"{name}.{suffix}"))


def new_output_folder(output_dir: Path) -> Path:
    """A fresh folder for one response's files (the only files this app hands out); old ones are pruned."""
    _prune(output_dir)
    folder = output_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def save_layered_file(layered: LayeredImage, path: Path) -> Path:
    """Write ``layered`` as a layered file (format from the suffix)."""
    from liwi_diffusers.export import save_layered

    return save_layered(layered, path)


def _prune(output_dir: Path, max_age_s: float = OUTPUT_TTL_S, max_entries: int = 10_000) -> None:
    """Remove download folders older than ``max_age_s`` (bounded work per call)."""
    if not output_dir.is_dir():
        return
    now = time.time()
    for index, entry in enumerate(output_dir.iterdir()):
        if index >= max_entries:
            break
        try:
            if entry.is_dir() and entry.name != "examples" and now - entry.stat().st_mtime > max_age_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40].strip("_") or "layer"


def _safe_stem(path: str | None) -> str:
    return _slug(Path(path).stem) if path else "photo"


def _psnr_text(psnr: float) -> str:
    return "∞ (exact)" if psnr == float("inf") else f"{psnr:.1f} dB"


def example_files(config: SpaceConfig, max_side: int = 512) -> list[str]:
    """Photos bundled with installed packages, written as small JPEGs for the examples row."""
    folder = config.output_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLES:
        path = folder / f"{name}.jpg"
        if not path.exists():
            try:
                image = load_sample_image(name)
            except (ImportError, KeyError, OSError):
                continue
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            tmp = path.with_suffix(".tmp.jpg")
            image.save(tmp, quality=92)
            tmp.replace(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------- page
CSS = """
/* Transparent pixels over a checkerboard; the image box is shrunk to the picture so the board marks its pixels. */
.checker img {
  background-color: #ffffff;
  background-image: repeating-conic-gradient(#d4d4d8 0% 25%, #ffffff 0% 50%);
  background-size: 16px 16px;
}
.checker .thumbnail-item { display: flex; align-items: center; justify-content: center; }
.checker .thumbnail-item img { width: auto !important; height: auto !important; max-width: 100%; max-height: 100%; }
.checker .caption-label { font-weight: 600; }
/* Galleries as tall as their rows (up to a limit, then they scroll), not a fixed height. */
.checker, .checker .grid-wrap { height: auto !important; }
.checker .grid-wrap { max-height: 420px; min-height: 140px; overflow-y: auto; }
#liwi-title { text-align: center; margin: 0.2em 0 0 0; }
#liwi-subtitle { text-align: center; color: var(--body-text-color-subdued); max-width: 60em; margin: 0.3em auto 0; }
"""


INTRO = """
<h1 id="liwi-title">LiWi: photos into layers</h1>
<p id="liwi-subtitle">Drop in a photo: get an inpainted <b>background</b>, and per object a <b>shadow</b> and an
<b>RGBA object</b> layer that stack back into your photo. Move or delete objects, then download a PSD.</p>
"""


def api_markdown(config: SpaceConfig) -> str:
    """The API tab: calling ``/decompose`` from Python."""
    arguments = [
        ('handle_file("photo.jpg"),', f"image (at most {config.max_file_size}; downscaled to {config.max_side} px)"),
        (f'"{config.default_model}",', "model: " + ", ".join(f'"{name}"' for name in config.models)),
        (f'"{AUTO}",', f'objects: "{AUTO}" or 0 (the model decides), or 1 to {config.max_layers}'),
        ("20,", "steps (diffusion pipelines only)"),
        ("0,", "seed"),
        ("1,", f"split objects into parts: depth 1 (objects only) to {MAX_DEPTH} (tool chain; optional)"),
    ]
    width = max(len(code) for code, _ in arguments) + 2
    lines = "\n".join(f"    {code:<{width}}# {comment}" for code, comment in arguments)
    return f"""
### Call this Space from Python

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860")  # or the Space's id, "owner/space-name"
layers, recomposition, report, psd = client.predict(
{lines}
    api_name="/decompose",
)
for layer in layers:  # back to front: background, shadow 1, object 1, ...
    print(layer["caption"], layer["image"])  # RGBA PNG files
print(psd)  # the layered PSD; liwi_diffusers.export.load_layered(psd) reads it back
```
"""


def build_demo(config: SpaceConfig | None = None) -> gr.Blocks:
    """The Space's page (call ``launch(**launch_options(config))`` on it)."""
    config = config or SpaceConfig.from_env()
    config.output_dir.mkdir(parents=True, exist_ok=True)

    # No telemetry or version check: the app talks to nothing but its users (GRADIO_ANALYTICS_ENABLED=True opts in).
    analytics = os.environ.get("GRADIO_ANALYTICS_ENABLED", "False").lower() in ("1", "true", "yes")
    with gr.Blocks(
        title="LiWi: photos into layers", delete_cache=(1800, OUTPUT_TTL_S), analytics_enabled=analytics
    ) as demo:
        gr.HTML(INTRO)
        session = gr.State(None, time_to_live=OUTPUT_TTL_S)  # the EditSession
        prompts = gr.State(empty_prompts(), time_to_live=OUTPUT_TTL_S)  # the clicks on the photo (prompt_clicks.py)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                photo = gr.Image(
                    label="Photo",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=300,
                    elem_id="liwi-photo",
                )
                with gr.Row():
                    click_mode = gr.Radio(
                        [("an object", "object"), ("background (not an object)", "background")],
                        value="object",
                        label="A click on the photo marks",
                        elem_id="liwi-click-mode",
                    )
                    only_clicked = gr.Checkbox(False, label="Only the clicked objects", elem_id="liwi-only-clicked")
                with gr.Row(equal_height=True):
                    prompt_info = gr.Markdown(prompt_summary(None), elem_id="liwi-prompt-info")
                    clear_prompts = gr.Button("Clear prompts", size="sm", scale=0, elem_id="liwi-clear-prompts")
                prompt_view = gr.Image(
                    label="Your clicks",
                    type="filepath",
                    height=160,
                    interactive=False,
                    visible=False,
                    elem_id="liwi-prompt-view",
                )
                examples = example_files(config)
                if examples:
                    gr.Examples(
                        examples=[[path] for path in examples],
                        inputs=[photo],
                        label="Examples",
                        examples_per_page=len(examples),
                    )
                model = gr.Dropdown(
                    choices=[(model_label(name), name) for name in config.models],
                    value=config.default_model,
                    label="Model",
                    interactive=len(config.models) > 1,
                    elem_id="liwi-model",
                    info="The tool chain needs no weights; steps and seed apply to diffusion pipelines.",
                )
                num_layers = gr.Dropdown(
                    choices=object_count_choices(config.max_layers),
                    value=AUTO,
                    label="Objects",
                    info="auto: the model decides how many, up to its limit (0 means auto in the API too).",
                    filterable=False,
                    elem_id="liwi-num-layers",
                )
                with gr.Row():
                    steps = gr.Slider(
                        1,
                        config.max_steps,
                        value=min(20, config.max_steps),
                        step=1,
                        precision=0,
                        label="Steps",
                        elem_id="liwi-steps",
                    )
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="liwi-seed")
                depth = gr.Radio(
                    depth_choices(),
                    value=1,
                    label=f"Split objects into parts: depth 1-{MAX_DEPTH}",
                    info="2 takes every object apart into its parts, 3 those parts again (tool chain only; "
                    "each level takes about as long again).",
                    elem_id="liwi-depth",
                )
                run = gr.Button("Decompose", variant="primary", elem_id="liwi-decompose")
                gr.Markdown(
                    f"Uploads up to {config.max_file_size.upper()}; photos above {config.max_side} px per side are "
                    f"downscaled; a decomposition is stopped after {config.time_limit_s:g} s of computing. While you "
                    "wait, the layers panel shows your place in the queue. Files are kept for an hour, then deleted.",
                    elem_id="liwi-limits",
                )
            with gr.Column(scale=7, min_width=400), gr.Tabs():
                with gr.Tab("Layers", id="layers"):
                    report = gr.Markdown(
                        "Upload a photo and press **Decompose**.", label="Report", elem_id="liwi-report"
                    )
                    layers = gr.Gallery(
                        label="Layers, back to front",
                        format="png",
                        columns=5,
                        height=290,
                        object_fit="contain",
                        elem_id="liwi-layers",
                        elem_classes=["checker"],
                        interactive=False,
                    )
                    with gr.Row():
                        recomposition = gr.Image(
                            label="Layers stacked back together",
                            type="filepath",
                            height=260,
                            interactive=False,
                            elem_id="liwi-recomposition",
                        )
                        with gr.Column(min_width=200):
                            psd = gr.File(label="Layered PSD", interactive=False, elem_id="liwi-psd")
                            gr.Markdown(
                                "Open it in Photoshop, GIMP, Krita or Photopea: every object comes with "
                                "its shadow as a separate layer. Edit the layers in the **Edit** tab, "
                                "download ORA or PNGs in **Download**."
                            )
                with gr.Tab("Edit", id="edit"):
                    edit_status = gr.Markdown(
                        "Decompose a photo first; its objects then appear here.", elem_id="liwi-edit-status"
                    )
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=3):
                            edited = gr.Image(
                                label="Edited picture (click to move the object there)",
                                type="filepath",
                                height=340,
                                interactive=False,
                                elem_id="liwi-edited",
                            )
                        with gr.Column(scale=2, min_width=220):
                            target = gr.Dropdown(choices=[], value=None, label="Object", elem_id="liwi-object")
                            visible = gr.Checkbox(True, label="Show this object and its shadow", elem_id="liwi-visible")
                            dx = gr.Slider(
                                -100,
                                100,
                                value=0,
                                step=MOVE_STEP,
                                precision=1,
                                label="Move right (%)",
                                elem_id="liwi-dx",
                            )
                            dy = gr.Slider(
                                -100,
                                100,
                                value=0,
                                step=MOVE_STEP,
                                precision=1,
                                label="Move down (%)",
                                elem_id="liwi-dy",
                            )
                            scale = gr.Slider(
                                MIN_SCALE,
                                MAX_SCALE,
                                value=1.0,
                                step=FACTOR_STEP,
                                precision=2,
                                label="Scale",
                                elem_id="liwi-scale",
                            )
                            strength = gr.Slider(
                                0.0,
                                MAX_SHADOW_STRENGTH,
                                value=1.0,
                                step=FACTOR_STEP,
                                precision=2,
                                label="Shadow strength",
                                elem_id="liwi-strength",
                            )
                            with gr.Row():
                                delete = gr.Button("Delete object", variant="stop", size="sm")
                                reset = gr.Button("Reset all edits", size="sm")
                    edited_layers = gr.Gallery(
                        label="Edited layers",
                        format="png",
                        columns=5,
                        height=200,
                        object_fit="contain",
                        elem_classes=["checker"],
                        interactive=False,
                    )
                with gr.Tab("Download", id="download"):
                    gr.Markdown(
                        "The current layers, with your edits, as a layered file for Photoshop, GIMP, "
                        "Krita or Photopea (PSD), OpenRaster (ORA) or a zip of PNGs."
                    )
                    with gr.Row():
                        export_format = gr.Radio(list(EXPORT_FORMATS), value="PSD", label="Format")
                        export = gr.Button("Export layers", variant="primary", elem_id="liwi-export")
                    exported = gr.File(label="Layered file", interactive=False, elem_id="liwi-exported")
                with gr.Tab("API", id="api"):
                    gr.Markdown(api_markdown(config))

        # ------------------------------------------------------------------ events
        def on_decompose(
            image: Mapping[str, Any] | None,
            model: str,
            num_layers: float,
            steps: float,
            seed: float,
            split_depth: Any = 1,
            clicks: dict | None = None,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's convention)
        ) -> tuple:
            return decompose(image, model, num_layers, steps, seed, config, progress, clicks, split_depth)

        # The click events take the photo undecoded (preprocess=False): Gradio's own decoding of it leaves its
        # file open; upload_path gives the path.
        def on_photo_click(photo: Any, clicks: dict | None, mode: str, evt: gr.SelectData) -> tuple:
            photo_path = upload_path(photo)
            try:
                clicks = add_click(clicks, photo_path, evt.index, negative=mode == "background")
            except ValueError as error:
                raise user_error(str(error), title="Cannot add this click") from None
            return _prompt_outputs(photo_path, clicks)

        def on_clear_prompts(photo: Any, clicks: dict | None) -> tuple:
            return _prompt_outputs(upload_path(photo), empty_prompts((clicks or {}).get("only_prompts", False)))

        def on_only_clicked(clicks: dict | None, only: bool) -> tuple:
            clicks = dict(clicks or empty_prompts(), only_prompts=bool(only))
            return clicks, prompt_summary(clicks)

        def _prompt_outputs(photo_path: str | None, clicks: dict) -> tuple:
            folder = new_output_folder(config.output_dir) if prompt_options(clicks) else None
            preview = prompt_preview(photo_path, clicks, folder / "clicks.png") if folder is not None else None
            return clicks, gr.Image(value=preview, visible=preview is not None), prompt_summary(clicks)

        def on_new_session(state: EditSession | None) -> tuple:
            choices = object_choices(state) if state is not None else []
            first = choices[0][1] if choices else None
            picture, gallery, summary = render_edits(state, config.output_dir)
            return (gr.Dropdown(choices=choices, value=first), *edit_controls(state, first), picture, gallery, summary)

        def on_pick(state: EditSession | None, index: int | None) -> tuple:
            return edit_controls(state, index)

        def on_edit(state: EditSession | None, index: int | None, *values: Any) -> tuple:
            state = edit_object(state, index, *values)
            return (state, *render_edits(state, config.output_dir))

        def on_click(state: EditSession | None, index: int | None, evt: gr.SelectData) -> tuple:
            if state is None or index is None:
                raise user_error("Decompose a photo and pick an object first.")
            x, y = evt.index
            edit = state.edits[int(index)]
            center = _object_center(state, int(index))
            dx_px, dy_px = x - center[0], y - center[1]
            state = update_edit(state, int(index), dx=float(dx_px), dy=float(dy_px), visible=True)
            width, height = state.size
            dx_percent = float(np.clip(_on_step(dx_px / width * 100, MOVE_STEP), -100, 100))
            dy_percent = float(np.clip(_on_step(dy_px / height * 100, MOVE_STEP), -100, 100))
            scale = _on_step(edit.scale, FACTOR_STEP)
            return (state, True, dx_percent, dy_percent, scale, *render_edits(state, config.output_dir))

        def on_delete(state: EditSession | None, index: int | None) -> tuple:
            if state is None or index is None:
                raise user_error("Decompose a photo and pick an object first.")
            state = delete_object(state, int(index))
            return (state, *on_new_session(state))

        def on_reset(state: EditSession | None) -> tuple:
            state = reset_edits(state) if state is not None else None
            return (state, *on_new_session(state))

        def on_export(state: EditSession | None, label: str) -> str:
            return export_layers(state, label, config)

        on_pick, on_edit, on_click = _logged("pick", on_pick), _logged("edit", on_edit), _logged("move", on_click)
        on_delete, on_reset = _logged("delete", on_delete), _logged("reset", on_reset)

        # Edits are quick and have their own concurrency group: they never wait behind a decomposition.
        edit_events: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_id": "edit",
            "concurrency_limit": 8,
            "trigger_mode": "always_last",
        }
        controls = [visible, dx, dy, scale, strength]
        editor = [target, *controls, edited, edited_layers, edit_status]
        # Decompositions: at most `concurrency` at once, each stopped at `time_limit_s` (run_model); waiting ones
        # see their place in the queue ("queue: 3/7") over the outputs (show_progress="full").
        run.click(
            _logged("/decompose", on_decompose),
            [photo, model, num_layers, steps, seed, depth, prompts],
            [layers, recomposition, report, psd, session],
            api_name="decompose",
            concurrency_id="decompose",
            concurrency_limit=config.concurrency,
            show_progress="full",
            preprocess=False,  # the photo arrives undecoded (see prepare_image), the other inputs as sent
        ).success(on_new_session, [session], editor, **edit_events)
        click_events: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_id": "clicks",
            "concurrency_limit": 8,
            "preprocess": False,
        }
        photo.select(
            _logged("click", on_photo_click),
            [photo, prompts, click_mode],
            [prompts, prompt_view, prompt_info],
            **click_events,
        )
        clear_prompts.click(on_clear_prompts, [photo, prompts], [prompts, prompt_view, prompt_info], **click_events)
        photo.change(on_clear_prompts, [photo, prompts], [prompts, prompt_view, prompt_info], **click_events)
        only_clicked.input(on_only_clicked, [prompts, only_clicked], [prompts, prompt_info], **click_events)
        target.input(on_pick, [session, target], controls, api_visibility="private", queue=False)
        for control in (dx, dy, scale, strength):
            control.input(
                on_edit, [session, target, *controls], [session, edited, edited_layers, edit_status], **edit_events
            )
        visible.input(
            on_edit, [session, target, *controls], [session, edited, edited_layers, edit_status], **edit_events
        )
        edited.select(
            on_click,
            [session, target],
            [session, visible, dx, dy, scale, edited, edited_layers, edit_status],
            **edit_events,
        )
        delete.click(on_delete, [session, target], [session, *editor], **edit_events)
        reset.click(on_reset, [session], [session, *editor], **edit_events)
        export.click(
            _logged("/export", on_export),
            [session, export_format],
            [exported],
            api_visibility="private",
            concurrency_id="export",
            concurrency_limit=2,
        )
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return demo


def _object_center(session: EditSession, index: int) -> tuple[float, float]:
    """Centre of object ``index``'s box in the original decomposition."""
    alpha = session.foregrounds[index][:, :, 3]
    rows = np.flatnonzero((alpha > 0).any(axis=1))
    cols = np.flatnonzero((alpha > 0).any(axis=0))
    if rows.size == 0:
        return session.size[0] / 2.0, session.size[1] / 2.0
    return (cols[0] + cols[-1] + 1) / 2.0, (rows[0] + rows[-1] + 1) / 2.0


def launch_options(config: SpaceConfig | None = None) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: limits, theme and style (Gradio 6 takes them at launch).

    ``allowed_paths`` holds only the app's own output folder (needed when it lies outside the temp
    folder): Gradio then serves the files the app wrote there, its cache, and nothing else.
    """
    config = config or SpaceConfig.from_env()
    return {
        "max_file_size": config.max_file_size,
        "allowed_paths": [str(config.output_dir)],
        "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="slate"),
        "css": CSS,
        "show_error": True,
        # Per-tab state (an edit session holds the layers at 8 bits): the least recently used beyond this go.
        "state_session_capacity": 100,
        "footer_links": ["api", "gradio"],
    }


def main() -> None:
    """Run the Space locally (``python spaces_demo/app.py``); host and port from GRADIO_SERVER_NAME/PORT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SpaceConfig.from_env()
    demo = build_demo(config)
    if any(name in TOOL_CHAIN_NAMES for name in config.models):
        tool_chain_pool(config.concurrency)  # start the workers now: the first user does not wait for them
    demo.launch(**launch_options(config))


if __name__ == "__main__":
    main()
