"""ADD: agent-driven data decomposition - photos into a LiWi-format layered dataset.

Package `liwi_dataset_builder` (folder `src/liwi_dataset_builder/`); command `liwi-build`.

    from liwi_dataset_builder import BuildConfig, build_dataset
    build_dataset(BuildConfig(sources=["photos/"], output="liwi-100k", num_samples=1000, workers=8))

    from liwi_diffusers.layered_dataset import row_to_layered
    layered = row_to_layered(load_dataset("liwi-100k", split="train")[0])

Submodules: `agent` (planner/verifier, VLM adapter), `curation`, `composition`, `writer`
(shards + card), `build` (resumable runs), `adapters`
(transformers / diffusers models), `sample_data` (a small dataset from bundled photos). Rows are read
back as `LayeredImage` by `liwi_diffusers.layered_dataset`.
Heavy modules import on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BuildConfig": ".build",
    "BuildError": ".build",
    "BuildResult": ".build",
    "build_dataset": ".build",
    "ToolSpec": ".toolset",
    "build_sample_dataset": ".sample_data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
