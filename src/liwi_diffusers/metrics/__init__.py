"""Metrics of layer decompositions: LayerD's layer protocol, alpha boundary, shadows, background.

The maths lives in `liwi_diffusers.metrics.core` (NumPy). The same numbers are available as
Hugging Face `evaluate` modules shipped with the package, see `load_metric`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import (
    DEFAULT_MAX_EDITS,
    MIN_LAYERS,
    LayerLevel,
    LayerSampleResult,
    MetricInputError,
    aggregate_alpha_errors,
    aggregate_layer_results,
    aggregate_shadow_errors,
    alpha_composite,
    alpha_matting_errors,
    alpha_soft_iou,
    background_errors,
    combine_shadows,
    connectivity_error,
    dtw_path,
    evaluate_layers,
    foreground_matte,
    gradient_error,
    group_non_overlapping,
    layer_cost,
    layered_to_stack,
    merge_layers,
    mse_error,
    recomposition_error,
    rgb_l1,
    sad_error,
    shadow_errors,
    skip_reason,
    to_alpha,
    to_rgba8,
    to_rgba8_stack,
    trimap_unknown_region,
)

# Short name -> folder of the evaluate module (the folder holds `<folder>.py` and README.md).
METRIC_MODULES = {
    "layers": "liwi_layers",
    "alpha_boundary": "liwi_alpha_boundary",
    "shadows": "liwi_shadows",
}

__all__ = [
    "DEFAULT_MAX_EDITS",
    "METRIC_MODULES",
    "MIN_LAYERS",
    "LayerLevel",
    "LayerSampleResult",
    "MetricInputError",
    "aggregate_alpha_errors",
    "aggregate_layer_results",
    "aggregate_shadow_errors",
    "alpha_composite",
    "alpha_matting_errors",
    "alpha_soft_iou",
    "background_errors",
    "combine_shadows",
    "connectivity_error",
    "dtw_path",
    "evaluate_layers",
    "foreground_matte",
    "gradient_error",
    "group_non_overlapping",
    "layer_cost",
    "layered_to_stack",
    "load_metric",
    "merge_layers",
    "metric_path",
    "mse_error",
    "recomposition_error",
    "rgb_l1",
    "sad_error",
    "shadow_errors",
    "skip_reason",
    "to_alpha",
    "to_rgba8",
    "to_rgba8_stack",
    "trimap_unknown_region",
]


def metric_path(name: str) -> Path:
    """Folder of a shipped `evaluate` module: ``"layers"`` or ``"liwi_layers"``, etc."""
    folder = METRIC_MODULES.get(name, name)
    path = Path(__file__).parent / folder
    if folder not in METRIC_MODULES.values() or not (path / f"{folder}.py").is_file():
        known = ", ".join(f"{short!r} ({full!r})" for short, full in METRIC_MODULES.items())
        raise ValueError(f"unknown metric {name!r}; available: {known}")
    return path


def load_metric(name: str, **kwargs: Any) -> Any:
    """The `evaluate` module ``name`` from the installed package (offline), e.g. ``load_metric("layers")``.

    Keyword arguments go to `evaluate.load` (``experiment_id``, ``num_process``, ...).
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
