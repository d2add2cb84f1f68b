"""Bad-input corpus: every entry point answers bad input in one line and leaves no file behind.

One table, `CASES`, across `liwi decompose`, the Python API (`load_image`, `ToolChainDecomposer`,
`save_layered`, `LayeredImage`, ...), `liwi-build` and `liwi evaluate`. For each case: a non-zero
exit (or the documented exception), exactly one error line that says what is wrong (no traceback),
and no partial or temporary file in the output folder. A few inputs that look bad but are handled
(animated GIF, CMYK, 16-bit, float TIFF) must succeed, with notes only.

A case that fails because of code owned elsewhere is marked ``xfail(strict=True, reason="owner: FILE")``,
so it turns into a failure (to unmark) as soon as that code is fixed.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from liwi_diffusers import LayeredImage
from liwi_diffusers._extras import MissingExtraError
from liwi_diffusers.export import OutputPathError, save_layered
from liwi_diffusers.image_io import ImageLoadError, load_image
from liwi_diffusers.layered_dataset import load_layered_dataset
from liwi_diffusers.layers import LayeredImageError
from liwi_diffusers.tools import decompose_layer, decompose_to_depth
from liwi_diffusers.tools.decomposer import ToolChainDecomposer


# ------------------------------------------------------------------------------------- the corpus
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height``, with a tiny body: nothing is ever decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bad (and oddly good) input file, made once; tiny, so the few real decompositions are fast."""
    import tifffile

    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    png, jpeg = _encoded(noise, "PNG"), _encoded(noise, "JPEG")
    files = {
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "crc-header.png": _flip(png, png.index(b"IHDR") + 10),  # IHDR's height: its CRC fails
        "crc-data.png": _flip(png, png.index(b"IDAT") + 10),  # the zlib stream: its CRC fails
        "text.png": b"these are notes, not a picture\n",
        "huge.png": _header_only_png(30000, 30000),  # 900 MP claimed
        "big.png": _header_only_png(20000, 20000),  # 400 MP: above Pillow's own bomb limit
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("RGB", (2, 2000)).save(folder / "thin.png")
    Image.new("RGB", (16, 16), (200, 40, 40)).save(folder / "photo.png")
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(folder / "deep.png")
    tifffile.imwrite(folder / "float.tif", np.full((16, 16, 3), 0.25, np.float32), photometric="rgb")
    (folder / "no-images").mkdir()
    (folder / "no-images" / "notes.txt").write_text("nothing to see")
    (folder / "same-stem").mkdir()
    for suffix in (".png", ".jpg"):
        Image.new("RGB", (16, 16)).save(folder / "same-stem" / f"a{suffix}")
    (folder / "bad-only").mkdir()
    for name in ("empty.png", "text.png", "dot.png"):
        (folder / "bad-only" / name).write_bytes((folder / name).read_bytes())
    (folder / "gt-empty").mkdir()
    from test_metrics import write_dataset

    write_dataset(folder / "dataset", np.random.default_rng(1), count=1)  # one row, split "test"
    return folder


def _layered(size: int = 8) -> LayeredImage:
    background = np.full((size, size, 3), 0.5, np.float32)
    foreground = np.zeros((size, size, 4), np.float32)
    foreground[2:6, 2:6] = (1.0, 0.0, 0.0, 1.0)
    return LayeredImage(background, [foreground], [np.zeros((size, size), np.float32)], ["thing"])


# ------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One bad input.

    ``make(corpus, out)`` gives the argv of ``entry`` (``liwi`` or ``liwi-build``), or for
    ``entry="api"`` a no-argument callable. ``error``: a regex the one error line (or the exception
    message) must match; None when the input is handled and the command must succeed. ``out`` is an
    empty folder for the outputs; ``writes`` are the files a successful case makes there.
    """

    entry: str
    make: Callable[[Path, Path], Any]
    error: str | None
    raises: type[BaseException] | None = None
    setup: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    forbid: str | None = None  # a regex the message must not match
    writes: tuple[str, ...] = ()


def case(name: str, entry: str, make: Callable[[Path, Path], Any], error: str | None, **options: Any) -> Any:
    owner = options.pop("owner", None)
    marks = [pytest.mark.xfail(strict=True, reason=f"owner: {owner}")] if owner else []
    return pytest.param(Case(entry, make, error, **options), id=name, marks=marks)


def read_only(name: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """Make ``out/name`` refuse new files, as a read-only folder or mount does (tests may run as
    root, which permission bits do not stop)."""

    def setup(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
        folder = out / name
        folder.mkdir()
        real_open = os.open

        def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT and folder in Path(path).parents:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)

    return setup


def existing(name: str, data: bytes = b"precious") -> Callable[[pytest.MonkeyPatch, Path], None]:
    """A file already at ``out/name`` (it must be left as it is)."""

    def setup(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)

    return setup


def without(module: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """An installation without ``module`` (an optional dependency)."""

    def setup(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
        monkeypatch.setitem(sys.modules, module, None)

    return setup


def decompose(*args: str) -> Callable[[Path, Path], list[str]]:
    """``liwi decompose ARGS -o out/d -q``; ``{c}`` in an argument is the corpus folder, ``{o}`` the output."""
    return lambda c, o: ["decompose", *(a.format(c=c, o=o) for a in args), "-o", str(o / "d"), "-q"]


def build(*args: str) -> Callable[[Path, Path], list[str]]:
    """``liwi-build ARGS -q``; a leading source is the corpus photo unless given; ``-o out/ds`` unless given."""
    return lambda c, o: [
        *(a.format(c=c, o=o) for a in args),
        *([] if "-o" in args else ["-o", str(o / "ds")]),
        "-q",
    ]


def evaluate(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda c, o: ["evaluate", *(a.format(c=c, o=o) for a in args)]


PHOTO = "{c}/photo.png"

CASES = [
    # --------------------------------------------------------------------- liwi decompose: files
    case("decompose-empty-file", "liwi", decompose("{c}/empty.png"), r"empty\.png: empty file \(0 bytes\)"),
    case("decompose-truncated-jpeg", "liwi", decompose("{c}/truncated.jpg"), r"truncated\.jpg: corrupt or truncated"),
    case(
        "decompose-bad-crc-png-header",
        "liwi",
        decompose("{c}/crc-header.png"),
        r"corrupt PNG file \(bad CRC in the IHDR chunk\)",
        forbid="not an image",
    ),
    case(
        "decompose-bad-crc-png-data",
        "liwi",
        decompose("{c}/crc-data.png"),
        r"corrupt .*bad CRC in the IDAT chunk",
        forbid="not an image",
    ),
    case("decompose-text-named-png", "liwi", decompose("{c}/text.png"), r"text\.png: not an image file"),
    case("decompose-1x1", "liwi", decompose("{c}/dot.png"), r"image is 1x1; need at least 8 px"),
    case("decompose-2x2000", "liwi", decompose("{c}/thin.png"), r"image is 2x2000; need at least 8 px"),
    case("decompose-huge-header", "liwi", decompose("{c}/huge.png"), r"900 MP, above the 64 MP limit"),
    case(
        "decompose-max-pixels-above-pillow-limit",
        "liwi",
        decompose("{c}/big.png", "--max-pixels", "500000000"),
        r"big\.png: corrupt",  # allowed by the limit; its (fake) pixels are then found corrupt
        forbid="limit",
    ),
    case(
        "decompose-below-max-pixels",
        "liwi",
        decompose("{c}/big.png", "--max-pixels", "300000000"),
        r"20000x20000 \(400 MP\), above the 300 MP limit",
    ),
    case("decompose-missing-file", "liwi", decompose("{c}/nope.jpg"), r"nope\.jpg: no such file"),
    case("decompose-folder-without-images", "liwi", decompose("{c}/no-images"), r"folder holds no image files"),
    case("decompose-two-inputs-one-stem", "liwi", decompose("{c}/same-stem"), r"would both be written as a\.psd"),
    case("decompose-no-input", "liwi", decompose(), r"no input: give IMAGE paths or --example"),
    # --------------------------------------------------------------------- liwi decompose: options
    case("decompose-unknown-example", "liwi", decompose("--example", "nope"), r"argument --example: invalid choice"),
    case("decompose-unknown-format", "liwi", decompose(PHOTO, "-f", "gif"), r"argument -f/--format: invalid choice"),
    case(
        "decompose-layers-negative",
        "liwi",
        decompose(PHOTO, "--layers", "-1"),
        r"--layers must be .*between 1 and 8.*got -1",
    ),
    case("decompose-layers-9", "liwi", decompose(PHOTO, "--layers", "9"), r"--layers must be .*between 1 and 8.*got 9"),
    case("decompose-layers-not-a-number", "liwi", decompose(PHOTO, "--layers", "two"), r"--layers.*'two'"),
    case("decompose-steps-0", "liwi", decompose(PHOTO, "--steps", "0"), r"--steps must be at least 1"),
    case("decompose-max-pixels-0", "liwi", decompose(PHOTO, "--max-pixels", "0"), r"--max-pixels must be positive"),
    case("decompose-pipeline-without-model", "liwi", decompose(PHOTO, "--method", "pipeline"), r"needs --model"),
    # --------------------------------------------------------------------- liwi decompose: outputs
    case(
        "decompose-unwritable-output-folder",
        "liwi",
        lambda c, o: ["decompose", f"{c}/photo.png", "-o", str(o / "ro"), "-q"],
        r"no permission to create files",
        setup=read_only("ro"),
    ),
    case(
        "decompose-output-folder-is-a-file",
        "liwi",
        lambda c, o: ["decompose", f"{c}/photo.png", "-o", str(o / "d"), "-q"],
        r"d.* (is a file|not a folder)",
        setup=existing("d"),
        forbid=r"Errno",
    ),
    case(
        "decompose-existing-output-without-overwrite",
        "liwi",
        decompose(PHOTO),
        r"photo\.psd exists; pass --overwrite",
        setup=existing("d/photo.psd"),
    ),
    # --------------------------------------------------------------------- liwi decompose: handled
    case("decompose-animated-gif", "liwi", decompose("{c}/anim.gif"), None, writes=("d/anim.psd",)),
    case("decompose-cmyk-jpeg", "liwi", decompose("{c}/cmyk.jpg", "-f", "ora"), None, writes=("d/cmyk.ora",)),
    case("decompose-16-bit-png", "liwi", decompose("{c}/deep.png", "-f", "zip"), None, writes=("d/deep.zip",)),
    case("decompose-float-tiff", "liwi", decompose("{c}/float.tif"), None, writes=("d/float.psd",)),
    # --------------------------------------------------------------------- Python API
    case(
        "api-load-image-array",
        "api",
        lambda c, o: lambda: load_image(np.zeros((4, 4, 3))),
        "path or a PIL image",
        raises=TypeError,
    ),
    case(
        "api-load-image-empty",
        "api",
        lambda c, o: lambda: load_image(c / "empty.png"),
        "empty file",
        raises=ImageLoadError,
    ),
    case(
        "api-load-image-bad-crc",
        "api",
        lambda c, o: lambda: load_image(c / "crc-header.png"),
        "corrupt PNG file",
        raises=ImageLoadError,
    ),
    case(
        "api-load-image-huge",
        "api",
        lambda c, o: lambda: load_image(c / "huge.png"),
        "above the 64 MP limit",
        raises=ImageLoadError,
    ),
    case("api-load-image-float-tiff", "api", lambda c, o: lambda: load_image(c / "float.tif"), None),
    case("api-load-image-cmyk", "api", lambda c, o: lambda: load_image(c / "cmyk.jpg"), None),
    case(
        "api-decomposer-bad-path",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(str(c / "text.png")),
        "not an image file",
        raises=ImageLoadError,
    ),
    case(
        "api-decomposer-missing-path",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(c / "nope.png"),
        "no such file",
        raises=ImageLoadError,
    ),
    case(
        "api-decomposer-empty-array",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(np.zeros((0, 0, 3), np.float32)),
        "empty",
        raises=ValueError,
    ),
    case(
        "api-decomposer-values-out-of-range",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(np.full((16, 16, 3), 2.0, np.float32)),
        r"\[0, 1\]",
        raises=ValueError,
    ),
    case(
        "api-decomposer-negative-layers",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(Image.new("RGB", (16, 16)), num_layers=-1),
        "num_layers must be >= 0",
        raises=ValueError,
    ),
    case(
        "api-decomposer-layers-as-text",
        "api",
        lambda c, o: lambda: ToolChainDecomposer()(Image.new("RGB", (16, 16)), num_layers="2"),
        "num_layers must be an int",
        raises=TypeError,
    ),
    case(
        "api-decomposer-max-objects-0",
        "api",
        lambda c, o: lambda: ToolChainDecomposer(max_objects=0),
        "max_objects must be >= 1",
        raises=ValueError,
    ),
    case(
        "api-layered-grey-background",
        "api",
        lambda c, o: lambda: LayeredImage(np.zeros((8, 8), np.float32), []),
        "background",
        raises=LayeredImageError,
    ),
    case(
        "api-layered-size-mismatch",
        "api",
        lambda c, o: lambda: LayeredImage(np.zeros((8, 8, 3), np.float32), [np.zeros((6, 8, 4), np.float32)]),
        r"8x8|6x8|\(6, 8|size",
        raises=LayeredImageError,
    ),
    case(
        "api-layered-shadow-count",
        "api",
        lambda c, o: (
            lambda: LayeredImage(
                np.zeros((8, 8, 3), np.float32), [np.zeros((8, 8, 4), np.float32)], [np.zeros((8, 8), np.float32)] * 2
            )
        ),
        "2 shadow layers for 1 foregrounds",
        raises=LayeredImageError,
    ),
    case(
        "api-layered-nan",
        "api",
        lambda c, o: lambda: LayeredImage(np.full((8, 8, 3), np.nan, np.float32), []),
        "NaN",
        raises=LayeredImageError,
    ),
    case(
        "api-save-layered-not-layered",
        "api",
        lambda c, o: lambda: save_layered("layers", o / "x.psd"),
        "expects a LayeredImage",
        raises=TypeError,
    ),
    case(
        "api-save-layered-unknown-format",
        "api",
        lambda c, o: lambda: save_layered(_layered(), o / "x.psd", format="gif"),
        "unknown layered format 'gif'",
        raises=ValueError,
    ),
    case(
        "api-save-layered-missing-folder",
        "api",
        lambda c, o: lambda: save_layered(_layered(), o / "missing" / "x.psd"),
        "does not exist",
        raises=OutputPathError,
    ),
    case(
        "api-save-layered-into-a-folder-path",
        "api",
        lambda c, o: lambda: save_layered(_layered(), o, format="psd"),
        "it is a folder",
        raises=OutputPathError,
    ),
    case(
        "api-save-layered-read-only",
        "api",
        lambda c, o: lambda: save_layered(_layered(), o / "ro" / "x.ora"),
        "no permission",
        raises=OutputPathError,
        setup=read_only("ro"),
    ),
    case(
        "api-load-layered-dataset-without-datasets",
        "api",
        lambda c, o: lambda: load_layered_dataset(c / "dataset", split="test"),
        r"^reading a LiWi dataset needs the 'datasets' package: pip install \"liwi-diffusers\[eval\]\"$",
        raises=MissingExtraError,
        setup=without("datasets"),
    ),
    # --------------------------------------------------------------------- liwi-build
    case(
        "build-output-is-a-file",
        "liwi-build",
        build(PHOTO, "-o", "{o}/ds"),
        r"output .*ds exists and is not a folder",
        setup=existing("ds"),
    ),
    case(
        "build-output-below-a-file",
        "liwi-build",
        build(PHOTO, "-o", "{o}/ds/sub"),
        r"ds is a file, not a folder",
        setup=existing("ds"),
    ),
    case(
        "build-output-read-only",
        "liwi-build",
        build(PHOTO, "-o", "{o}/ro"),
        r"cannot write in .*ro \(Permission denied\)",
        setup=read_only("ro"),
    ),
    case(
        "build-output-inside-read-only",
        "liwi-build",
        build(PHOTO, "-o", "{o}/ro/ds"),
        r"cannot write in .*ro \(Permission denied\)",
        setup=read_only("ro"),
    ),
    case("build-zero-samples", "liwi-build", build(PHOTO, "-n", "0"), r"num_samples must be >= 1"),
    case("build-missing-source", "liwi-build", build("{c}/nope"), r"no such file or folder"),
    case(
        "build-no-usable-photo",
        "liwi-build",
        build("{c}/bad-only"),
        r"no usable photo among 3 sources \(3 skipped\)",
    ),
    case("build-workers-0", "liwi-build", build(PHOTO, "--workers", "0"), r"workers must be >= 1"),
    case("build-resolution-16", "liwi-build", build(PHOTO, "-r", "16"), r"resolution must be >= 32"),
    case(
        "build-min-above-max-objects",
        "liwi-build",
        build(PHOTO, "--min-objects", "3", "--max-objects", "1"),
        r"need 1 <= min_objects <= max_objects",
    ),
    case("build-test-fraction-1", "liwi-build", build(PHOTO, "--test-fraction", "1"), r"split fractions"),
    case(
        "build-shard-index-out-of-range",
        "liwi-build",
        build(PHOTO, "--num-shards", "2", "--shard-index", "2"),
        r"0 <= shard_index < num_shards",
    ),
    case(
        "build-without-datasets",
        "liwi-build",
        build(PHOTO),
        r"^liwi-build: error: liwi-build needs the 'datasets' package: pip install \"liwi-diffusers\[build\]\"$",
        setup=without("datasets"),
    ),
    # --------------------------------------------------------------------- liwi evaluate
    case(
        "evaluate-photo-as-dataset",
        "liwi",
        evaluate("--method", "oracle", "--dataset", PHOTO),
        r"is a file, not a dataset",
    ),
    case(
        "evaluate-missing-dataset-folder",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/nope-dataset"),
        r"nope-dataset",
    ),
    case(
        "evaluate-missing-split",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/dataset", "--split", "train"),
        r"train",
    ),
    case("evaluate-empty-gt-folder", "liwi", evaluate("--method", "oracle", "--gt", "{c}/gt-empty"), r"gt-empty"),
    case(
        "evaluate-report-not-json",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/dataset", "-o", "{o}/r.txt"),
        r"--output should name a \.json file",
    ),
    case(
        "evaluate-report-read-only",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/dataset", "-o", "{o}/ro/r.json"),
        r"no permission to create files",
        setup=read_only("ro"),
    ),
    case(
        "evaluate-max-edits-negative",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/dataset", "--max-edits", "-1"),
        r"--max-edits must be >= 0",
    ),
    case(
        "evaluate-pipeline-without-checkpoint",
        "liwi",
        evaluate("--method", "pipeline", "--dataset", "{c}/dataset"),
        r"needs --checkpoint",
    ),
    case(
        "evaluate-without-datasets",
        "liwi",
        evaluate("--method", "oracle", "--dataset", "{c}/dataset"),
        r"needs the 'datasets' package: pip install \"liwi-diffusers\[eval\]\"",
        setup=without("datasets"),
    ),
    # --------------------------------------------------------------------- liwi decompose: text prompts
    case(
        "decompose-prompt-without-detector",
        "liwi",
        decompose(PHOTO, "--prompt", "red car"),
        r"--prompt needs a detector: download a zero-shot object detector .* --detector NAME_OR_PATH",
    ),
    case(
        "decompose-detector-not-a-model",
        "liwi",
        decompose(PHOTO, "--prompt", "red car", "--detector", "{c}/no-images"),
        r"--detector: detector .*no-images is not a model folder \(no config\.json\); download",
    ),
    case(
        "decompose-detector-missing-folder",
        "liwi",
        decompose(PHOTO, "--prompt", "red car", "--detector", "{c}/nope/owlv2"),
        r"--detector: detector folder .*nope/owlv2 does not exist",
    ),
    case("decompose-empty-prompt", "liwi", decompose(PHOTO, "--prompt", "  "), r"--prompt: empty text prompt"),
    case(
        "decompose-detector-without-prompt",
        "liwi",
        decompose(PHOTO, "--detector", "{c}/no-images"),
        r"--detector is used by --prompt TEXT only",
    ),
    case(
        "decompose-prompt-with-the-pipeline",
        "liwi",
        decompose(PHOTO, "--prompt", "red car", "--detector", "{c}/no-images", "--model", "liwi-small"),
        r"--prompt works with the tool chain",
    ),
    # --------------------------------------------------------------------- recursive decomposition (--depth)
    case("decompose-depth-0", "liwi", decompose(PHOTO, "--depth", "0"), r"--depth must be between 1 .* and 3 .*got 0$"),
    case("decompose-depth-4", "liwi", decompose(PHOTO, "--depth", "4"), r"--depth must be between 1 .* and 3 .*got 4$"),
    case("decompose-depth-word", "liwi", decompose(PHOTO, "--depth", "two"), r"--depth must be a number .*'two'"),
    case("decompose-tiles-9", "liwi", decompose(PHOTO, "--tiles", "9"), r"--tiles: invalid choice: 9"),
    case(
        "api-decomposer-tiles-negative",
        "api",
        lambda c, o: lambda: ToolChainDecomposer(segmenter=None, tiles=-1),
        r"tiles must be None or an int from 0 to 4 \(0 or 1: no crops\), got -1",
        raises=ValueError,
    ),
    case(
        "api-decompose-layer-bad-index",
        "api",
        lambda c, o: lambda: decompose_layer(_layered(), 1),
        r"object index 1 out of range for 1 object \(indices are 0-based\)",
        raises=IndexError,
    ),
    case(
        "api-decompose-to-depth-0",
        "api",
        lambda c, o: lambda: decompose_to_depth(_layered(), 0),
        r"depth must be between 1 \(objects only\) and 3, got 0",
        raises=ValueError,
    ),
    case(
        "api-layered-parts-that-are-not-the-object",
        "api",
        lambda c, o: lambda: LayeredImage(np.zeros((8, 8, 3)), [np.ones((8, 8, 4))], parts={0: [np.zeros((8, 8, 4))]}),
        r"parts of object 1 do not recompose to object 1's layer \(max difference 1\.0000",
        raises=LayeredImageError,
    ),
    # --------------------------------------------------------------------- box and point prompts (photo: 16x16)
    case(
        "decompose-box-outside-the-photo",
        "liwi",
        decompose(PHOTO, "--box", "0,0,20,10"),
        r"photo\.png: --box \(0, 0, 20, 10\) reaches outside the 16x16 image: keep 0 <= x0 < x1 <= 16",
    ),
    case("decompose-box-inverted", "liwi", decompose(PHOTO, "--box", "10,2,4,8"), r"--box \(10, 2, 4, 8\) is inverted"),
    case("decompose-box-empty", "liwi", decompose(PHOTO, "--box", "3,3,3,9"), r"--box \(3, 3, 3, 9\) is empty"),
    case("decompose-box-three-numbers", "liwi", decompose(PHOTO, "--box", "1,2,3"), r"--box: expected 4 numbers"),
    case("decompose-point-not-a-number", "liwi", decompose(PHOTO, "--point", "1,x"), r"--point: 'x' is not a number"),
    case(
        "decompose-point-outside-the-photo",
        "liwi",
        decompose(PHOTO, "--point", "16,3"),
        r"--point \(16, 3\) is outside the 16x16 image: keep 0 <= x < 16",
    ),
    case(
        "decompose-negative-point-outside-the-photo",
        "liwi",
        decompose(PHOTO, "--negative-point", "3,40"),
        r"--negative-point \(3, 40\) is outside the 16x16 image",
    ),
    case(
        "decompose-more-prompts-than-layers",
        "liwi",
        decompose(PHOTO, "--layers", "1", "--box", "1,1,5,5", "--point", "8,8"),
        r"2 prompted objects but --layers is 1: give at most 1 --box/--point prompts, or raise --layers",
    ),
    case(
        "decompose-more-prompts-than-the-maximum",
        "liwi",
        decompose(PHOTO, *[arg for k in range(9) for arg in ("--point", f"{k},{k}")]),
        r"9 prompted objects but at most 8 objects are taken out, so the limit is 8",
    ),
    case(
        "decompose-prompts-with-the-pipeline",
        "liwi",
        decompose(PHOTO, "--box", "1,1,5,5", "--model", "liwi-small"),
        r"prompts \(--box\) work with the tool chain .*the LiWi pipeline \(--model\) takes no prompts",
    ),
    case(
        "decompose-only-prompts-without-a-prompt",
        "liwi",
        decompose(PHOTO, "--only-prompts"),
        r"--only-prompts needs at least one --box or --point",
    ),
    case(
        "decompose-box-in-fractions",
        "liwi",
        decompose(PHOTO, "--box", "0.1,0.1,0.9,0.9", "--only-prompts", "--format", "zip"),
        None,
        writes=("d/photo.zip",),
    ),
    case(
        "api-prompts-beyond-the-layer-limit",
        "api",
        lambda c, o: (
            lambda: ToolChainDecomposer(segmenter=None)(np.zeros((16, 16, 3)), 1, boxes=[(0, 0, 4, 4)], points=[(8, 8)])
        ),
        r"2 prompted objects but the layer limit is 1: give at most 1 boxes and points",
        raises=ValueError,
    ),
    case(
        "api-box-inverted",
        "api",
        lambda c, o: lambda: ToolChainDecomposer(segmenter=None)(np.zeros((16, 16, 3)), boxes=[(8, 0, 4, 4)]),
        r"box 1 \(8, 0, 4, 4\) is inverted",
        raises=ValueError,
    ),
    case(
        "api-point-outside",
        "api",
        lambda c, o: lambda: ToolChainDecomposer(segmenter=None)(np.zeros((16, 16, 3)), points=[(16.0, 2)]),
        r"point 1 \(16, 2\) is outside the 16x16 image",
        raises=ValueError,
    ),
    # --------------------------------------------------------------------- liwi models
    case("models-unknown-name", "liwi", lambda c, o: ["models", "download", "nope"], r"unknown model 'nope'; known"),
    case(
        "models-path-not-downloaded",
        "liwi",
        lambda c, o: ["models", "path", "isnet"],
        r"not downloaded; run `liwi models download isnet`",
    ),
    case(
        "models-verify-not-downloaded",
        "liwi",
        lambda c, o: ["models", "verify", "isnet"],
        r"not downloaded .*run `liwi models download isnet`",
    ),
    case(
        "models-verify-damaged-file",
        "liwi",
        lambda c, o: ["models", "verify", "isnet"],
        r"corrupted or incomplete .*run `liwi models download isnet --force`",
        setup=lambda m, o: _damaged_model(o),
    ),
    case(
        "models-download-without-npm-or-hub",
        "liwi",
        lambda c, o: ["models", "download", "isnet", "-q"],
        r"could not download model 'isnet' \(npm: `npm` is not installed",
        setup=lambda m, o: (m.setenv("PATH", str(o.parent)), m.setenv("HF_HUB_OFFLINE", "1")),
    ),
    case(
        "decompose-with-a-damaged-model-falls-back",
        "liwi",
        decompose(PHOTO, "--format", "zip"),
        None,
        setup=lambda m, o: _damaged_model(o),
        writes=("d/photo.zip",),
    ),
    # --------------------------------------------------------------------- the Space's handlers
    # (cases to be added by the owner of spaces_demo/app.py)
]


# ------------------------------------------------------------------------------------- the check
_TEMPORARY = re.compile(r"^\..*(\.tmp|\.tmp-.*)$|\.part$")


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


def _run(entry: str, argv: list[str]) -> int:
    if entry == "liwi":
        from liwi_diffusers.cli import main
    else:
        from liwi_dataset_builder.cli import main
    try:
        return int(main(argv) or 0)
    except SystemExit as exit:  # argparse's usage errors
        return int(exit.code or 0)


def _damaged_model(out: Path) -> None:
    """A truncated default segmenter in this case's model cache (set by `_no_downloaded_models`)."""
    from liwi_diffusers.model_zoo import model_path

    path = model_path("isnet")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a whole model")


@pytest.fixture(autouse=True)
def _no_downloaded_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weight-free tool chain whatever a developer downloaded (fast and the same everywhere)."""
    monkeypatch.setenv("LIWI_MODELS_CACHE", str(tmp_path / "no-models"))


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case.setup is not None:
        case.setup(monkeypatch, out)
    before = _files(out)
    if case.entry == "api":
        call = case.make(corpus, out)
        if case.error is None:
            call()
        else:
            with pytest.raises(case.raises, match=case.error) as caught:
                call()
            message = str(caught.value)
            assert "\n" not in message, message
            assert case.forbid is None or not re.search(case.forbid, message), message
    else:
        code = _run(case.entry, case.make(corpus, out))
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        if case.error is None:
            assert code == 0 and errors == [], err
        else:
            assert code != 0 and len(errors) == 1, err
            assert re.search(case.error, errors[0]), errors[0]
            assert case.forbid is None or not re.search(case.forbid, errors[0]), errors[0]
    monkeypatch.undo()  # real os.open and modules again before looking at the files
    after = _files(out)
    assert not [name for name in after if _TEMPORARY.search(Path(name).name)], sorted(after)
    assert after - before == set(case.writes), sorted(after - before)


def test_the_corpus_covers_every_entry_point() -> None:
    entries = [param.values[0].entry for param in CASES]
    assert len(CASES) >= 40 and len({param.id for param in CASES}) == len(CASES)
    assert {"liwi", "liwi-build", "api"} <= set(entries)
    commands = {param.values[0].make(Path("c"), Path("o"))[0] for param in CASES if param.values[0].entry == "liwi"}
    assert {"decompose", "evaluate"} <= commands
