"""Layer maths: compose against hand-computed values, checks, conversions, reconcile, bad stacks."""

import numpy as np
import pytest
import torch
from PIL import Image

from liwi_diffusers import LayeredImage, LayeredImageError, check_decomposition, compose_layers, reconcile_with_image
from liwi_diffusers.layers import (
    RECONCILE_CHUNK,
    alpha_bbox,
    layer_name,
    parse_layer_name,
    reconcile_colours,
    visible_weights,
)


def pixel(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(1, 1, -1)


def random_layered(seed: int = 0, height: int = 12, width: int = 9, count: int = 3) -> LayeredImage:
    rng = np.random.default_rng(seed)
    return LayeredImage(
        rng.random((height, width, 3)),
        [rng.random((height, width, 4)) for _ in range(count)],
        [rng.random((height, width)) * 0.6 for _ in range(count)],
        [f"thing {k}" for k in range(count)],
    )


def test_compose_one_object_with_shadow_by_hand():
    # X = a C + (1 - a)(1 - s) B with B = 0.8, C = (0.2, 0.4, 0.6), a = 0.5, s = 0.25
    layered = LayeredImage(np.full((1, 1, 3), 0.8), [pixel(0.2, 0.4, 0.6, 0.5)], [np.array([[0.25]])])
    np.testing.assert_allclose(layered.compose()[0, 0], [0.4, 0.5, 0.6], atol=1e-6)


def test_compose_two_objects_back_to_front_by_hand():
    # X1 = 0.5 * 0 + 0.5 * 1 * 1 = 0.5 ; X2 = 0.25 * 1 + 0.75 * 0.5 * 0.5 = 0.4375
    layered = LayeredImage(
        np.ones((1, 1, 3)),
        [pixel(0, 0, 0, 0.5), pixel(1, 1, 1, 0.25)],
        [np.zeros((1, 1)), np.full((1, 1), 0.5)],
    )
    np.testing.assert_allclose(layered.compose()[0, 0], [0.4375] * 3, atol=1e-6)
    # Order matters: swapping the objects gives X1 = 0.25 + 0.75 * 1 = 1.0 (shadow 0.5 applied first:
    # 0.25 * 1 + 0.75 * 0.5 * 1 = 0.625), then X2 = 0.5 * 0 + 0.5 * 0.625 = 0.3125.
    swapped = layered.select([1, 0])
    np.testing.assert_allclose(swapped.compose()[0, 0], [0.3125] * 3, atol=1e-6)


@pytest.mark.parametrize(
    ("alpha", "shadow", "expected"),
    [(1.0, 0.7, 0.2), (0.0, 1.0, 0.0), (0.0, 0.0, 0.9), (0.0, 0.5, 0.45)],
)
def test_compose_limits(alpha, shadow, expected):
    layered = LayeredImage(np.full((1, 1, 3), 0.9), [pixel(0.2, 0.2, 0.2, alpha)], [np.full((1, 1), shadow)])
    np.testing.assert_allclose(layered.compose()[0, 0], [expected] * 3, atol=1e-6)


def test_shadow_layer_is_plain_over_of_a_black_layer():
    layered = random_layered(1)
    composite = np.zeros((layered.height, layered.width, 3))
    for _, rgba in layered.to_rgba_stack():  # ordinary Porter-Duff "over", as every paint program does
        composite = rgba[:, :, 3:] * rgba[:, :, :3] + (1 - rgba[:, :, 3:]) * composite
    np.testing.assert_allclose(composite, layered.compose(), atol=1e-6)


def test_compose_layers_is_the_same_function_for_torch_and_differentiable():
    layered = random_layered(2)
    tensors = layered.to_tensors(dtype=torch.float64)
    foregrounds = tensors["foregrounds"].requires_grad_(True)
    composite = compose_layers(tensors["background"], foregrounds[:, :3], foregrounds[:, 3:], tensors["shadows"])
    np.testing.assert_allclose(composite.detach().numpy().transpose(1, 2, 0), layered.compose(), atol=1e-6)
    composite.sum().backward()
    assert foregrounds.grad is not None and torch.isfinite(foregrounds.grad).all()


def test_zero_objects_composes_to_background():
    background = np.random.default_rng(3).random((5, 6, 3))
    layered = LayeredImage(background)
    assert layered.num_objects == 0
    np.testing.assert_allclose(layered.compose(), background, atol=1e-7)
    assert layered.layer_names() == ["background"]


def test_check_decomposition_reports_errors():
    layered = LayeredImage(np.full((2, 2, 3), 0.5))
    report = check_decomposition(layered, np.full((2, 2, 3), 0.5))
    assert report.mean_abs_error == 0 and report.max_abs_error == 0 and report.psnr == float("inf")
    assert report.ok()
    target = np.full((2, 2, 3), 0.5)
    target[0, 0, 0] = 0.6
    report = check_decomposition(layered, target)
    assert report.max_abs_error == pytest.approx(0.1, abs=1e-6)
    assert report.mean_abs_error == pytest.approx(0.1 / 12, abs=1e-6)
    assert not report.ok()
    with pytest.raises(LayeredImageError, match="3x2"):
        check_decomposition(layered, np.zeros((2, 3, 3)))


def test_reconcile_reaches_an_achievable_target_exactly_and_keeps_alphas():
    layered = random_layered(4)
    target = random_layered(5).compose()  # different colours, ...
    target = LayeredImage(
        random_layered(6).background,
        [
            np.concatenate([random_layered(7).foregrounds[k][:, :, :3], fg[:, :, 3:]], axis=2)
            for k, fg in enumerate(layered.foregrounds)
        ],
        layered.shadows,
    ).compose()  # ... but the same alphas and shadows, so the target is reachable
    fixed = reconcile_with_image(layered, target, iterations=50)
    assert fixed.check(target).max_abs_error < 1e-5
    for before, after in zip(layered.foregrounds, fixed.foregrounds):
        np.testing.assert_array_equal(before[:, :, 3], after[:, :, 3])
    for before, after in zip(layered.shadows, fixed.shadows):
        np.testing.assert_array_equal(before, after)


def test_reconcile_changes_nothing_when_layers_already_recompose():
    layered = random_layered(8)
    fixed = reconcile_with_image(layered, layered.compose())
    np.testing.assert_allclose(fixed.background, layered.background, atol=1e-6)
    for before, after in zip(layered.foregrounds, fixed.foregrounds):
        np.testing.assert_allclose(before, after, atol=1e-6)


def test_reconcile_puts_the_correction_on_the_visible_layer():
    # An opaque object hides the background: only its colour may change.
    layered = LayeredImage(np.full((1, 1, 3), 0.3), [pixel(0.5, 0.5, 0.5, 1.0)])
    fixed = reconcile_with_image(layered, pixel(0.7, 0.2, 0.9))
    np.testing.assert_allclose(fixed.foregrounds[0][0, 0], [0.7, 0.2, 0.9, 1.0], atol=1e-6)
    np.testing.assert_allclose(fixed.background[0, 0], [0.3] * 3, atol=1e-6)


def test_reconcile_sets_pixels_seen_through_one_opaque_object_as_the_solver_would():
    layered = random_layered(11, count=3)
    middle = layered.foregrounds[1].copy()
    middle[2:8, 1:6, 3] = 1.0  # opaque where the object in front of it is clear: seen alone there
    front = layered.foregrounds[2].copy()
    front[2:5, 1:6, 3] = 0.0
    front[9:, :, 3] = 1.0  # the front object opaque at the bottom: seen alone there too
    shadows = [shadow.copy() for shadow in layered.shadows]
    shadows[2][2:5, 1:6] = 0.0
    layered = LayeredImage(layered.background, [layered.foregrounds[0], middle, front], shadows)
    target = random_layered(12).background
    fixed = reconcile_with_image(layered, target)
    np.testing.assert_allclose(fixed.foregrounds[1][2:5, 1:6, :3], target[2:5, 1:6], atol=1e-6)
    np.testing.assert_allclose(fixed.foregrounds[2][9:, :, :3], target[9:], atol=1e-6)
    # Everything, alone-seen pixels included, as the plain solver on every pixel gives it.
    flat = [layered.background.reshape(-1, 3).T] + [fg.reshape(-1, 4)[:, :3].T for fg in layered.foregrounds]
    colors = np.ascontiguousarray(np.stack(flat), dtype=np.float32)
    alphas = [fg[:, :, 3].reshape(1, -1).astype(np.float32) for fg in layered.foregrounds]
    through = [(1 - a) * (1 - sh.reshape(1, -1).astype(np.float32)) for a, sh in zip(alphas, layered.shadows)]
    wanted = np.ascontiguousarray(target.reshape(-1, 3).T, dtype=np.float32)
    reconcile_colours(colors, visible_weights(alphas, through), wanted)
    np.testing.assert_allclose(fixed.background.reshape(-1, 3).T, colors[0], atol=1e-6)
    for k, fg in enumerate(fixed.foregrounds):
        np.testing.assert_allclose(fg.reshape(-1, 4)[:, :3].T, colors[k + 1], atol=1e-6)


def test_reconcile_leaves_unreachable_residual_and_reports_it():
    # A full shadow over an empty object makes the pixel black: white cannot be reached.
    layered = LayeredImage(np.ones((1, 1, 3)), [pixel(0, 0, 0, 0)], [np.ones((1, 1))])
    fixed = reconcile_with_image(layered, np.ones((1, 1, 3)))
    assert fixed.check(np.ones((1, 1, 3))).max_abs_error == pytest.approx(1.0)


def reference_reconcile(colors: np.ndarray, weights: np.ndarray, wanted: np.ndarray, rounds: int) -> np.ndarray:
    """The solver written plainly: every pixel, every round, full-size temporaries."""
    colors = colors.copy()
    for _ in range(rounds):
        residual = wanted - (weights * colors).sum(axis=0)
        if np.abs(residual).max() < 1e-6:
            break
        free_weights = weights * np.where(residual > 0, colors < 1.0, colors > 0.0)
        norm = (free_weights**2).sum(axis=0)
        step = np.divide(residual, norm, out=np.zeros_like(residual), where=norm > 1e-12)
        colors = np.clip(colors + free_weights * step, 0.0, 1.0)
    return colors


def test_visible_weights_give_the_composite():
    layered = random_layered(10, count=3)
    flat = lambda array: array.reshape(-1, *array.shape[2:]).T.astype(np.float32)  # noqa: E731
    alphas = [flat(fg[:, :, 3:]) for fg in layered.foregrounds]
    through = [(1 - alpha) * (1 - flat(shadow[:, :, None])) for alpha, shadow in zip(alphas, layered.shadows)]
    colors = np.stack([flat(layered.background)] + [flat(fg[:, :, :3]) for fg in layered.foregrounds])
    composite = (visible_weights(alphas, through) * colors).sum(axis=0)
    np.testing.assert_allclose(composite, flat(layered.compose()), atol=1e-6)
    with pytest.raises(ValueError, match="at least one object"):
        visible_weights([], [])


def test_reconcile_colours_matches_the_plain_solver_across_chunks_and_clipping():
    rng = np.random.default_rng(11)
    count = 2 * RECONCILE_CHUNK + 123  # three chunks, the last one short
    colors = rng.random((4, 3, count), dtype=np.float32)
    colors[:, :, ::7] = np.round(colors[:, :, ::7])  # colours at 0 and 1: not free to move one way
    alphas = [rng.random((1, count), dtype=np.float32) for _ in range(3)]
    through = [(1 - alpha) * (1 - 0.5 * rng.random((1, count), dtype=np.float32)) for alpha in alphas]
    weights = visible_weights(alphas, through)
    wanted = rng.random((3, count), dtype=np.float32)  # mostly reachable, often only after clipping
    expected = reference_reconcile(colors, weights, wanted, rounds=6)
    solved = reconcile_colours(colors.copy(), weights, wanted, iterations=6)
    np.testing.assert_allclose(solved, expected, atol=2e-5)
    before = np.abs(wanted - (weights * colors).sum(axis=0)).mean()
    after = np.abs(wanted - (weights * solved).sum(axis=0)).mean()
    assert after < 0.15 * before  # it did solve (random targets are not all reachable), not just agree on nothing
    with pytest.raises(ValueError, match="expected weights"):
        reconcile_colours(colors, weights[:, :, :-1], wanted)


def test_rgba_stack_pil_and_tensor_round_trips():
    layered = random_layered(9).quantized()
    names = [name for name, _ in layered.to_pil()]
    assert names == [
        "background",
        "shadow 1: thing 0",
        "object 1: thing 0",
        "shadow 2: thing 1",
        "object 2: thing 1",
        "shadow 3: thing 2",
        "object 3: thing 2",
    ]
    back = LayeredImage.from_rgba_stack(layered.to_pil())
    assert back.labels == layered.labels
    np.testing.assert_array_equal(back.background, layered.background)
    for a, b in zip(back.foregrounds + back.shadows, layered.foregrounds + layered.shadows):
        np.testing.assert_array_equal(a, b)
    again = LayeredImage.from_tensors(**layered.to_tensors(), labels=layered.labels)
    np.testing.assert_array_equal(again.compose(), layered.compose())


def test_from_pil_and_to_pil_accessors():
    background = Image.new("RGB", (4, 3), (10, 20, 30))
    fg = Image.new("RGBA", (4, 3), (200, 100, 50, 128))
    shadow = Image.new("L", (4, 3), 64)
    layered = LayeredImage.from_pil(background, [fg], [shadow], ["cup"])
    assert layered.size == (4, 3)
    assert layered.background_pil().getpixel((0, 0)) == (10, 20, 30)
    assert layered.foreground_pil(0).getpixel((1, 1)) == (200, 100, 50, 128)
    assert layered.shadow_pil(0).getpixel((2, 2)) == 64
    assert layered.composite_pil().size == (4, 3)


def test_foreign_layer_names_become_objects_without_shadow():
    opaque = np.ones((2, 2, 4))
    stack = [("Layer 0", opaque), ("Hat", np.full((2, 2, 4), 0.5))]
    layered = LayeredImage.from_rgba_stack(stack)
    assert layered.labels == ["Hat"] and float(layered.shadows[0].max()) == 0.0


def test_layer_names_round_trip():
    assert layer_name("object", 2, "cup: blue") == "object 2: cup: blue"
    assert parse_layer_name("object 2: cup: blue") == ("object", 2, "cup: blue")
    assert parse_layer_name("shadow 11") == ("shadow", 11, None)
    assert parse_layer_name("background") == ("background", None, None)
    assert parse_layer_name("Layer 1") == ("other", None, "Layer 1")
    with pytest.raises(ValueError):
        layer_name("object")


def test_alpha_bbox_and_object_boxes():
    alpha = np.zeros((6, 8))
    alpha[2:4, 3:7] = 0.5
    assert alpha_bbox(alpha) == (3, 2, 7, 4)
    assert alpha_bbox(np.zeros((3, 3))) is None
    layered = LayeredImage(np.zeros((6, 8, 3)), [np.dstack([np.zeros((6, 8, 3)), alpha])])
    assert layered.object_boxes() == [(3, 2, 7, 4)]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.zeros((4, 5, 4))]), "same size"),
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.full((4, 4, 4), 1.5)]), r"\[0, 1\]"),
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.full((4, 4, 4), -0.2)]), r"\[0, 1\]"),
        (lambda: LayeredImage(np.full((4, 4, 3), np.nan)), "NaN"),
        (lambda: LayeredImage(np.zeros((0, 4, 3))), "empty"),
        (lambda: LayeredImage(np.zeros((4, 4, 4))), "3 channels"),
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.zeros((4, 4, 3))]), "4 channels"),
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.zeros((4, 4, 4))], [np.zeros((4, 4))] * 2), "shadow layers"),
        (lambda: LayeredImage(np.zeros((4, 4, 3)), [np.zeros((4, 4, 4))], labels=["a", "b"]), "labels"),
        (lambda: LayeredImage(np.zeros((4, 4, 3), dtype=np.int64)), "dtype"),
        (lambda: LayeredImage.from_rgba_stack([]), "empty layer stack"),
        (lambda: LayeredImage.from_rgba_stack([("background", np.full((2, 2, 4), 0.5))]), "opaque"),
        (
            lambda: LayeredImage.from_rgba_stack(
                [("background", np.ones((2, 2, 4))), ("shadow 1", np.ones((2, 2, 4)))]
            ),
            "black",
        ),
        (
            lambda: LayeredImage.from_rgba_stack(
                [("background", np.ones((2, 2, 4))), ("shadow 1", np.zeros((2, 2, 4)))]
            ),
            "no object",
        ),
    ],
)
def test_bad_stacks_get_clear_errors(build, message):
    with pytest.raises(LayeredImageError, match=message):
        build()


def test_round_off_outside_unit_range_is_clipped_not_rejected():
    layered = LayeredImage(np.full((2, 2, 3), 1.0 + 1e-7))
    assert float(layered.background.max()) == 1.0


# ---------------------------------------------------------------------- full-canvas work in bands of rows (memory)
def _whole_canvas_compose(layered: LayeredImage) -> np.ndarray:
    """The composite computed on whole arrays, as `compose` did before it worked in bands."""
    layers = [layered.object_layer(k) for k in range(layered.num_objects)]
    return compose_layers(
        layered.background,
        [fg[:, :, :3] for fg in layers],
        [fg[:, :, 3:4] for fg in layers],
        [s[:, :, None] for s in layered.shadows],
    )


def _with_parts(layered: LayeredImage) -> LayeredImage:
    """``layered`` with object 1 split into a left and a right part."""
    from liwi_diffusers import LayerPart

    left = layered.foregrounds[0].copy()
    right = layered.foregrounds[0].copy()
    left[:, 4:], right[:, :4] = 0, 0
    return LayeredImage(
        layered.background,
        layered.foregrounds,
        layered.shadows,
        layered.labels,
        parts={0: [LayerPart(left), LayerPart(right)]},
    )


def test_compose_and_check_in_bands_match_the_whole_canvas(monkeypatch):
    import liwi_diffusers.layers as layers_module

    layered = _with_parts(random_layered(seed=3, height=23, width=9))
    expected = _whole_canvas_compose(layered)
    rng = np.random.default_rng(4)
    photo = np.clip(expected + rng.normal(0, 0.05, expected.shape), 0, 1).astype(np.float32)
    difference = np.abs(expected - photo).astype(np.float64)
    monkeypatch.setattr(layers_module, "_BAND_PIXELS", 20)  # bands of 2 rows: 12 bands, the last one short
    assert len(layers_module.row_bands(23, 9)) == 12
    np.testing.assert_array_equal(layered.compose(), expected)
    for image in (photo, Image.fromarray(np.round(photo * 255).astype(np.uint8))):
        target = photo if isinstance(image, np.ndarray) else np.asarray(image, np.float32) / 255
        difference = np.abs(expected - target).astype(np.float64)
        report = layered.check(image)
        assert report.max_abs_error == pytest.approx(difference.max(), abs=1e-7)
        assert report.mean_abs_error == pytest.approx(difference.mean(), abs=1e-7)
        assert report.psnr == pytest.approx(10 * np.log10(1 / np.mean(difference**2)), abs=1e-4)
    quantized = layered.quantized()
    banded = np.concatenate([layered.compose_rows(rows, quantize=True) for rows in layers_module.row_bands(23, 9)])
    np.testing.assert_allclose(banded, quantized.compose(), atol=1e-6)


def test_check_takes_no_full_size_copies(monkeypatch):
    import tracemalloc

    import liwi_diffusers.layers as layers_module

    layered = random_layered(seed=5, height=1024, width=512, count=2)
    photo = np.round(layered.compose() * 255).astype(np.uint8)
    monkeypatch.setattr(layers_module, "_BAND_PIXELS", 1 << 14)  # 32 bands
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        report = layered.check(photo)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert report.max_abs_error <= 0.5 / 255 + 1e-6
    # One band's temporaries, nothing of the whole canvas: a full-size float RGB copy of the photo alone would be
    # 12 bytes per pixel (checking on whole arrays took 52).
    assert peak < 3 * layered.height * layered.width


def test_to_uint8_in_bands_rounds_like_the_whole_array(monkeypatch):
    import liwi_diffusers.layers as layers_module
    from liwi_diffusers.layers import to_uint8

    monkeypatch.setattr(layers_module, "_BAND_PIXELS", 10)
    rng = np.random.default_rng(6)
    for shape in ((17, 5), (17, 5, 3), (3, 40, 4)):
        array = rng.uniform(-0.1, 1.1, shape).astype(np.float32)
        np.testing.assert_array_equal(to_uint8(array), np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))


def test_integer_images_convert_exactly_and_bad_floats_are_still_caught():
    from liwi_diffusers.layers import to_float_image

    rng = np.random.default_rng(7)
    eight = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    sixteen = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    np.testing.assert_array_equal(to_float_image(eight), eight.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(to_float_image(sixteen), sixteen.astype(np.float32) / 65535.0)
    np.testing.assert_array_equal(to_float_image(eight[:, ::2]), eight[:, ::2].astype(np.float32) / 255.0)
    assert to_float_image(eight[:, ::2]).flags.c_contiguous
    for bad in (np.inf, -np.inf, np.nan):
        values = np.full((3, 3, 3), 0.5, np.float32)
        values[1, 2, 0] = bad
        with pytest.raises(LayeredImageError, match="NaN or infinite"):
            to_float_image(values)
    with pytest.raises(LayeredImageError, match="empty"):
        to_float_image(np.zeros((0, 3, 3), np.uint8))
