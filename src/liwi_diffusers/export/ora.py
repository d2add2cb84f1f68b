"""OpenRaster (``.ora``) files, the open layered format of GIMP, Krita and MyPaint.

An ORA file is a zip archive holding, in this order:

- ``mimetype``: first and stored uncompressed, the bytes ``image/openraster``;
- ``stack.xml``: the canvas size and the layers, top layer first, each with its name, PNG file
  (``src``), offset (``x``, ``y``), ``opacity`` and ``visibility``. The background is a layer of
  the root stack; each object is a nested ``<stack>`` named from its label ("car", "person 2";
  see `group_names`) holding its object layer above its shadow layer; an object decomposed into
  parts holds, above its shadow, a stack "<name> parts" with its ``part k.j`` layers (a part split
  again: a nested stack ``part k.j``). Reading flattens nested stacks (the part names carry the
  tree), so flat files (older exports, other programs) read as before;
- ``data/*.png``: one RGBA PNG per layer, cropped to the layer's alpha box;
- ``Thumbnails/thumbnail.png`` (at most 256 px) and ``mergedimage.png`` (the flattened picture).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

import numpy as np

from ..layers import LayeredImage
from ._common import (
    FileLayer,
    build_layered,
    check_canvas,
    composite_uint8,
    decode_png,
    file_error,
    file_layers,
    grouped_layers,
    open_zip,
    png_bytes,
    png_size,
    read_member,
    thumbnail,
    transparent_pixel,
    uncrop,
    zip_write,
)
from .atomic import atomic_write

__all__ = ["MIMETYPE", "read_ora", "write_ora"]

MIMETYPE = "image/openraster"
ORA_VERSION = "0.0.5"
# Characters that XML 1.0 cannot hold, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MAX_XML_BYTES = 16 << 20


def write_ora(layered: LayeredImage, path: str | os.PathLike, *, composite: Any = None, crop: bool = True) -> None:
    """Write ``layered`` as an OpenRaster file at ``path`` (atomically).

    ``composite`` (default ``layered.compose()``) is stored as ``mergedimage.png`` and the thumbnail.
    """
    layers = file_layers(layered, crop)
    for layer in layers:
        if _NOT_XML.search(layer.name):
            raise ValueError(f"layer name {layer.name!r} has control characters that OpenRaster (XML) cannot store")
    sources = [f"data/layer{position:03d}.png" for position in range(len(layers))]
    merged = composite_uint8(layered, composite)
    with atomic_write(path) as file, zipfile.ZipFile(file, "w") as archive:
        zip_write(archive, "mimetype", MIMETYPE.encode("ascii"))
        stack_xml = _stack_xml(layered, layers, dict(zip((id(layer) for layer in layers), sources)))
        zip_write(archive, "stack.xml", stack_xml, compress=True)
        for layer, source in zip(layers, sources):
            # ORA has no empty layers: one fully transparent pixel stands for nothing.
            zip_write(archive, source, png_bytes(transparent_pixel() if layer.is_empty else layer.pixels))
        zip_write(archive, "Thumbnails/thumbnail.png", png_bytes(thumbnail(merged)))
        zip_write(archive, "mergedimage.png", png_bytes(merged))


def _stack_xml(layered: LayeredImage, layers: list[FileLayer], sources: dict[int, str]) -> bytes:
    """``stack.xml``: the background in the root stack, under one nested stack per object (top first)."""
    image = ET.Element("image", {"version": ORA_VERSION, "w": str(layered.width), "h": str(layered.height)})
    root = ET.SubElement(image, "stack")
    background, groups = grouped_layers(layered, layers)
    visible = {"opacity": "1.0", "visibility": "visible", "composite-op": "svg:src-over"}
    for name, members in reversed(groups):  # ORA lists the top first
        _stack_element(root, name, members, sources, visible)
    _layer_element(root, background, sources[id(background)], visible)
    ET.indent(image)
    return ET.tostring(image, encoding="utf-8", xml_declaration=True)


def _stack_element(
    parent: ET.Element, name: str, members: list[Any], sources: dict[int, str], visible: dict[str, str]
) -> None:
    """A nested ``<stack>``: layers and ``(name, members)`` groups (an object's parts), top first."""
    group = ET.SubElement(parent, "stack", {"name": name, **visible})
    for member in reversed(members):
        if isinstance(member, tuple):
            _stack_element(group, *member, sources, visible)
        else:
            _layer_element(group, member, sources[id(member)], visible)


def _layer_element(parent: ET.Element, layer: FileLayer, source: str, visible: dict[str, str]) -> None:
    attributes = {"name": layer.name, "src": source, "x": str(layer.left), "y": str(layer.top), **visible}
    ET.SubElement(parent, "layer", attributes)


def read_ora(path: str | os.PathLike) -> LayeredImage:
    """Read a layered image from an OpenRaster file (nested stacks are flattened, top to bottom)."""
    with open_zip(path) as archive:
        names = set(archive.namelist())
        if "mimetype" in names:
            mimetype = read_member(archive, "mimetype", path, limit=1024).strip()
            if mimetype != MIMETYPE.encode("ascii"):
                raise file_error(path, f"its mimetype is {mimetype[:60]!r}, not {MIMETYPE!r}", "it is not an ORA file")
        try:
            root = ET.fromstring(read_member(archive, "stack.xml", path, limit=_MAX_XML_BYTES))
        except ET.ParseError as error:
            raise file_error(path, f"stack.xml is not valid XML ({error})", "the file is corrupt") from error
        if root.tag != "image":
            raise file_error(path, f"stack.xml has a <{root.tag}> root element instead of <image>")
        width, height = check_canvas(_int_attribute(root, "w", path, None), _int_attribute(root, "h", path, None), path)
        elements = list(root.iter("layer"))
        if not elements:
            raise file_error(path, "stack.xml lists no layers")
        layers = [_read_layer(archive, element, width, height, path) for element in reversed(elements)]
        if "mergedimage.png" in names:
            merged_size = png_size(read_member(archive, "mergedimage.png", path), "mergedimage.png", path)
            if merged_size != (width, height):
                raise file_error(
                    path,
                    f"mergedimage.png is {merged_size[0]}x{merged_size[1]} but stack.xml says {width}x{height} "
                    "(layers of mismatched size)",
                    "the file is inconsistent: export it again",
                )
    return build_layered(layers, path)


def _read_layer(
    archive: zipfile.ZipFile, element: ET.Element, width: int, height: int, path: str | os.PathLike
) -> tuple[str, np.ndarray]:
    name = element.get("name", "")
    source = element.get("src")
    if not source:
        raise file_error(path, f"layer {name!r} in stack.xml has no src (PNG file)")
    pixels = decode_png(read_member(archive, source, path), source, path)
    opacity = _float_attribute(element, "opacity", path)
    if opacity < 1.0:
        pixels[:, :, 3] = np.round(pixels[:, :, 3] * opacity).astype(np.uint8)
    left, top = _int_attribute(element, "x", path, 0), _int_attribute(element, "y", path, 0)
    return name, uncrop(pixels, left, top, width, height)


def _int_attribute(element: ET.Element, key: str, path: str | os.PathLike, default: int | None) -> int:
    value = element.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            return round(float(value))  # type: ignore[arg-type]  # some editors write "12.0"
        except (TypeError, ValueError, OverflowError):
            raise file_error(path, f"<{element.tag}> in stack.xml has {key}={value!r}, not an integer") from None


def _float_attribute(element: ET.Element, key: str, path: str | os.PathLike) -> float:
    value = element.get(key, "1.0")
    try:
        number = float(value)
    except ValueError:
        raise file_error(path, f"<{element.tag}> in stack.xml has {key}={value!r}, not a number") from None
    if not 0.0 <= number <= 1.0:
        raise file_error(path, f"<{element.tag}> in stack.xml has {key}={value!r}, outside [0, 1]")
    return number
