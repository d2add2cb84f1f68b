"""Loading input photos safely: one place that turns whatever a user hands us into an RGB image.

Every problem becomes an `ImageLoadError` with a one-line message that names the file, what is
wrong and what to do. Harmless surprises (an animated GIF, transparency) are handled and
reported with an `ImageInputWarning`.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "ImageInputWarning",
    "ImageLoadError",
    "load_image",
]

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: an 8000x8000 photo; larger ones are refused before decoding.
MIN_SIDE = 8  # px; smaller images cannot hold a meaningful decomposition.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_PIXEL_LIMIT_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An input image that cannot be used; the message is one line, meant for the user."""


class ImageInputWarning(UserWarning):
    """An input image was usable but changed on the way in (first frame taken, alpha flattened)."""


def load_image(
    source: str | os.PathLike[str] | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    flatten_color: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Open a photo as an 8-bit RGB PIL image, upright (EXIF orientation applied).

    Handles grayscale, palette, CMYK, 16-bit and float images; an image with transparency is
    flattened onto ``flatten_color`` and an animated image gives its first frame (both warn with
    `ImageInputWarning`). Raises `ImageLoadError` for a missing, empty, non-image, truncated,
    too small or too large (``> max_pixels``, checked before decoding) input.
    """
    if not isinstance(source, (str, os.PathLike, Image.Image)):
        raise TypeError(f"load_image takes a file path or a PIL image, got {type(source).__name__}")
    name = "image" if isinstance(source, Image.Image) else str(source)
    with _pillow_pixel_limit(max_pixels):
        opened = None if isinstance(source, Image.Image) else _open(Path(source), max_pixels)
        image = source if opened is None else opened
        try:  # whatever happens, the file we opened is closed before we return or raise
            _check_size(image.size, name, max_pixels, min_side)
            if getattr(image, "n_frames", 1) > 1:
                warnings.warn(
                    f"{name}: has {image.n_frames} frames (animated); using the first", ImageInputWarning, stacklevel=2
                )
                image.seek(0)
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image), name, flatten_color)
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageLoadError(_bomb_message(name, error, max_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            detail, kind = _short(error), (opened.format if opened is not None else None) or "image"
            if kind == "PNG":
                detail = _png_checksum_problem(Path(source)) or detail
            raise ImageLoadError(f"{name}: corrupt or truncated {kind} file ({detail})") from None
        finally:
            if opened is not None:
                opened.close()
    _check_size(rgb.size, name, max_pixels, min_side)
    return rgb


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Raise Pillow's decompression-bomb limit to ``max_pixels`` while loading, when it is lower.

    Our own limit is checked right after the header is read, before any pixel is decoded, so it is
    the one in force. Pillow's limit is a process-wide setting: it is changed under a lock and put
    back, and left alone (no lock) in the usual case where it is already above ``max_pixels``.
    """
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _bomb_message(name: str, error: Exception, max_pixels: int) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
    return (
        f"{name}: image has {size}, above the {limit / 1e6:.0f} MP limit (a possible decompression bomb); "
        "downscale it or raise the limit (--max-pixels)"
    )


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageLoadError(f"{path}: cannot read ({_short(error)})") from None
    if size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We apply our own, clearer pixel limit right after reading the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageLoadError(_bomb_message(str(path), error, max_pixels)) from None
    except UnidentifiedImageError:
        kind = _format_from_signature(path)
        if kind == "TIFF":
            return _open_tiff(path, max_pixels)
        if kind is not None:
            detail = (_png_checksum_problem(path) if kind == "PNG" else None) or "Pillow cannot decode it"
            raise ImageLoadError(f"{path}: corrupt {kind} file ({detail}); re-export or replace it") from None
        raise ImageLoadError(f"{path}: not an image file Pillow can read (JPEG, PNG, WebP, TIFF, GIF, BMP)") from None
    except PermissionError:
        raise ImageLoadError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError) as error:
        kind = _format_from_signature(path) or "image"
        raise ImageLoadError(f"{path}: corrupt or truncated {kind} file ({_short(error)})") from None
    # Refuse truncated data instead of padding it with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return image


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)


def _format_from_signature(path: Path) -> str | None:
    """The image format a file's first bytes announce (None when they announce none we know)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)


def _png_checksum_problem(path: Path) -> str | None:
    """``"bad CRC in the IHDR chunk"``-style note for the first chunk whose checksum is wrong, if any."""
    try:
        with open(path, "rb") as handle:
            handle.seek(8)
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I", header[:4])[0], header[4:]
                data = handle.read(length)
                stored = handle.read(4)
                if len(data) < length or len(stored) < 4:
                    return f"file ends inside the {kind.decode('latin-1')} chunk"
                if zlib.crc32(kind + data) & 0xFFFFFFFF != struct.unpack(">I", stored)[0]:
                    return f"bad CRC in the {kind.decode('latin-1')} chunk"
                if kind == b"IEND":
                    return None
    except (OSError, struct.error):
        return None


def _open_tiff(path: Path, max_pixels: int) -> Image.Image:
    """A TIFF Pillow cannot read (float or half-float RGB, 32-bit RGB, ...), read with tifffile.

    Pixels are converted like Pillow's own high-bit-depth modes (see `_high_bit_depth_to_uint8`);
    the returned image lives in memory (no file stays open).
    """
    try:
        import tifffile
    except ImportError:
        raise ImageLoadError(
            f"{path}: a TIFF Pillow cannot read; install tifffile (pip install tifffile) or convert it to 8-bit"
        ) from None
    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            axes, shape = page.axes, page.shape
            if "Y" not in axes or "X" not in axes:
                raise ImageLoadError(f"{path}: TIFF with axes {axes!r} is not a 2-D image")
            size = (shape[axes.index("X")], shape[axes.index("Y")])
            if size[0] * size[1] > max_pixels:  # checked before the pixels are read
                _check_size(size, str(path), max_pixels, 1)
            if len(tiff.pages) > 1:
                warnings.warn(f"{path}: has {len(tiff.pages)} pages; using the first", ImageInputWarning, stacklevel=4)
            array = page.asarray()
    except ImageLoadError:
        raise
    except Exception as error:  # tifffile raises many types for bad or unsupported files
        raise ImageLoadError(f"{path}: corrupt or unsupported TIFF file ({_short(error)})") from None
    if "S" in axes:  # samples (colour channels) last
        array = np.moveaxis(array, axes.index("S"), -1)
        extra = [k for k, axis in enumerate(a for a in axes if a != "S") if axis not in "YX"]
    else:
        extra = [k for k, axis in enumerate(axes) if axis not in "YX"]
    for axis in reversed(extra):  # any other axis (planes, depth): its first entry
        array = np.take(array, 0, axis=axis)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in (1, 2, 3, 4) or array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise ImageLoadError(f"{path}: TIFF with {channels} channels of {array.dtype} is not a photo this tool reads")
    pixels = _to_uint8(array)
    if channels == 2:  # grey + alpha: Pillow has no 2-channel array mode, so spread the grey to RGB
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels), {1: "L", 2: "RGBA", 3: "RGB", 4: "RGBA"}[channels])


def _check_size(size: tuple[int, int], name: str, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
            f"{max_pixels / 1e6:.0f} MP limit; downscale it or raise the limit (--max-pixels)"
        )
    if min(width, height) < min_side:
        raise ImageLoadError(f"{name}: image is {width}x{height}; need at least {min_side} px on each side")


def _to_rgb(image: Image.Image, name: str, flatten_color: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_high_bit_depth_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode in ("P", "PA") or mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A"))
        if int(alpha.min()) == 255:
            return image.convert("RGB")
        warnings.warn(
            f"{name}: has transparency; flattened onto RGB{flatten_color} before decomposing",
            ImageInputWarning,
            stacklevel=3,
        )
        canvas = Image.new("RGB", image.size, flatten_color)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's own conversions.
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageLoadError(f"{name}: unsupported image mode {mode!r} ({_short(error)})") from None


def _high_bit_depth_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float grayscale to 8 bits, keeping the full tonal range."""
    # 16-bit images come as mode "I;16*", or as 32-bit "I" holding 16-bit values: both span 0..65535.
    return _to_uint8(array) if mode == "F" else _to_uint8(array, full_scale=65535.0)


def _to_uint8(array: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    """Integer or float pixels to uint8, ``full_scale`` (default: by type) becoming 255.

    Integers default to their type's maximum (uint16: 65535). Floats are taken as [0, 1] when no
    finite value is above 1, else as [0, 255]; NaN becomes 0 and values outside are clipped.
    """
    if array.dtype == np.uint8 and full_scale is None:
        return array
    values = array.astype(np.float64)
    if full_scale is None and array.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        full_scale = 1.0 if float(finite.max(initial=0.0)) <= 1.0 else 255.0
        values = np.nan_to_num(values, nan=0.0)
    elif full_scale is None:
        full_scale = float(np.iinfo(array.dtype).max)
    return np.round(np.clip(values / full_scale, 0.0, 1.0) * 255.0).astype(np.uint8)


def _short(error: Any) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
