"""LiWi Space: take a photo apart into background, shadow and object layers, edit them, download a PSD.

Runs on a Hugging Face Space (a GPU when there is one; ``spaces.GPU`` when the ``spaces`` package is
installed) and locally on a CPU with nothing downloaded::

    python spaces_demo/app.py            # http://127.0.0.1:7860

The model is chosen in the page or by environment variable (see `SpaceConfig.from_env`): the
weight-free tool-chain decomposer by default, or any `LiWiDecompositionPipeline` folder or Hub id.
Edits live in ``editing.py`` as plain functions; this module only wires them to Gradio.
"""

from __future__ import annotations

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
    shown_objects,
    update_edit,
)

from liwi_diffusers.checkpoints import SHIPPED_CHECKPOINTS, resolve_model  # noqa: E402
from liwi_diffusers.image_io import ImageInputWarning, ImageLoadError, load_image  # noqa: E402
from liwi_diffusers.layers import LayeredImage  # noqa: E402
from liwi_diffusers.sample_images import load_sample_image  # noqa: E402

__all__ = ["SpaceConfig", "build_demo", "decompose", "export_layers", "launch_options", "main"]

TOOLS = "tools"  # the weight-free tool-chain decomposer
TINY = "tiny"  # a tiny random pipeline: exercises the diffusion path in seconds, output is noise
# The trained checkpoint shipped inside liwi-diffusers (liwi_diffusers.checkpoints): always in the model list,
# not the default, because the tool chain still scores better on the held-out benchmark (see the README).
SHIPPED_CHECKPOINT = "liwi-small"
# Bundled photos that are public domain or CC0 (see liwi_diffusers.sample_images.SAMPLE_IMAGE_LICENCES).
EXAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
EXPORT_FORMATS = {"PSD": "psd", "ORA": "ora", "ZIP of PNGs": "zip"}
OUTPUT_TTL_S = 3600  # files written for downloads are removed after this long


@dataclass(frozen=True)
class SpaceConfig:
    """Settings of the Space; `from_env` reads them from ``LIWI_*`` environment variables."""

    default_model: str = TOOLS
    models: tuple[str, ...] = (TOOLS,)
    max_side: int = 1024  # larger photos are downscaled (with a notice)
    max_pixels: int = 50_000_000  # larger photos are refused before decoding
    max_file_size: str = "20mb"  # larger uploads are refused by the server
    max_layers: int = 8
    max_steps: int = 50
    resolution: int = 640  # working resolution of diffusion pipelines
    queue_size: int = 64  # waiting requests beyond this are turned away ("queue full")
    concurrency: int = 2  # decompositions running at once
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "liwi_space")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpaceConfig:
        """Read ``LIWI_MODEL`` (``tools``, ``tiny``, a pipeline folder or Hub id), ``LIWI_MODELS`` (more
        choices, comma-separated), ``LIWI_MAX_SIDE``, ``LIWI_MAX_PIXELS``, ``LIWI_MAX_FILE_SIZE``,
        ``LIWI_MAX_STEPS``, ``LIWI_RESOLUTION``, ``LIWI_QUEUE_SIZE``, ``LIWI_CONCURRENCY``, ``LIWI_OUTPUT_DIR``."""
        env = os.environ if environ is None else environ
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

        return cls(
            default_model=default,
            models=tuple(models),
            max_side=number("LIWI_MAX_SIDE", base.max_side),
            max_pixels=number("LIWI_MAX_PIXELS", base.max_pixels),
            max_file_size=env.get("LIWI_MAX_FILE_SIZE", "").strip() or base.max_file_size,
            max_steps=number("LIWI_MAX_STEPS", base.max_steps),
            resolution=number("LIWI_RESOLUTION", base.resolution),
            queue_size=number("LIWI_QUEUE_SIZE", base.queue_size),
            concurrency=number("LIWI_CONCURRENCY", base.concurrency),
            output_dir=Path(env.get("LIWI_OUTPUT_DIR", "").strip() or base.output_dir),
        )


def model_label(name: str) -> str:
    """What the model dropdown shows for a model name."""
    if name == TOOLS:
        return "Tool chain (weight-free, CPU)"
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


class _Models:
    """Loaded models by name, each loaded once; pipelines run one call at a time (their scheduler has state)."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._loading = threading.Lock()

    def get(self, name: str) -> tuple[Any, threading.Lock]:
        if name in self._models:  # loaded: no need to wait behind another model's loading
            return self._models[name], self._locks[name]
        with self._loading:
            if name not in self._models:
                self._locks[name] = threading.Lock()
                self._models[name] = _load_model(name)
            return self._models[name], self._locks[name]


def _load_model(name: str) -> Any:
    if name == TOOLS:
        from liwi_diffusers.tools.decomposer import ToolChainDecomposer

        return ToolChainDecomposer()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == TINY:
        from liwi_diffusers.pipelines.tiny import build_tiny_pipeline

        return build_tiny_pipeline(seed=0).to(device)
    from liwi_diffusers.pipelines.pipeline_liwi import LiWiDecompositionPipeline

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        return LiWiDecompositionPipeline.from_pretrained(resolve_model(name)[0], torch_dtype=dtype).to(device)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise gr.Error(f"Cannot load a LiWi pipeline from {name!r}: {first_line}") from None


MODELS = _Models()


@_gpu
def run_pipeline(
    name: str, image: Image.Image, num_layers: int, steps: int, seed: int, resolution: int, progress: Any = None
) -> LayeredImage:
    """One pipeline call (on the GPU when there is one): the `LayeredImage` of ``image``."""
    import torch

    pipe, lock = MODELS.get(name)

    def on_step(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress((step + 1, steps), desc="Denoising")
        return {}

    with lock:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        output = pipe(
            image,
            num_layers=num_layers,
            num_inference_steps=steps,
            generator=generator,
            resolution=resolution,
            callback_on_step_end=on_step,
        )
    return output.layers[0]


def run_model(
    name: str, image: Image.Image, num_layers: int | None, steps: int, seed: int, resolution: int, progress: Any = None
) -> LayeredImage:
    """Decompose ``image`` with model ``name`` (``num_layers`` None: as many objects as the model finds).

    A model that refuses the request (a `ValueError`, e.g. more layers than it supports) gives a `gr.Error`.
    """
    try:
        if name == TOOLS:
            decomposer, _ = MODELS.get(TOOLS)
            if progress is not None:
                progress(0.2, desc="Finding objects, matting, inpainting")
            return decomposer(image, num_layers=num_layers)
        if progress is not None:
            progress(0.0, desc="Loading the pipeline")
        MODELS.get(name)  # load outside the GPU function: a ZeroGPU slot is then spent on denoising only
        if name == TINY:
            resolution = min(resolution, 128)
        elif name in SHIPPED_CHECKPOINTS:  # the resolution it was trained at
            resolution = SHIPPED_CHECKPOINTS[name].resolution
        return run_pipeline(name, image, num_layers or 3, steps, seed, resolution, progress)
    except ValueError as error:
        raise gr.Error(f"{model_label(name)} could not decompose this photo: {error}") from None


# ---------------------------------------------------------------------------------------------- handlers
def upload_path(value: str | Mapping[str, Any] | None) -> str | None:
    """The file path of an image input: a path, or Gradio's un-preprocessed ``{"path": ...}`` payload."""
    if isinstance(value, Mapping):
        if value.get("path"):
            return str(value["path"])
        if str(value.get("url") or "").startswith("data:"):
            raise gr.Error("Upload the photo as a file (drag it in or click the upload area).", title="No photo")
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
        raise gr.Error("Upload a photo or pick an example first.", title="No photo")
    name = Path(path).name
    notices: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageInputWarning)
        try:
            image = load_image(path, max_pixels=config.max_pixels)
        except ImageLoadError as error:
            raise gr.Error(str(error).replace(str(path), name), title="Cannot read this photo") from None
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


def layer_captions(layered: LayeredImage, numbers: list[int] | None = None) -> list[str]:
    """Names of the layers, back to front: background, shadow k, object k (``: label`` when there is one).

    ``numbers`` are the objects' numbers to show (default 1..K); edits keep the original numbers.
    """
    captions = ["background"]
    for position, label in enumerate(layered.labels):
        number = numbers[position] if numbers is not None else position + 1
        suffix = f": {label}" if label and label != "object" else ""
        captions += [f"shadow {number}{suffix}", f"object {number}{suffix}"]
    return captions


def write_images(layered: LayeredImage, folder: Path, captions: list[str]) -> tuple[list[tuple[str, str]], str]:
    """Write the layers (RGBA PNGs) and their composite (RGB PNG) into ``folder``: the gallery and composite paths.

    The page gets files, not PIL images: Gradio stores a PIL image under a name made from its content and
    rewrites that file each time the same picture comes back, which can cut off a download of it in flight;
    files are copied into its cache once and never rewritten.
    """
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
    num_layers: float,
    steps: float,
    seed: float,
    config: SpaceConfig,
    progress: Any = None,
) -> tuple[list[tuple[str, str]], str, str, str, EditSession]:
    """The ``/decompose`` endpoint: layers (RGBA PNG files, named), their recomposition, a report, a PSD and
    an edit session."""
    if model not in config.models:
        raise gr.Error(f"Unknown model {model!r}; this Space offers: {', '.join(config.models)}.")
    num_layers, steps, seed = int(num_layers or 0), int(steps or 1), int(seed or 0)
    if not 0 <= num_layers <= config.max_layers:
        raise gr.Error(f"Number of objects must be between 0 (automatic) and {config.max_layers}, got {num_layers}.")
    if not 1 <= steps <= config.max_steps:
        raise gr.Error(f"Steps must be between 1 and {config.max_steps}, got {steps}.")
    picture, notices = prepare_image(image, config)
    start = time.perf_counter()
    layered = run_model(model, picture, num_layers or None, steps, seed, config.resolution, progress)
    seconds = time.perf_counter() - start
    if num_layers and layered.num_objects < num_layers:
        notices.append(f"You asked for {num_layers} objects; the model found {layered.num_objects} it could separate.")
    if progress is not None:
        progress(0.95, desc="Writing the layers and the PSD")
    for notice in notices:
        gr.Warning(notice)
    report = layered.check(picture)
    folder = new_output_folder(config.output_dir)
    gallery, composite = write_images(layered, folder, layer_captions(layered))
    psd = save_layered_file(layered, folder / f"{_safe_stem(upload_path(image))}_layers.psd")
    lines = [f"> ⚠️ {notice}" for notice in notices]
    lines += [
        f"**{layered.num_objects} object{'' if layered.num_objects == 1 else 's'}** "
        f"({2 * layered.num_objects + 1} layers, {layered.width}x{layered.height}) "
        f"in {seconds:.1f} s with *{model_label(model)}*.",
        f"Recomposition error: mean {report.mean_abs_error * 255:.2f}, max {report.max_abs_error * 255:.1f} "
        f"(of 255 levels), PSNR {_psnr_text(report.psnr)}.",
    ]
    return gallery, composite, "\n\n".join(lines), str(psd), EditSession.from_layered(layered)


def render_edits(session: EditSession | None, output_dir: Path) -> tuple[str | None, list[tuple[str, str]], str]:
    """The edited picture and its layers (files in a new folder of ``output_dir``), and a summary of the edits."""
    if session is None:
        return None, [], "Decompose a photo first; its objects then appear here."
    edited = apply_edits(session)
    # Captions keep the original object numbers: "object 3" stays object 3 after object 1 is hidden.
    numbers = [index + 1 for index in shown_objects(session)]
    gallery, composite = write_images(edited, new_output_folder(output_dir), layer_captions(edited, numbers))
    hidden = sum(not e.visible and not e.deleted for e in session.edits)
    deleted = sum(e.deleted for e in session.edits)
    moved = sum(e.moves and not e.deleted for e in session.edits)
    shadows = sum(e.shadow_strength != 1.0 and not e.deleted for e in session.edits)
    parts = [f"{edited.num_objects} of {session.num_objects} objects shown"]
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
        raise gr.Error("Decompose a photo first.")
    if index is None:
        raise gr.Error("Pick an object to edit.")
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
    return edit.visible, edit.dx / width * 100.0, edit.dy / height * 100.0, edit.scale, edit.shadow_strength


def export_layers(session: EditSession | None, format_label: str, config: SpaceConfig) -> str:
    """Write the current (edited) layers as PSD, ORA or a zip of PNGs; the file's path."""
    if session is None:
        raise gr.Error("Decompose a photo first; then download its layers.")
    if format_label not in EXPORT_FORMATS:
        raise gr.Error(f"Unknown format {format_label!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
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
        ("0,", f"number of objects (0: automatic, up to {config.max_layers})"),
        ("20,", "steps (diffusion pipelines only)"),
        ("0,", "seed"),
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
        session = gr.State(None, time_to_live=OUTPUT_TTL_S)  # the EditSession: the only per-user state
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
                num_layers = gr.Slider(
                    0, config.max_layers, value=0, step=1, label="Objects (0 = automatic)", elem_id="liwi-num-layers"
                )
                with gr.Row():
                    steps = gr.Slider(
                        1,
                        config.max_steps,
                        value=min(20, config.max_steps),
                        step=1,
                        label="Steps",
                        elem_id="liwi-steps",
                    )
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="liwi-seed")
                run = gr.Button("Decompose", variant="primary", elem_id="liwi-decompose")
                gr.Markdown(
                    f"Uploads up to {config.max_file_size.upper()}; photos above {config.max_side} px per side are "
                    f"downscaled. Files are kept for an hour, then deleted.",
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
                            dx = gr.Slider(-100, 100, value=0, step=0.5, label="Move right (%)", elem_id="liwi-dx")
                            dy = gr.Slider(-100, 100, value=0, step=0.5, label="Move down (%)", elem_id="liwi-dy")
                            scale = gr.Slider(
                                MIN_SCALE, MAX_SCALE, value=1.0, step=0.05, label="Scale", elem_id="liwi-scale"
                            )
                            strength = gr.Slider(
                                0.0, MAX_SHADOW_STRENGTH, value=1.0, step=0.05, label="Shadow strength"
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
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's convention)
        ) -> tuple:
            return decompose(image, model, num_layers, steps, seed, config, progress)

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
                raise gr.Error("Decompose a photo and pick an object first.")
            x, y = evt.index
            edit = state.edits[int(index)]
            center = _object_center(state, int(index))
            dx_px, dy_px = x - center[0], y - center[1]
            state = update_edit(state, int(index), dx=float(dx_px), dy=float(dy_px), visible=True)
            width, height = state.size
            dx_percent = float(np.clip(round(dx_px / width * 200) / 2, -100, 100))  # the sliders' 0.5 steps
            dy_percent = float(np.clip(round(dy_px / height * 200) / 2, -100, 100))
            return (state, True, dx_percent, dy_percent, edit.scale, *render_edits(state, config.output_dir))

        def on_delete(state: EditSession | None, index: int | None) -> tuple:
            if state is None or index is None:
                raise gr.Error("Decompose a photo and pick an object first.")
            state = delete_object(state, int(index))
            return (state, *on_new_session(state))

        def on_reset(state: EditSession | None) -> tuple:
            state = reset_edits(state) if state is not None else None
            return (state, *on_new_session(state))

        def on_export(state: EditSession | None, label: str) -> str:
            return export_layers(state, label, config)

        # Edits are quick and have their own concurrency group: they never wait behind a decomposition.
        edit_events: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_id": "edit",
            "concurrency_limit": 8,
            "trigger_mode": "always_last",
        }
        controls = [visible, dx, dy, scale, strength]
        editor = [target, *controls, edited, edited_layers, edit_status]
        run.click(
            on_decompose,
            [photo, model, num_layers, steps, seed],
            [layers, recomposition, report, psd, session],
            api_name="decompose",
            concurrency_id="decompose",
            concurrency_limit=config.concurrency,
            time_limit=600,
            preprocess=False,  # the photo arrives undecoded: see prepare_image
        ).success(on_new_session, [session], editor, **edit_events)
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
            on_export,
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
    config = SpaceConfig.from_env()
    build_demo(config).launch(**launch_options(config))


if __name__ == "__main__":
    main()
