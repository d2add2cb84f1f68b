"""Layered files: write a `LayeredImage` as PSD, OpenRaster, a zip of PNGs or PPTX, and read it back.

Every format stores the same back-to-front stack (`LayeredImage.to_rgba_stack`): an opaque
``background``, then per object a black ``shadow k`` layer whose alpha is the shadow and an
``object k`` RGBA layer, each cropped to its alpha box. PSD, ORA and PPTX keep each object's two
layers in a group named from its label ("car", "person 2"). Writing then reading gives the same
8-bit layers bit for bit (PPTX is written only), and writes are atomic: an interrupted export
leaves no partial file, and temporary files of killed exports are removed by the next write.

    >>> from liwi_diffusers.export import save_layered, load_layered
    >>> path = save_layered(layered, "photo.psd")  # or .ora / .zip / .pptx
    >>> layered = load_layered(path)

The writers' libraries (psd-tools, python-pptx) import on first use; `FORMATS` is cheap to import.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..layers import LayeredImage
from ._common import LayeredFileError, file_error, group_names, open_zip
from .atomic import OutputPathError, atomic_write, check_writable, remove_stale_temporaries

__all__ = [
    "FORMATS",
    "READABLE_FORMATS",
    "SUPPORTED_FORMATS",
    "LayeredFileError",
    "OutputPathError",
    "atomic_write",
    "check_writable",
    "format_from_path",
    "group_names",
    "load_layered",
    "remove_stale_temporaries",
    "save_layered",
]

# The export registry. Format name (also the file suffix) -> what it is.
SUPPORTED_FORMATS: dict[str, str] = {
    "psd": "Photoshop document (Photoshop, GIMP, Krita, Photopea)",
    "ora": "OpenRaster (GIMP, Krita, MyPaint)",
    "zip": "zip of PNG layers with a manifest.json",
    "pptx": "PowerPoint slide, a picture per layer (PowerPoint, LibreOffice Impress, Keynote; written only)",
}
# Format -> (module, writer function) and (module, reader function), imported on first use.
_WRITERS = {
    "psd": ("psd", "write_psd"),
    "ora": ("ora", "write_ora"),
    "zip": ("png_zip", "write_png_zip"),
    "pptx": ("pptx", "write_pptx"),
}
_READERS = {"psd": ("psd", "read_psd"), "ora": ("ora", "read_ora"), "zip": ("png_zip", "read_png_zip")}
# What `save_layered` writes (e.g. the choices of `liwi decompose --format`) and what `load_layered` reads.
FORMATS: tuple[str, ...] = tuple(_WRITERS)
READABLE_FORMATS: tuple[str, ...] = tuple(_READERS)
_PSD_MAGIC = b"8BPS"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def format_from_path(path: str | os.PathLike, format: str | None = None) -> str:
    """The layered format to write: ``format`` if given, else the suffix of ``path``."""
    supported = ", ".join(SUPPORTED_FORMATS)
    if format is not None:
        name = str(format).lower().lstrip(".")
        if name not in SUPPORTED_FORMATS:
            raise ValueError(f"unknown layered format {format!r}; supported formats: {supported}")
        return name
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in SUPPORTED_FORMATS:
        raise ValueError(
            f"cannot tell the layered format of {str(path)!r} from its suffix {Path(path).suffix!r}; "
            f"use one of .{', .'.join(SUPPORTED_FORMATS)} or pass format= ({supported})"
        )
    return suffix


def save_layered(
    layered: LayeredImage,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    composite: Any = None,
    crop: bool = True,
) -> Path:
    """Write ``layered`` to ``path`` as a layered file and return the path.

    Args:
        layered: the layers to write (values are rounded to 8 bits).
        path: the file to write; its folder must exist. An existing file is replaced only once the
            new one is complete.
        format: ``"psd"``, ``"ora"``, ``"zip"`` or ``"pptx"``; by default taken from the suffix of ``path``.
        composite: the flattened picture stored for viewers (ORA ``mergedimage.png`` and thumbnail,
            the zip's ``composite.png``), an RGB PIL image or ``(H, W, 3)`` array; defaults to
            ``layered.compose()``. A PSD's merged image is always rendered from its layers.
        crop: store each layer cropped to its alpha box (with offsets) rather than full-canvas.
    Raises:
        ValueError: unknown format, or a layer name the format cannot store.
        OutputPathError: ``path`` cannot be written (checked before any work).
    Warns:
        PptxScaleWarning: (PPTX) the photo exceeds PowerPoint's slide size limits and is shown scaled.
    """
    if not isinstance(layered, LayeredImage):
        raise TypeError(f"save_layered expects a LayeredImage, got {type(layered).__name__}")
    name = format_from_path(path, format)
    path = check_writable(path)
    _function(_WRITERS[name])(layered, path, composite=composite, crop=crop)
    return path


def _function(entry: tuple[str, str]) -> Callable[..., Any]:
    module, function = entry
    return getattr(importlib.import_module(f".{module}", __name__), function)


def load_layered(path: str | os.PathLike) -> LayeredImage:
    """Read a layered image from a PSD, OpenRaster or PNG-zip file (the format is told by content).

    Groups (PSD groups, nested ORA stacks) are flattened into the stack; labels come from the layer names.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LayeredFileError: the file is not a layered file we read, or is truncated, corrupt or
            inconsistent; the message says which and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if path.is_dir():
        raise file_error(path, "it is a folder, not a file")
    return _function(_READERS[_sniff_format(path)])(path)


def _sniff_format(path: Path) -> str:
    """``psd``, ``ora`` or ``zip`` from the file's first bytes and, for zips, the files inside."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise file_error(path, "the file is empty (0 bytes)", "the export did not finish: export it again")
    if len(head) < 4 and any(magic.startswith(head) for magic in (_PSD_MAGIC, *_ZIP_MAGICS)):
        raise file_error(path, f"the file is only {len(head)} bytes long", "it is truncated: export it again")
    if head == _PSD_MAGIC:
        return "psd"
    if head in _ZIP_MAGICS:
        with open_zip(path) as archive:
            names = set(archive.namelist())
        if "stack.xml" in names:
            return "ora"
        if "manifest.json" in names:
            return "zip"
        if "ppt/presentation.xml" in names:
            raise file_error(
                path,
                "a PowerPoint file; liwi writes PPTX for viewing but does not read it back",
                "load the .psd, .ora or .zip export instead",
            )
        raise file_error(
            path,
            "a zip archive without stack.xml (OpenRaster) or manifest.json (liwi PNG zip)",
            "it is not a layered file liwi wrote, or it is incomplete",
        )
    raise file_error(
        path,
        f"not a layered file (it starts with {head!r})",
        f"supported formats: {', '.join(f'.{name} ({SUPPORTED_FORMATS[name]})' for name in READABLE_FORMATS)}",
    )
