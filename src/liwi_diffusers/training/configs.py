"""From-scratch model configurations for training (the same classes as Qwen-Image-Layered, few channels)."""

from __future__ import annotations

from typing import Any

from ..pipelines.pipeline_liwi import LiWiDecompositionPipeline
from ..pipelines.tiny import TINY_CONFIGS, build_tiny_pipeline

__all__ = ["FROM_SCRATCH_CONFIGS", "SMALL_CONFIGS", "build_from_scratch_pipeline"]

# The shipped small checkpoint: VAE factor 8, 2x2 patches, layer-3D RoPE; about 4.5 M parameters (18 MB fp32).
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "vae": {**TINY_CONFIGS["vae"], "base_dim": 16},
    "transformer": {
        **TINY_CONFIGS["transformer"],
        "num_layers": 4,
        "attention_head_dim": 32,
        "num_attention_heads": 4,
        "axes_dims_rope": (8, 12, 12),
    },
    "scheduler": dict(TINY_CONFIGS["scheduler"]),
    "shadow_head": {"hidden_channels": 16, "num_downsamples": 3, "num_blocks": 2},
    "alpha_decoder": {"hidden_channels": 16, "num_blocks": 2},
}

FROM_SCRATCH_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {"tiny": TINY_CONFIGS, "small": SMALL_CONFIGS}


def build_from_scratch_pipeline(name: str = "small", seed: int = 0) -> LiWiDecompositionPipeline:
    """A randomly initialised pipeline of configuration ``name`` (``"tiny"`` or ``"small"``)."""
    if name not in FROM_SCRATCH_CONFIGS:
        raise ValueError(f"unknown from-scratch configuration {name!r}; choose from {sorted(FROM_SCRATCH_CONFIGS)}")
    configs = FROM_SCRATCH_CONFIGS[name]
    return build_tiny_pipeline(seed, **{key: dict(value) for key, value in configs.items()})
