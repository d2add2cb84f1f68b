"""Metrics of layer decompositions: LayerD's layer protocol, alpha boundary, shadows, background.

The maths lives in `liwi_diffusers.metrics.core` (NumPy); reading samples, running a method and the
report (what `liwi evaluate` does) in `liwi_diffusers.metrics.evaluation`. The same numbers are
available as Hugging Face `evaluate` modules shipped with the package, see `load_metric`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import core, evaluation
from .core import *  # noqa: F403 (the names of core.__all__)
from .evaluation import *  # noqa: F403 (the names of evaluation.__all__)

# Short name -> folder of the evaluate module (the folder holds `<folder>.py` and README.md).
METRIC_MODULES = {
    "layers": "liwi_layers",
    "alpha_boundary": "liwi_alpha_boundary",
    "shadows": "liwi_shadows",
}

__all__ = [*core.__all__, *evaluation.__all__, "METRIC_MODULES", "load_metric", "metric_path"]


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
