"""What the layered-file writers and readers share: layers as stored, crop and un-crop, PNG and zip I/O."""

from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..layers import (
    LayerCrop,
    LayeredImage,
    LayeredImageError,
    LayerPart,
    _as_float,
    parse_layer_name,
    part_layer_name,
    row_bands,
    to_float_image,
    to_uint8,
)

# PIL's decompression-bomb threshold: larger canvases are refused before anything is allocated.
MAX_CANVAS_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# Largest zip member read into memory: an uncompressed RGBA PNG of the largest canvas, plus slack.
MAX_MEMBER_BYTES = 4 * MAX_CANVAS_PIXELS + (64 << 20)


class LayeredFileError(ValueError):
    """A file that cannot be read as a layered image: foreign, truncated, corrupt or inconsistent."""


def file_error(source: str | os.PathLike, problem: str, advice: str = "") -> LayeredFileError:
    """One-line error: which file, what is wrong, what to do."""
    message = f"cannot read {str(source)!r}: {problem}"
    return LayeredFileError(f"{message}; {advice}" if advice else message)


@dataclass
class FileLayer:
    """A layer as files store it: 8-bit RGBA pixels of its box, placed at ``(left, top)`` on the canvas.

    An empty layer (nothing visible) has ``(0, 0, 4)`` pixels.
    """

    name: str
    pixels: np.ndarray
    left: int = 0
    top: int = 0

    @property
    def is_empty(self) -> bool:
        return self.pixels.size == 0

    @property
    def role(self) -> str:
        return parse_layer_name(self.name)[0]


def file_layers(layered: LayeredImage, crop: bool = True) -> list[FileLayer]:
    """Back-to-front layers of ``layered`` (`LayeredImage.to_rgba_stack`) as files store them.

    With ``crop``, each layer is cut to the box of its non-zero 8-bit alpha; colour under fully
    transparent pixels outside that box is not stored (it reads back as 0). Each layer is cut from
    the layered image's own arrays and only its box is converted, so no full-canvas float RGBA is made.
    """
    return list(iter_file_layers(layered, crop))


def iter_file_layers(layered: LayeredImage, crop: bool = True) -> Iterator[FileLayer]:
    """`file_layers` one at a time, for writers that store each layer before the next is made."""
    full = (0, 0, layered.width, layered.height)
    for name, source in layered._named_layers():
        if source is None:  # the opaque background
            pixels = np.full((layered.height, layered.width, 4), 255, np.uint8)
            pixels[:, :, :3] = _uint8_window(layered.layer_crop("background"), full)
            yield FileLayer(name, pixels)
            continue
        part = source[0] == "part"
        stored = LayerCrop(source[1].rgba) if part else layered.layer_crop(source[0], source[1])
        channel = 3 if stored.pixels.ndim == 3 else None
        # The box of the pixels whose 8-bit alpha is non-zero (alpha * 255 rounds above 0).
        box = stored.nonzero_box(channel, threshold=0.5 / 255.0) if crop else full
        if box is None:
            yield FileLayer(name, np.zeros((0, 0, 4), np.uint8))
            continue
        left, top, right, bottom = box
        if channel is None:  # a shadow: black, its alpha the shadow
            pixels = np.zeros((bottom - top, right - left, 4), np.uint8)
            pixels[:, :, 3] = _uint8_window(stored, box)
        else:
            pixels = _uint8_window(stored, box)
        yield FileLayer(name, pixels, left, top)


# The 8-bit value of every 16-bit one (what `to_uint8` gives for v / 65535): a table lookup instead of float maths.
_EIGHT_BITS = to_uint8(_as_float(np.arange(65536, dtype=np.uint16)))


def _uint8_window(stored: LayerCrop, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 8-bit values of the canvas window ``box`` of a stored layer, read and converted a band of rows at a time."""
    left, top, right, bottom = box
    out = np.empty((bottom - top, right - left, *stored.pixels.shape[2:]), np.uint8)
    inside = stored.box is not None and stored.box[0] <= left and stored.box[1] <= top
    inside = inside and right <= stored.box[2] and bottom <= stored.box[3]  # type: ignore[index]
    for rows in row_bands(bottom - top, right - left):
        if inside and stored.pixels.dtype == np.uint16:
            window = stored.pixels[top - stored.top + rows.start : top - stored.top + rows.stop]
            out[rows] = _EIGHT_BITS[window[:, left - stored.left : right - stored.left]]
        else:
            out[rows] = to_uint8(stored.read(slice(top + rows.start, top + rows.stop), slice(left, right)))
    return out


def group_names(labels: Sequence[str]) -> list[str]:
    """Per object, the name of its group in layered files, from its label.

    A label names its group ("car"), whitespace collapsed; objects that share a label are numbered
    in stacking order ("person 1", "person 2"); an object without a label is "object k".
    """
    cleaned = [" ".join(str(label).split()) for label in labels]
    counts: dict[str, int] = {}
    for label in cleaned:
        counts[label] = counts.get(label, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for k, label in enumerate(cleaned, start=1):
        if not label:
            names.append(f"object {k}")
        elif counts[label] == 1:
            names.append(label)
        else:
            seen[label] = seen.get(label, 0) + 1
            names.append(f"{label} {seen[label]}")
    return names


# A group's members, back to front: layers, and nested groups as ``(name, members)``.
GroupMembers = list[Any]


def grouped_layers(layered: LayeredImage, layers: Sequence[Any]) -> tuple[Any, list[tuple[str, GroupMembers]]]:
    """Split `file_layers` output into the background and, per object, ``(group name, members)``, back to front.

    ``layers`` may also be anything made from them one for one, in the same order (e.g. a writer's own layers).

    The members of an object's group are ``[shadow, object]``, or for an object with parts (`LayeredImage.parts`)
    ``[shadow, ("<group name> parts", parts)]``, where each part is its layer or, when it has parts of its own,
    a nested ``(part layer name, its parts)`` group.
    """
    background, rest = layers[0], iter(layers[1:])
    parts = layered.parts or {}
    groups: list[tuple[str, GroupMembers]] = []
    for k, name in enumerate(group_names(layered.labels)):
        shadow = next(rest)
        if k in parts:
            groups.append((name, [shadow, (f"{name} parts", _part_members(parts[k], (k + 1,), rest))]))
        else:
            groups.append((name, [shadow, next(rest)]))
    return background, groups


def _part_members(parts: Sequence[LayerPart], path: tuple[int, ...], rest: Iterator[Any]) -> GroupMembers:
    members: GroupMembers = []
    for j, part in enumerate(parts, start=1):
        if part.parts:
            members.append((part_layer_name((*path, j), part.label), _part_members(part.parts, (*path, j), rest)))
        else:
            members.append(next(rest))
    return members


def uncrop(pixels: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """Place a layer's RGBA pixels at ``(left, top)`` on a transparent canvas, clipping what falls outside."""
    canvas = np.zeros((height, width, 4), np.uint8)
    rows, cols = pixels.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + cols, width), min(top + rows, height)
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = pixels[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def composite_uint8(layered: LayeredImage, composite: Any = None) -> np.ndarray:
    """The flattened picture to store beside the layers: ``composite`` if given, else ``layered.compose()``."""
    if composite is None:  # composed and converted a band of rows at a time
        merged = np.empty((layered.height, layered.width, 3), np.uint8)
        for rows in row_bands(layered.height, layered.width):
            merged[rows] = to_uint8(layered.compose_rows(rows))
        return merged
    image = to_float_image(composite, 3, "composite")
    if image.shape[:2] != (layered.height, layered.width):
        raise LayeredImageError(
            f"composite is {image.shape[1]}x{image.shape[0]} but the layers are {layered.width}x{layered.height}"
        )
    return to_uint8(image)


def thumbnail(image: np.ndarray, max_size: int = 256) -> Image.Image:
    """A PIL copy of ``image`` that fits in ``max_size`` x ``max_size`` (aspect ratio kept)."""
    picture = Image.fromarray(image)
    picture.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return picture


def png_bytes(pixels: np.ndarray | Image.Image, compress_level: int = 6) -> bytes:
    """Encode an 8-bit image (array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``, or PIL) as PNG."""
    picture = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def transparent_pixel() -> np.ndarray:
    """A 1x1 fully transparent RGBA image: how formats without empty layers store one."""
    return np.zeros((1, 1, 4), np.uint8)


def decode_png(data: bytes, what: str, source: str | os.PathLike) -> np.ndarray:
    """Decode a PNG (any 8-bit mode) to ``(H, W, 4)`` uint8 RGBA, or raise `LayeredFileError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                if picture.format != "PNG":
                    raise file_error(source, f"{what} is a {picture.format} image, not a PNG")
                picture.load()
                if picture.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise file_error(source, f"{what} is a {picture.mode} (16/32-bit) PNG", "store 8-bit PNGs")
                return np.asarray(picture.convert("RGBA")).copy()
    except LayeredFileError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise file_error(source, f"{what} is too large to open safely ({error})") from error
    except Exception as error:  # PIL reports broken PNGs with several exception types
        problem = f"{what} is not a readable PNG ({type(error).__name__}: {error})"
        raise file_error(source, problem, "the file is corrupt or truncated") from error


def png_size(data: bytes, what: str, source: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of a PNG from its header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return picture.size
    except Exception as error:
        raise file_error(source, f"{what} is not a readable PNG ({type(error).__name__}: {error})") from error


def check_canvas(width: Any, height: Any, source: str | os.PathLike) -> tuple[int, int]:
    """Validate a canvas size read from a file (positive ints, at most `MAX_CANVAS_PIXELS`)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise file_error(source, f"invalid canvas size {width!r} x {height!r}", "the file is corrupt")
    if width * height > MAX_CANVAS_PIXELS:
        raise file_error(
            source, f"the canvas is {width}x{height}, more than {MAX_CANVAS_PIXELS} pixels", "it is too large to load"
        )
    return width, height


def build_layered(layers: Sequence[tuple[str, np.ndarray]], source: str | os.PathLike) -> LayeredImage:
    """`LayeredImage.from_rgba_stack` on layers read from a file, its errors naming the file."""
    try:
        return LayeredImage.from_rgba_stack(layers)
    except LayeredImageError as error:
        raise file_error(source, f"its layers do not form a layered image: {error}") from error


# ---------------------------------------------------------------------- zip archives
@contextmanager
def open_zip(source: str | os.PathLike) -> Iterator[zipfile.ZipFile]:
    """Open a zip archive for reading; a broken or truncated archive raises `LayeredFileError`."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as error:
        raise file_error(
            source, f"not a valid zip archive ({error})", "the file is truncated or corrupt: export it again"
        ) from error
    with archive:
        yield archive


def read_member(archive: zipfile.ZipFile, name: str, source: str | os.PathLike, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """Read one file of a zip archive, or raise `LayeredFileError` saying why it cannot be read."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        advice = "the file is incomplete or was not written by liwi"
        raise file_error(source, f"the archive has no {name!r}", advice) from None
    if info.file_size > limit:
        raise file_error(source, f"{name!r} is {info.file_size} bytes uncompressed, more than the {limit} allowed")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as error:
        raise file_error(
            source, f"{name!r} in the archive is damaged ({error})", "the file is truncated or corrupt: export it again"
        ) from error


def zip_write(archive: zipfile.ZipFile, name: str, data: bytes, compress: bool = False) -> None:
    """Add ``data`` as ``name`` with a fixed timestamp (reproducible files), deflated or stored."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)
