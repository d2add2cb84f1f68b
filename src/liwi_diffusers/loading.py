"""One loader for every way of decomposing a photo: `load_decomposer`.

    load_decomposer("tools")                     # the tool chain: learned segmenter when downloaded, else weight-free
    load_decomposer("fast")                      # the tool chain's fast preset (fewer, smaller segmenter passes)
    load_decomposer("weight-free")               # the tool chain with no learned weights at all
    load_decomposer("liwi-small")                # a checkpoint shipped inside the package
    load_decomposer("path/to/pipeline")          # a LiWiDecompositionPipeline folder
    load_decomposer("path/to/qwen-image-layered")# a Qwen-Image-Layered download (LiWi heads added)
    load_decomposer("user/liwi-model")           # a Hub id (needs the Hub to be reachable)

Each returns a `Decomposer`: ``decomposer(image, num_layers=None) -> LayeredImage``, where ``num_layers=None``
(or 0) means automatic (as many objects as are found, up to the decomposer's limit). The CLI, the Space,
`liwi evaluate`, the ADD builder and the benchmarks all load through here, so they agree on names, dtypes,
devices and the default object count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .layers import LayeredImage

__all__ = ["TOOL_CHAIN_NAMES", "Decomposer", "DecomposerLoadError", "PipelineDecomposer", "load_decomposer"]

# Names of the tool chain: "tools" uses the learned segmenter when it is in the model cache; "fast" is the same
# chain with the fast preset's settings (`liwi_diffusers.tools.decomposer.FAST`); "weight-free" uses no weights.
TOOL_CHAIN_NAMES = ("tools", "fast", "weight-free")
DEFAULT_STEPS = 30


class DecomposerLoadError(ValueError):
    """A decomposer that cannot be loaded; the message is one line that names the fix."""


@runtime_checkable
class Decomposer(Protocol):
    """Anything that takes a photo apart: ``(image, num_layers=None, **prompts) -> LayeredImage``."""

    def __call__(self, image: Any, num_layers: int | None = None, **prompts: Any) -> LayeredImage: ...


class PipelineDecomposer:
    """A `LiWiDecompositionPipeline` behind the `Decomposer` interface (one image in, one `LayeredImage` out).

    Args:
        pipeline: the loaded pipeline (already on its device).
        resolution: working resolution; ``None`` uses the checkpoint's own (its config's ``default_resolution``).
        steps: denoising steps.
        seed: seed of the CPU generator made for every call (results are deterministic for a seed).
        name: what `describe` calls it.
    """

    def __init__(
        self, pipeline: Any, resolution: int | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, name: str = ""
    ) -> None:
        if steps < 1:
            raise DecomposerLoadError(f"steps must be at least 1, got {steps}")
        if resolution is not None and resolution < pipeline.size_multiple:
            raise DecomposerLoadError(
                f"resolution must be at least {pipeline.size_multiple} for this model, got {resolution}"
            )
        self.pipeline = pipeline
        self.resolution = resolution
        self.steps = steps
        self.seed = seed
        self.name = name

    def __call__(self, image: Any, num_layers: int | None = None, **prompts: Any) -> LayeredImage:
        import torch

        if prompts:
            raise TypeError(f"the LiWi pipeline takes no prompts ({', '.join(sorted(prompts))}); use the tool chain")
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        options: dict[str, Any] = {}
        if self.resolution is not None:
            options["resolution"] = self.resolution
        output = self.pipeline(
            image,
            num_layers="auto" if not num_layers else int(num_layers),
            num_inference_steps=self.steps,
            generator=generator,
            output_type="pil",
            **options,
        )
        layered = output.layers[0]
        layered.metadata.setdefault("method", "pipeline")
        layered.metadata.setdefault("model", self.name)
        return layered

    def describe(self) -> str:
        return f"LiWiDecompositionPipeline {self.name}".strip()


def load_decomposer(
    name_or_path: str | os.PathLike = "tools",
    device: str = "auto",
    dtype: Any = None,
    **options: Any,
) -> Decomposer:
    """The decomposer called ``name_or_path`` (see the module docstring for the accepted names).

    Args:
        name_or_path: "tools", "fast", "weight-free", a shipped checkpoint name, a pipeline folder, a Qwen-Image-Layered
            folder or a Hub id.
        device: "auto" (CUDA when torch sees one, else CPU), "cpu", "cuda", "cuda:1", ... (pipelines; the tool
            chain's segmenter uses ONNX Runtime's CUDA provider when it is installed and ``device`` allows it).
        dtype: torch dtype (or its name, "float32", "bfloat16", "float16") of a pipeline; None: float32.
        options: for the tool chain, `ToolChainDecomposer` arguments (``max_objects``, ``segmenter``, ...);
            for pipelines, ``resolution``, ``steps`` and ``seed``.

    Raises:
        DecomposerLoadError: an unknown name, a folder that holds no pipeline, an unreachable Hub id, a device
            that is not there; always one line naming the fix.
    """
    text = str(name_or_path)
    if text in TOOL_CHAIN_NAMES:
        return _load_tool_chain(text, device, options)
    from .checkpoints import SHIPPED_CHECKPOINTS, shipped_checkpoint_path

    device = _resolve_device(device)  # first: a missing GPU is the clearer message
    if text in SHIPPED_CHECKPOINTS and not Path(text).exists():
        return _load_pipeline(shipped_checkpoint_path(text), text, device, dtype, options)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise DecomposerLoadError(
                f"{text}: not a pipeline folder (no model_index.json); give a LiWiDecompositionPipeline or "
                f"Qwen-Image-Layered folder, a shipped checkpoint ({', '.join(SHIPPED_CHECKPOINTS)}) or "
                f"one of {', '.join(TOOL_CHAIN_NAMES)}"
            )
        return _load_pipeline(path, text, device, dtype, options)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _load_pipeline(text, text, device, dtype, options)  # a Hub id
    if os.sep in text or text.startswith((".", "~")):
        raise DecomposerLoadError(f"cannot load a LiWi pipeline from {text!r}: no such folder")
    raise DecomposerLoadError(
        f"unknown model {text!r}: give {', '.join(TOOL_CHAIN_NAMES)}, a shipped checkpoint "
        f"({', '.join(SHIPPED_CHECKPOINTS)}), a pipeline folder or a Hub id (user/name)"
    )


def _load_tool_chain(name: str, device: str, options: dict[str, Any]) -> Decomposer:
    from .tools.decomposer import FAST, ToolChainDecomposer

    unknown = {"resolution", "steps", "seed"} & set(options)
    if unknown:
        raise DecomposerLoadError(f"the tool chain takes no {', '.join(sorted(unknown))} (pipelines only)")
    if name == "weight-free":
        options = {**options, "segmenter": None}
    elif name == "fast":
        options = {**FAST, **options}  # what the caller sets wins
    options.setdefault("device", device)
    try:
        return ToolChainDecomposer(**options)
    except TypeError as error:
        raise DecomposerLoadError(f"tool chain: {error}") from None


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DecomposerLoadError(f"device {device!r}: no CUDA GPU is visible to torch; use device 'cpu'")
    if device != "cpu" and not device.startswith(("cuda", "mps", "xpu")):
        raise DecomposerLoadError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise DecomposerLoadError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
        return getattr(torch, dtype)
    return dtype


def _load_pipeline(source: str | Path, name: str, device: str, dtype: Any, options: dict[str, Any]) -> Decomposer:
    unknown = set(options) - {"resolution", "steps", "seed"}
    if unknown:
        raise DecomposerLoadError(f"a pipeline takes no {', '.join(sorted(unknown))} (tool chain only)")
    torch_dtype = _resolve_dtype(dtype)
    from diffusers.utils import logging as diffusers_logging

    from .pipelines.pipeline_liwi import LiWiDecompositionPipeline

    bars_were_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # the "Loading pipeline components" bar
    try:
        if isinstance(source, Path) and _pipeline_class(source) == "QwenImageLayeredPipeline":
            pipe = LiWiDecompositionPipeline.from_qwen_image_layered(source, dtype=torch_dtype)
        else:
            pipe = LiWiDecompositionPipeline.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise DecomposerLoadError(f"cannot load a LiWi pipeline from {name!r}: {first_line}") from None
    finally:
        if bars_were_on:
            diffusers_logging.enable_progress_bar()
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return PipelineDecomposer(
        pipe,
        resolution=options.get("resolution"),
        steps=int(options.get("steps", DEFAULT_STEPS)),
        seed=int(options.get("seed", 0)),
        name=name,
    )


def _pipeline_class(folder: Path) -> str:
    try:
        return str(json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError):
        return ""
