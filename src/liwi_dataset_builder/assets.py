"""Curated assets: what foreground and background curation keep from one source photo.

Assets are stored as 8-bit arrays (exactly what the dataset's PNGs hold), so a resumed build reads
back the very values an uninterrupted one computed. One ``.npz`` file per photo, written to a
temporary name and renamed, so a killed build never leaves a half-written asset behind.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes

__all__ = ["BackgroundAsset", "ForegroundAsset", "PhotoAssets"]


@dataclass
class ForegroundAsset:
    """A cut-out object with its cast shadow, cropped to the box that holds both.

    Attributes:
        rgba: ``(h, w, 4)`` uint8 straight (unpremultiplied) colour and alpha.
        shadow: ``(h, w)`` uint8 shadow alpha sigma (all zero when the photo showed none).
        label: a short name.
        source_id: content hash of the photo it came from; source_path: where that photo was.
        score: the proposal's confidence.
        cut_bottom: the object reached the photo's bottom edge (composition keeps it on the bottom edge).
    """

    rgba: np.ndarray
    shadow: np.ndarray
    label: str
    source_id: str
    source_path: str
    score: float = 1.0
    cut_bottom: bool = False

    @property
    def has_shadow(self) -> bool:
        return bool(self.shadow.max(initial=0) > 2)


@dataclass
class BackgroundAsset:
    """An object-free background: ``image`` ``(H, W, 3)`` uint8, ``kind`` ``clean`` or ``inpainted``."""

    image: np.ndarray
    kind: str
    source_id: str
    source_path: str


@dataclass
class PhotoAssets:
    """Everything curated from one photo, plus the plan and the notes on what was rejected."""

    photo_id: str
    source_path: str
    foregrounds: list[ForegroundAsset] = field(default_factory=list)
    background: BackgroundAsset | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What the build report records about this photo."""
        return {
            "photo_id": self.photo_id,
            "source": self.source_path,
            "foregrounds": [fg.label for fg in self.foregrounds],
            "extracted_shadows": sum(fg.has_shadow for fg in self.foregrounds),
            "background": self.background.kind if self.background is not None else None,
            "plan": self.plan,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (``.npz``) atomically."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {
            "photo_id": self.photo_id,
            "source_path": self.source_path,
            "plan": self.plan,
            "notes": self.notes,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "foregrounds": [],
            "background": None,
        }
        for k, fg in enumerate(self.foregrounds):
            arrays[f"fg{k}_rgba"] = fg.rgba
            arrays[f"fg{k}_shadow"] = fg.shadow
            meta["foregrounds"].append(
                {key: value for key, value in asdict(fg).items() if key not in ("rgba", "shadow")}
            )
        if self.background is not None:
            arrays["background"] = self.background.image
            meta["background"] = {k: v for k, v in asdict(self.background).items() if k != "image"}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PhotoAssets:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            foregrounds = [
                ForegroundAsset(rgba=data[f"fg{k}_rgba"], shadow=data[f"fg{k}_shadow"], **info)
                for k, info in enumerate(meta["foregrounds"])
            ]
            background = None
            if meta["background"] is not None:
                background = BackgroundAsset(image=data["background"], **meta["background"])
        return cls(
            meta["photo_id"],
            meta["source_path"],
            foregrounds,
            background,
            meta["plan"],
            meta["notes"],
            meta["seconds"],
            meta.get("cpu_seconds", 0.0),
        )
