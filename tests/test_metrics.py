"""Correctness of the metrics: hand-computed cases, evaluate-module identity, bad input, `liwi evaluate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liwi_diffusers import LayeredImage
from liwi_diffusers.cli import main
from liwi_diffusers.metrics import (
    MetricInputError,
    aggregate_alpha_errors,
    aggregate_layer_results,
    aggregate_shadow_errors,
    alpha_composite,
    alpha_matting_errors,
    alpha_soft_iou,
    background_errors,
    combine_shadows,
    connectivity_error,
    dtw_path,
    evaluate_layers,
    gradient_error,
    group_non_overlapping,
    layer_cost,
    layered_to_stack,
    load_metric,
    mse_error,
    recomposition_error,
    rgb_l1,
    sad_error,
    shadow_errors,
    skip_reason,
    trimap_unknown_region,
)
from liwi_diffusers.metrics.core import LayerLevel, LayerSampleResult, gaussian_gradient_kernel

SIZE = 16


# ---------------------------------------------------------------------------------------------- helpers
def layer(color=(200, 40, 10), box=None, alpha=255, size=SIZE, under=(0, 0, 0)) -> np.ndarray:
    """A uint8 RGBA layer: ``color`` with ``alpha`` inside ``box`` (top, bottom, left, right), ``under`` elsewhere."""
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[:, :, :3] = under
    top, bottom, left, right = box if box is not None else (0, size, 0, size)
    rgba[top:bottom, left:right, :3] = color
    rgba[top:bottom, left:right, 3] = alpha
    return rgba


def background(color=(30, 90, 160)) -> np.ndarray:
    return layer(color)


def random_stack(rng: np.random.Generator, count: int, size: int = 24) -> list[np.ndarray]:
    stack = [np.dstack([rng.integers(0, 256, (size, size, 3)), np.full((size, size), 255)]).astype(np.uint8)]
    for _ in range(count - 1):
        top, left = rng.integers(0, size - 6, 2)
        height, width = rng.integers(4, 12, 2)
        alpha = np.zeros((size, size), np.uint8)
        alpha[top : top + height, left : left + width] = rng.integers(1, 256)
        stack.append(np.dstack([rng.integers(0, 256, (size, size, 3)), alpha]).astype(np.uint8))
    return stack


# ---------------------------------------------------------------------------------------------- pair scores
def test_identical_stacks_score_perfectly_and_need_no_merge():
    stack = [background(), layer(box=(2, 8, 2, 8)), layer((9, 9, 9), box=(5, 12, 5, 12), alpha=128)]
    result = evaluate_layers(stack, [s.copy() for s in stack])
    assert len(result.levels) == 1 and result.merges == []
    for k in range(6):
        level = result.level(k)
        assert (level.rgb_l1, level.alpha_iou, level.cost) == (0.0, 1.0, 0.0)
    assert result.level(0).path == [(0, 0), (1, 1), (2, 2)]


def test_disjoint_alphas():
    # ground truth: red on the right half; prediction: red on the left half, black (alpha 0) on the right
    gt = layer((255, 0, 0), box=(0, SIZE, SIZE // 2, SIZE))
    pred = layer((255, 0, 0), box=(0, SIZE, 0, SIZE // 2))
    assert alpha_soft_iou(pred, gt) == 0.0
    assert rgb_l1(pred, gt) == pytest.approx(1 / 3, abs=1e-9)  # |0 - 255| on one channel of three
    assert layer_cost(pred, gt) == pytest.approx((1 / 3 + 1) / 2, abs=1e-9)


def test_one_pixel_shift():
    gt = layer(box=(4, 8, 4, 8))  # 4x4 square, same colour everywhere below it
    pred = layer(box=(4, 8, 5, 9))
    assert alpha_soft_iou(pred, gt) == pytest.approx(12 / 20)
    # the column the prediction left is still coloured under alpha 0 here: colour-only L1 is 0
    pred_colored = pred.copy()
    pred_colored[:, :, :3] = (200, 40, 10)
    assert rgb_l1(pred_colored, gt) == 0.0
    # with black under alpha 0, that column (4 of 16 gt pixels) differs by (200 + 40 + 10) / 3 / 255
    assert rgb_l1(pred, gt) == pytest.approx(4 / 16 * (250 / 765), abs=1e-9)


def test_soft_alpha_iou():
    assert alpha_soft_iou(layer(alpha=128), layer(alpha=255)) == pytest.approx(128 / 255)


def test_all_transparent_layer():
    empty = np.zeros((SIZE, SIZE, 4), np.uint8)
    assert rgb_l1(layer(), empty) == 0.0  # no ground-truth pixel to compare
    assert alpha_soft_iou(empty, empty) == 0.0  # LayerD: IoU of two empty masks is 0
    assert alpha_soft_iou(layer(), empty) == 0.0
    # an empty layer overlaps nothing, joins the top group and leaves it unchanged
    gt = [background(), layer(box=(2, 8, 2, 8))]
    result = evaluate_layers([*gt, empty], gt)
    assert result.num_pred_layers == 3 and result.num_pred_groups == 2
    assert (result.level(0).rgb_l1, result.level(0).alpha_iou) == (0.0, 1.0)


def test_grouping_of_non_overlapping_layers():
    full = np.full((SIZE, SIZE), 255, np.uint8)
    left, right = np.zeros_like(full), np.zeros_like(full)
    left[:, :4], right[:, 10:] = 255, 255
    overlapping_left = np.zeros_like(full)
    overlapping_left[:, 2:6] = 255
    assert group_non_overlapping([full, left, right]) == [[0], [1, 2]]
    # b overlaps a, c overlaps nothing in front: the top group is {b, c}, then {a}, then {background}
    assert group_non_overlapping([full, left, overlapping_left, right]) == [[0], [1], [2, 3]]
    assert group_non_overlapping([full]) == [[0]]


def test_alpha_composite_is_pillow_exact():
    rng = np.random.default_rng(0)
    src_alpha, dst_alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    src = np.dstack([rng.integers(0, 256, (256, 256, 3)), src_alpha]).astype(np.uint8)
    dst = np.dstack([rng.integers(0, 256, (256, 256, 3)), dst_alpha]).astype(np.uint8)
    expected = np.asarray(Image.alpha_composite(Image.fromarray(dst, "RGBA"), Image.fromarray(src, "RGBA")))
    np.testing.assert_array_equal(alpha_composite(dst, src), expected)


def test_dtw_path_hand_cases():
    assert dtw_path(np.array([[0.0, 1.0], [1.0, 0.0]])) == [(0, 0), (1, 1)]
    assert dtw_path(np.zeros((2, 2))) == [(0, 0), (1, 1)]  # ties prefer the diagonal
    # three predictions against one ground truth: every prediction aligns to it
    assert dtw_path(np.array([[0.2], [0.1], [0.3]])) == [(0, 0), (1, 0), (2, 0)]
    # the cheap route goes down the first column, then across
    cost = np.array([[0.0, 0.9, 0.9], [0.0, 0.9, 0.9], [0.9, 0.0, 0.0]])
    assert dtw_path(cost) == [(0, 0), (1, 0), (2, 1), (2, 2)]


# ---------------------------------------------------------------------------------------------- merges
def _two_overlapping_objects() -> tuple[list[np.ndarray], np.ndarray]:
    back = background()
    a = layer((250, 0, 0), box=(2, 10, 2, 10))
    b = layer((0, 250, 0), box=(6, 14, 6, 14))
    return [back, a, b], alpha_composite(a, b)


def test_ground_truth_merge_when_prediction_has_fewer_layers():
    gt, merged = _two_overlapping_objects()
    result = evaluate_layers([gt[0], merged], gt)
    assert result.level(0).alpha_iou < 1.0
    assert result.merges == [("gt", 1)]
    assert len(result.levels) == 2
    assert (result.level(1).rgb_l1, result.level(1).alpha_iou) == (0.0, 1.0)
    assert result.level(5) == result.level(1)  # carried forward


def test_prediction_merge_when_prediction_has_more_layers():
    pred, merged = _two_overlapping_objects()
    result = evaluate_layers(pred, [pred[0], merged])
    # a side with two layers is never merged, so the prediction is merged
    assert result.merges == [("pred", 1)]
    assert (result.level(1).rgb_l1, result.level(1).alpha_iou) == (0.0, 1.0)


def test_max_edits_zero_and_negative():
    gt, merged = _two_overlapping_objects()
    assert len(evaluate_layers([gt[0], merged], gt, max_edits=0).levels) == 1
    with pytest.raises(MetricInputError, match="max_edits"):
        evaluate_layers(gt, gt, max_edits=-1)


def test_aggregation_carries_last_level_forward():
    def sample(values: list[float]) -> LayerSampleResult:
        levels = [LayerLevel(k, v, v, 1 - v) for k, v in enumerate(values)]
        return LayerSampleResult(levels, 2, 2, 2, 2)

    rows = aggregate_layer_results([sample([0.4, 0.2]), sample([0.6])], max_edits=2)
    assert [row["rgb_l1"] for row in rows] == pytest.approx([0.5, 0.4, 0.4])
    assert [row["count"] for row in rows] == [2, 1, 0]
    assert [row["avg_edits"] for row in rows] == [0.0, 0.5, 0.5]
    assert aggregate_layer_results([], max_edits=1)[0]["rgb_l1"] is None


def test_skip_reason():
    assert skip_reason(1, 5) == "prediction has fewer than 2 layers"
    assert skip_reason(3, 0) == "ground truth has fewer than 2 layers"
    assert skip_reason(0, 0) == "prediction has fewer than 2 layers"  # prediction checked first
    assert skip_reason(2, 2) is None and skip_reason(1, 1, min_layers=1) is None


def test_result_to_dict_lists_every_level():
    gt, merged = _two_overlapping_objects()
    data = evaluate_layers([gt[0], merged], gt).to_dict(max_edits=5)
    assert [level["merges"] for level in data["levels"]] == list(range(6))
    assert [level["edits"] for level in data["levels"]] == [0, 1, 1, 1, 1, 1]
    json.dumps(data)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_layer_input():
    good = layer()
    with pytest.raises(MetricInputError, match="12x16 but the ground truth is 16x16"):
        evaluate_layers([np.zeros((16, 12, 4), np.uint8)] * 2, [good, good])
    with pytest.raises(MetricInputError, match="all layers must be full-canvas"):
        evaluate_layers([good, np.zeros((8, 8, 4), np.uint8)], [good, good])
    with pytest.raises(MetricInputError, match="expected an RGBA image, got mode 'RGB'"):
        evaluate_layers([Image.new("RGB", (SIZE, SIZE))] * 2, [good, good])
    with pytest.raises(MetricInputError, match=r"\(H, W, 4\) RGBA layer, got shape \(16, 16, 3\)"):
        rgb_l1(good[:, :, :3], good)
    with pytest.raises(MetricInputError, match="empty layer stack"):
        evaluate_layers([], [good, good])
    nan = good.astype(np.float32) / 255
    nan[0, 0, 0] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        evaluate_layers([nan, nan], [good, good])
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        rgb_l1(good.astype(np.float32), good)  # 0..255 floats
    with pytest.raises(MetricInputError, match="unsupported dtype uint16"):
        rgb_l1(good.astype(np.uint16), good)


def test_float_layers_are_rounded_to_8_bits():
    stack = [background(), layer(box=(2, 8, 2, 8), alpha=77)]
    as_float = [s.astype(np.float64) / 255 for s in stack]
    assert evaluate_layers(as_float, stack).level(0).rgb_l1 == 0.0


def test_bad_matte_input():
    with pytest.raises(MetricInputError, match="NaN"):
        sad_error(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(MetricInputError, match="sizes must match"):
        sad_error(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(MetricInputError, match="expected an \\(H, W\\) matte"):
        sad_error(np.zeros((4, 4, 3)), np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------- alpha boundary
def test_matting_errors_hand_cases():
    zeros, ones = np.zeros((8, 8)), np.ones((8, 8))
    assert alpha_matting_errors(ones, ones, "all") == {
        "sad": 0.0,
        "mse": 0.0,
        "gradient": 0.0,
        "connectivity": 0.0,
        "num_pixels": 64,
    }
    errors = alpha_matting_errors(zeros, ones, "all")
    assert errors["sad"] == pytest.approx(64 / 1000)
    assert errors["mse"] == pytest.approx(1.0)
    assert errors["gradient"] == pytest.approx(0.0, abs=1e-20)  # both constant (kernel sums to 0 up to rounding)
    # no common component at any threshold: level 0 everywhere, phi_pred = 1, phi_gt = 0
    assert errors["connectivity"] == pytest.approx(64 / 1000)
    half = np.full((8, 8), 0.5)
    assert mse_error(half, ones, "all") == pytest.approx(0.25)
    assert sad_error(half, ones, np.eye(8, dtype=bool)) == pytest.approx(8 * 0.5 / 1000)


def test_connectivity_of_a_partial_match():
    gt = np.ones((6, 6))
    pred = np.ones((6, 6))
    pred[0, 0] = 0.4  # leaves the common component above 0.4: level 0.4, d = 0 < 0.15 -> phi 1
    # gt at that pixel: d = 1 - 0.4 = 0.6 -> phi 0.4; pred phi 1 -> error 0.6
    assert connectivity_error(pred, gt, "all") == pytest.approx(0.6 / 1000)


def test_gradient_kernel_and_ramp():
    kernel = gaussian_gradient_kernel(1.4)
    assert kernel.shape == (9, 9)
    assert np.sqrt((kernel**2).sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, -kernel[:, ::-1])  # antisymmetric along x
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    interior = np.zeros((32, 32), bool)
    interior[8:24, 8:24] = True
    offsets = np.arange(-4, 5)
    slope = 1 / 31
    # convolution of a ramp with the kernel: -slope * sum_u h(u) u_x, the same on every interior pixel
    magnitude = abs(slope * (kernel * offsets[None, :]).sum())
    assert gradient_error(ramp, np.zeros((32, 32)), interior) == pytest.approx(256 * magnitude**2 / 1000)


def test_trimap_band():
    gt = np.zeros((12, 12))
    gt[4:8, 4:8] = 1.0
    band = trimap_unknown_region(gt, width=1)
    expected = np.zeros((12, 12), bool)
    expected[3:9, 3:9] = True
    expected[[3, 3, 8, 8], [3, 8, 3, 8]] = False  # the 4-neighbour cross does not reach the corners
    expected[5:7, 5:7] = False  # eroded core
    np.testing.assert_array_equal(band, expected)
    trimap = np.zeros((12, 12), np.uint8)
    trimap[0, 0] = 128
    assert alpha_matting_errors(np.ones((12, 12)), gt, trimap)["num_pixels"] == 1
    assert aggregate_alpha_errors([alpha_matting_errors(gt, gt, np.zeros((12, 12), bool))])["num_empty"] == 1


# ---------------------------------------------------------------------------------------------- shadows, background
def test_shadow_errors_hand_case():
    gt = np.zeros((4, 4))
    gt[0] = 0.5  # 4 shadow pixels of 16
    pred = np.zeros((4, 4))
    pred[0, :2] = 0.5  # 2 found
    pred[3, :2] = 0.5  # 2 false alarms
    errors = shadow_errors(pred, gt)
    assert (errors["tp"], errors["fn"], errors["tn"], errors["fp"]) == (2, 2, 10, 2)
    assert errors["ber"] == pytest.approx(1 - (0.5 + 10 / 12) / 2)
    assert errors["shadow_l1"] == pytest.approx(4 * 0.5 / 16)
    pooled = aggregate_shadow_errors([errors, shadow_errors(gt, gt)])
    assert pooled["ber"] == pytest.approx(1 - (6 / 8 + 22 / 24) / 2)
    no_shadow = shadow_errors(np.zeros((4, 4)), np.zeros((4, 4)))
    assert no_shadow["ber"] == 0.0 and no_shadow["shadow_error_rate"] is None


def test_combine_shadows():
    half = np.full((2, 2), 0.5)
    np.testing.assert_allclose(combine_shadows([half, half]), 0.75)
    np.testing.assert_array_equal(combine_shadows([], shape=(2, 3)), np.zeros((2, 3)))


def test_background_and_recomposition():
    gt = np.ones((4, 4, 3))
    pred = gt.copy()
    pred[:2, :2] = 0.0
    hidden = np.zeros((4, 4), bool)
    hidden[:2, :2] = True
    errors = background_errors(pred, gt, hidden)
    assert errors["background_l1"] == pytest.approx(4 / 16) and errors["hidden_l1"] == 1.0
    with pytest.raises(MetricInputError, match="expected an RGB image"):
        background_errors(Image.new("RGBA", (4, 4)), gt)
    layered = LayeredImage(np.full((4, 4, 3), 0.5, np.float32), [np.full((4, 4, 4), 1.0, np.float32)])
    assert recomposition_error(layered, np.ones((4, 4, 3), np.float32))["max_abs_error"] == 0.0
    assert recomposition_error(layered, np.zeros((4, 4, 3), np.float32))["mean_abs_error"] == pytest.approx(1.0)
    with pytest.raises(MetricInputError, match="image is 2x2"):
        recomposition_error(layered, np.zeros((2, 2, 3), np.float32))


def test_layered_to_stack():
    shadow = np.zeros((4, 4), np.float32)
    shadow[0, 0] = 0.5
    layered = LayeredImage(
        np.zeros((4, 4, 3), np.float32),
        [np.ones((4, 4, 4), np.float32), np.ones((4, 4, 4), np.float32)],
        [shadow, np.zeros((4, 4), np.float32)],
    )
    assert len(layered_to_stack(layered)) == 3
    with_shadows = layered_to_stack(layered, include_shadows=True)
    assert len(with_shadows) == 4  # the empty shadow is left out
    assert with_shadows[1][0, 0].tolist() == [0, 0, 0, 128]


# ---------------------------------------------------------------------------------------------- evaluate modules
@pytest.fixture(scope="module")
def modules() -> dict:
    return {name: load_metric(name, keep_in_memory=True) for name in ("layers", "alpha_boundary", "shadows")}


def test_layers_module_matches_core(modules):
    rng = np.random.default_rng(3)
    preds = [random_stack(rng, int(rng.integers(2, 6))) for _ in range(6)]
    gts = [random_stack(rng, int(rng.integers(2, 6))) for _ in range(6)]
    preds.append([])  # empty prediction: skipped and counted
    gts.append(gts[0])
    # PIL input for half the predictions: the same numbers
    inputs = [[Image.fromarray(x, "RGBA") for x in p] if i % 2 else p for i, p in enumerate(preds)]
    output = modules["layers"].compute(predictions=inputs, references=gts, return_samples=True)
    expected = aggregate_layer_results([evaluate_layers(p, g) for p, g in zip(preds[:-1], gts[:-1])])
    for name in ("rgb_l1", "alpha_iou", "cost", "avg_edits", "count"):
        assert output[name] == [row[name] for row in expected]
    assert (output["num_samples"], output["num_evaluated"], output["num_skipped"]) == (7, 6, 1)
    assert output["skipped"] == {"prediction has fewer than 2 layers": 1}
    assert len(output["samples"]) == 6


def test_layers_module_add_and_errors(modules):
    stack = [background(), layer(box=(2, 8, 2, 8))]
    metric = modules["layers"]
    metric.add(prediction=stack, reference=stack)
    assert metric.compute()["alpha_iou"][0] == 1.0
    with pytest.raises(MetricInputError, match="expected an RGBA image"):
        metric.compute(predictions=[[Image.new("RGB", (SIZE, SIZE))] * 2], references=[stack])


def test_alpha_boundary_module_matches_core(modules):
    rng = np.random.default_rng(4)
    gts = [(rng.random((20, 20)) > 0.5).astype(np.float64) for _ in range(3)]
    preds = [np.clip(g + rng.normal(0, 0.2, g.shape), 0, 1) for g in gts]
    preds[1] = (preds[1] * 255).round().astype(np.uint8)  # uint8 input too
    output = modules["alpha_boundary"].compute(predictions=preds, references=gts, width=3)
    expected = aggregate_alpha_errors([alpha_matting_errors(p, g, width=3) for p, g in zip(preds, gts)])
    assert output == expected
    output_all = modules["alpha_boundary"].compute(predictions=preds, references=gts, region="all")
    assert (
        output_all["sad"]
        == aggregate_alpha_errors([alpha_matting_errors(p, g, "all") for p, g in zip(preds, gts)])["sad"]
    )


def test_shadows_module_matches_core(modules):
    rng = np.random.default_rng(5)
    preds = [[rng.random((10, 10)) * 0.5], [], [rng.random((10, 10)), rng.random((10, 10)) * 0.2], []]
    gts = [[rng.random((10, 10)) * 0.5], [rng.random((10, 10))], [], []]
    output = modules["shadows"].compute(predictions=preds, references=gts)
    expected = aggregate_shadow_errors(
        [shadow_errors(combine_shadows(p, (10, 10)), combine_shadows(g, (10, 10))) for p, g in zip(preds[:3], gts[:3])]
    )
    assert output == expected | {"num_skipped": 1}


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        load_metric("nope")


# ---------------------------------------------------------------------------------------------- liwi evaluate
def write_stack(folder: Path, stack: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, rgba in enumerate(stack):
        Image.fromarray(rgba, "RGBA").save(folder / f"{index:04d}.png")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(6)
    pred_root, gt_root, pairs = tmp_path / "pred", tmp_path / "gt", {}
    for index in range(4):
        name = f"s{index}"
        gt = random_stack(rng, int(rng.integers(2, 6)))
        pred = random_stack(rng, int(rng.integers(2, 6)))
        write_stack(gt_root / name, gt)
        write_stack(pred_root / name, pred)
        pairs[name] = (pred, gt)
    write_stack(gt_root / "missing", random_stack(rng, 3))  # no prediction folder
    write_stack(gt_root / "single", random_stack(rng, 3))
    write_stack(pred_root / "single", random_stack(rng, 1))  # one layer: skipped
    (pred_root / "empty").mkdir()  # no PNG at all: skipped
    write_stack(gt_root / "empty", random_stack(rng, 2))
    return pred_root, gt_root, pairs


def test_cli_folders_end_to_end(folders, tmp_path, capsys):
    pred_root, gt_root, pairs = folders
    output = tmp_path / "out" / "result.json"
    assert main(["evaluate", "--pred", str(pred_root), "--gt", str(gt_root), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    expected = aggregate_layer_results([evaluate_layers(*pairs[name]) for name in sorted(pairs)])
    assert report["levels"] == expected  # full float precision through JSON
    assert (report["num_samples"], report["num_evaluated"], report["num_skipped"]) == (7, 4, 3)
    assert report["skipped"] == {"no prediction folder": 1, "prediction has fewer than 2 layers": 2}
    assert [level["merges"] for level in report["levels"]] == list(range(6))
    statuses = {sample["id"]: sample["status"] for sample in report["samples"]}
    assert statuses["missing"] == "skipped" and statuses["s0"] == "evaluated"
    table = output.with_suffix(".md").read_text()
    assert "| merges | RGB L1" in table and table.strip() in capsys.readouterr().out


def test_cli_options_limit_max_edits_resolution(folders, tmp_path):
    pred_root, gt_root, _ = folders
    output = tmp_path / "r.json"
    args = ["evaluate", "--pred", str(pred_root), "--gt", str(gt_root), "-o", str(output)]
    assert main([*args, "--limit", "2", "--max-edits", "2"]) == 0
    report = json.loads(output.read_text())
    assert report["num_samples"] == 2 and len(report["levels"]) == 3
    assert main([*args, "--resolution", "12"]) == 0
    assert json.loads(output.read_text())["num_evaluated"] == 4


def test_cli_folder_errors(folders, tmp_path, capsys):
    pred_root, gt_root, _ = folders

    def error(*args: str) -> str:
        assert main(["evaluate", *args]) == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
        assert message.startswith("liwi: error: ")
        return message

    assert "does not exist" in error("--pred", str(tmp_path / "nope"), "--gt", str(gt_root))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGBA", (4, 4)).save(loose / "0000.png")
    assert "put each sample's layers in its own folder" in error("--pred", str(loose), "--gt", str(gt_root))
    Image.new("RGBA", (5, 5)).save(pred_root / "s0" / "0000.png")  # one layer of another size
    assert "sample s0: prediction layers have different sizes" in error("--pred", str(pred_root), "--gt", str(gt_root))
    for path in (pred_root / "s0").glob("*.png"):
        Image.new("RGBA", (12, 12)).save(path)
    assert "12x12 but the ground truth is 24x24; give --resolution" in error(
        "--pred", str(pred_root), "--gt", str(gt_root)
    )
    (pred_root / "s1" / "0000.png").write_bytes(b"not a png")
    assert "not a readable PNG" in error("--pred", str(pred_root), "--gt", str(gt_root), "--resolution", "24")
    assert "--max-edits must be >= 0" in error("--pred", str(pred_root), "--gt", str(gt_root), "--max-edits", "-1")
    assert "needs --checkpoint" in error("--method", "pipeline", "--gt", str(gt_root))
    # --skip-errors counts what cannot be scored instead of stopping
    output = tmp_path / "skip.json"
    assert main(["evaluate", "--pred", str(pred_root), "--gt", str(gt_root), "--skip-errors", "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["skipped"]["prediction failed"] == 2 and report["num_evaluated"] == 2


def test_cli_sixteen_bit_png_is_refused(tmp_path, capsys):
    folder = tmp_path / "gt" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(folder / "0000.png")
    assert main(["evaluate", "--method", "oracle", "--gt", str(tmp_path / "gt")]) == 2
    assert "16/32-bit" in capsys.readouterr().err


def write_dataset(root: Path, rng: np.random.Generator, count: int = 3, value: int | None = None) -> list[LayeredImage]:
    """A tiny LiWi-format dataset: parquet shard + README with ``configs:``."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "composite": datasets.Image(),
            "background": datasets.Image(),
            "foregrounds": datasets.List(datasets.Image()),
            "shadows": datasets.List(datasets.Image()),
        }
    )
    rows, layered_images = [], []
    for index in range(count):
        stack = random_stack(rng, index + 2, size=20)
        if value is not None:
            stack[0][:, :, :3] = value
        shadows = []
        for fg in stack[1:]:
            shadow = np.zeros((20, 20), np.uint8)
            shadow[np.roll(fg[:, :, 3] > 0, 2, axis=0)] = 90
            shadows.append(Image.fromarray(shadow, "L"))
        foregrounds = [Image.fromarray(fg, "RGBA") for fg in stack[1:]]
        layered = LayeredImage.from_pil(Image.fromarray(stack[0][:, :, :3]), foregrounds, shadows)
        layered_images.append(layered)
        rows.append(
            {
                "id": f"row-{index}",
                "composite": layered.composite_pil(),
                "background": layered.background_pil(),
                "foregrounds": foregrounds,
                "shadows": shadows,
            }
        )
    (root / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*\n---\n"
    )
    return layered_images


def test_cli_dataset_methods(tmp_path):
    root = tmp_path / "liwi-tiny"
    layered_images = write_dataset(root, np.random.default_rng(7))
    output = tmp_path / "oracle.json"
    assert main(["evaluate", "--method", "oracle", "--dataset", str(root), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["num_evaluated"] == 3
    assert all(level["rgb_l1"] == 0.0 and level["alpha_iou"] == 1.0 for level in report["levels"])
    extras = report["extras"]
    assert extras["alpha_boundary"]["sad"] == 0.0 and extras["shadows"]["ber"] == 0.0
    assert extras["background"]["background_l1"] == 0.0
    assert extras["recomposition"]["mean_abs_error"] < 1 / 255

    assert main(["evaluate", "--method", "gt-alpha", "--dataset", str(root), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["levels"][0]["alpha_iou"] == 1.0 and report["extras"]["shadows"]["shadow_error_rate"] == 1.0

    # one layer: skipped by the protocol, scored with --min-layers 1
    assert main(["evaluate", "--method", "single-layer", "--dataset", str(root), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["num_evaluated"] == 0 and report["skipped"] == {"prediction has fewer than 2 layers": 3}
    assert report["levels"][0]["rgb_l1"] is None
    assert (
        main(["evaluate", "--method", "single-layer", "--dataset", str(root), "--min-layers", "1", "-o", str(output)])
        == 0
    )
    assert json.loads(output.read_text())["num_evaluated"] == 3

    # predictions from folders against the dataset (and --save-layers writes what was scored)
    saved = tmp_path / "saved"
    assert main(["evaluate", "--method", "oracle", "--dataset", str(root), "--save-layers", str(saved)]) == 0
    assert main(["evaluate", "--pred", str(saved / "pred"), "--dataset", str(root), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["num_evaluated"] == 3 and report["levels"][0]["alpha_iou"] == 1.0
    expected = evaluate_layers(layered_to_stack(layered_images[2]), layered_to_stack(layered_images[2]))
    assert report["samples"][2]["levels"][0]["rgb_l1"] == expected.level(0).rgb_l1


def test_cli_dataset_is_read_fresh_after_rewrite(tmp_path):
    """Rewritten shards are seen (streaming reads the parquet files; no stale cache)."""
    root = tmp_path / "liwi-tiny"
    output = tmp_path / "r.json"
    write_dataset(root, np.random.default_rng(8), value=0)
    assert (
        main(["evaluate", "--method", "single-layer", "--dataset", str(root), "--min-layers", "1", "-o", str(output)])
        == 0
    )
    first = json.loads(output.read_text())["extras"]["background"]["background_l1"]
    write_dataset(root, np.random.default_rng(8), value=255)
    assert (
        main(["evaluate", "--method", "single-layer", "--dataset", str(root), "--min-layers", "1", "-o", str(output)])
        == 0
    )
    assert json.loads(output.read_text())["extras"]["background"]["background_l1"] != first


def test_cli_dataset_errors(tmp_path, capsys):
    root = tmp_path / "liwi-tiny"
    write_dataset(root, np.random.default_rng(9), count=1)
    assert main(["evaluate", "--method", "oracle", "--dataset", str(root), "--split", "train"]) == 2
    assert "Available splits: ['test']" in capsys.readouterr().err
    assert main(["evaluate", "--method", "oracle", "--dataset", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_pipeline_checkpoint(tmp_path):
    import liwi_diffusers.pipelines.tiny as tiny

    checkpoint = tmp_path / "tiny-pipeline"
    tiny.build_tiny_pipeline().save_pretrained(checkpoint)
    root = tmp_path / "liwi-tiny"
    write_dataset(root, np.random.default_rng(10), count=2)
    output = tmp_path / "pipeline.json"
    args = [
        "evaluate",
        "--method",
        "pipeline",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        str(root),
        "--steps",
        "1",
        "--pipeline-resolution",
        "32",
        "--device",
        "cpu",
        "-o",
        str(output),
    ]
    assert main(args) == 0
    report = json.loads(output.read_text())
    assert report["num_evaluated"] == 2
    assert [sample["num_pred_layers"] for sample in report["samples"]] == [2, 3]  # --num-layers gt
    assert all(math.isfinite(level["rgb_l1"]) for level in report["levels"])


def test_cli_pipeline_shipped_checkpoint_by_name(tmp_path):
    root = tmp_path / "liwi-tiny"
    write_dataset(root, np.random.default_rng(11), count=1)
    output = tmp_path / "shipped.json"
    args = [
        "evaluate",
        "--method",
        "pipeline",
        "--checkpoint",
        "liwi-small",
        "--dataset",
        str(root),
        "--steps",
        "1",
        "--device",
        "cpu",
        "-o",
        str(output),
    ]
    assert main(args) == 0
    report = json.loads(output.read_text())
    assert report["num_evaluated"] == 1 and all(math.isfinite(level["alpha_iou"]) for level in report["levels"])
    assert report["source"]["pipeline"] == {"resolution": 128, "steps": 1, "seed": 0}  # the checkpoint's resolution


def test_cli_pipeline_resolution_below_the_model_multiple(tmp_path, capsys):
    root = tmp_path / "liwi-tiny"
    write_dataset(root, np.random.default_rng(12), count=1)
    args = [
        "evaluate",
        "--method",
        "pipeline",
        "--checkpoint",
        "liwi-small",
        "--dataset",
        str(root),
        "--pipeline-resolution",
        "0",
        "-o",
        str(tmp_path / "r.json"),
    ]
    assert main(args) == 2
    assert "--pipeline-resolution must be at least 16 for this model, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
