"""Loading input photos safely: one place that turns whatever a user hands us into an RGB image.

Every problem becomes an `ImageLoadError` with a one-line message that names the file, what is
wrong and what to do. Harmless surprises (an animated GIF, transparency) are handled and
reported with an `ImageInputWarning`.
"""

from __future__ import annotations

import os
import re
import warnings
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
    image = source if isinstance(source, Image.Image) else _open(Path(source), max_pixels)
    _check_size(image.size, name, max_pixels, min_side)
    if getattr(image, "n_frames", 1) > 1:
        warnings.warn(
            f"{name}: has {image.n_frames} frames (animated); using the first", ImageInputWarning, stacklevel=2
        )
        image.seek(0)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image, name, flatten_color)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"{name}: corrupt or truncated image file ({_short(error)})") from None
    finally:
        if not isinstance(source, Image.Image):
            image.close()
    _check_size(rgb.size, name, max_pixels, min_side)
    return rgb


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
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise ImageLoadError(
            f"{path}: image has {size}, above the {max_pixels / 1e6:.0f} MP limit (a possible decompression bomb); "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file Pillow can read (JPEG, PNG, WebP, TIFF, GIF, BMP)") from None
    except PermissionError:
        raise ImageLoadError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: corrupt image file ({_short(error)})") from None
    # Refuse truncated data instead of padding it with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return image


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
    values = array.astype(np.float64)
    if mode == "F":
        scale = 1.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 1.0 / 255.0
        values = np.nan_to_num(values) * scale
    else:  # 16-bit (also when Pillow reports it as 32-bit "I")
        values = values / 65535.0
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _short(error: Any) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
