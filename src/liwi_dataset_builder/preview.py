"""A contact sheet of dataset rows, layer by layer: what the data looks like at a glance.

One line per sample: the background, then per object (back to front) its shadow (black with
alpha sigma) and the object itself, both over a checkerboard, then the composite.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from liwi_diffusers.layered_dataset import row_composite, row_to_layered
from liwi_diffusers.layers import LayeredImage, to_uint8

__all__ = ["checkerboard", "contact_sheet", "over_checkerboard"]


def checkerboard(height: int, width: int, square: int = 8) -> np.ndarray:
    """A light grey checkerboard ``(H, W, 3)`` float32, the usual backdrop for transparent layers."""
    rows, cols = np.indices((height, width))
    light = ((rows // square + cols // square) % 2).astype(np.float32)
    return np.repeat((0.78 + 0.16 * light)[:, :, None], 3, axis=2)


def over_checkerboard(rgba: np.ndarray, square: int = 8) -> np.ndarray:
    """``rgba`` (straight, float) composed over a checkerboard, ``(H, W, 3)``."""
    board = checkerboard(rgba.shape[0], rgba.shape[1], square)
    alpha = rgba[:, :, 3:4]
    return alpha * rgba[:, :, :3] + (1.0 - alpha) * board


def _cells(layered: LayeredImage, composite: np.ndarray) -> list[tuple[str, np.ndarray]]:
    cells = [("background", layered.background)]
    black = np.zeros_like(layered.background)
    for k, (fg, shadow) in enumerate(zip(layered.foregrounds, layered.shadows), start=1):
        cells.append((f"shadow {k}", over_checkerboard(np.concatenate([black, shadow[:, :, None]], axis=2))))
        cells.append((f"object {k}", over_checkerboard(fg)))
    cells.append(("composite", composite))
    return cells


def contact_sheet(rows: Iterable[dict[str, Any]], cell: int = 160, gap: int = 4) -> Image.Image:
    """A PNG-ready RGB sheet of ``rows`` (dataset rows), one sample per line, ``cell`` px per layer."""
    lines = []
    for row in rows:
        layered = row_to_layered(row)
        lines.append((row.get("id", ""), _cells(layered, row_composite(row))))
    if not lines:
        raise ValueError("contact_sheet needs at least one row")
    columns = max(len(cells) for _, cells in lines)
    label_height = 14
    width = columns * (cell + gap) + gap
    height = len(lines) * (cell + label_height + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for line, (row_id, cells) in enumerate(lines):
        top = gap + line * (cell + label_height + gap)
        for column, (name, image) in enumerate(cells):
            # The composite always goes in the last column, so lines with fewer objects stay aligned.
            position = columns - 1 if name == "composite" else column
            left = gap + position * (cell + gap)
            tile = Image.fromarray(to_uint8(image), "RGB")
            sheet.paste(tile.resize((cell, cell), Image.LANCZOS), (left, top + label_height))
            caption = f"{row_id}  {name}" if column == 0 else name
            draw.text((left + 2, top + 1), caption, fill=(0, 0, 0))
    return sheet
