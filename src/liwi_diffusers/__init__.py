"""liwi-diffusers: LiWi (Layering in the Wild) - photos into background, object and shadow layers.

Light names (the layer model, image loading) import at once; the diffusers pipeline, its models,
exporters and the tool-chain decomposer import on first use, so `import liwi_diffusers` and the
`liwi` command start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .layers import (
    LayeredImage,
    LayeredImageError,
    LayerPart,
    RecompositionReport,
    check_decomposition,
    compose_layers,
    reconcile_with_image,
)

__version__ = "0.1.0.dev0"

# name -> module (relative) that defines it; imported lazily by __getattr__.
_LAZY = {
    "LiWiDecompositionPipeline": ".pipelines.pipeline_liwi",
    "LiWiDecompositionPipelineOutput": ".pipelines.pipeline_liwi",
    "ShadowHead": ".models.shadow_head",
    "AlphaDecoder": ".models.alpha_decoder",
    "load_image": ".image_io",
    "ImageLoadError": ".image_io",
    "save_layered": ".export",
    "load_layered": ".export",
    "ToolChainDecomposer": ".tools.decomposer",
    "decompose_layer": ".tools.recursive",
    "decompose_to_depth": ".tools.recursive",
    "load_decomposer": ".loading",
    "Decomposer": ".loading",
    "load_layered_dataset": ".layered_dataset",
    "iter_layered": ".layered_dataset",
    "row_to_layered": ".layered_dataset",
}

__all__ = [
    "LayerPart",
    "LayeredImage",
    "LayeredImageError",
    "RecompositionReport",
    "__version__",
    "check_decomposition",
    "compose_layers",
    "reconcile_with_image",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
