"""Layered files (PSD, OpenRaster, PNG zip): round trips, file structure, atomic writes, bad files."""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from liwi_diffusers import LayeredImage, LayeredImageError
from liwi_diffusers.export import (
    SUPPORTED_FORMATS,
    LayeredFileError,
    OutputPathError,
    atomic_write,
    check_writable,
    load_layered,
    ora,
    png_zip,
    save_layered,
)

FORMATS = ["psd", "ora", "zip"]


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
    assert set(SUPPORTED_FORMATS) == set(FORMATS)


def test_save_rejects_non_layered_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="LayeredImage"):
        save_layered(np.zeros((4, 4, 3)), tmp_path / "x.psd")


# ---------------------------------------------------------------------- what other programs see
def test_psd_is_rgba_with_named_cropped_layers_and_right_composite(tmp_path: Path) -> None:
    layered = make_layered(boxes=[(3, 4, 20, 30), None], shadow_boxes=[(5, 6, 25, 33), None], labels=["cup", "猫"])
    path = save_layered(layered, tmp_path / "x.psd")

    document = PSDImage.open(path)
    assert document.color_mode.name == "RGB" and document.channels == 4 and document.depth == 8
    assert [layer.name for layer in document] == layered.layer_names()
    boxes = {layer.name: layer.bbox for layer in document}
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
    module = ora if fmt == "ora" else png_zip
    encode, calls = module.png_bytes, []

    def png_bytes(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise error("interrupted")
        return encode(pixels)

    monkeypatch.setattr(module, "png_bytes", png_bytes)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, error: type[BaseException]
) -> None:
    _fail_mid_write(monkeypatch, fmt, error)
    target = tmp_path / f"x.{fmt}"
    with pytest.raises(error, match="interrupted"):
        save_layered(make_layered(), target)
    assert not list(tmp_path.iterdir())  # no target, no temporary file


@pytest.mark.parametrize("fmt", FORMATS)
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
