"""OpenCVInpainter: every fill method restores a textured hole, leaves the rest alone and rejects bad masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from liwi_diffusers.tools import Inpainter
from liwi_diffusers.tools._utils import dilate
from liwi_diffusers.tools.inpainting import INPAINT_METHODS, OpenCVInpainter, transfer_detail


def textured(size: int = 96) -> np.ndarray:
    """A smooth colour gradient with a stripe texture and a little seeded noise, float32 RGB in [0, 1]."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stripes = 0.15 * np.sin(2 * np.pi * 6 * (x + 0.5 * y))
    image = np.stack([0.3 + 0.4 * x + stripes, 0.5 + 0.2 * y - stripes, 0.6 - 0.3 * x + 0.5 * stripes], axis=2)
    return np.clip(image + rng.normal(0.0, 0.01, image.shape), 0.0, 1.0).astype(np.float32)


def square_hole(size: int = 96, side: int = 24) -> np.ndarray:
    hole = np.zeros((size, size), bool)
    start = (size - side) // 2
    hole[start : start + side, start : start + side] = True
    return hole


# Small images keep the slow xphoto methods fast; 32 px forces the coarse-to-fine path at 64 px, 256 px runs directly.
@pytest.mark.parametrize("method", INPAINT_METHODS)
@pytest.mark.parametrize("working_size", [32, 256])
def test_fill_beats_black_and_keeps_outside(method: str, working_size: int) -> None:
    truth = textured(64)
    hole = square_hole(64, 16)
    damaged = np.where(hole[:, :, None], 0.0, truth).astype(np.float32)
    inpainter = OpenCVInpainter(method=method, working_size=working_size, dilation=0)
    assert isinstance(inpainter, Inpainter)
    filled = inpainter(damaged, hole)
    assert filled.dtype == np.float32 and filled.shape == truth.shape
    assert np.isfinite(filled).all() and filled.min() >= 0.0 and filled.max() <= 1.0
    np.testing.assert_array_equal(filled[~hole], damaged[~hole])
    error = np.abs(filled - truth)[hole].mean()
    black = np.abs(damaged - truth)[hole].mean()
    assert error < 0.25 * black, f"{method}: fill error {error:.3f} vs {black:.3f} for a black hole"


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_dilation_grows_the_hole_and_nothing_else(method: str) -> None:
    truth = textured(48)
    hole = square_hole(48, 12)
    filled = OpenCVInpainter(method=method, working_size=24, dilation=3)(truth, hole)
    grown = np.zeros_like(hole)
    grown[15:33, 15:33] = True  # the 12 px square (18..29) grown by 3 px on each side (the disc fits inside)
    np.testing.assert_array_equal(filled[~grown], truth[~grown])
    assert not np.array_equal(filled[hole], truth[hole])


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_empty_mask_is_a_no_op(method: str) -> None:
    truth = textured(48)
    for mask in (np.zeros((48, 48), bool), np.zeros((48, 48), np.float32)):
        filled = OpenCVInpainter(method=method)(truth, mask)
        np.testing.assert_array_equal(filled, truth)
        assert filled is not truth


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_all_masked_image_is_a_clear_error(method: str) -> None:
    with pytest.raises(ValueError, match="covers the whole image"):
        OpenCVInpainter(method=method)(textured(32), np.ones((32, 32), bool))


def test_float_input_and_uint8_input_agree() -> None:
    truth = textured(64)
    hole = square_hole(64, 20)
    as_uint8 = np.round(truth * 255).astype(np.uint8)
    inpainter = OpenCVInpainter(method="fsr_fast", working_size=32)
    from_float = inpainter(as_uint8.astype(np.float32) / 255.0, hole)
    from_uint8 = inpainter(as_uint8, hole)
    np.testing.assert_allclose(from_float, from_uint8, atol=1e-6)


def test_fill_is_deterministic() -> None:
    truth = textured(64)
    hole = square_hole(64, 16)
    for method in ("smooth", "shiftmap", "fsr_fast", "biharmonic"):
        inpainter = OpenCVInpainter(method=method, working_size=32)
        np.testing.assert_array_equal(inpainter(truth, hole), inpainter(truth, hole))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        OpenCVInpainter(method="lama")
    with pytest.raises(ValueError, match="fine_method must be"):
        OpenCVInpainter(fine_method="fsr_fast")
    with pytest.raises(ValueError, match="working_size"):
        OpenCVInpainter(working_size=0)
    with pytest.raises(ValueError, match="but the image is"):
        OpenCVInpainter()(textured(32), np.zeros((16, 16), bool))


def test_default_is_the_smooth_fill() -> None:
    default = OpenCVInpainter()
    assert (default.method, default.working_size) == ("smooth", 256)
    truth = textured(64)
    hole = square_hole(64, 20)
    np.testing.assert_array_equal(default(truth, hole), OpenCVInpainter(method="smooth")(truth, hole))


def _grass(size: int = 128, seed: int = 0) -> np.ndarray:
    """A stochastic texture: green with fine noise, the kind of surface a smooth fill turns into a smear."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0.0, 0.12, (size, size)).astype(np.float32), (0, 0), 0.8)
    return np.clip(np.stack([0.25 + noise, 0.5 + noise, 0.2 + noise], axis=2), 0.0, 1.0).astype(np.float32)


def test_texture_brings_the_surroundings_detail_into_a_large_hole() -> None:
    image = _grass()
    hole = np.zeros(image.shape[:2], bool)
    hole[32:96, 40:100] = True
    core = np.zeros_like(hole)
    core[44:84, 52:88] = True  # well inside the hole, past the fade-in
    smooth = OpenCVInpainter()(image, hole)
    textured = OpenCVInpainter(texture=True)(image, hole)
    truth_std = float(image[core].std(axis=0).mean())
    assert float(smooth[core].std(axis=0).mean()) < 0.3 * truth_std  # the smear
    assert 0.5 * truth_std < float(textured[core].std(axis=0).mean()) < 1.5 * truth_std
    assert np.array_equal(textured[~dilate(hole, 2)], image[~dilate(hole, 2)])  # outside untouched
    # The colour stays the fill's: detail averages out.
    assert np.abs(textured[core].mean(axis=0) - smooth[core].mean(axis=0)).max() < 0.03
    assert np.array_equal(textured, OpenCVInpainter(texture=True)(image, hole))  # deterministic
    assert not np.array_equal(textured, OpenCVInpainter(texture=True, seed=1)(image, hole))


def test_texture_without_known_tiles_leaves_the_fill_as_it_is() -> None:
    image = _grass(64)
    hole = np.ones(image.shape[:2], bool)
    hole[:3] = False  # a strip too thin for one whole tile
    filled = OpenCVInpainter()(image, hole)
    assert np.array_equal(transfer_detail(image, hole, filled, np.random.default_rng(0)), filled)
