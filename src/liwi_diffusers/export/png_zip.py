"""A zip of plain PNG layers with a ``manifest.json``: the simplest layered format to script against.

Archive contents::

    manifest.json            # see below
    composite.png            # the flattened picture
    layers/000-background.png
    layers/001-shadow-1.png  # black RGB, alpha = shadow sigma
    layers/002-object-1.png  # straight RGBA
    ...

``manifest.json`` holds ``format``, ``version``, the canvas ``width``/``height``, ``composite`` (its
file name) and ``layers``, back to front, each with ``file`` (null for an empty layer), ``name``
(as `liwi_diffusers.layers.layer_name` makes it), ``role`` (background, shadow or object),
``index`` (1-based object index, null for the background), ``label``, ``offset`` ``[left, top]``
and ``size`` ``[width, height]`` of the PNG (cropped to the layer's alpha box unless saved full size).

An object decomposed into parts (`liwi_diffusers.tools.decompose_layer`) has, after its shadow, one
``layers/NNN-part-2.1.png`` per part instead of its object layer, with role ``part``, ``index`` its
object's and ``path`` ``[object, part, ...]`` (1-based, as in the layer name ``part 2.1``). Such an
archive says version 2; one without parts says version 1, as before.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from ..layers import LayeredImage, parse_layer_name, parse_part_path
from ._common import (
    build_layered,
    check_canvas,
    composite_uint8,
    decode_png,
    file_error,
    file_layers,
    open_zip,
    png_bytes,
    png_size,
    read_member,
    uncrop,
    zip_write,
)
from .atomic import atomic_write

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "PARTS_MANIFEST_VERSION", "read_png_zip", "write_png_zip"]

MANIFEST_FORMAT = "liwi-layered-png-zip"
MANIFEST_VERSION = 1  # what archives without part layers say (as before parts existed)
PARTS_MANIFEST_VERSION = 2  # archives with part layers (role "part", "path"); the newest version this reads
_ROLES = ("background", "shadow", "object", "part")
_MAX_MANIFEST_BYTES = 16 << 20


def write_png_zip(layered: LayeredImage, path: str | os.PathLike, *, composite: Any = None, crop: bool = True) -> None:
    """Write ``layered`` as a zip of PNG layers plus ``manifest.json`` at ``path`` (atomically).

    ``composite`` (default ``layered.compose()``) is stored as ``composite.png``; with ``crop=False``
    every layer PNG is full-canvas.
    """
    layers = file_layers(layered, crop)
    entries = []
    for position, layer in enumerate(layers):
        role, index, label = parse_layer_name(layer.name)
        part = parse_part_path(layer.name)
        stem = role if index is None else f"{role}-{index if part is None else '.'.join(map(str, part[0]))}"
        entry = {
            "file": None if layer.is_empty else f"layers/{position:03d}-{stem}.png",
            "name": layer.name,
            "role": role,
            "index": index,
            "label": None if role == "background" else (label or ""),
            "offset": [layer.left, layer.top],
            "size": [int(layer.pixels.shape[1]), int(layer.pixels.shape[0])],
        }
        if part is not None:
            entry["path"] = list(part[0])
        entries.append(entry)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": PARTS_MANIFEST_VERSION if layered.parts else MANIFEST_VERSION,
        "width": layered.width,
        "height": layered.height,
        "composite": "composite.png",
        "layers": entries,
    }
    merged = composite_uint8(layered, composite)
    with atomic_write(path) as file, zipfile.ZipFile(file, "w") as archive:
        zip_write(archive, "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode(), compress=True)
        zip_write(archive, "composite.png", png_bytes(merged))
        for layer, entry in zip(layers, entries):
            if entry["file"] is not None:
                zip_write(archive, entry["file"], png_bytes(layer.pixels))


def read_png_zip(path: str | os.PathLike) -> LayeredImage:
    """Read a layered image from a PNG zip, checking its manifest against the files."""
    with open_zip(path) as archive:
        manifest = _read_manifest(archive, path)
        width, height = check_canvas(manifest.get("width"), manifest.get("height"), path)
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            raise file_error(path, "manifest.json has no list of layers")
        stack = [_read_layer(archive, entry, position, width, height, path) for position, entry in enumerate(layers)]
        composite = manifest.get("composite")
        if isinstance(composite, str) and composite in archive.namelist():
            size = png_size(read_member(archive, composite, path), composite, path)
            if size != (width, height):
                raise file_error(
                    path, f"{composite} is {size[0]}x{size[1]} but the canvas is {width}x{height} (mismatched size)"
                )
    return build_layered(stack, path)


def _read_manifest(archive: zipfile.ZipFile, path: str | os.PathLike) -> dict[str, Any]:
    data = read_member(archive, "manifest.json", path, limit=_MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise file_error(path, f"manifest.json is not valid JSON ({error})", "the file is corrupt") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise file_error(path, f"manifest.json does not describe a {MANIFEST_FORMAT!r} archive")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise file_error(path, f"manifest.json has an invalid version {version!r}")
    if version > PARTS_MANIFEST_VERSION:
        raise file_error(
            path,
            f"manifest.json is version {version}, newer than this liwi-diffusers reads ({PARTS_MANIFEST_VERSION})",
            "upgrade liwi-diffusers",
        )
    return manifest


def _read_layer(
    archive: zipfile.ZipFile, entry: Any, position: int, width: int, height: int, path: str | os.PathLike
) -> tuple[str, np.ndarray]:
    """One manifest entry as a full-canvas ``(name, RGBA uint8)`` pair."""
    what = f"layer {position} of manifest.json"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise file_error(path, f"{what} is not an object with a name")
    name, role, file = entry["name"], entry.get("role"), entry.get("file")
    if role not in _ROLES or parse_layer_name(name)[0] != role:
        raise file_error(path, f"{what} ({name!r}) has role {role!r}, which does not match its name")
    offset = entry.get("offset", [0, 0])
    if not (isinstance(offset, list) and len(offset) == 2 and all(type(v) is int for v in offset)):
        raise file_error(path, f"{what} ({name!r}) has an invalid offset {offset!r}; expected [left, top]")
    if file is None:
        return name, np.zeros((height, width, 4), np.uint8)
    if not isinstance(file, str):
        raise file_error(path, f"{what} ({name!r}) has an invalid file {file!r}")
    data = read_member(archive, file, path)
    left, top = offset
    cols, rows = png_size(data, file, path)  # checked before decoding the pixels
    if left < 0 or top < 0 or left + cols > width or top + rows > height:
        raise file_error(
            path,
            f"{file} is {cols}x{rows} at ({left}, {top}), outside the {width}x{height} canvas "
            "(layers of mismatched size)",
            "the file is inconsistent: export it again",
        )
    if entry.get("size", [cols, rows]) != [cols, rows]:
        raise file_error(path, f"{file} is {cols}x{rows} but manifest.json says {entry['size']} (mismatched size)")
    return name, uncrop(decode_png(data, file, path), left, top, width, height)
