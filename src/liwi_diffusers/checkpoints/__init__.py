"""Pipeline checkpoints shipped inside the package, loadable offline by name.

``liwi decompose --model liwi-small``, ``liwi evaluate --method pipeline --checkpoint liwi-small`` and the Space
accept these names; from Python, pass `shipped_checkpoint_path` to `LiWiDecompositionPipeline.from_pretrained`.
Each folder holds a model card (README.md) with its data, recipe and held-out scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHIPPED_CHECKPOINTS", "ShippedCheckpoint", "shipped_checkpoint_path"]

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A pipeline folder inside the package (its working resolution is in its own config, `default_resolution`)."""

    name: str
    summary: str

    @property
    def path(self) -> Path:
        return _HERE / self.name


SHIPPED_CHECKPOINTS: dict[str, ShippedCheckpoint] = {
    "liwi-small": ShippedCheckpoint(
        name="liwi-small",
        summary=(
            "4.5 M-parameter LiWi model trained from scratch for about 10 CPU minutes on the bundled sample "
            "dataset (examples/train_shipped_checkpoint.sh); a demonstration of the trained path, weaker than "
            "the tool chain"
        ),
    ),
}


def shipped_checkpoint_path(name: str) -> Path:
    """The folder of shipped checkpoint ``name`` (e.g. ``"liwi-small"``)."""
    if name not in SHIPPED_CHECKPOINTS:
        raise ValueError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(SHIPPED_CHECKPOINTS)}")
    path = SHIPPED_CHECKPOINTS[name].path
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"shipped checkpoint {name!r} is missing from {path}: reinstall liwi-diffusers")
    return path
