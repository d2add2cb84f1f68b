"""Contact sheets: what the data looks like at a glance.

`contact_sheet`: one line per sample: the background, then per object (back to front) its shadow
(black with alpha sigma) and the object itself, both over a checkerboard, then the composite.
`cutout_sheet`: the curated cut-outs of a build (its foreground assets), each with its shadow, in a grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from liwi_diffusers.layered_dataset import row_composite, row_to_layered
from liwi_diffusers.layers import LayeredImage, to_uint8

__all__ = ["checkerboard", "contact_sheet", "cutout_sheet", "over_checkerboard"]


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


def cutout_sheet(foregrounds: Sequence[Any], columns: int = 8, cell: int = 128, gap: int = 4) -> Image.Image:
    """A grid of cut-outs (`ForegroundAsset`s): each object over its shadow over a checkerboard, captioned.

    Each cut-out is scaled to fill its cell (aspect kept); the caption is its label and the first characters
    of its source photo's id.
    """
    if not foregrounds:
        raise ValueError("cutout_sheet needs at least one cut-out")
    label_height = 14
    rows = -(-len(foregrounds) // columns)
    sheet = Image.new("RGB", (columns * (cell + gap) + gap, rows * (cell + label_height + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for index, fg in enumerate(foregrounds):
        rgba = np.asarray(fg.rgba, np.float32) / 255.0
        sigma = np.asarray(fg.shadow, np.float32)[:, :, None] / 255.0
        backdrop = checkerboard(*rgba.shape[:2]) * (1.0 - sigma)  # the shadow darkens what lies behind
        alpha = rgba[:, :, 3:4]
        tile = Image.fromarray(to_uint8(alpha * rgba[:, :, :3] + (1.0 - alpha) * backdrop), "RGB")
        scale = cell / max(tile.size)  # small cut-outs are enlarged too, so that every one can be seen
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), Image.LANCZOS)
        top = gap + (index // columns) * (cell + label_height + gap)
        left = gap + (index % columns) * (cell + gap)
        sheet.paste(tile, (left + (cell - tile.width) // 2, top + label_height + (cell - tile.height) // 2))
        draw.text((left + 2, top + 1), f"{fg.label} {str(fg.source_id)[:6]}", fill=(0, 0, 0))
    return sheet
