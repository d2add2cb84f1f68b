"""Loading what `examples/train_lora.py` writes back into a pipeline."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.alpha_decoder import AlphaDecoder
from ..models.shadow_head import ShadowHead
from ..pipelines.pipeline_liwi import LiWiDecompositionPipeline

__all__ = ["load_training_output"]


def load_training_output(pipe: LiWiDecompositionPipeline, folder: str | os.PathLike) -> LiWiDecompositionPipeline:
    """Put a LoRA training run's outputs into ``pipe`` (the base it was trained from) and return it.

    Loads ``pytorch_lora_weights.safetensors`` with `load_lora_weights` (its adapter metadata restores
    ``lora_alpha``), then the trained ``shadow_head``, ``alpha_decoder`` and, when present, ``vae`` subfolders.
    A full-training run is a pipeline folder: use `LiWiDecompositionPipeline.from_pretrained` instead.
    """
    folder = Path(folder)
    weights = folder / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no pytorch_lora_weights.safetensors (not a LoRA training output)")
    pipe.load_lora_weights(str(folder), weight_name=weights.name)
    for name, cls in (("shadow_head", ShadowHead), ("alpha_decoder", AlphaDecoder)):
        if (folder / name / "config.json").is_file():
            setattr(pipe, name, cls.from_pretrained(str(folder), subfolder=name).to(pipe.device))
    if (folder / "vae" / "config.json").is_file():
        from diffusers.models import AutoencoderKLQwenImage

        pipe.vae = AutoencoderKLQwenImage.from_pretrained(str(folder), subfolder="vae").to(pipe.device)
    return pipe
