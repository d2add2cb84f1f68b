"""Lossless array <-> bytes for the `evaluate` modules (their inputs pass through an Arrow table)."""

from __future__ import annotations

import io

import numpy as np


def to_npy_bytes(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (dtype and shape kept exactly, no pickling)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(data: bytes) -> np.ndarray:
    """Inverse of `to_npy_bytes`."""
    return np.load(io.BytesIO(data), allow_pickle=False)
