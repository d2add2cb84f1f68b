"""Photoshop PSD files, written and read with psd-tools.

The document is 8-bit RGB with transparency, so a layer's alpha is real transparency (not a mask)
in Photoshop, GIMP, Krita and Photopea. Layers, back to front: ``background`` at the top level,
then per object a group named from its label ("car", "person 2"; see `group_names`) holding
``shadow k[: label]`` (black, alpha sigma) and above it ``object k[: label]``, each cropped to its
alpha box and placed with its top/left offset. An object decomposed into parts
(`liwi_diffusers.tools.decompose_layer`) holds, above its shadow, a group "<name> parts" with its
part layers ``part k.1``, ``part k.2: label``, ... instead of its object layer; a part split again is a
nested group named ``part k.j`` holding ``part k.j.1``, ... Groups pass through (normal blending), so they
change nothing in the picture; moving a group moves an object with its shadow. The merged image (what
viewers and file browsers show) is composed from the 8-bit layers, a band of rows at a time (psd-tools' own
renderer would hold several full-canvas float copies of the document).

Reading flattens any groups into the stack, so flat files (older liwi exports, other programs)
read as before.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer
from psd_tools.constants import ColorMode, Compression

from ..layers import LayeredImage, row_bands, to_uint8
from ._common import (
    FileLayer,
    LayeredFileError,
    build_layered,
    check_canvas,
    file_error,
    grouped_layers,
    iter_file_layers,
    uncrop,
)
from .atomic import atomic_write

__all__ = ["read_psd", "write_psd"]

# Photoshop stores at most 255 characters of a layer name.
MAX_NAME_LENGTH = 255


def write_psd(layered: LayeredImage, path: str | os.PathLike, *, composite: Any = None, crop: bool = True) -> None:
    """Write ``layered`` as a layered PSD at ``path`` (atomically).

    ``composite`` is accepted for a uniform writer signature but not stored: a PSD's merged image
    is always rendered from its 8-bit layers, so it shows exactly what the layers show.
    """
    for name in layered.layer_names():
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"layer name {name[:40]!r}... is {len(name)} characters; a PSD layer name holds at most "
                f"{MAX_NAME_LENGTH}: shorten the label, or save as .ora or .zip"
            )
    # The merged image is replaced when saving (`_save`): start it run-length encoded, a few MB instead of 4 bytes a
    # pixel held while the layers are added.
    document = PSDImage.new("RGBA", layered.size, compression=Compression.RLE)
    # One layer at a time: each is cut, converted and handed to psd-tools (which keeps it compressed) before the next.
    pixel_layers = [_add_pixel_layer(document, layer) for layer in iter_file_layers(layered, crop)]
    _, groups = grouped_layers(layered, pixel_layers)
    for name, members in groups:
        _add_group(document, name, members)
    with atomic_write(path) as file:
        _save(document, layered, file)


def _save(document: PSDImage, layered: LayeredImage, file: Any) -> None:
    """Save ``document`` with its merged image composed here from the 8-bit layers, a band of rows at a time."""
    record = getattr(document, "_record", None)
    if record is not None and hasattr(record, "image_data") and hasattr(document, "_updated"):
        height, width = layered.height, layered.width
        data = bytearray(4 * height * width)  # the section's raw R, G, B and alpha planes, filled in place
        planes = np.frombuffer(data, np.uint8).reshape(4, height, width)
        planes[3] = 255  # the background is opaque
        for rows in row_bands(height, width):
            planes[:3, rows] = to_uint8(layered.compose_rows(rows, quantize=True)).transpose(2, 0, 1)
        del planes
        record.image_data.compression = Compression.RAW  # raw planes, as psd-tools stores its own merged image
        record.image_data.data = data
        document._updated = False  # the merged image is up to date: psd-tools need not render it again
    # (Without these psd-tools internals, psd-tools renders the merged image itself when saving.)
    document.save(file)


def _add_group(document: PSDImage, name: str, members: list[Any]) -> Any:
    """A group of (added) pixel layers and nested ``(name, members)`` groups (an object's parts), back to front."""
    children = [_add_group(document, *member) if isinstance(member, tuple) else member for member in members]
    group = document.create_group(children, name="group")
    group.name = name[:MAX_NAME_LENGTH]
    return group


def _add_pixel_layer(document: PSDImage, layer: FileLayer) -> Any:
    pixel_layer = None if layer.is_empty else _pixel_layer_from_planes(document, layer)
    if pixel_layer is None:
        image = Image.new("RGBA", (0, 0)) if layer.is_empty else Image.fromarray(layer.pixels, "RGBA")
        pixel_layer = document.create_pixel_layer(image, name="layer", top=layer.top, left=layer.left)
    # The name setter also stores names that Mac Roman cannot encode (in the Unicode name block).
    pixel_layer.name = layer.name
    return pixel_layer


def _pixel_layer_from_planes(document: PSDImage, layer: FileLayer) -> Any:
    """What ``create_pixel_layer`` makes, from the layer's 8-bit planes one at a time; None without psd-tools internals.

    ``create_pixel_layer`` first copies the whole image (PIL's convert to the document's mode, RGBA already): for an
    object that spans a 64 MP frame, 250 MB more at the export's peak. The file is the same byte for byte.
    """
    assemble = getattr(PixelLayer, "_assemble", None)
    header = getattr(getattr(document, "_record", None), "header", None)
    if assemble is None or header is None or not hasattr(document, "mark_updated"):
        return None
    height, width = layer.pixels.shape[:2]
    alpha = np.ascontiguousarray(layer.pixels[:, :, 3]).tobytes()
    colors = (np.ascontiguousarray(layer.pixels[:, :, channel]).tobytes() for channel in range(3))  # one at a time
    try:
        record, channels = assemble(
            alpha, colors, "layer", layer.left, layer.top, width, height, Compression.RLE, header.version, 8
        )
        pixel_layer = PixelLayer(document, record, channels)
    except TypeError:  # other psd-tools internals than these
        return None
    document.append(pixel_layer)
    document.mark_updated()
    return pixel_layer


def read_psd(path: str | os.PathLike) -> LayeredImage:
    """Read a layered image from an 8-bit RGB PSD (pixel layers; groups are flattened into the stack)."""
    try:
        document = PSDImage.open(path)
    except Exception as error:  # psd-tools reports broken files with many exception types
        raise file_error(
            path, f"not a readable PSD ({type(error).__name__}: {error})", "the file is truncated or corrupt"
        ) from error
    if document.color_mode != ColorMode.RGB:
        raise file_error(
            path,
            f"the PSD is in {document.color_mode.name} mode, not RGB",
            "convert it to RGB in your editor (e.g. Image > Mode > RGB Color) and save again",
        )
    if document.depth != 8:
        raise file_error(path, f"the PSD has {document.depth} bits per channel", "save it with 8 bits per channel")
    width, height = check_canvas(document.width, document.height, path)
    try:
        if document.has_preview():
            document.topil()  # the merged image is the last section: decoding it tells a truncated file
        layers = [_read_layer(layer, width, height, path) for layer in document.descendants() if not layer.is_group()]
    except LayeredFileError:
        raise
    except Exception as error:
        raise file_error(
            path, f"its image data is damaged ({type(error).__name__}: {error})", "the file is truncated or corrupt"
        ) from error
    if not layers:
        raise file_error(path, "the PSD has no layers (a flat image)", "decompose it with `liwi decompose` instead")
    return build_layered(layers, path)


def _read_layer(layer: Any, width: int, height: int, path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """One pixel layer as a full-canvas ``(name, RGBA uint8)`` pair, its opacity applied to alpha."""
    if layer.kind != "pixel":
        raise file_error(
            path, f"layer {layer.name!r} is a {layer.kind} layer", "rasterize it in your editor and save again"
        )
    image = layer.topil()
    if image is None:  # an empty layer
        return layer.name, np.zeros((height, width, 4), np.uint8)
    pixels = np.asarray(image.convert("RGBA")).copy()
    if layer.opacity < 255:
        pixels[:, :, 3] = np.round(pixels[:, :, 3] * (layer.opacity / 255.0)).astype(np.uint8)
    return layer.name, uncrop(pixels, layer.left, layer.top, width, height)
