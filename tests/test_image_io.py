"""Every kind of input photo: usable ones are handled correctly, bad ones get one clear error."""

import contextlib
import gc
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from liwi_diffusers.image_io import ImageInputWarning, ImageLoadError, load_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def gradient(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(x[::-1], (height, 1)), np.full((height, width), 90, np.uint8)], 2)
    return Image.fromarray(rgb, "RGB")


def png_with_header_only(path, width: int, height: int):
    """A PNG whose header claims a size, with a tiny (invalid) body: no pixels are ever decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def test_rgb_jpeg_and_png_load_unchanged(tmp_path):
    image = gradient()
    loaded = load_image(save(image, tmp_path / "a.png"))
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image))
    assert load_image(save(image, tmp_path / "a.jpg", quality=95)).size == (40, 30)


def test_pil_image_is_accepted_directly():
    assert load_image(gradient().convert("L")).mode == "RGB"


def test_wrong_argument_type_is_a_clear_type_error():
    with pytest.raises(TypeError, match="path or a PIL image"):
        load_image(np.zeros((4, 4, 3)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: write(d / "empty.png", b""), "empty file"),
        (lambda d: write(d / "notes.jpg", b"hello, not a photo"), "not an image"),
        (lambda d: save(Image.new("RGB", (1, 1)), d / "dot.png"), "1x1"),
        (lambda d: png_with_header_only(d / "bomb.png", 30000, 30000), "900 MP, above the 64 MP limit"),
        (lambda d: png_with_header_only(d / "big.png", 9000, 9000), "9000x9000 .81 MP., above the 64 MP limit"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, make, message):
    with pytest.raises(ImageLoadError, match=message) as caught:
        load_image(make(tmp_path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_are_refused_not_padded(tmp_path, suffix):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format=suffix[1:].replace("jpg", "jpeg")
    )
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated|corrupt"):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path):
    path = save(gradient(), tmp_path / "a.png")
    with pytest.raises(ImageLoadError, match="MP limit"):
        load_image(path, max_pixels=100)


def test_sixteen_bit_grayscale_keeps_its_tonal_range(tmp_path):
    values = np.array([[0, 257 * 100, 65535] * 4] * 12, dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (12, 12, 3)
    np.testing.assert_array_equal(loaded[0, :3, 0], [0, 100, 255])


def test_palette_with_transparency_is_flattened_with_a_warning(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 8, 16))
    image.info["transparency"] = 1
    path = save(image, tmp_path / "pal.png", transparency=1)
    with pytest.warns(ImageInputWarning, match="transparency"):
        loaded = load_image(path)
    assert loaded.getpixel((2, 2)) == (255, 255, 255)  # transparent half flattened on white
    assert loaded.getpixel((12, 2)) == (255, 0, 0)


def test_palette_without_transparency_loads_silently(tmp_path, recwarn):
    path = save(gradient().convert("P"), tmp_path / "pal.gif")
    assert load_image(path).mode == "RGB"
    assert not [w for w in recwarn if issubclass(w.category, ImageInputWarning)]


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    r, g, b = load_image(path).getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60  # pure red ink stays red


def test_grayscale_and_la(tmp_path):
    assert load_image(save(gradient().convert("L"), tmp_path / "g.png")).mode == "RGB"
    la = Image.merge("LA", [gradient().convert("L"), Image.new("L", (40, 30), 255)])
    assert load_image(save(la, tmp_path / "la.png")).mode == "RGB"  # opaque alpha: no flattening needed


def test_rgba_with_transparency_is_flattened_onto_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :5, 3] = 255
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "cut.png")
    with pytest.warns(ImageInputWarning, match="flattened"):
        loaded = load_image(path)
    assert loaded.getpixel((1, 1)) == (255, 0, 0) and loaded.getpixel((8, 1)) == (255, 255, 255)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    image = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    path = save(image, tmp_path / "phone.jpg", exif=exif.tobytes())
    with Image.open(path) as opened:
        assert opened.size == (40, 30)
    assert load_image(path).size == (30, 40)


def test_animated_gif_gives_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(ImageInputWarning, match="2 frames"):
        loaded = load_image(path)
    assert loaded.getpixel((4, 4))[0] > 200


def test_float_tiff(tmp_path):
    values = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    path = save(Image.fromarray(values, "F"), tmp_path / "f.tif")
    loaded = np.asarray(load_image(path))
    assert loaded[0, 0, 0] == 0 and loaded[0, -1, 0] == 255


# ------------------------------------------------------------------ accurate messages, no leaks
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def with_bad_crc(data: bytes, chunk: bytes) -> bytes:
    """``data`` (a PNG) with a byte in its first ``chunk`` chunk flipped, so the chunk's CRC fails."""
    at = data.index(chunk) + 4 + 6  # a byte of the chunk's data: IHDR's height, IDAT's zlib stream
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_png_with_a_bad_crc_is_corrupt_not_a_non_image(tmp_path, chunk):
    path = write(tmp_path / "crc.png", with_bad_crc(png_bytes(noise()), chunk))
    with pytest.raises(ImageLoadError, match=f"corrupt.*bad CRC in the {chunk.decode()} chunk") as caught:
        load_image(path)
    assert "not an image" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0 then junk", b"GIF89a junk", b"RIFF\0\0\0\0WEBPjunk", b"BM junk"])
def test_known_signature_with_bad_content_is_corrupt(tmp_path, data):
    with pytest.raises(ImageLoadError, match=r"corrupt (or truncated )?(JPEG|GIF|WebP|BMP) file"):
        load_image(write(tmp_path / "x.img", data))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_rgb_tiff_is_converted_to_8_bit(tmp_path, dtype):
    import tifffile

    values = np.random.default_rng(1).random((12, 10, 3)).astype(dtype)
    values[0, 0] = (0.0, 0.5, 1.0)
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    with pytest.raises(OSError), Image.open(path) as opened:  # Pillow cannot: this goes through the fallback
        opened.load()
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (10, 12)
    expected = np.round(np.clip(values.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(loaded), expected)
    assert tuple(np.asarray(loaded)[0, 0]) == (0, 128, 255)


def test_float_rgb_tiff_in_0_255_and_planar_and_alpha(tmp_path):
    import tifffile

    values = np.random.default_rng(2).random((3, 9, 11)).astype(np.float32) * 255  # planar, 0..255
    tifffile.imwrite(tmp_path / "planar.tif", values, photometric="rgb", planarconfig="separate")
    loaded = np.asarray(load_image(tmp_path / "planar.tif"))
    np.testing.assert_array_equal(loaded, np.round(np.moveaxis(values, 0, -1)).astype(np.uint8))
    rgba = np.zeros((9, 11, 4), np.float32)
    rgba[..., 0], rgba[:, :5, 3] = 1.0, 1.0
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(ImageInputWarning, match="transparency"):
        flat = load_image(tmp_path / "rgba.tif")
    assert flat.getpixel((1, 1)) == (255, 0, 0) and flat.getpixel((9, 1)) == (255, 255, 255)


def test_float_tiff_above_the_pixel_limit_is_refused_before_reading(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.zeros((40, 50, 3), np.float32), photometric="rgb")
    with pytest.raises(ImageLoadError, match=r"50x40 .* above the 0 MP limit"):
        load_image(tmp_path / "f.tif", max_pixels=1000)


def test_max_pixels_above_pillows_bomb_limit_is_the_limit_in_force(tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert 2 * pillow_limit < 400_000_000  # the header below trips Pillow's own guard by default
    path = png_with_header_only(tmp_path / "big.png", 20000, 20000)  # 400 MP
    with pytest.raises(ImageLoadError, match="400 MP, above the 64 MP limit"):
        load_image(path)
    # Allowed by max_pixels: no contradictory "400 MP, above the 500 MP limit"; the (fake) pixels
    # are then found corrupt.
    with pytest.raises(ImageLoadError, match="corrupt") as caught:
        load_image(path, max_pixels=500_000_000)
    assert "limit" not in str(caught.value)
    with pytest.raises(ImageLoadError, match=r"\(400 MP\), above the 300 MP limit"):
        load_image(path, max_pixels=300_000_000)
    path = png_with_header_only(tmp_path / "bigger.png", 30000, 30000)  # 900 MP: Pillow's raised guard
    with pytest.raises(ImageLoadError, match="900 MP, above the 300 MP limit"):
        load_image(path, max_pixels=300_000_000)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # put back


def _open_files_under(folder) -> list[str]:
    import os

    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.parametrize(
    "make",
    [
        lambda d: save(Image.new("RGB", (1, 1)), d / "dot.png"),
        lambda d: save(Image.new("RGB", (2, 2000)), d / "thin.png"),
        lambda d: png_with_header_only(d / "bomb.png", 30000, 30000),
        lambda d: write(d / "crc.png", with_bad_crc(png_bytes(noise()), b"IDAT")),
        lambda d: save(gradient(), d / "ok.png"),
        lambda d: save(gradient(), d / "ok.jpg"),
        "animated",
    ],
)
def test_no_file_handle_is_left_open(tmp_path, make):
    if make == "animated":
        frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0))]
        path = tmp_path / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    else:
        path = make(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        warnings.simplefilter("ignore", ImageInputWarning)
        with contextlib.suppress(ImageLoadError):
            assert load_image(path).mode == "RGB"
        assert _open_files_under(tmp_path) == []
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
