"""Lossless array <-> bytes for the `evaluate` modules (their inputs pass through an Arrow table).

The three module scripts (`liwi_layers`, `liwi_alpha_boundary`, `liwi_shadows`) share `encode_each`
as a function: `evaluate.load` takes the first non-abstract `evaluate.Metric` subclass it finds in a
script's namespace, so a shared base class imported into the scripts would be picked instead of the
module's own class.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def to_npy_bytes(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (dtype and shape kept exactly, no pickling)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(data: bytes) -> np.ndarray:
    """Inverse of `to_npy_bytes`."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_each(values: Iterable[Any], convert: Callable[[Any, str], np.ndarray], what: str) -> list[bytes]:
    """``convert(value, "what[k]")`` (which validates and names bad input) of each value, as ``.npy`` bytes."""
    return [to_npy_bytes(convert(value, f"{what}[{k}]")) for k, value in enumerate(values)]
