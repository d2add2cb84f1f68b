"""Reading LiWi dataset rows back as `LayeredImage` objects.

Works on rows from `datasets` (images decoded to PIL, or undecoded ``{"bytes", "path"}`` dicts)
and on rows read straight from a shard with pyarrow, so training code, metrics and the demo do not
depend on how the dataset was opened.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._extras import require
from .layers import LayeredImage, LayeredImageError

__all__ = ["decode_image", "iter_layered", "load_layered_dataset", "read_shard", "row_composite", "row_to_layered"]

_MODES = {"RGB": 3, "RGBA": 4, "L": 1}


def decode_image(value: Any, mode: str) -> np.ndarray:
    """A row's image (PIL, ``{"bytes", "path"}`` dict, or array) as a uint8 array in ``mode``.

    The dataset stores each image in its own mode (composite/background RGB, foregrounds RGBA,
    shadows L); an image in another mode is refused rather than silently converted, because
    converting RGBA to RGB or L to RGB would lose or invent a layer's meaning.
    """
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            value = Image.open(value["path"])
        else:
            raise LayeredImageError("image entry has neither bytes nor a path")
    if isinstance(value, Image.Image):
        if value.mode != mode:
            raise LayeredImageError(f"expected a {mode} image, got mode {value.mode}")
        return np.asarray(value)
    array = np.asarray(value)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != np.uint8 or channels != _MODES[mode]:
        raise LayeredImageError(f"expected a uint8 {mode} image, got {array.dtype} with {channels} channels")
    return array


def row_to_layered(row: dict[str, Any]) -> LayeredImage:
    """A dataset row as a `LayeredImage` (background, foregrounds back to front, shadows, labels)."""
    foregrounds = [decode_image(fg, "RGBA") for fg in row["foregrounds"]]
    # A row without shadows (no column, None or an empty list) has no shadow under any object.
    shadows = [decode_image(shadow, "L") for shadow in row.get("shadows") or ()] or None
    labels = row.get("labels")
    return LayeredImage(decode_image(row["background"], "RGB"), foregrounds, shadows, labels)


def row_composite(row: dict[str, Any]) -> np.ndarray:
    """The row's stored composite as float32 ``(H, W, 3)`` in [0, 1]."""
    return decode_image(row["composite"], "RGB").astype(np.float32) / 255.0


def read_shard(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of one parquet shard, images left as ``{"bytes", "path"}`` dicts (no `datasets` needed)."""
    pq = require("pyarrow.parquet", "eval", "reading a LiWi shard")
    return pq.read_table(path).to_pylist()


def load_layered_dataset(
    path: str | os.PathLike[str], split: str = "train", streaming: bool = False, **kwargs: Any
) -> Any:
    """``datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)`` for a LiWi folder."""
    datasets = require("datasets", "eval", "reading a LiWi dataset")
    return datasets.load_dataset(str(path), split=split, streaming=streaming, **kwargs)


def iter_layered(source: Any, split: str = "train", **kwargs: Any) -> Iterator[tuple[LayeredImage, dict[str, Any]]]:
    """``(LayeredImage, row)`` pairs from a dataset folder, a shard file, or a loaded dataset."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        rows = read_shard(path) if path.suffix == ".parquet" else load_layered_dataset(path, split, **kwargs)
    else:
        rows = source
    for row in rows:
        yield row_to_layered(row), row
