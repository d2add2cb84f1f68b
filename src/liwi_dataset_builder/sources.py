"""Source photos: folders, glob patterns, single files, or a `datasets` dataset with an image column.

`expand_sources` lists them in a deterministic order; `scan_photo` loads one safely and gives it a
content hash (its id), or a reason to skip it (unreadable, too small, too large). Duplicates (same
decoded pixels) are found by that hash. Splits are assigned per photo from the hash alone, so a
photo never lands in two splits and keeps its split from one build to the next.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from liwi_diffusers.image_io import ImageLoadError, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "Photo",
    "SourceError",
    "SourceRef",
    "assign_splits",
    "expand_sources",
    "load_source_image",
    "scan_photo",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
SPLITS = ("train", "validation", "test")
_DATASET_PREFIX = "dataset:"


class SourceError(ValueError):
    """A source argument that names nothing usable (missing path, empty glob, no image column)."""


@dataclass(frozen=True)
class SourceRef:
    """Where one photo comes from: a file path, or ``(dataset folder, split, row, column)``."""

    path: str
    split: str = ""
    row: int = -1
    column: str = ""

    @property
    def is_dataset(self) -> bool:
        return self.row >= 0

    def describe(self) -> str:
        """How reports and rows name this photo."""
        return f"{self.path}[{self.split}][{self.row}]" if self.is_dataset else self.path


@dataclass
class Photo:
    """A usable source photo: its content-hash id, where it is, its size and (later) split and pool."""

    photo_id: str
    ref: SourceRef
    width: int
    height: int
    split: str = ""
    pool: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": asdict(self.ref)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Photo:
        return cls(**{**data, "ref": SourceRef(**data["ref"])})


# ------------------------------------------------------------------------------------ listing
def _is_dataset_folder(path: Path) -> bool:
    """A folder written by ``save_to_disk`` or a parquet/arrow dataset (with or without a card)."""
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return True
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())
    if has_images:
        return False
    data_files = [p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow") and ".build" not in p.parts]
    return bool(data_files)


def _dataset_refs(path: Path, image_column: str | None) -> list[SourceRef]:
    """One ref per row of every split of a `datasets` dataset folder."""
    import datasets

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(str(path))
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    refs = []
    for split in sorted(splits):
        dataset = splits[split]
        column = image_column or next(
            (name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)), None
        )
        if column is None or column not in dataset.column_names:
            raise SourceError(
                f"{path}: split {split!r} has no image column"
                + (f" named {image_column!r}" if image_column else "; pass --image-column")
                + f" (columns: {', '.join(dataset.column_names)})"
            )
        refs += [SourceRef(str(path), split, row, column) for row in range(len(dataset))]
    return refs


def expand_sources(sources: list[str], image_column: str | None = None) -> list[SourceRef]:
    """Every photo the source arguments name, in a deterministic order (given order, then sorted).

    A source is an image file, a folder (searched recursively for image files), a glob pattern
    (``**`` allowed), or a `datasets` dataset folder (``save_to_disk`` output or parquet shards;
    force it with a ``dataset:`` prefix) whose image column is ``image_column`` or the first
    ``Image`` feature.
    """
    refs: list[SourceRef] = []
    seen: set[SourceRef] = set()
    for source in sources:
        if source.startswith(_DATASET_PREFIX):
            path = Path(source[len(_DATASET_PREFIX) :])
            if not path.is_dir():
                raise SourceError(f"{source}: no such dataset folder")
            found = _dataset_refs(path, image_column)
        elif any(char in source for char in "*?["):
            matches = sorted(glob.glob(source, recursive=True))
            found = [SourceRef(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise SourceError(f"{source}: the pattern matches no image file")
        else:
            path = Path(source)
            if not path.exists():
                raise SourceError(f"{source}: no such file or folder")
            if path.is_dir():
                if _is_dataset_folder(path):
                    found = _dataset_refs(path, image_column)
                else:
                    found = [
                        SourceRef(str(p))
                        for p in sorted(path.rglob("*"))
                        if p.is_file()
                        and p.suffix.lower() in IMAGE_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    ]
            else:
                found = [SourceRef(str(path))]
        for ref in found:
            if ref not in seen:
                seen.add(ref)
                refs.append(ref)
    return refs


# ------------------------------------------------------------------------------------ loading
_DATASETS: dict[str, Any] = {}


def _open_dataset(path: str) -> Any:
    """The dataset at ``path``, opened once per process (memory-mapped, cheap to keep)."""
    if path not in _DATASETS:
        import datasets

        folder = Path(path)
        if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path)
        _DATASETS[path] = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return _DATASETS[path]


def load_source_image(ref: SourceRef, max_pixels: int, min_side: int) -> Image.Image:
    """The photo ``ref`` names as an RGB PIL image; `ImageLoadError` when it is unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transparency / animation notes: the photo is still usable
        if not ref.is_dataset:
            return load_image(ref.path, max_pixels=max_pixels, min_side=min_side)
        try:
            value = _open_dataset(ref.path)[ref.split][ref.row][ref.column]
        except Exception as error:  # a corrupt row must not stop a build
            raise ImageLoadError(f"{ref.describe()}: cannot read the row ({type(error).__name__}: {error})") from None
        if isinstance(value, dict):  # an undecoded Image feature: {"bytes", "path"}
            import io

            if value.get("bytes"):
                value = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                return load_image(value["path"], max_pixels=max_pixels, min_side=min_side)
        if isinstance(value, np.ndarray):
            value = Image.fromarray(value)
        if not isinstance(value, Image.Image):
            raise ImageLoadError(f"{ref.describe()}: column {ref.column!r} holds {type(value).__name__}, not an image")
        if value.width * value.height > max_pixels:
            raise ImageLoadError(
                f"{ref.describe()}: image is {value.width}x{value.height}, above the {max_pixels / 1e6:.0f} MP limit"
            )
        return load_image(value, max_pixels=max_pixels, min_side=min_side)


def content_id(image: Image.Image) -> str:
    """Id of a photo: the SHA-256 of its decoded RGB pixels and size (first 16 hex digits)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


def scan_photo(ref: SourceRef, max_pixels: int, min_side: int) -> tuple[Photo | None, str]:
    """Load ``ref`` once: ``(Photo, "ok")``, or ``(None, reason)`` when it must be skipped."""
    try:
        image = load_source_image(ref, max_pixels, min_side)
    except ImageLoadError as error:
        return None, str(error)
    except (OSError, ValueError, MemoryError) as error:  # anything else a broken file can throw
        return None, f"{ref.describe()}: unreadable ({type(error).__name__}: {error})"
    return Photo(content_id(image), ref, image.width, image.height), "ok"


# ------------------------------------------------------------------------------------ splits
def _unit_hash(text: str) -> float:
    """A number in [0, 1) from ``text``, the same on every machine and Python version."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def assign_splits(photos: list[Photo], fractions: dict[str, float]) -> None:
    """Set ``photo.split`` from a hash of the photo id alone (``fractions``: split -> share of photos).

    Splits are consecutive intervals of the hash in `SPLITS` order, train last. A split with a
    positive share that gets no photo by chance takes the one photo whose hash is closest to its
    interval, as long as two or more photos exist (so tiny builds still have a test split).
    """
    order = [name for name in SPLITS if name != "train" and fractions.get(name, 0.0) > 0]
    bounds, start = {}, 0.0
    for name in order:
        bounds[name] = (start, start + fractions[name])
        start += fractions[name]
    for photo in photos:
        value = _unit_hash(f"liwi-split:{photo.photo_id}")
        photo.split = next((name for name, (low, high) in bounds.items() if low <= value < high), "train")
    if len(photos) < 2:
        return
    sizes = Counter(photo.split for photo in photos)
    for name in order:
        if sizes[name] == 0:
            low = bounds[name][0]
            donors = [p for p in photos if sizes[p.split] > 1]
            if donors:
                closest = min(donors, key=lambda p: (abs(_unit_hash(f"liwi-split:{p.photo_id}") - low), p.photo_id))
                sizes[closest.split] -= 1
                sizes[name] += 1
                closest.split = name


def source_root_note(ref: SourceRef) -> str:
    """The folder or dataset a photo came from, for the card's licence notes."""
    if ref.is_dataset:
        return ref.path
    return os.path.dirname(ref.path) or "."
