"""A benchmark's results file: JSON written atomically (a stopped run leaves the previous file, never half a file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from liwi_diffusers.export.atomic import atomic_write


def mean_std(values: Any) -> dict[str, float]:
    """``{"mean", "std"}`` of ``values``; the std is the sample std (0.0 for a single value)."""
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0}


def write_results(path: str | Path, payload: Any, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` (its folder is created), replacing the file in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        file.write((json.dumps(payload, indent=indent) + "\n").encode())
    return path
