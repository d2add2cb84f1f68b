"""PowerPoint (``.pptx``) export: one slide the size of the photo, one picture per layer.

Shapes, back to front (PowerPoint draws later shapes on top): the ``background`` picture, then per
object a group named from its label ("car", "person 2"; see `group_names`) holding its
``shadow k`` picture (black, the shadow in the PNG's alpha) and its ``object k`` picture (RGBA), or
for an object decomposed into parts a nested group "<name> parts" with a ``part k.j`` picture per part.
Each picture is cropped to its alpha box and placed at its offset; a layer with nothing visible
has no picture. One pixel is 9525 EMU (96 dpi), so the slide is the photo's size.

PowerPoint's slides are 1 to 56 inches a side (914,400 to 51,206,400 EMU: 96 to 5376 px at 96
dpi). A photo outside that range is placed on the slide at a scale that fits, the pictures keep all
their pixels, and a `PptxScaleWarning` says so. PPTX is an export only: `load_layered` does not
read it back.
"""

from __future__ import annotations

import os
import warnings
from io import BytesIO
from typing import Any

from ..layers import LayeredImage
from ._common import FileLayer, file_layers, grouped_layers, png_bytes
from .atomic import atomic_write

__all__ = [
    "EMU_PER_PIXEL",
    "MAX_SLIDE_EMU",
    "MIN_SLIDE_EMU",
    "PptxScaleWarning",
    "slide_scale",
    "write_pptx",
]

EMU_PER_INCH = 914_400
EMU_PER_PIXEL = EMU_PER_INCH // 96  # 9525
# ECMA-376 ST_SlideSizeCoordinate: 1 to 56 inches.
MIN_SLIDE_EMU = EMU_PER_INCH
MAX_SLIDE_EMU = 56 * EMU_PER_INCH
# zlib level of the pictures: 3 encodes a photo about 2.5x faster than 6, for files about 20 % larger.
PNG_COMPRESS_LEVEL = 3


class PptxScaleWarning(UserWarning):
    """The photo does not fit PowerPoint's slide size limits at 96 dpi and is shown scaled."""


def slide_scale(width: int, height: int) -> float:
    """Factor on 96-dpi sizes that fits a ``width`` x ``height`` photo in PowerPoint's limits (1 when it fits).

    Too large: the longer side becomes 56 inches. Too small: the shorter side grows to 1 inch, as
    far as the longer side allows (a strip longer than 56:1 keeps a slide side above the picture).
    """
    longest, shortest = max(width, height) * EMU_PER_PIXEL, min(width, height) * EMU_PER_PIXEL
    if longest > MAX_SLIDE_EMU:
        return MAX_SLIDE_EMU / longest
    if shortest < MIN_SLIDE_EMU:
        return min(MIN_SLIDE_EMU / shortest, MAX_SLIDE_EMU / longest)
    return 1.0


def write_pptx(layered: LayeredImage, path: str | os.PathLike, *, composite: Any = None, crop: bool = True) -> None:
    """Write ``layered`` as a one-slide PowerPoint file at ``path`` (atomically).

    ``composite`` is accepted for a uniform writer signature but not stored: the slide shows the
    layers themselves. With ``crop=False`` every picture covers the whole slide.

    Warns:
        PptxScaleWarning: the photo is larger than 5376 px (56 in) or smaller than 96 px (1 in) on
            a side at 96 dpi, so the slide shows it scaled.
    """
    from pptx import Presentation

    layers = file_layers(layered, crop)
    background, groups = grouped_layers(layered, layers)
    scale = slide_scale(layered.width, layered.height)

    def emu(pixels: int) -> int:
        return round(pixels * EMU_PER_PIXEL * scale)

    presentation = Presentation()
    presentation.slide_width = min(max(emu(layered.width), MIN_SLIDE_EMU), MAX_SLIDE_EMU)
    presentation.slide_height = min(max(emu(layered.height), MIN_SLIDE_EMU), MAX_SLIDE_EMU)
    blank = presentation.slide_layouts.get_by_name("Blank")  # no placeholders on the slide
    slide = presentation.slides.add_slide(blank)

    def add_picture(shapes: Any, layer: FileLayer, opaque: bool = False) -> None:
        rows, cols = layer.pixels.shape[:2]
        pixels = layer.pixels[:, :, :3] if opaque else layer.pixels  # the background needs no alpha
        data = BytesIO(png_bytes(pixels, compress_level=PNG_COMPRESS_LEVEL))
        picture = shapes.add_picture(data, emu(layer.left), emu(layer.top), emu(cols), emu(rows))
        picture.name = layer.name

    if not background.is_empty:
        add_picture(slide.shapes, background, opaque=bool((background.pixels[:, :, 3] == 255).all()))

    def has_pixels(member: Any) -> bool:
        return any(has_pixels(m) for m in member[1]) if isinstance(member, tuple) else not member.is_empty

    def add_group(shapes: Any, name: str, members: list[Any]) -> None:
        group = shapes.add_group_shape()
        group.name = name
        for member in members:
            if not has_pixels(member):
                continue
            if isinstance(member, tuple):  # an object's parts (or a part's parts): a nested group
                add_group(group.shapes, *member)
            else:
                add_picture(group.shapes, member)

    for name, members in groups:
        if has_pixels((name, members)):
            add_group(slide.shapes, name, members)
    with atomic_write(path) as file:
        presentation.save(file)
    if scale != 1.0:
        inches = f"{presentation.slide_width / EMU_PER_INCH:.2f} x {presentation.slide_height / EMU_PER_INCH:.2f} in"
        limit = "larger than PowerPoint's 56-inch" if scale < 1 else "smaller than PowerPoint's 1-inch"
        warnings.warn(
            f"the photo is {layered.width}x{layered.height} px, {limit} slide limit at 96 dpi; the slide shows it "
            f"at {100 * scale:.1f} % ({inches}), the pictures keep all their pixels",
            PptxScaleWarning,
            stacklevel=2,
        )
