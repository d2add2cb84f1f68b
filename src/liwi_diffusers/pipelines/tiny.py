"""A tiny, randomly initialised `LiWiDecompositionPipeline` (same classes as the real one) for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from ..models.alpha_decoder import AlphaDecoder
from ..models.shadow_head import ShadowHead
from .pipeline_liwi import LiWiDecompositionPipeline

# Same structure as Qwen-Image-Layered (VAE factor 8, 2x2 patches, layer-3D RoPE, additional t-cond), few channels.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "vae": {
        "base_dim": 8,
        "z_dim": 8,  # not 4: QwenImageLayeredPipeline takes a 4-channel input for latents when z_dim == 4
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
        "input_channels": 4,
        "latents_mean": [0.0] * 8,
        "latents_std": [1.0] * 8,
    },
    "transformer": {
        "patch_size": 2,
        "in_channels": 32,
        "out_channels": 8,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "axes_dims_rope": (4, 6, 6),
        "use_additional_t_cond": True,
        "use_layer3d_rope": True,
    },
    "scheduler": {"use_dynamic_shifting": True, "time_shift_type": "linear", "shift_terminal": None},
    "shadow_head": {"hidden_channels": 8, "num_downsamples": 3, "num_blocks": 1},
    "alpha_decoder": {"hidden_channels": 8, "num_blocks": 1},
}

_CLASSES = {
    "vae": AutoencoderKLQwenImage,
    "transformer": QwenImageTransformer2DModel,
    "scheduler": FlowMatchEulerDiscreteScheduler,
    "shadow_head": ShadowHead,
    "alpha_decoder": AlphaDecoder,
}


def build_tiny_pipeline(seed: int = 0, **overrides: Any) -> LiWiDecompositionPipeline:
    """A tiny pipeline, identical for the same ``seed`` (the global torch RNG is left untouched).

    ``overrides``: for a component name (``vae``, ``transformer``, ``scheduler``, ``shadow_head``,
    ``alpha_decoder``), a dict updates its tiny config and anything else replaces the component; other keys
    (``leading_composite_frame``, ``text_encoder``...) go to the pipeline's constructor.
    """
    components: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, cls in _CLASSES.items():
            override = overrides.pop(name, None)
            if override is not None and not isinstance(override, dict):
                components[name] = override
                continue
            config = {**TINY_CONFIGS[name], **(override or {})}
            components[name] = cls(**config)
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return LiWiDecompositionPipeline(**components, **overrides)
