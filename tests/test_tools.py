"""The weight-free tools (proposals, matting, inpainting, shadows) and the training-free decomposer.

Synthetic images with known answers check each tool; a downscaled real photo checks the decomposer.
Everything is deterministic and small (96-160 px) so the file runs in well under a minute on 2 cores
once pymatting's numba kernels are cached (its very first import compiles them, about a minute).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from liwi_diffusers import LayeredImage, LayeredImageError
from liwi_diffusers.tools import (
    AlphaMatter,
    ClosedFormMatter,
    DarkeningShadowExtractor,
    Inpainter,
    ObjectProposal,
    ObjectProposer,
    OpenCVInpainter,
    SaliencyProposer,
    ShadowExtractor,
    ToolChainDecomposer,
    make_trimap,
)

BACKGROUND = np.array([0.25, 0.45, 0.7], np.float32)
OBJECT = np.array([0.9, 0.55, 0.1], np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _disc_image(size: int = 128, radius: float = 26.0, softness: float = 0.0, noise: float = 0.01):
    """A disc on a flat background: (image, alpha) with a soft edge of ``softness`` pixels."""
    rows, cols = _grid(size)
    distance = np.hypot(rows - size / 2, cols - size / 2)
    if softness > 0:
        alpha = np.clip((radius - distance) / softness + 0.5, 0.0, 1.0)
    else:
        alpha = (distance <= radius).astype(np.float32)
    image = alpha[:, :, None] * OBJECT + (1 - alpha[:, :, None]) * BACKGROUND
    if noise:
        image = image + np.random.default_rng(0).normal(0.0, noise, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), alpha.astype(np.float32)


def _shadow_scene(size: int = 128, sigma: float = 0.4, with_shadow: bool = True):
    """A box standing on a gently lit, slightly noisy floor, with an elliptic cast shadow beside and below."""
    rows, cols = _grid(size)
    box = (np.abs(cols - 64) < 14) & (rows > 30) & (rows < 80)
    shadow = (((cols - 70) / 22) ** 2 + ((rows - 84) / 10) ** 2 <= 1) & ~box
    truth = np.where(shadow, sigma, 0.0).astype(np.float32) if with_shadow else np.zeros((size, size), np.float32)
    noise = np.random.default_rng(0).normal(0.0, 0.01, (size, size, 1))
    floor = np.clip((0.55 + 0.2 * cols[:, :, None] / size + noise) * np.array([1.0, 0.95, 0.85]), 0, 1)
    image = floor * (1 - truth[:, :, None])
    image[box] = [0.2, 0.3, 0.8]
    return image.astype(np.float32), box, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    import skimage.data as data

    return Image.fromarray(data.astronaut()).resize((160, 160), Image.BICUBIC)


# ---------------------------------------------------------------------------------------------- interfaces
def test_defaults_implement_the_interfaces():
    assert isinstance(SaliencyProposer(), ObjectProposer)
    assert isinstance(ClosedFormMatter(), AlphaMatter)
    assert isinstance(OpenCVInpainter(), Inpainter)
    assert isinstance(DarkeningShadowExtractor(), ShadowExtractor)


def test_importing_the_tools_does_not_import_pymatting():
    code = "import sys, liwi_diffusers.tools; assert 'pymatting' not in sys.modules and 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- proposals
def test_proposal_covers_a_disc():
    image, alpha = _disc_image()
    proposals = SaliencyProposer()(image)
    assert proposals, "no object found on a plain disc"
    best = proposals[0]
    assert isinstance(best, ObjectProposal)
    assert best.mask.shape == alpha.shape and best.mask.dtype == bool
    assert _iou(best.mask, alpha > 0.5) > 0.8
    left, top, right, bottom = best.box
    assert abs(left - 38) <= 4 and abs(top - 38) <= 4 and abs(right - 90) <= 4 and abs(bottom - 90) <= 4
    assert 0.0 <= best.score <= 1.0


def test_proposals_on_a_flat_image_and_limits():
    flat = np.full((96, 96, 3), 0.5, np.float32)
    assert SaliencyProposer()(flat) == []
    image, _ = _disc_image()
    assert SaliencyProposer()(image, max_objects=0) == []
    assert SaliencyProposer()(np.zeros((8, 8, 3), np.float32)) == []  # too small to hold objects
    with pytest.raises(ValueError, match="max_objects"):
        SaliencyProposer()(image, max_objects=-1)
    with pytest.raises(ValueError, match="hypotheses"):
        SaliencyProposer(hypotheses=("magic",))


def test_two_discs_are_two_objects():
    rows, cols = _grid(128)
    left = np.hypot(rows - 64, cols - 36) <= 18
    right = np.hypot(rows - 64, cols - 94) <= 18
    image = np.where((left | right)[:, :, None], OBJECT, BACKGROUND).astype(np.float32)
    proposals = SaliencyProposer()(image)
    assert len(proposals) == 2
    matched = sorted(max(_iou(p.mask, disc) for p in proposals) for disc in (left, right))
    assert matched[0] > 0.8


# ---------------------------------------------------------------------------------------------- matting
def test_trimap_from_mask():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    trimap = make_trimap(mask, 2)
    assert trimap[10, 10] == 1.0 and trimap[0, 0] == 0.0 and trimap[5, 10] == 0.5


def test_matting_recovers_a_soft_edge():
    image, alpha = _disc_image(size=112, radius=30, softness=6.0, noise=0.0)
    matte = ClosedFormMatter()(image, alpha > 0.5)
    assert matte.alpha.shape == alpha.shape and matte.foreground.shape == image.shape
    assert matte.alpha.min() >= 0.0 and matte.alpha.max() <= 1.0
    edge = (alpha > 0.02) & (alpha < 0.98)
    assert np.abs(matte.alpha - alpha)[edge].mean() < 0.05
    assert np.abs(matte.alpha - alpha).max() < 0.2
    # Straight colour: the object's own colour even where it is half transparent.
    visible = alpha > 0.2
    assert np.abs(matte.foreground[visible] - OBJECT).mean() < 0.03
    rgba = matte.rgba()
    assert rgba.shape == (112, 112, 4) and rgba.dtype == np.float32


def test_matting_an_empty_mask_gives_an_empty_matte():
    image, _ = _disc_image(size=64)
    matte = ClosedFormMatter()(image, np.zeros((64, 64), bool))
    assert matte.alpha.max() == 0.0


# ---------------------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("method", ["smooth", "telea", "ns"])
@pytest.mark.parametrize("hole_size", [10, 120])
def test_inpainting_fills_a_flat_background(method, hole_size):
    size = 300
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUND
    mask = np.zeros((size, size), bool)
    start = (size - hole_size) // 2
    mask[start : start + hole_size, start : start + hole_size] = True
    image[mask] = [1.0, 0.0, 1.0]  # what the object looked like
    filled = OpenCVInpainter(method=method)(image, mask)
    assert filled.shape == image.shape and filled.dtype == np.float32
    assert np.abs(filled - BACKGROUND).max() < 2 / 255
    untouched = ~binary_dilation(mask, iterations=4)  # pixels away from the (dilated) hole keep their value
    assert np.array_equal(filled[untouched], image[untouched])


def test_inpainting_keeps_a_gradient_and_rejects_a_full_mask():
    rows, cols = _grid(96)
    image = np.stack([cols / 95, rows / 95, np.full_like(rows, 0.5)], axis=2).astype(np.float32)
    mask = np.zeros((96, 96), bool)
    mask[40:56, 40:56] = True
    filled = OpenCVInpainter()(np.where(mask[:, :, None], 0.0, image), mask)
    assert np.abs(filled - image)[mask].mean() < 0.05
    with pytest.raises(ValueError, match="whole image"):
        OpenCVInpainter()(image, np.ones((96, 96), bool))


# ---------------------------------------------------------------------------------------------- shadows
def test_shadow_is_recovered():
    image, box, truth = _shadow_scene(sigma=0.4)
    sigma = DarkeningShadowExtractor()(image, box.astype(np.float32))
    assert sigma.shape == truth.shape and sigma.dtype == np.float32
    core = binary_erosion(truth > 0, iterations=2)  # away from the shadow's soft edge
    assert np.abs(sigma - truth)[core].mean() < 0.05
    rows, cols = _grid(128)
    far = np.hypot(rows - 84, cols - 70) > 40
    assert sigma[far].max() == 0.0  # exactly zero where there is no evidence
    assert sigma[box].max() == 0.0
    # Lifting the shadow gives the shadow-free floor back.
    lifted = image / (1 - sigma[:, :, None])
    floor = image / np.maximum(1 - truth[:, :, None], 1e-3)
    assert np.abs(lifted - floor)[core].mean() < 0.04


def test_no_shadow_gives_zero_sigma():
    image, box, _ = _shadow_scene(with_shadow=False)
    sigma = DarkeningShadowExtractor()(image, box.astype(np.float32))
    assert sigma.max() < 0.02


def test_shadow_of_an_empty_or_cut_object_is_zero():
    image, box, _ = _shadow_scene(sigma=0.4)
    extractor = DarkeningShadowExtractor()
    assert extractor(image, np.zeros(box.shape, np.float32)).max() == 0.0
    cut = box.copy()
    cut[30:, 50:78] = True  # now reaches the bottom of the frame: its base is not visible
    assert extractor(image, cut.astype(np.float32)).max() == 0.0


# ---------------------------------------------------------------------------------------------- decomposer
def test_decomposer_on_a_synthetic_scene():
    image, box, truth = _shadow_scene(sigma=0.4)
    layered = ToolChainDecomposer()(image)
    assert layered.num_objects == 1
    assert _iou(layered.foregrounds[0][:, :, 3] > 0.5, box) > 0.8
    assert layered.check(image).max_abs_error < 1 / 255
    core = truth > 0
    assert np.abs(layered.shadows[0] - truth)[core].mean() < 0.1
    assert layered.background[box].std(axis=0).max() < 0.1  # the box is gone from the background


def test_decomposer_on_a_real_photo(astronaut):
    decomposer = ToolChainDecomposer()
    layered = decomposer(astronaut)
    assert isinstance(layered, LayeredImage)
    assert layered.size == astronaut.size
    assert layered.num_objects >= 1
    report = layered.check(astronaut)
    assert report.mean_abs_error < 2 / 255
    for foreground, shadow in zip(layered.foregrounds, layered.shadows):
        assert foreground.min() >= 0.0 and foreground.max() <= 1.0
        assert shadow.min() >= 0.0 and shadow.max() <= 1.0
    # The person is extracted: her face and her suit are opaque in some object layer, the wall is not.
    coverage = np.max([fg[:, :, 3] for fg in layered.foregrounds], axis=0)
    assert coverage[30:48, 60:80].mean() > 0.9  # face
    assert coverage[90:130, 30:60].mean() > 0.9  # orange suit
    assert coverage[5:25, 20:40].mean() < 0.1  # wall above her left shoulder
    # Back to front: bottom edges are ordered.
    bottoms = [box[3] for box in layered.object_boxes(0.5)]
    assert bottoms == sorted(bottoms)
    # Deterministic.
    again = decomposer(astronaut)
    assert np.array_equal(layered.background, again.background)
    assert all(np.array_equal(a, b) for a, b in zip(layered.foregrounds, again.foregrounds))
    assert all(np.array_equal(a, b) for a, b in zip(layered.shadows, again.shadows))


def test_decomposer_num_layers_is_an_upper_bound_and_zero_means_automatic(astronaut):
    decomposer = ToolChainDecomposer(segmenter=None)
    one = decomposer(astronaut, num_layers=1)
    assert one.num_objects == 1
    assert one.metadata["stop_reason"] == "layer limit 1 reached"
    assert one.check(astronaut).mean_abs_error < 2 / 255
    automatic = decomposer(astronaut)
    zero = decomposer(astronaut, num_layers=0)
    assert zero.num_objects == automatic.num_objects >= 1
    assert zero.metadata["objects_found"] == automatic.num_objects
    many = decomposer(np.asarray(astronaut), num_layers=9)  # more than there are: as many as found
    assert many.num_objects == automatic.num_objects
    assert many.metadata["layer_limit"] == decomposer.max_objects


def test_decomposer_downscales_big_inputs_and_returns_full_resolution():
    image, alpha = _disc_image(size=160)
    layered = ToolChainDecomposer(max_resolution=64)(image)
    assert layered.size == (160, 160)
    assert layered.num_objects == 1
    assert layered.check(image).mean_abs_error < 1 / 255
    assert _iou(layered.foregrounds[0][:, :, 3] > 0.5, alpha > 0.5) > 0.8


def test_decomposer_on_tiny_images():
    for size in (1, 8):
        image = np.full((size, size, 3), 0.3, np.float32)
        layered = ToolChainDecomposer()(image)
        assert layered.num_objects == 0 and layered.size == (size, size)
        assert layered.check(image).max_abs_error == 0.0


def test_decomposer_with_custom_tools_and_no_shadows():
    image, alpha = _disc_image(size=96, radius=20)

    class DiscProposer:
        def __call__(self, image, max_objects=None):
            return [ObjectProposal(alpha > 0.5, 1.0, "disc")]

    decomposer = ToolChainDecomposer(proposer=DiscProposer(), extract_shadows=False)
    layered = decomposer(image)
    assert layered.labels == ["disc"]
    assert layered.shadows[0].max() == 0.0
    assert decomposer.tool_names()["proposer"] == "DiscProposer"


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((32, 32, 4), np.float32), "3 channels"),
        (np.zeros((2, 32, 32, 3), np.float32), "shape"),
        (np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (np.full((32, 32, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((0, 32, 3), np.float32), "empty"),
        (np.zeros((32, 32, 3), np.int64), "dtype"),
    ],
)
def test_bad_images_give_clear_errors(bad, message):
    with pytest.raises(LayeredImageError, match=message):
        ToolChainDecomposer()(bad)
    with pytest.raises(LayeredImageError, match=message):
        SaliencyProposer()(bad)


def test_bad_arguments_give_clear_errors():
    image, _ = _disc_image(size=64)
    with pytest.raises(ValueError, match="num_layers"):
        ToolChainDecomposer()(image, num_layers=-1)
    with pytest.raises(TypeError, match="num_layers"):
        ToolChainDecomposer()(image, num_layers="2")
    with pytest.raises(TypeError, match="num_layers"):
        ToolChainDecomposer()(image, num_layers=True)
    with pytest.raises(LayeredImageError, match="mask is 32x32"):
        ClosedFormMatter()(image, np.ones((32, 32), bool))
    with pytest.raises(LayeredImageError, match="NaN"):
        OpenCVInpainter()(image, np.full((64, 64), np.nan))
    with pytest.raises(LayeredImageError, match="alpha"):
        DarkeningShadowExtractor()(image, np.ones((64, 64, 2)))
    with pytest.raises(ValueError, match="method"):
        OpenCVInpainter(method="magic")


def test_closed_form_alpha_keeps_pymattings_performance_print_off_stdout(monkeypatch, capsys):
    import pymatting

    from liwi_diffusers.tools.matting import closed_form_alpha

    def noisy(image, trimap, **kwargs):
        print("PERFORMANCE WARNING:")
        return trimap.copy()

    monkeypatch.setattr(pymatting, "estimate_alpha_cf", noisy)
    trimap = np.array([[0.0, 0.5, 1.0]])
    alpha = closed_form_alpha(np.zeros((1, 3, 3)), trimap)
    assert np.array_equal(alpha, trimap)
    assert capsys.readouterr().out == ""


def test_full_size_layers_are_computed_on_their_box_only():
    """`_upsampled_in_box` (how `_assemble` brings layers to full size): cv2.resize's values inside the box where
    the layer can be non-zero, exact zeros outside it; the decomposer's full-size object is zero outside its box."""
    import cv2

    from liwi_diffusers.layers import alpha_bbox
    from liwi_diffusers.tools.decomposer import _upsampled_in_box

    rng = np.random.default_rng(11)
    for small_shape, full in (((40, 30), (157, 101)), ((9, 16), (9, 61)), ((12, 12), (12, 12))):
        layer = np.zeros((*small_shape, 4), np.float32)
        layer[3:7, 2:9] = rng.random((4, 7, 4))
        layer[:, :, :3] = np.clip(layer[:, :, :3] + 0.2, 0, 1)  # colour everywhere, as a matte's colour estimate
        expected = np.clip(cv2.resize(layer, full[::-1], interpolation=cv2.INTER_LINEAR), 0, 1)
        out, window = _upsampled_in_box(layer, layer[:, :, 3], full)
        np.testing.assert_allclose(out[window], expected[window], atol=1e-5)
        outside = np.ones(full, bool)
        outside[window] = False
        assert not out[outside].any() and not expected[:, :, 3][outside].any()
    empty, window = _upsampled_in_box(np.zeros((5, 5), np.float32), np.zeros((5, 5)), (20, 20))
    assert window is None and not empty.any()

    image, _ = _disc_image(size=160)
    layered = ToolChainDecomposer(max_resolution=64)(image)
    foreground = layered.foregrounds[0]
    left, top, right, bottom = alpha_bbox(foreground[:, :, 3])
    assert right - left < 150 and bottom - top < 150
    inside = np.zeros((160, 160), bool)
    inside[max(0, top - 4) : bottom + 4, max(0, left - 4) : right + 4] = True  # the window's margin: 1 working px
    assert not foreground[~inside].any()
    assert layered.check(image).max_abs_error <= 1 / 255
