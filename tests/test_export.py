"""Layered files (PSD, OpenRaster, PNG zip): round trips, file structure, atomic writes, bad files."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pptx
import pptx.presentation
import pytest
from PIL import Image
from pptx.enum.shapes import MSO_SHAPE_TYPE
from psd_tools import PSDImage

from liwi_dataset_builder import atomic as builder_atomic
from liwi_diffusers import LayeredImage, LayeredImageError
from liwi_diffusers.cli import main as cli_main
from liwi_diffusers.export import (
    SUPPORTED_FORMATS,
    LayeredFileError,
    OutputPathError,
    atomic_write,
    check_writable,
    group_names,
    load_layered,
    ora,
    png_zip,
    save_layered,
)
from liwi_diffusers.export.pptx import MAX_SLIDE_EMU, MIN_SLIDE_EMU, PptxScaleWarning, slide_scale
from liwi_diffusers.layers import alpha_bbox

pytestmark = pytest.mark.filterwarnings("ignore::liwi_diffusers.export.pptx.PptxScaleWarning")  # small test photos

FORMATS = ["psd", "ora", "zip"]  # written and read back
WRITE_FORMATS = [*FORMATS, "pptx"]  # written only


# ---------------------------------------------------------------------- helpers
def make_layered(
    width: int = 53,
    height: int = 37,
    boxes: list[tuple[int, int, int, int] | None] = ((3, 4, 20, 30), (10, 2, 53, 9)),
    shadow_boxes: list[tuple[int, int, int, int] | None] | None = None,
    labels: list[str] | None = None,
    seed: int = 0,
) -> LayeredImage:
    """Random 8-bit layers: each object (and shadow) is random inside its box ``(l, t, r, b)``, zero outside."""
    rng = np.random.default_rng(seed)
    shadow_boxes = list(boxes) if shadow_boxes is None else shadow_boxes

    def boxed(box: tuple[int, int, int, int] | None, channels: int) -> np.ndarray:
        array = np.zeros((height, width, channels), np.float32)
        if box is not None:
            left, top, right, bottom = box
            array[top:bottom, left:right] = rng.random((bottom - top, right - left, channels))
        return array

    foregrounds = [boxed(box, 4) for box in boxes]
    shadows = [boxed(box, 1)[:, :, 0] for box in shadow_boxes]
    labels = labels if labels is not None else [f"thing {k}" for k in range(len(boxes))]
    return LayeredImage(rng.random((height, width, 3)), foregrounds, shadows, labels).quantized()


def assert_same_layers(expected: LayeredImage, actual: LayeredImage) -> None:
    """Same names, labels and 8-bit values in every layer, bit for bit."""
    assert actual.labels == expected.labels
    expected_stack, actual_stack = expected.to_rgba_stack(), actual.to_rgba_stack()
    assert [name for name, _ in actual_stack] == [name for name, _ in expected_stack]
    for (name, want), (_, got) in zip(expected_stack, actual_stack):
        np.testing.assert_array_equal(np.round(got * 255), np.round(want * 255), err_msg=name)


CASES = {
    "basic": lambda: make_layered(),
    "labels": lambda: make_layered(
        boxes=[(0, 0, 5, 5), (1, 1, 9, 9), (2, 2, 7, 30), (40, 30, 53, 37)],
        labels=["two words", "猫 cat: 🐱 ü", "a: b: c", "  padded\tand\nnewline "],
    ),
    "no_objects": lambda: make_layered(boxes=[], labels=[]),
    "empty_object": lambda: make_layered(
        boxes=[None, (5, 5, 9, 9), None], shadow_boxes=[(1, 1, 4, 4), None, None], labels=["", "x", "gone"]
    ),
    "one_pixel_canvas": lambda: make_layered(width=1, height=1, boxes=[(0, 0, 1, 1)], labels=["dot"]),
    "one_pixel_layers": lambda: make_layered(boxes=[(0, 0, 1, 1), (52, 36, 53, 37), (26, 18, 27, 19)]),
    "odd_size_full": lambda: make_layered(width=53, height=37, boxes=[(0, 0, 53, 37)], seed=3),
}


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path: Path):
    """Every test leaves only the files it meant to write (no temporary files)."""
    yield
    leftovers = [path.name for path in tmp_path.rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_exact(tmp_path: Path, fmt: str, case: str) -> None:
    layered = CASES[case]()
    path = save_layered(layered, tmp_path / f"layers.{fmt}")
    assert path == tmp_path / f"layers.{fmt}"
    assert_same_layers(layered, load_layered(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"layers.{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_size_layers_keep_hidden_colour(tmp_path: Path, fmt: str) -> None:
    """crop=False stores colour under transparent pixels too; crop=True drops it outside the alpha box."""
    rng = np.random.default_rng(1)
    foreground = rng.random((9, 11, 4)).astype(np.float32)
    foreground[:, :, 3] = 0
    foreground[4, 5, 3] = 1  # one visible pixel; colour everywhere else is hidden
    layered = LayeredImage(rng.random((9, 11, 3)), [foreground], None, ["x"]).quantized()

    full = load_layered(save_layered(layered, tmp_path / f"full.{fmt}", crop=False))
    assert_same_layers(layered, full)

    cropped = load_layered(save_layered(layered, tmp_path / f"cropped.{fmt}"))
    got, want = cropped.foregrounds[0], layered.foregrounds[0]
    np.testing.assert_array_equal(got[4, 5], want[4, 5])
    assert np.count_nonzero(got) == np.count_nonzero(want[4, 5])


def test_values_are_rounded_to_8_bits(tmp_path: Path) -> None:
    layered = make_layered()
    noisy = LayeredImage(
        np.clip(layered.background + 0.4 / 255, 0, 1), layered.foregrounds, layered.shadows, layered.labels
    )
    assert_same_layers(layered, load_layered(save_layered(noisy, tmp_path / "x.ora")))


def test_format_argument_overrides_suffix_and_reader_sniffs_content(tmp_path: Path) -> None:
    layered = make_layered()
    for fmt in FORMATS:
        path = save_layered(layered, tmp_path / f"{fmt}.bin", format=fmt.upper())
        assert_same_layers(layered, load_layered(path))


@pytest.mark.parametrize("name, fmt", [("x.png", None), ("x", None), ("x.psd", "tiff")])
def test_unknown_format_is_a_clear_error(tmp_path: Path, name: str, fmt: str | None) -> None:
    with pytest.raises(ValueError, match="psd, ora, zip"):
        save_layered(make_layered(), tmp_path / name, format=fmt)
    assert not list(tmp_path.iterdir())
    assert set(SUPPORTED_FORMATS) == set(FORMATS) | {"pptx"}


def test_save_rejects_non_layered_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="LayeredImage"):
        save_layered(np.zeros((4, 4, 3)), tmp_path / "x.psd")


# ---------------------------------------------------------------------- what other programs see
def test_psd_is_rgba_with_named_cropped_layers_and_right_composite(tmp_path: Path) -> None:
    layered = make_layered(boxes=[(3, 4, 20, 30), None], shadow_boxes=[(5, 6, 25, 33), None], labels=["cup", "猫"])
    path = save_layered(layered, tmp_path / "x.psd")

    document = PSDImage.open(path)
    assert document.color_mode.name == "RGB" and document.channels == 4 and document.depth == 8
    pixel_layers = [layer for layer in document.descendants() if not layer.is_group()]
    assert [layer.name for layer in pixel_layers] == layered.layer_names()
    assert [layer.name for layer in document] == ["background", "cup", "猫"]  # a group per object
    boxes = {layer.name: layer.bbox for layer in pixel_layers}
    assert boxes["background"] == (0, 0, 53, 37)
    assert boxes["shadow 1: cup"] == (5, 6, 25, 33)
    assert boxes["object 1: cup"] == (3, 4, 20, 30)
    assert boxes["object 2: 猫"] == (0, 0, 0, 0)  # empty layer

    # What psd-tools (and so other programs) show: the stored merged image and a fresh render.
    expected = layered.compose()
    for picture in (document.composite(), PSDImage.open(path).composite(ignore_preview=True)):
        shown = np.asarray(picture.convert("RGB"), np.float32) / 255
        assert np.abs(shown - expected).max() <= 2 / 255
    with Image.open(path) as picture:  # Pillow reads the merged image too
        assert picture.size == layered.size


def test_ora_structure(tmp_path: Path) -> None:
    layered = make_layered(width=300, height=120, boxes=[(10, 20, 40, 60), None], labels=["cup", "x"])
    path = save_layered(layered, tmp_path / "x.ora")

    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        root = ET.fromstring(archive.read("stack.xml"))
        assert (root.tag, root.get("w"), root.get("h")) == ("image", "300", "120")
        elements = list(root.iter("layer"))
        assert [e.get("name") for e in elements] == layered.layer_names()[::-1]  # top layer first
        for element in elements:
            assert element.get("visibility") == "visible" and float(element.get("opacity")) == 1.0
        cup = next(e for e in elements if e.get("name") == "object 1: cup")
        assert (cup.get("x"), cup.get("y")) == ("10", "20")
        with Image.open(io.BytesIO(archive.read(cup.get("src")))) as picture:
            assert (picture.mode, picture.size) == ("RGBA", (30, 40))
        with Image.open(io.BytesIO(archive.read("mergedimage.png"))) as picture:
            merged = np.asarray(picture.convert("RGB"))
        np.testing.assert_array_equal(merged, np.round(layered.compose() * 255))
        with Image.open(io.BytesIO(archive.read("Thumbnails/thumbnail.png"))) as picture:
            assert max(picture.size) == 256


def test_png_zip_manifest_and_custom_composite(tmp_path: Path) -> None:
    layered = make_layered(boxes=[(3, 4, 20, 30), None], labels=["cup", ""])
    photo = np.full((37, 53, 3), 7, np.uint8)
    path = save_layered(layered, tmp_path / "x.zip", composite=Image.fromarray(photo))

    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        with Image.open(io.BytesIO(archive.read(manifest["composite"]))) as picture:
            np.testing.assert_array_equal(np.asarray(picture), photo)
        names = set(archive.namelist())
    assert manifest["format"] == png_zip.MANIFEST_FORMAT and manifest["version"] == png_zip.MANIFEST_VERSION
    assert (manifest["width"], manifest["height"]) == (53, 37)
    layers = manifest["layers"]
    assert [entry["name"] for entry in layers] == layered.layer_names()
    assert [entry["role"] for entry in layers] == ["background", "shadow", "object", "shadow", "object"]
    assert [entry["index"] for entry in layers] == [None, 1, 1, 2, 2]
    assert [entry["label"] for entry in layers] == [None, "cup", "cup", "", ""]
    assert layers[2]["offset"] == [3, 4] and layers[2]["size"] == [17, 26]
    assert layers[4]["file"] is None  # empty object layer
    assert {entry["file"] for entry in layers if entry["file"]} <= names


def test_composite_of_the_wrong_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(LayeredImageError, match="composite is 5x5"):
        save_layered(make_layered(), tmp_path / "x.ora", composite=np.zeros((5, 5, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_names_a_format_cannot_store_are_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 255"):
        save_layered(make_layered(labels=["x" * 300, "y"]), tmp_path / "x.psd")
    with pytest.raises(ValueError, match="control characters"):
        save_layered(make_layered(labels=["bell\x07", "y"]), tmp_path / "x.ora")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- atomic writes
def _fail_mid_write(monkeypatch: pytest.MonkeyPatch, fmt: str, error: type[BaseException]) -> None:
    """Make the ``fmt`` writer raise ``error`` after it has written part of the file."""
    if fmt == "psd":

        def save(self, file, *args, **kwargs):
            file.write(b"8BPS" + b"\0" * 100)
            raise error("interrupted")

        monkeypatch.setattr(PSDImage, "save", save)
        return
    if fmt == "pptx":

        def save_pptx(self, file):
            file.write(b"PK\x03\x04" + b"\0" * 100)
            raise error("interrupted")

        monkeypatch.setattr(pptx.presentation.Presentation, "save", save_pptx)
        return
    module = ora if fmt == "ora" else png_zip
    encode, calls = module.png_bytes, []

    def png_bytes(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise error("interrupted")
        return encode(pixels)

    monkeypatch.setattr(module, "png_bytes", png_bytes)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_interrupted_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, error: type[BaseException]
) -> None:
    _fail_mid_write(monkeypatch, fmt, error)
    target = tmp_path / f"x.{fmt}"
    with pytest.raises(error, match="interrupted"):
        save_layered(make_layered(), target)
    assert not list(tmp_path.iterdir())  # no target, no temporary file


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_interrupted_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    target = tmp_path / f"x.{fmt}"
    save_layered(make_layered(seed=5), target)
    before = target.read_bytes()
    _fail_mid_write(monkeypatch, fmt, RuntimeError)
    with pytest.raises(RuntimeError):
        save_layered(make_layered(seed=6), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_atomic_write_replaces_and_keeps_permissions(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # created the ordinary way: the mode a new file should get
    new = tmp_path / "new"
    with atomic_write(new) as file:
        file.write(b"hello")
    assert new.read_bytes() == b"hello"
    assert new.stat().st_mode == reference.stat().st_mode

    os.chmod(new, 0o640)
    with atomic_write(new) as file:
        file.write(b"again")
    assert new.read_bytes() == b"again"
    assert new.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "reference"]


# ---------------------------------------------------------------------- unwritable output
@pytest.mark.parametrize("where", ["missing_folder", "parent_is_file", "target_is_folder"])
def test_unwritable_path_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "folder.psd").mkdir()
    target = {
        "missing_folder": tmp_path / "missing" / "x.psd",
        "parent_is_file": tmp_path / "file" / "x.psd",
        "target_is_folder": tmp_path / "folder.psd",
    }[where]
    layered = make_layered()

    def no_work(self):
        raise AssertionError("layers were converted before the output path was checked")

    monkeypatch.setattr(LayeredImage, "to_rgba_stack", no_work)
    with pytest.raises(OutputPathError, match="cannot write") as caught:
        save_layered(layered, target)
    assert isinstance(caught.value, PermissionError) and str(target) in str(caught.value)
    with pytest.raises(OutputPathError):
        check_writable(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.psd"]


def test_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which ignores permission bits: refuse file creation in the folder the way
    # a read-only folder or mount does for everyone else.
    folder = tmp_path / "locked"
    folder.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(OutputPathError, match="no permission"):
        save_layered(make_layered(), folder / "x.ora")
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------------- bad files
def _one_line_error(path: Path, match: str) -> LayeredFileError:
    with pytest.raises(LayeredFileError, match=match) as caught:
        load_layered(path)
    assert "\n" not in str(caught.value)
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_layered(tmp_path / "nothing.psd")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"8B", "truncated"),
        (b"just some text, not an image", "not a layered file.*supported formats"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a layered file"),
    ],
)
def test_not_a_layered_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.psd"
    path.write_bytes(content)
    _one_line_error(path, match)


def test_folder_is_not_a_layered_file(tmp_path: Path) -> None:
    _one_line_error(tmp_path, "folder")


@pytest.mark.parametrize("fraction", [0.5, 0.98])
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path: Path, fmt: str, fraction: float) -> None:
    path = save_layered(make_layered(), tmp_path / f"x.{fmt}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    _one_line_error(path, "truncated|corrupt")


def _write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_without_stack_or_manifest(tmp_path: Path) -> None:
    path = _write_zip(
        tmp_path / "x.ora", {"mimetype": b"image/openraster", "data/a.png": _png(np.zeros((2, 2, 4), np.uint8))}
    )
    _one_line_error(path, "without stack.xml")
    _one_line_error(_write_zip(tmp_path / "empty.zip", {}), "without stack.xml")


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes | None]) -> Path:
    """Copy a zip, replacing (or with None, dropping) some of its files."""
    with zipfile.ZipFile(source) as archive:
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    for name, data in replace.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    return _write_zip(target, files)


def test_bad_ora_files(tmp_path: Path) -> None:
    good = save_layered(make_layered(), tmp_path / "good.ora")
    with zipfile.ZipFile(good) as archive:
        stack = archive.read("stack.xml").decode()
    src = ET.fromstring(stack).find("stack/layer").get("src")
    cases = {
        "layers of mismatched size": {"mergedimage.png": _png(np.zeros((5, 5, 3), np.uint8))},
        "not valid XML": {"stack.xml": b"<image w='3'"},
        "no 'data/": {src: None},
        "not a readable PNG": {src: b"\x89PNG\r\n\x1a\nbroken"},
        "not 'image/openraster'": {"mimetype": b"application/zip"},
        "invalid canvas size": {"stack.xml": stack.replace('w="53"', 'w="-1"').encode()},
        "not an integer": {"stack.xml": stack.replace('x="0"', 'x="left"', 1).encode()},
        "lists no layers": {"stack.xml": b"<image w='4' h='4'><stack/></image>"},
    }
    for number, (match, replace) in enumerate(cases.items()):
        _one_line_error(_rewrite_zip(good, tmp_path / f"bad{number}.ora", replace), match)


def test_bad_png_zip_files(tmp_path: Path) -> None:
    good = save_layered(make_layered(), tmp_path / "good.zip")
    with zipfile.ZipFile(good) as archive:
        manifest = json.loads(archive.read("manifest.json"))

    def edited(change) -> bytes:
        copy = json.loads(json.dumps(manifest))
        change(copy)
        return json.dumps(copy).encode()

    background = manifest["layers"][0]["file"]
    cases = {
        "mismatched size": {background: _png(np.zeros((40, 60, 4), np.uint8))},
        "not valid JSON": {"manifest.json": b"{"},
        "does not describe": {"manifest.json": edited(lambda m: m.update(format="other"))},
        "upgrade liwi-diffusers": {"manifest.json": edited(lambda m: m.update(version=99))},
        "no list of layers": {"manifest.json": edited(lambda m: m.update(layers=[]))},
        "does not match its name": {"manifest.json": edited(lambda m: m["layers"][2].update(role="shadow"))},
        "invalid offset": {"manifest.json": edited(lambda m: m["layers"][2].update(offset=[1]))},
        "outside the": {"manifest.json": edited(lambda m: m["layers"][2].update(offset=[50, 30]))},
        "has no 'layers/": {manifest["layers"][2]["file"]: None},
        "do not form a layered image": {"manifest.json": edited(lambda m: m["layers"].pop(0))},
    }
    for number, (match, replace) in enumerate(cases.items()):
        _one_line_error(_rewrite_zip(good, tmp_path / f"bad{number}.zip", replace), match)


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_psd_that_is_not_rgb(tmp_path: Path, mode: str) -> None:
    document = PSDImage.new(mode, (8, 6))
    document.create_pixel_layer(Image.new(mode, (4, 4)), name="layer")
    document.save(tmp_path / "x.psd")
    _one_line_error(tmp_path / "x.psd", "not RGB")


def test_flat_psd(tmp_path: Path) -> None:
    PSDImage.new("RGB", (8, 6)).save(tmp_path / "x.psd")
    _one_line_error(tmp_path / "x.psd", "no layers")


# ---------------------------------------------------------------------- files made by other programs
def test_psd_from_another_program(tmp_path: Path) -> None:
    """Any layer names; the bottom opaque layer is the background, the rest are objects; opacity applies."""
    document = PSDImage.new("RGBA", (10, 8))
    document.create_pixel_layer(Image.new("RGBA", (10, 8), (10, 20, 30, 255)), name="Background")
    sticker = document.create_pixel_layer(Image.new("RGBA", (4, 4), (200, 0, 0, 255)), name="Sticker", top=6, left=8)
    sticker.opacity = 128
    document.save(tmp_path / "x.psd")

    layered = load_layered(tmp_path / "x.psd")
    assert layered.labels == ["Sticker"] and layered.size == (10, 8)
    alpha = np.round(layered.foregrounds[0][:, :, 3] * 255)
    assert alpha[6:, 8:].tolist() == [[128, 128]] * 2  # clipped to the canvas
    assert alpha.sum() == 4 * 128


def test_ora_from_another_program(tmp_path: Path) -> None:
    """Nested stacks, float offsets, opacity, a layer partly off the canvas, no merged image."""
    stack = (
        '<image w="6" h="5"><stack>'
        '<stack name="group"><layer name="Paint" src="data/paint.png" x="-1.0" y="3" opacity="0.5"/></stack>'
        '<layer name="Background" src="data/bg.png"/>'
        "</stack></image>"
    )
    files = {
        "mimetype": b"image/openraster",
        "stack.xml": stack.encode(),
        "data/paint.png": _png(np.full((3, 3, 4), 255, np.uint8)),
        "data/bg.png": _png(np.full((5, 6, 3), 9, np.uint8)),
    }
    layered = load_layered(_write_zip(tmp_path / "x.ora", files))
    assert layered.labels == ["Paint"]
    alpha = np.round(layered.foregrounds[0][:, :, 3] * 255)
    assert alpha[3:, :2].tolist() == [[128, 128]] * 2 and alpha.sum() == 4 * 128
    np.testing.assert_array_equal(np.round(layered.background * 255), 9)


# ---------------------------------------------------------------------- groups (PSD, ORA)
def read_psd_records(path: Path) -> tuple[tuple[int, int], list[dict]]:
    """An independent minimal PSD reader (not psd-tools): canvas size and layer records, bottom to top.

    Each record: ``name`` (the Unicode name when stored), ``box`` (left, top, right, bottom),
    ``section`` (0 a pixel layer, 1/2 a group's opening record, 3 the end-of-group marker, from the
    ``lsct`` block) and, for pixel layers, ``pixels`` (H, W, 4) uint8 decoded from the channel data.
    """
    data = path.read_bytes()
    at = 0

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from(">" + fmt, data, at)
        at += struct.calcsize(">" + fmt)
        return values

    signature, version = take("4sH")
    assert (signature, version) == (b"8BPS", 1)
    at += 6
    _, height, width, depth, mode = take("HIIHH")
    assert (depth, mode) == (8, 3)  # 8-bit RGB
    for _ in range(2):  # colour mode data, image resources
        (length,) = take("I")
        at += length
    take("I")  # layer and mask information length
    take("I")  # layer information length
    (count,) = take("h")
    records = []
    for _ in range(abs(count)):
        top, left, bottom, right, channels = take("iiiiH")
        lengths = [take("hI") for _ in range(channels)]
        blend_signature, _blend, _opacity, _clipping, _flags, _filler, extra = take("4s4sBBBBI")
        assert blend_signature == b"8BIM"
        end = at + extra
        for _ in range(2):  # layer mask data, blending ranges
            (length,) = take("I")
            at += length
        (name_length,) = take("B")
        name = data[at : at + name_length].decode("mac_roman")
        at += (name_length + 1 + 3) // 4 * 4 - 1
        section = 0
        while at < end:
            block_signature, key, length = take("4s4sI")
            assert block_signature in (b"8BIM", b"8B64")
            block = data[at : at + length]
            if key == b"luni":
                (chars,) = struct.unpack_from(">I", block)
                name = block[4 : 4 + 2 * chars].decode("utf-16-be")
            elif key == b"lsct":
                (section,) = struct.unpack_from(">I", block)
            at += length
        at = end
        records.append({"name": name, "box": (left, top, right, bottom), "section": section, "channels": lengths})
    for record in records:  # channel image data, in record order
        left, top, right, bottom = record["box"]
        rows, cols = bottom - top, right - left
        planes = {}
        for channel, length in record.pop("channels"):
            (compression,) = struct.unpack_from(">H", data, at)
            body = data[at + 2 : at + length]
            at += length
            if rows * cols == 0:
                continue
            if compression == 0:
                plane = np.frombuffer(body, np.uint8, rows * cols)
            elif compression == 1:
                counts = struct.unpack_from(f">{rows}H", body)
                plane = _unpack_bits(body[2 * rows :], sum(counts), rows * cols)
            else:
                plane = np.frombuffer(zlib.decompress(body), np.uint8)
                if compression == 3:  # zip with prediction: per-row deltas
                    plane = np.cumsum(plane.reshape(rows, cols), axis=1, dtype=np.uint8)
            planes[channel] = np.asarray(plane, np.uint8).reshape(rows, cols)
        if record["section"] == 0:
            full = np.full((rows, cols), 255, np.uint8)
            record["pixels"] = np.dstack([planes.get(c, full) for c in (0, 1, 2, -1)]) if rows * cols else None
    return (width, height), records


def _unpack_bits(body: bytes, length: int, size: int) -> np.ndarray:
    """PackBits (PSD RLE) decoding."""
    out, i = bytearray(), 0
    while i < length:
        n = body[i]
        i += 1
        if n < 128:
            out += body[i : i + n + 1]
            i += n + 1
        elif n > 128:
            out += bytes([body[i]]) * (257 - n)
            i += 1
    assert len(out) == size
    return np.frombuffer(bytes(out), np.uint8)


def psd_tree(records: list[dict]) -> list:
    """Records (bottom to top) as a back-to-front tree: a layer is its name, a group is ``(name, [children])``."""
    stack: list[list] = [[]]
    for record in records:
        if record["section"] == 3:  # end-of-group marker: the group's children follow it
            stack.append([])
        elif record["section"] in (1, 2):
            children = stack.pop()
            stack[-1].append((record["name"], children))
        else:
            stack[-1].append(record["name"])
    assert len(stack) == 1, "unbalanced groups"
    return stack[0]


def test_group_names_come_from_labels() -> None:
    labels = ["car", "person", " person ", "", "two\twords", "car 2"]
    assert group_names(labels) == ["car", "person 1", "person 2", "object 4", "two words", "car 2"]
    assert group_names([]) == []


GROUPED = {
    "boxes": [(3, 4, 20, 30), (10, 2, 53, 9), None, (0, 0, 53, 37)],
    "shadow_boxes": [(5, 6, 25, 33), None, None, (30, 20, 50, 37)],
    "labels": ["car", "person", "person", ""],
}
GROUP_NAMES = ["car", "person 1", "person 2", "object 4"]


def test_psd_has_a_group_per_object_by_psd_tools_and_by_an_independent_reader(tmp_path: Path) -> None:
    layered = make_layered(**GROUPED)
    path = save_layered(layered, tmp_path / "x.psd")
    names = layered.layer_names()
    expected_tree = ["background"] + [(group, names[1 + 2 * k : 3 + 2 * k]) for k, group in enumerate(GROUP_NAMES)]

    document = PSDImage.open(path)
    tree = [(layer.name, [child.name for child in layer]) if layer.is_group() else layer.name for layer in document]
    assert tree == expected_tree
    assert all(layer.blend_mode.name == "PASS_THROUGH" for layer in document if layer.is_group())

    size, records = read_psd_records(path)
    assert size == layered.size
    assert psd_tree(records) == expected_tree
    # The layers as that reader decodes them compose to the photo (plain "over", back to front).
    canvas = np.zeros((layered.height, layered.width, 3))
    boxes = {}
    for record in records:
        if record["section"] != 0:
            continue
        left, top, right, bottom = boxes[record["name"]] = record["box"]
        if record["pixels"] is None:
            continue
        rgba = record["pixels"].astype(np.float64) / 255
        region = canvas[top:bottom, left:right]
        region[:] = rgba[:, :, :3] * rgba[:, :, 3:] + region * (1 - rgba[:, :, 3:])
    assert np.abs(canvas - layered.compose()).max() <= 1 / 255
    assert boxes["shadow 1: car"] == (5, 6, 25, 33) and boxes["object 1: car"] == (3, 4, 20, 30)
    assert boxes["object 3: person"][2:] == boxes["object 3: person"][:2]  # empty layer


def test_psd_groups_round_trip(tmp_path: Path) -> None:
    layered = make_layered(**GROUPED)
    first = save_layered(layered, tmp_path / "a.psd")
    again = load_layered(first)
    assert_same_layers(layered, again)
    second = save_layered(again, tmp_path / "b.psd")
    assert psd_tree(read_psd_records(first)[1]) == psd_tree(read_psd_records(second)[1])
    assert first.read_bytes() == second.read_bytes()


def test_flat_files_from_before_groups_still_load(tmp_path: Path) -> None:
    """Files with every layer at the top level (as liwi wrote them before groups) read the same."""
    layered = make_layered(labels=["cup", "猫"])
    document = PSDImage.new("RGBA", layered.size)
    for name, pixels in layered.to_pil():
        document.create_pixel_layer(pixels, name="layer").name = name
    document.save(tmp_path / "flat.psd")
    assert all(not layer.is_group() for layer in PSDImage.open(tmp_path / "flat.psd"))
    assert_same_layers(layered, load_layered(tmp_path / "flat.psd"))

    grouped = save_layered(layered, tmp_path / "grouped.ora")
    with zipfile.ZipFile(grouped) as archive:
        root = ET.fromstring(archive.read("stack.xml"))
    top = root.find("stack")
    for group in list(top.findall("stack")):  # move the layers out of their groups
        position = list(top).index(group)
        top.remove(group)
        for offset, layer in enumerate(group):
            top.insert(position + offset, layer)
    flat = _rewrite_zip(grouped, tmp_path / "flat.ora", {"stack.xml": ET.tostring(root)})
    assert_same_layers(layered, load_layered(flat))


def test_ora_nests_a_stack_per_object(tmp_path: Path) -> None:
    layered = make_layered(**GROUPED)
    path = save_layered(layered, tmp_path / "x.ora")
    with zipfile.ZipFile(path) as archive:
        root = ET.fromstring(archive.read("stack.xml"))
    (top,) = root.findall("stack")
    children = list(top)
    assert [(child.tag, child.get("name")) for child in children] == [("stack", name) for name in GROUP_NAMES[::-1]] + [
        ("layer", "background")
    ]
    names = layered.layer_names()
    for k, group in enumerate(reversed(children[:-1])):
        assert [layer.get("name") for layer in group] == [names[2 + 2 * k], names[1 + 2 * k]]  # object above shadow
        assert all(layer.tag == "layer" for layer in group)
        assert group.get("visibility") == "visible" and group.get("composite-op") == "svg:src-over"
    again = load_layered(path)
    assert_same_layers(layered, again)
    with zipfile.ZipFile(path) as first, zipfile.ZipFile(save_layered(again, tmp_path / "y.ora")) as second:
        assert first.read("stack.xml") == second.read("stack.xml")  # the groups round-trip


# ---------------------------------------------------------------------- PPTX
def read_slide(path: Path) -> tuple[tuple[int, int], list]:
    """Slide size (EMU) and its shapes back to front: a picture is ``(name, box_emu, RGBA pixels)``,
    a group is ``(name, [pictures])``."""
    presentation = pptx.Presentation(str(path))
    assert len(presentation.slides) == 1

    def picture(shape) -> tuple:
        assert shape.shape_type == MSO_SHAPE_TYPE.PICTURE and shape.image.content_type == "image/png"
        assert (shape.crop_left, shape.crop_top, shape.crop_right, shape.crop_bottom) == (0, 0, 0, 0)
        with Image.open(io.BytesIO(shape.image.blob)) as image:
            # Alpha kept (shadows are black with alpha); the opaque background is stored as RGB.
            assert image.mode == ("RGB" if shape.name == "background" else "RGBA")
            pixels = np.asarray(image.convert("RGBA")).copy()
        return shape.name, (shape.left, shape.top, shape.width, shape.height), pixels

    shapes = []
    for shape in presentation.slides[0].shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            shapes.append((shape.name, [picture(child) for child in shape.shapes]))
        else:
            shapes.append(picture(shape))
    return (presentation.slide_width, presentation.slide_height), shapes


def test_pptx_has_a_picture_per_layer_at_its_offset_back_to_front(tmp_path: Path) -> None:
    layered = make_layered(
        width=230,
        height=140,
        boxes=[(3, 4, 20, 30), (10, 2, 53, 9), None, (0, 0, 230, 140)],
        shadow_boxes=[(5, 6, 25, 33), None, (40, 100, 60, 120), (30, 20, 50, 37)],
        labels=GROUPED["labels"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 230x140 px fits a slide at 96 dpi: no scaling, no warning
        path = save_layered(layered, tmp_path / "x.pptx")
    size, shapes = read_slide(path)
    assert size == (230 * 9525, 140 * 9525)

    expected = dict(layered.to_pil())
    names = layered.layer_names()
    assert shapes[0][0] == "background" and shapes[0][1] == (0, 0, 230 * 9525, 140 * 9525)
    assert [shape[0] for shape in shapes[1:]] == GROUP_NAMES
    groups = dict(shapes[1:])
    assert [child[0] for child in groups["car"]] == ["shadow 1: car", "object 1: car"]  # shadow below object
    assert [child[0] for child in groups["person 1"]] == ["object 2: person"]  # its shadow is empty: no picture
    assert [child[0] for child in groups["person 2"]] == ["shadow 3: person"]
    pictures = [shapes[0]] + [child for _, children in shapes[1:] for child in children]
    assert [name for name, _, _ in pictures] == [n for n in names if n in {p[0] for p in pictures}]
    canvas = np.zeros((140, 230, 3))
    for name, (left, top, width, height), pixels in pictures:
        assert all(value % 9525 == 0 for value in (left, top, width, height))
        left, top, width, height = (value // 9525 for value in (left, top, width, height))
        assert pixels.shape[:2] == (height, width)
        full = np.asarray(expected[name])
        box = alpha_bbox(full[:, :, 3])
        assert (left, top, left + width, top + height) == box  # cropped to its alpha box
        np.testing.assert_array_equal(pixels, full[top : top + height, left : left + width], err_msg=name)
        rgba = pixels.astype(np.float64) / 255
        region = canvas[top : top + height, left : left + width]
        region[:] = rgba[:, :, :3] * rgba[:, :, 3:] + region * (1 - rgba[:, :, 3:])
    assert np.abs(canvas - layered.compose()).max() <= 1 / 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pptx"]


@pytest.mark.parametrize(
    "width, height, scale, slide",
    [
        (5400, 200, 5376 / 5400, (51_206_400, 1_896_533)),  # larger than 56 in: scaled down
        (60, 6000, 5376 / 6000, (914_400, 51_206_400)),  # long strip: the short side stays at 1 in
        (53, 37, 96 / 37, (1_309_816, 914_400)),  # smaller than 1 in: scaled up
    ],
)
def test_pptx_outside_powerpoints_slide_limits_is_scaled_and_says_so(
    tmp_path: Path, width: int, height: int, scale: float, slide: tuple[int, int]
) -> None:
    assert slide_scale(width, height) == pytest.approx(scale)
    foreground = np.zeros((height, width, 4), np.float32)
    foreground[10:30, 20:50] = 1.0
    layered = LayeredImage(np.full((height, width, 3), 0.5, np.float32), [foreground], None, ["box"])
    with pytest.warns(PptxScaleWarning) as caught:
        path = save_layered(layered, tmp_path / "x.pptx")
    (warning,) = caught
    message = str(warning.message)
    assert "\n" not in message and f"{width}x{height} px" in message and f"{100 * scale:.1f} %" in message
    size, shapes = read_slide(path)
    assert size == pytest.approx(slide, abs=1)
    assert all(MIN_SLIDE_EMU <= side <= MAX_SLIDE_EMU for side in size)
    _, box, pixels = shapes[0]
    assert box[2:] == (round(width * 9525 * scale), round(height * 9525 * scale))
    assert pixels.shape[:2] == (height, width)  # the pictures keep all their pixels
    (_, (shadow_or_object,)) = shapes[1]
    assert shadow_or_object[1] == tuple(round(v * 9525 * scale) for v in (20, 10, 30, 20))


def test_pptx_is_not_read_back(tmp_path: Path) -> None:
    path = save_layered(make_layered(width=120, height=100), tmp_path / "x.pptx")
    _one_line_error(path, "PowerPoint file.*load the .psd")


# ---------------------------------------------------------------------- leftovers after a kill
def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_next_write_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    target = tmp_path / "x.psd"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        dead, live, reused = _dead_pid(), sleeper.pid, sleeper.pid
        files = {
            "dead": tmp_path / f".x.psd.{dead}-0123abcd.tmp",
            "live": tmp_path / f".x.psd.{live}-89abcdef.tmp",
            "reused": tmp_path / f".x.psd.{reused}-00000000.tmp",  # older than the process with that id
            "mine": tmp_path / f".x.psd.{os.getpid()}-11111111.tmp",
            "other target": tmp_path / f".y.psd.{dead}-22222222.tmp",
            "no pid": tmp_path / ".x.psd.33333333.tmp",  # the name before PIDs: its owner is unknown
        }
        for path in files.values():
            path.write_bytes(b"partial")
        hour_ago = time.time() - 3600
        os.utime(files["reused"], (hour_ago, hour_ago))

        save_layered(make_layered(), target)
        left = {name for name, path in files.items() if path.exists()}
        assert left == {"live", "mine", "other target", "no pid"}
        assert target.exists() and re.fullmatch(r"\.x\.psd\.\d+-[0-9a-f]{8}\.tmp", files["live"].name)
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in tmp_path.glob(".*.tmp"):
            path.unlink()


# A `liwi decompose` whose decomposition is instant and whose PSD write stops half way (1 MiB written).
_KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from psd_tools import PSDImage
import liwi_diffusers.tools.decomposer as decomposer
from liwi_diffusers import LayeredImage
from liwi_diffusers.cli import main

class Instant:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, image, *args, **kwargs):
        photo = np.asarray(image.convert("RGB"))
        foreground = np.zeros((*photo.shape[:2], 4), np.float32)
        foreground[2:10, 2:10] = 1.0
        return LayeredImage(photo, [foreground], None, ["box"])

def stuck_save(self, file, *args, **kwargs):
    file.write(b"8BPS" + bytes(1 << 20))
    file.flush()
    Path(sys.argv[1]).write_text("writing")
    time.sleep(120)

decomposer.ToolChainDecomposer = Instant
PSDImage.save = stuck_save
sys.exit(main(sys.argv[2:]))
"""


def _kill_mid_write(tmp_path: Path, signum: int) -> tuple[subprocess.CompletedProcess, Path]:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(photo)
    out, ready = tmp_path / "out", tmp_path / "ready"
    command = [sys.executable, "-c", _KILLED_WRITER, str(ready), "decompose", str(photo), "-o", str(out), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.05)
    (temporary,) = out.iterdir()  # the export in progress, named after its process
    assert re.fullmatch(rf"\.photo\.psd\.{process.pid}-[0-9a-f]{{8}}\.tmp", temporary.name), temporary.name
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), out


def test_sigterm_mid_export_exits_143_and_leaves_nothing(tmp_path: Path) -> None:
    result, out = _kill_mid_write(tmp_path, signal.SIGTERM)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "liwi: terminated"
    assert "Traceback" not in result.stderr
    assert not out.exists()  # neither the target, its temporary file, nor the folder this run created


def test_sigkill_mid_export_leaves_a_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    result, out = _kill_mid_write(tmp_path, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    (leftover,) = out.iterdir()
    assert leftover.stat().st_size > 1 << 20
    save_layered(make_layered(), out / "photo.psd")
    assert [p.name for p in out.iterdir()] == ["photo.psd"]


def test_sigterm_handler_is_restored_after_main(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert cli_main(["decompose", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")]) != 0
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------- the dataset builder's writes
def test_builder_write_removes_its_hosts_dead_temporaries_and_cleans_up_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "shard.parquet"
    host = builder_atomic.host_name()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        files = {
            "dead": tmp_path / f".shard.parquet.tmp-{host}-{_dead_pid()}",
            "live": tmp_path / f".shard.parquet.tmp-{host}-{sleeper.pid}",
            "other host": tmp_path / f".shard.parquet.tmp-{host}x-{_dead_pid()}",  # its PIDs are not ours to check
            "other target": tmp_path / f".other.parquet.tmp-{host}-{_dead_pid()}",
        }
        for path in files.values():
            path.write_bytes(b"partial")
        builder_atomic.atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"new"
        assert {name for name, path in files.items() if path.exists()} == {"live", "other host", "other target"}
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in files.values():
            path.unlink(missing_ok=True)

    def interrupted_fsync(descriptor: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        builder_atomic.atomic_write_bytes(target, b"newer")
    monkeypatch.undo()
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]


# ---------------------------------------------------------------------- objects decomposed into parts (trees)
def make_tree(intermediate_label: str = "") -> LayeredImage:
    """`GROUPED` with object 1 ("car") split in two, its second part split again, and object 4 split in two."""
    from liwi_diffusers import LayerPart

    layered = make_layered(**GROUPED)
    height, width = layered.height, layered.width
    columns, rows = np.mgrid[:height, :width][1], np.mgrid[:height, :width][0]

    def piece(k: int, mask: np.ndarray) -> np.ndarray:
        out = np.zeros_like(layered.foregrounds[k])
        out[mask] = layered.foregrounds[k][mask]
        return out

    left, top = columns < 10, rows < 15
    car = [
        LayerPart(piece(0, ~left), "rest"),
        LayerPart(
            None, intermediate_label, [LayerPart(piece(0, left & top), "wheel"), LayerPart(piece(0, left & ~top))]
        ),
    ]
    last = [LayerPart(piece(3, columns < 30)), LayerPart(piece(3, columns >= 30), "lamp")]
    return LayeredImage(
        layered.background, layered.foregrounds, layered.shadows, layered.labels, parts={0: car, 3: last}
    )


TREE_NAMES = [
    "background",
    ("car", ["shadow 1: car", ("car parts", ["part 1.1: rest", ("part 1.2", ["part 1.2.1: wheel", "part 1.2.2"])])]),
    ("person 1", ["shadow 2: person", "object 2: person"]),
    ("person 2", ["shadow 3: person", "object 3: person"]),
    ("object 4", ["shadow 4", ("object 4 parts", ["part 4.1", "part 4.2: lamp"])]),
]


def assert_same_tree(expected: LayeredImage, actual: LayeredImage) -> None:
    """Same layers bit for bit (`assert_same_layers`) and the same parts, as trees."""
    assert_same_layers(expected, actual)

    def shape(parts: list) -> list:
        return [(part.label, shape(part.parts)) for part in parts]

    assert {k: shape(tree) for k, tree in actual.parts.items()} == {
        k: shape(tree) for k, tree in expected.parts.items()
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tree_of_parts_round_trips_bit_exact_and_recomposes(tmp_path: Path, fmt: str) -> None:
    layered = make_tree()
    photo = layered.compose()
    first = save_layered(layered, tmp_path / f"a.{fmt}")
    again = load_layered(first)
    assert_same_tree(layered, again)
    assert again.check(photo).ok()
    np.testing.assert_array_equal(
        np.round(again.foregrounds[0] * 255)[..., 3], np.round(layered.foregrounds[0] * 255)[..., 3]
    )
    second = save_layered(again, tmp_path / f"b.{fmt}")
    if fmt == "psd":
        assert first.read_bytes() == second.read_bytes()
    else:
        with zipfile.ZipFile(first) as one, zipfile.ZipFile(second) as two:
            listing = "stack.xml" if fmt == "ora" else "manifest.json"
            assert one.read(listing) == two.read(listing)


def test_psd_nests_the_parts_in_the_objects_group_by_psd_tools_and_by_an_independent_reader(tmp_path: Path) -> None:
    layered = make_tree(intermediate_label="arm")
    path = save_layered(layered, tmp_path / "x.psd")

    def tree(layer) -> object:
        return (layer.name, [tree(child) for child in layer]) if layer.is_group() else layer.name

    expected = [*TREE_NAMES]
    expected[1] = (
        "car",
        ["shadow 1: car", ("car parts", ["part 1.1: rest", ("part 1.2: arm", ["part 1.2.1: wheel", "part 1.2.2"])])],
    )
    assert [tree(layer) for layer in PSDImage.open(path)] == expected
    size, records = read_psd_records(path)
    assert size == layered.size and psd_tree(records) == expected
    canvas = np.zeros((layered.height, layered.width, 3))
    for record in records:
        if record["section"] != 0 or record["pixels"] is None:
            continue
        left, top, right, bottom = record["box"]
        rgba = record["pixels"].astype(np.float64) / 255
        region = canvas[top:bottom, left:right]
        region[:] = rgba[:, :, :3] * rgba[:, :, 3:] + region * (1 - rgba[:, :, 3:])
    assert np.abs(canvas - layered.compose()).max() <= 1 / 255
    back = load_layered(path)
    assert (
        back.parts[0][1].label == "" and back.parts[0][1].parts[0].label == "wheel"
    )  # a split part's label: in the group name only


def test_ora_and_png_zip_store_the_parts(tmp_path: Path) -> None:
    layered = make_tree()
    with zipfile.ZipFile(save_layered(layered, tmp_path / "x.ora")) as archive:
        root = ET.fromstring(archive.read("stack.xml"))

    def tree(element: ET.Element) -> object:
        children = [tree(child) for child in reversed(list(element))]  # ORA lists the top first
        return (element.get("name"), children) if element.tag == "stack" else element.get("name")

    assert tree(root.find("stack"))[1] == TREE_NAMES
    with zipfile.ZipFile(save_layered(layered, tmp_path / "x.zip")) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = set(archive.namelist())
    from liwi_diffusers.export import png_zip

    assert manifest["version"] == png_zip.PARTS_MANIFEST_VERSION
    parts = [entry for entry in manifest["layers"] if entry["role"] == "part"]
    assert [(entry["name"], entry["index"], entry["path"]) for entry in parts] == [
        ("part 1.1: rest", 1, [1, 1]), ("part 1.2.1: wheel", 1, [1, 2, 1]), ("part 1.2.2", 1, [1, 2, 2]),
        ("part 4.1", 4, [4, 1]), ("part 4.2: lamp", 4, [4, 2]),
    ]  # fmt: skip
    assert all(entry["file"] in names for entry in parts) and "layers/003-part-1.2.1.png" in names


def test_pptx_nests_the_parts_and_its_pictures_recompose(tmp_path: Path) -> None:
    layered = make_tree()
    path = save_layered(layered, tmp_path / "x.pptx")
    presentation = pptx.Presentation(str(path))
    canvas = np.zeros((layered.height, layered.width, 3))

    def walk(shapes) -> list:
        out = []
        for shape in shapes:
            if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
                out.append((shape.name, walk(shape.shapes)))
                continue
            with Image.open(io.BytesIO(shape.image.blob)) as image:
                rgba = np.asarray(image.convert("RGBA")).astype(np.float64) / 255
            scale = presentation.slide_width / layered.width
            left, top = round(shape.left / scale), round(shape.top / scale)
            region = canvas[top : top + rgba.shape[0], left : left + rgba.shape[1]]
            region[:] = rgba[:, :, :3] * rgba[:, :, 3:] + region * (1 - rgba[:, :, 3:])
            out.append(shape.name)
        return out

    shapes = walk(presentation.slides[0].shapes)
    assert shapes[1] == TREE_NAMES[1] and shapes[-1] == TREE_NAMES[-1]
    assert np.abs(canvas - layered.compose()).max() <= 1 / 255


# ---------------------------------------------------------------------- memory: no full-canvas float stacks
def test_psd_merged_image_is_the_composite_of_its_8bit_layers(tmp_path: Path) -> None:
    for layered in (make_layered(boxes=[(3, 4, 20, 30), (0, 0, 53, 9)]), make_tree()):
        path = save_layered(layered, tmp_path / "x.psd", format="psd")
        with Image.open(path) as picture:  # the stored merged image
            merged = np.asarray(picture.convert("RGB"))
        np.testing.assert_array_equal(merged, np.round(layered.quantized().compose() * 255).astype(np.uint8))
        rendered = np.asarray(PSDImage.open(path).composite(ignore_preview=True).convert("RGB"), np.int16)
        assert np.abs(rendered - merged).max() <= 1  # what psd-tools renders from the layers


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_makes_no_full_canvas_float_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    import tracemalloc

    import liwi_diffusers.layers as layers_module

    width, height = 1024, 512
    layered = make_layered(
        width, height, boxes=[(0, 0, 1024, 400), (100, 100, 600, 500)], shadow_boxes=[(0, 300, 1024, 512), None]
    )
    monkeypatch.setattr(layers_module, "_BAND_PIXELS", 1 << 14)  # the composite and 8-bit conversions in 32 bands
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        save_layered(layered, tmp_path / f"x.{fmt}")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The 8-bit layers (about 11 bytes per canvas pixel here), the writer's encoded copies and the merged image;
    # the full-canvas float RGBA stack alone would take 80 (whole-canvas exports took 80 to 233).
    assert peak < 50 * width * height
    assert_same_layers(layered, load_layered(tmp_path / f"x.{fmt}"))
