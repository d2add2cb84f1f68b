"""Compact layers: `LayerCrop` (a layer's box only, float32 or 16-bit) inside `LayeredImage`."""

from __future__ import annotations

import numpy as np
import pytest

from liwi_diffusers.export import load_layered, save_layered
from liwi_diffusers.export._common import file_layers
from liwi_diffusers.layers import LayerCrop, LayeredImage, LayeredImageError, reconcile_with_image

STEP = 0.5 / 65535  # the largest change 16-bit storage makes to a value


def layered_with_border_objects(seed: int = 0, size: tuple[int, int] = (37, 53)) -> LayeredImage:
    """Three objects: one touching the top-left corner, one the bottom-right corner, one empty; a shadow each."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = rng.random((height, width, 3), dtype=np.float32)
    corner = np.zeros((height, width, 4), np.float32)
    corner[:9, :14] = rng.random((9, 14, 4), dtype=np.float32)
    corner[:9, :14, 3] = np.clip(corner[:9, :14, 3] + 0.2, 0, 1)
    far = np.zeros((height, width, 4), np.float32)
    far[25:, 40:] = rng.random((height - 25, width - 40, 4), dtype=np.float32)
    far[25:, 40:, 3] = 1.0
    shadows = [np.zeros((height, width), np.float32) for _ in range(3)]
    shadows[0][5:20, 3:30] = rng.random((15, 27), dtype=np.float32) * 0.6
    shadows[1][30:, 10:] = 0.25  # to the bottom and right borders
    return LayeredImage(background, [corner, far, np.zeros((height, width, 4), np.float32)], shadows, ["a", "b", ""])


def test_compact_round_trip_keeps_every_layer_within_a_16_bit_step_and_the_boxes():
    layered = layered_with_border_objects()
    compact = layered.compact()
    assert isinstance(compact.layer_crop("object", 0), LayerCrop)
    assert compact.layer_crop("object", 0).pixels.dtype == np.uint16
    assert compact.layer_crop("object", 0).box == (0, 0, 14, 9)
    assert compact.layer_crop("object", 1).box == (40, 25, 53, 37)  # the bottom-right corner
    assert compact.layer_crop("shadow", 1).box == (10, 30, 53, 37)
    assert compact.layer_crop("object", 2).box is None and compact.layer_crop("object", 2).pixels.shape == (0, 0, 4)
    assert compact.object_boxes() == layered.object_boxes()
    np.testing.assert_allclose(compact.compose(), layered.compose(), atol=4 * STEP)
    assert compact.check(layered.compose()).max_abs_error <= 4 * STEP
    # Full canvas on demand, float32, the same values within a 16-bit step (and exact zeros outside the boxes).
    for full, original in zip(compact.foregrounds, layered.foregrounds):
        assert full.dtype == np.float32 and full.shape == original.shape
        np.testing.assert_allclose(full, original, atol=STEP + 1e-7)
        assert np.array_equal(full == 0, original == 0)
    for full, original in zip(compact.shadows, layered.shadows):
        assert full.shape == original.shape
        np.testing.assert_allclose(full, original, atol=STEP + 1e-7)
    np.testing.assert_allclose(compact.background, layered.background, atol=STEP + 1e-7)


def test_float32_crops_keep_values_exactly_and_8_bit_values_survive_16_bits_bit_for_bit():
    layered = layered_with_border_objects(1)
    exact = layered.compact(np.float32)
    assert np.array_equal(exact.compose(), layered.compose())
    for full, original in zip(exact.foregrounds, layered.foregrounds):
        assert np.array_equal(full, original)
    eight_bit = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    as_float = eight_bit.astype(np.float32) / np.float32(255.0)
    stored = LayeredImage(as_float).compact()
    assert stored.layer_crop("background").pixels.dtype == np.uint16
    assert np.array_equal(stored.background, as_float)  # 65535 = 255 * 257: no rounding at all


def test_crop_read_and_write_clip_to_the_crop_and_the_canvas_window():
    pixels = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 24
    crop = LayerCrop(pixels.copy(), left=5, top=1)
    window = crop.read(slice(0, 4), slice(4, 9))  # reaches past every side of the crop
    assert window.shape == (4, 5, 4)
    np.testing.assert_array_equal(window[1:3, 1:4], pixels)
    assert not window[0].any() and not window[3].any() and not window[:, 0].any() and not window[:, 4].any()
    crop.write(0, 4, np.ones((4, 5, 4), np.float32))  # only the part inside the crop is stored
    assert np.array_equal(crop.pixels, np.ones((2, 3, 4), np.float32))
    sixteen = LayerCrop(np.zeros((2, 2), np.uint16), 0, 0)
    sixteen.write(0, 0, np.array([[0.5, 1.0], [0.0, 1 / 3]], np.float32))
    assert sixteen.pixels.tolist() == [[32768, 65535], [0, 21845]]
    assert sixteen.nonzero_box() == (0, 0, 2, 2) and sixteen.nonzero_box(threshold=0.6) == (1, 0, 2, 1)
    empty = LayerCrop(np.zeros((0, 0, 4), np.uint16), 3, 3)
    assert empty.box is None and empty.nonzero_box(3) is None and not empty.read(slice(0, 2), slice(0, 2)).any()
    empty.write(0, 0, np.ones((2, 2, 4), np.float32))  # nothing to store into, and no error


def test_crops_that_do_not_fit_are_refused_with_a_clear_error():
    background = np.zeros((10, 10, 3), np.float32)
    with pytest.raises(LayeredImageError, match="outside the 10x10 canvas"):
        LayeredImage(background, [LayerCrop(np.ones((4, 4, 4), np.float32), left=8, top=0)])
    with pytest.raises(LayeredImageError, match=r"crop pixels must be \(h, w, 4\)"):
        LayeredImage(background, [LayerCrop(np.ones((4, 4, 3), np.float32))])
    with pytest.raises(LayeredImageError, match="values must lie in"):
        LayeredImage(background, [LayerCrop(np.full((2, 2, 4), 2.0, np.float32))])
    with pytest.raises(LayeredImageError, match="cover the whole canvas"):
        LayeredImage(LayerCrop(np.zeros((4, 4, 3), np.float32), left=1))


def test_full_canvas_access_materialises_once_and_keeps_changes():
    compact = layered_with_border_objects(3).compact()
    foregrounds = compact.foregrounds
    assert all(isinstance(fg, np.ndarray) and fg.shape == (37, 53, 4) for fg in foregrounds)
    assert compact.foregrounds is foregrounds  # the same arrays: no new copy on each access
    foregrounds[1][:, :, :3] = 0.0  # written through the public attribute, as before crops existed
    assert not compact.foregrounds[1][:, :, :3].any()
    assert not compact.layer_crop("object", 1).read(slice(0, 37), slice(0, 53))[:, :, :3].any()
    compact.shadows[0][:] = 0.0
    assert compact.layer_crop("shadow", 0).nonzero_box() is None


def test_compact_layers_copy_select_quantize_and_reconcile_without_losing_their_form():
    layered = layered_with_border_objects(4)
    compact = layered.compact()
    copied = compact.copy()
    assert isinstance(copied.layer_crop("object", 0), LayerCrop) and copied.layer_crop("object", 0).box == (0, 0, 14, 9)
    copied.layer_crop("object", 0).pixels[:] = 0
    assert compact.layer_crop("object", 0).pixels.any()  # a deep copy
    picked = compact.select([1])
    assert picked.num_objects == 1 and picked.layer_crop("object", 0).box == (40, 25, 53, 37)
    np.testing.assert_allclose(compact.quantized().compose(), layered.quantized().compose(), atol=1 / 255 + 1e-6)
    target = np.clip(layered.compose() + 0.01, 0, 1)
    fixed = reconcile_with_image(compact, target)
    assert fixed.check(target).max_abs_error < 0.05
    assert isinstance(compact._foregrounds[0], LayerCrop)  # reconciling read the crops, left them as they were


@pytest.mark.parametrize("suffix", [".psd", ".ora", ".zip"])
def test_compact_layers_write_the_same_files_as_full_ones(tmp_path, suffix):
    layered = layered_with_border_objects(5).compact(np.float32)
    full = LayeredImage(
        layered.layer_crop("background").full(37, 53),
        [layered.layer_crop("object", k).full(37, 53) for k in range(3)],
        [layered.layer_crop("shadow", k).full(37, 53) for k in range(3)],
        list(layered.labels),
    )
    for a, b in zip(file_layers(layered), file_layers(full)):
        assert (a.name, a.left, a.top) == (b.name, b.left, b.top)
        assert np.array_equal(a.pixels, b.pixels)
    compact16 = layered_with_border_objects(5).compact()
    save_layered(compact16, tmp_path / f"layers{suffix}")
    back = load_layered(tmp_path / f"layers{suffix}")
    assert back.num_objects == 3 and back.object_boxes()[2] is None  # the empty object stays empty
    np.testing.assert_allclose(back.compose(), compact16.quantized().compose(), atol=1 / 255 + 1e-6)


class RedThings:
    """A segmenter that sees every red region (a learned model's answer, made up for the test)."""

    name = "red"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return ((image[:, :, 0] - image[:, :, 1]) > 0.4).astype(np.float32)


def red_scene(height: int = 150, width: int = 230) -> np.ndarray:
    """An 8-bit photo: noisy grey-green ground, a red disc at the bottom border, a red square at the left border."""
    rng = np.random.default_rng(7)
    image = np.clip(rng.normal((115, 140, 115), 3, (height, width, 3)), 0, 255)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - height) ** 2 + (xx - 150) ** 2 <= 40**2] = (230, 25, 25)
    image[20:60, :30] = (215, 40, 25)
    return image.astype(np.uint8)


def test_the_decomposer_keeps_full_size_layers_as_16_bit_crops_that_recompose_to_the_photo():
    from liwi_diffusers.tools import ToolChainDecomposer

    photo = red_scene()
    layered = ToolChainDecomposer(segmenter=RedThings(), tiles=0, max_resolution=64)(photo)
    assert layered.num_objects == 2
    for k in range(2):
        crop = layered.layer_crop("object", k)
        assert isinstance(crop, LayerCrop) and crop.pixels.dtype == np.uint16
        left, top, right, bottom = crop.box
        assert (right - left) * (bottom - top) < 0.3 * photo.shape[0] * photo.shape[1]  # its box, not the canvas
        assert min(left, top) >= 0 and right <= photo.shape[1] and bottom <= photo.shape[0]
    boxes = sorted(layered.object_boxes())
    assert boxes[0][0] == 0 and boxes[1][3] == photo.shape[0]  # the square at the left border, the disc at the bottom
    assert layered.layer_crop("background").pixels.dtype == np.uint16
    report = layered.check(photo)
    assert report.ok() and report.max_abs_error < 1e-4  # 16-bit storage: far inside one 8-bit step
    far = layered.background[:8, 100:140]  # nothing covers or darkens it: the photo's own values, bit for bit
    assert np.array_equal(far, photo[:8, 100:140].astype(np.float32) / np.float32(255.0))
    # The same decomposition from a float photo recomposes as well.
    from_float = ToolChainDecomposer(segmenter=RedThings(), tiles=0, max_resolution=64)(photo / np.float32(255.0))
    assert from_float.num_objects == 2 and from_float.check(photo).max_abs_error < 1e-4


def test_reconciling_crops_in_bands_matches_reconciling_full_layers():
    from liwi_diffusers.tools.decomposer import _reconcile

    photo = red_scene(60, 80)
    layered = layered_with_border_objects(6, size=(60, 80))
    whole = _reconcile(layered.copy(), photo, band_pixels=1 << 30)
    banded = _reconcile(layered.compact(), photo, band_pixels=100)  # a row or two a band, on 16-bit crops
    assert isinstance(banded._foregrounds[0], LayerCrop)
    for k in range(3):  # an object changes inside its crop only: its box stays where it was
        assert banded.layer_crop("object", k).box == layered.compact().layer_crop("object", k).box
    np.testing.assert_allclose(banded.compose(), whole.compose(), atol=1e-4)
    assert whole.check(photo).max_abs_error == pytest.approx(banded.check(photo).max_abs_error, abs=1e-4)
    assert banded.check(photo).mean_abs_error < 0.2 * layered.check(photo).mean_abs_error  # it did reconcile


def test_psd_layers_made_from_their_planes_give_the_file_psd_tools_makes(tmp_path, monkeypatch):
    from psd_tools import PSDImage

    from liwi_diffusers.export import psd
    from liwi_diffusers.export._common import FileLayer

    pixels = np.random.default_rng(9).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    made = psd._pixel_layer_from_planes(PSDImage.new("RGBA", (20, 10)), FileLayer("x", pixels, 3, 2))
    assert made is not None and np.array_equal(np.asarray(made.topil()), pixels)  # the planes path is taken
    layered = layered_with_border_objects(8).compact()
    save_layered(layered, tmp_path / "planes.psd")
    monkeypatch.setattr(psd, "_pixel_layer_from_planes", lambda document, layer: None)  # psd-tools' own path
    save_layered(layered, tmp_path / "pil.psd")
    assert (tmp_path / "planes.psd").read_bytes() == (tmp_path / "pil.psd").read_bytes()


def test_16_bit_layers_convert_to_the_same_8_bit_files_as_their_float_values():
    from liwi_diffusers.export._common import _uint8_window
    from liwi_diffusers.layers import _as_float, to_uint8

    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.round(every.astype(np.float64) / 257).astype(np.uint8)  # v / 65535 * 255, never a tie
    assert np.array_equal(_uint8_window(LayerCrop(every), (0, 0, 256, 256)), expected)
    assert np.array_equal(to_uint8(_as_float(every)), expected)
    compact = layered_with_border_objects(10).compact()
    height, width = compact.height, compact.width
    materialised = LayeredImage(
        compact.layer_crop("background").full(height, width),
        [compact.layer_crop("object", k).full(height, width) for k in range(3)],
        [compact.layer_crop("shadow", k).full(height, width) for k in range(3)],
        list(compact.labels),
    )
    for a, b in zip(file_layers(compact), file_layers(materialised)):
        assert (a.name, a.left, a.top) == (b.name, b.left, b.top) and np.array_equal(a.pixels, b.pixels)
