"""Loader for the real-photo benchmark data in ``benchmarks/data/real/``.

Layout (all paths in the manifest are relative to the data folder):

- ``images/<id>.jpg``: the photo, RGB JPEG (quality 90), long side at most 1024 px.
- ``masks/<id>/object<k>.png``: one mask per annotated object instance; 8-bit PNG, mode L, same size as the photo,
  255 = inside (0/255 for polygon sources; soft values are allowed where a source is soft).
- ``masks/<id>/shadow<k>.png``: the cast shadow of object ``k``, where the source annotates it (same format).
- ``clean/<id>.jpg``: the captured photo of the same scene without its objects ("clean plate"), where there is one.
- ``manifest.json``: a JSON list with one entry per photo::

      {"id": str, "image": path, "groups": [str, ...],
       "objects": [{"mask": path, "label": str, "shadow": path | null}, ...],
       "clean_plate": path | null, "source": key into SOURCES.md, "licence": str,
       "attribution": str, "origin": "owner/repo@commit:path"}

  ``groups`` is a list; a photo can be in several. ``"single"``: exactly one annotated object; ``"pair"``: two;
  ``"multi"``: three or more; ``"shadow"``: at least one object has a shadow mask; ``"clean_plate"``: has a clean
  plate. Every entry has at least one object.
- ``SOURCES.md``: repository, commit, path and licence of every file; ``LICENSES.md``: the licence texts' terms.

    from benchmarks.real_data import load_real_benchmark
    samples = load_real_benchmark(groups=["multi"])
    samples[0].image.shape, len(samples[0].object_masks)

Images and masks are read when a sample's attribute is first used, so listing the benchmark is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

DATA_ROOT = Path(__file__).resolve().parent / "data" / "real"
GROUPS = ("single", "pair", "multi", "shadow", "clean_plate")


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode != "L":
            raise ValueError(f"{path}: mask must be an 8-bit single-channel PNG (mode L), not mode {image.mode}")
        return np.asarray(image, dtype=np.float32) / 255.0


@dataclass
class RealSample:
    """One benchmark photo. ``image``, ``object_masks``, ``shadow_masks`` and ``clean_plate`` load on first use.

    ``image``: float32 (H, W, 3) in [0, 1]. ``object_masks``: list of float32 (H, W) in [0, 1], one per object.
    ``shadow_masks``: aligned with ``object_masks``; float32 (H, W) or None where the object has no shadow mask.
    ``clean_plate``: float32 (H, W, 3) or None.
    """

    id: str
    labels: list[str]
    groups: list[str]
    licence: str
    source: str
    root: Path = field(repr=False)
    image_path: Path = field(repr=False)
    mask_paths: list[Path] = field(repr=False)
    shadow_paths: list[Path | None] = field(repr=False)
    clean_plate_path: Path | None = field(repr=False, default=None)

    @cached_property
    def image(self) -> np.ndarray:
        return _read_rgb(self.image_path)

    @cached_property
    def object_masks(self) -> list[np.ndarray]:
        return [_read_mask(p) for p in self.mask_paths]

    @cached_property
    def shadow_masks(self) -> list[np.ndarray | None]:
        return [None if p is None else _read_mask(p) for p in self.shadow_paths]

    @cached_property
    def clean_plate(self) -> np.ndarray | None:
        return None if self.clean_plate_path is None else _read_rgb(self.clean_plate_path)

    def release(self) -> None:
        """Drop the loaded arrays (they load again on next use); keeps memory flat when iterating."""
        for name in ("image", "object_masks", "shadow_masks", "clean_plate"):
            self.__dict__.pop(name, None)


def read_manifest(root: Path | str | None = None) -> list[dict]:
    """The raw manifest entries (a list of dicts, see the module docstring)."""
    root = DATA_ROOT if root is None else Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no real-photo benchmark manifest here; pass root= the data folder")
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: the manifest must be a JSON list of samples")
    return entries


def load_real_benchmark(root: Path | str | None = None, groups: Iterable[str] | str | None = None) -> list[RealSample]:
    """The benchmark samples, optionally only those in any of ``groups`` (e.g. ``["single"]``), in manifest order."""
    root = DATA_ROOT if root is None else Path(root)
    wanted = None
    if groups is not None:
        wanted = {groups} if isinstance(groups, str) else set(groups)
        unknown = wanted - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown group(s) {sorted(unknown)}; choose from {list(GROUPS)}")
    samples = []
    for entry in read_manifest(root):
        if wanted is not None and not wanted.intersection(entry["groups"]):
            continue
        objects = entry["objects"]
        samples.append(
            RealSample(
                id=entry["id"],
                labels=[o["label"] for o in objects],
                groups=list(entry["groups"]),
                licence=entry["licence"],
                source=entry["source"],
                root=root,
                image_path=root / entry["image"],
                mask_paths=[root / o["mask"] for o in objects],
                shadow_paths=[None if o.get("shadow") is None else root / o["shadow"] for o in objects],
                clean_plate_path=None if entry.get("clean_plate") is None else root / entry["clean_plate"],
            )
        )
    return samples
