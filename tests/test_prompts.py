"""Box and point prompts (`liwi_diffusers.tools.prompts`) in the tool chain and the CLI, on tiny scenes.

- The coordinate rule: fractions when every value is in [0, 1] and one is a float; pixels otherwise.
- Bad prompts (inverted, empty, outside the photo, not numbers, more than the layer limit) are one-line errors.
- Weight-free (GrabCut seeded by the prompt) and with a tiny ONNX segmenter built here: a box or a point gives
  back its object as one layer with a shadow slot, automatic objects are added without duplicates, negative
  points cut objects out, and the layers still recompose to the photo.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_segmenter import SPEC, red_salience_model

from liwi_diffusers.cli import main as liwi
from liwi_diffusers.export import load_layered
from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools.decomposer import DecomposerNote
from liwi_diffusers.tools.prompts import (
    BoxPrompt,
    PointPrompt,
    PromptSegmenter,
    RememberingSegmenter,
    _depth_at,
    _shape_prior_labels,
    parse_numbers,
    parse_prompts,
)
from liwi_diffusers.tools.segmenter import OnnxSegmenter


def two_things(size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured grey-green ground, a red disc (left, lower) and a red square (right, higher); their masks."""
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (0.45, 0.55, 0.45)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 62) ** 2 + (xx - 28) ** 2 <= 16**2
    square = np.zeros((size, size), bool)
    square[14:38, 58:82] = True
    image[disc] = (0.9, 0.1, 0.1)
    image[square] = (0.85, 0.15, 0.1)
    return np.clip(image, 0, 1), disc, square


def iou(alpha: np.ndarray, mask: np.ndarray) -> float:
    solid = alpha >= 0.5
    return float((solid & mask).sum() / max(1, (solid | mask).sum()))


@pytest.fixture(scope="module")
def onnx_segmenter(tmp_path_factory: pytest.TempPathFactory) -> OnnxSegmenter:
    path = tmp_path_factory.mktemp("model") / "red.onnx"
    red_salience_model(path)
    return OnnxSegmenter(path, SPEC, name="red")


# ---------------------------------------------------------------------------------------------- parsing
def test_coordinates_are_fractions_only_when_all_lie_in_0_1_and_one_is_a_float():
    prompts = parse_prompts(
        boxes=[(0.25, 0.5, 0.75, 1.0), (0, 0, 1, 1), (10, 20, 30, 40)],
        points=[(0.5, 0.5), (1, 1), "3,4"],
        negative_points=["0.0,1.0"],
        size=(200, 100),
    )
    assert prompts.boxes[0] == BoxPrompt(50.0, 50.0, 150.0, 100.0, "box 1")
    assert (prompts.boxes[1].x1, prompts.boxes[1].y1) == (1.0, 1.0)  # integers: pixels (a one-pixel box)
    assert prompts.boxes[2].pixels((100, 200)) == (10, 20, 30, 40)
    assert (prompts.points[0].x, prompts.points[0].y) == (100.0, 50.0)
    assert (prompts.points[1].x, prompts.points[1].y) == (1.0, 1.0)
    assert prompts.points[2].pixel((100, 200)) == (3, 4)
    negative = prompts.negative_points[0]
    assert not negative.positive and negative.pixel((100, 200)) == (0, 99)  # 1.0 is the last row, inside
    assert len(prompts) == 6 and prompts.objects[3] == prompts.points[0]
    assert parse_numbers("0.5, 2", 2, "--point") == (0.5, 2)
    assert isinstance(parse_numbers("0.5,2", 2, "p")[1], int)
    scaled = prompts.scaled(0.5)
    assert scaled.boxes[0] == BoxPrompt(25.0, 25.0, 75.0, 50.0, "box 1") and scaled.points[2].x == 1.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"boxes": [(30, 10, 20, 40)]}, r"box 1 \(30, 10, 20, 40\) is inverted: give x0,y0,x1,y1 with x0 < x1"),
        ({"boxes": [(10, 10, 10, 40)]}, r"box 1 \(10, 10, 10, 40\) is empty: a box must be at least one pixel"),
        ({"boxes": [(10, 10, 250, 40)]}, r"box 1 \(10, 10, 250, 40\) reaches outside the 200x100 image"),
        ({"boxes": [(-1, 0, 5, 5)]}, r"reaches outside the 200x100 image"),
        ({"boxes": [(0.2, 0.2, 1.5, 0.5)]}, r"is empty \(read as pixels: fractions need every value in \[0, 1\]\)"),
        ({"boxes": [(1, 2, 3)]}, r"box 1: expected 4 numbers, got 3"),
        ({"boxes": [(1, 2, "x", 4)]}, r"box 1: 'x' is not a number"),
        ({"boxes": [(1, 2, float("nan"), 4)]}, r"box 1: coordinates must be finite numbers"),
        ({"boxes": (1, 2, 3, 4)}, r"boxes must be a list of prompts"),
        ({"points": [(200, 5)]}, r"point 1 \(200, 5\) is outside the 200x100 image: keep 0 <= x < 200"),
        ({"points": [(5, -1)]}, r"point 1 \(5, -1\) is outside"),
        ({"negative_points": [(5, 100)]}, r"negative point 1 \(5, 100\) is outside"),
        ({"points": ["1;2"]}, r"point 1: expected 2 numbers x,y separated by commas"),
    ],
)
def test_bad_prompts_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_prompts(size=(200, 100), **options)
    assert "\n" not in str(caught.value)


def test_more_prompts_than_the_layer_limit_is_an_error():
    image, _, _ = two_things(48)
    decomposer = ToolChainDecomposer(segmenter=None, extract_shadows=False)
    with pytest.raises(ValueError, match=r"3 prompted objects but the layer limit is 2: give at most 2"):
        decomposer(image, 2, boxes=[(0, 0, 10, 10), (10, 10, 20, 20)], points=[(30, 30)])
    with pytest.raises(ValueError, match=r"only_prompts=True needs at least one box or point"):
        decomposer(image, only_prompts=True)


# ---------------------------------------------------------------------------------------------- weight-free
def test_a_box_gives_its_object_weight_free():
    image, disc, square = two_things()
    decomposer = ToolChainDecomposer(segmenter=None)
    layered = decomposer(image, boxes=[(6, 40, 50, 84)], only_prompts=True)
    assert layered.num_objects == 1 and len(layered.shadows) == 1
    assert layered.metadata["prompt_layers"] == [0]
    assert layered.metadata["prompts"] == [{"kind": "box", "box": [6.0, 40.0, 50.0, 84.0]}]
    assert layered.metadata["stop_reason"] == "1 prompted object; only the prompted objects"
    alpha = layered.foregrounds[0][:, :, 3]
    assert iou(alpha, disc) > 0.85
    assert alpha[square].max() == 0.0  # nothing outside the box
    assert layered.check(image).ok()


def test_a_point_gives_its_object_weight_free_and_fractions_work():
    image, _, square = two_things()
    layered = ToolChainDecomposer(segmenter=None)(image, points=[(70 / 96, 26 / 96)], only_prompts=True)
    assert layered.num_objects == 1
    assert iou(layered.foregrounds[0][:, :, 3], square) > 0.8
    assert layered.check(image).ok()


# ---------------------------------------------------------------------------------------------- learned segmenter
def test_box_and_point_with_a_segmenter_each_give_one_object(onnx_segmenter):
    image, disc, square = two_things()
    decomposer = ToolChainDecomposer(segmenter=onnx_segmenter, extract_shadows=False)
    # A box that also catches a corner of the square keeps only the boxed object's region... and not the square.
    layered = decomposer(image, boxes=[(8, 40, 62, 84)], points=[(70, 26)], only_prompts=True)
    assert layered.num_objects == 2
    box_layer, point_layer = layered.metadata["prompt_layers"]
    assert {box_layer, point_layer} == {0, 1}
    assert iou(layered.foregrounds[box_layer][:, :, 3], disc) > 0.9
    assert iou(layered.foregrounds[point_layer][:, :, 3], square) > 0.9
    assert layered.check(image).ok()


def test_automatic_objects_are_added_without_duplicating_a_prompted_one(onnx_segmenter):
    image, disc, square = two_things()
    decomposer = ToolChainDecomposer(segmenter=onnx_segmenter, extract_shadows=False)
    layered = decomposer(image, boxes=[(8, 40, 50, 84)])
    assert layered.num_objects == 2  # the boxed disc once, the square found automatically
    prompted = layered.metadata["prompt_layers"][0]
    other = 1 - prompted
    assert iou(layered.foregrounds[prompted][:, :, 3], disc) > 0.9
    assert iou(layered.foregrounds[other][:, :, 3], square) > 0.9
    # A layer limit of 1 leaves room for the prompt only.
    limited = decomposer(image, 1, boxes=[(8, 40, 50, 84)])
    assert limited.num_objects == 1 and "layer limit 1 reached" in limited.metadata["stop_reason"]
    assert iou(limited.foregrounds[0][:, :, 3], disc) > 0.9


def test_a_negative_point_cuts_an_object_out_of_a_box_and_drops_an_automatic_one(onnx_segmenter):
    image, disc, square = two_things()
    decomposer = ToolChainDecomposer(segmenter=onnx_segmenter, extract_shadows=False)
    both = (4, 8, 90, 84)
    layered = decomposer(image, boxes=[both], only_prompts=True)
    assert iou(layered.foregrounds[0][:, :, 3], disc | square) > 0.9  # a box around both takes both
    cut = decomposer(image, boxes=[both], negative_points=[(70, 26)], only_prompts=True)
    alpha = cut.foregrounds[0][:, :, 3]
    assert iou(alpha, disc) > 0.9 and alpha[square].max() < 0.5
    # Without prompted objects, a negative point leaves out the automatic object under it.
    auto = decomposer(image, negative_points=[(70, 26)])
    assert auto.num_objects == 1 and iou(auto.foregrounds[0][:, :, 3], disc) > 0.9
    assert auto.metadata["prompt_layers"] == []


def test_several_points_give_one_object_each(onnx_segmenter):
    image, disc, square = two_things()
    layered = ToolChainDecomposer(segmenter=onnx_segmenter, extract_shadows=False)(
        image, points=[(28, 62), (60, 30)], only_prompts=True
    )
    assert layered.num_objects == 2
    first, second = layered.metadata["prompt_layers"]
    assert iou(layered.foregrounds[first][:, :, 3], disc) > 0.9
    assert iou(layered.foregrounds[second][:, :, 3], square) > 0.9


def test_a_point_where_the_segmenter_sees_nothing_falls_back_to_grabcut(onnx_segmenter):
    image, _, _ = two_things()
    image[40:60, 40:60] = (0.1, 0.2, 0.8)  # blue: not salient to the red segmenter
    blue = np.zeros(image.shape[:2], bool)
    blue[40:60, 40:60] = True
    masks = PromptSegmenter()(image, parse_prompts(points=[(50, 50)], size=(96, 96)), onnx_segmenter)
    assert iou(masks[0], blue) > 0.8


def test_the_box_shape_prior_is_sure_in_the_middle_and_outside_and_unsure_between():
    inside = np.zeros((40, 60), bool)
    inside[10:30, 10:50] = True
    negative = np.zeros_like(inside)
    negative[20, 40] = True
    labels = _shape_prior_labels(inside, (10, 10, 50, 30), negative)  # the "ellipse" prior
    assert labels[20, 30] == cv2.GC_FGD  # the box's middle
    assert labels[20, 13] == cv2.GC_PR_FGD  # inside the ellipse, off the middle
    assert labels[10, 10] == labels[29, 49] == cv2.GC_PR_BGD  # the box's corners
    assert labels[5, 30] == labels[20, 55] == cv2.GC_BGD  # outside the box
    assert labels[20, 40] == cv2.GC_BGD and labels[20, 38] != cv2.GC_FGD  # a negative point and around it
    assert (labels == cv2.GC_FGD).sum() < (labels == cv2.GC_PR_FGD).sum()


def test_the_box_and_middle_priors_differ_only_in_the_sure_middle():
    inside = np.zeros((40, 60), bool)
    inside[10:30, 10:50] = True
    nothing = np.zeros_like(inside)
    whole_box = _shape_prior_labels(inside, (10, 10, 50, 30), nothing, "box")
    middle = _shape_prior_labels(inside, (10, 10, 50, 30), nothing, "middle")
    assert (whole_box[inside] == cv2.GC_PR_FGD).all() and (whole_box[~inside] == cv2.GC_BGD).all()
    assert middle[20, 30] == cv2.GC_FGD and middle[10, 10] == cv2.GC_PR_FGD
    assert np.array_equal(whole_box[middle != cv2.GC_FGD], middle[middle != cv2.GC_FGD])
    with pytest.raises(ValueError, match="prior must be"):
        _shape_prior_labels(inside, (10, 10, 50, 30), nothing, "circle")


def test_a_box_skips_a_thin_outline_the_segmenter_sees_for_the_object_it_frames():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal((0.45, 0.55, 0.45), 0.02, (128, 128, 3)), 0, 1).astype(np.float32)
    blue = np.zeros(image.shape[:2], bool)
    blue[21:99, 21:99] = True
    image[blue] = (0.1, 0.2, 0.8)
    frame = np.zeros_like(blue)
    frame[20:100, 20:100] = True
    frame[21:99, 21:99] = False

    def outline(patch: np.ndarray) -> np.ndarray:  # a segmenter that sees only the frame around the square
        assert patch.shape[:2] == frame.shape  # box_margin=1.0: the crop around the box is the whole photo
        return frame.astype(np.float32)

    prompts = parse_prompts(boxes=[(20, 20, 100, 100)], size=(128, 128))
    # The frame fits the box perfectly but covers a twentieth of it: not what the box was drawn around.
    assert iou(PromptSegmenter(box_margin=1.0)(image, prompts, outline)[0], blue) > 0.9
    assert iou(PromptSegmenter(box_margin=1.0, min_box_fill=0.0)(image, prompts, outline)[0], blue) < 0.2


def test_a_box_whose_middle_is_the_background_around_it_does_not_take_that_background():
    """A loose box that cuts its object (a detector's box): the box's middle is the grey the photo shows all around
    the box, so GrabCut from the box's shape fills the box with grey. That candidate is refused; with the rule off
    (likeness above 1) the grey is taken and the red square mostly left out."""
    image = np.full((60, 80, 3), 150 / 255, np.float32)
    image[18:42, 28:52] = (200 / 255, 30 / 255, 30 / 255)
    red_in_box = np.zeros(image.shape[:2], bool)
    red_in_box[25:42, 28:52] = True
    prompts = parse_prompts(boxes=[(25, 25, 80, 60)], size=(80, 60))
    mask = PromptSegmenter()(image, prompts)[0] >= 0.5
    assert mask[red_in_box].mean() > 0.8 and mask[30, 40]
    blind = PromptSegmenter(max_surroundings_likeness=1.01)(image, prompts)[0] >= 0.5
    assert blind[red_in_box].mean() < 0.5


def test_a_box_around_nothing_it_can_find_gives_the_ellipse_it_holds():
    image = np.full((64, 64, 3), 0.5, np.float32)  # flat grey: GrabCut finds nothing to separate
    mask = PromptSegmenter()(image, parse_prompts(boxes=[(10, 20, 50, 40)], size=(64, 64)))[0]
    assert mask[30, 30] == 1.0 and mask[21, 11] == 0.0 and mask[30, 11] == 1.0 and mask[:20].max() == 0.0


def count_grabcuts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts `PromptSegmenter._grabcut` calls (one entry each) while the test runs."""
    calls: list[int] = []
    run = PromptSegmenter._grabcut

    def counted(self: PromptSegmenter, *args, **kwargs):
        calls.append(1)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(PromptSegmenter, "_grabcut", counted)
    return calls


def test_a_box_that_nothing_fits_tries_one_grabcut_per_shape_prior_it_is_given(monkeypatch):
    """Flat grey, no segmenter: every shape prior is tried and refused, then the ellipse is the answer; the fast
    preset's shorter list runs fewer GrabCuts for the same fallback, and an unknown prior is a clear error."""
    image = np.full((64, 64, 3), 0.5, np.float32)
    prompts = parse_prompts(boxes=[(10, 20, 50, 40)], size=(64, 64))
    calls = count_grabcuts(monkeypatch)
    masks = []
    for priors, expected in ((("box", "middle", "ellipse"), 3), (("box", "ellipse"), 2), ((), 0)):
        calls.clear()
        masks.append(PromptSegmenter(box_priors=priors)(image, prompts)[0])
        assert len(calls) == expected, priors
    assert all(np.array_equal(mask, masks[0]) for mask in masks) and masks[0][30, 30] == 1.0
    with pytest.raises(ValueError, match=r"unknown box prior.*'square'"):
        PromptSegmenter(box_priors=("box", "square"))


def test_grabcut_from_the_matte_runs_only_when_asked(monkeypatch, onnx_segmenter):
    """A box far larger than the red square it holds: the segmenter's region does not fit the box, so the
    default tries GrabCut seeded by its matte next; without ``grabcut_from_matte`` that GrabCut is not run."""
    image, _, _ = two_things()
    prompts = parse_prompts(boxes=[(44, 2, 96, 60)], size=(96, 96))
    calls = count_grabcuts(monkeypatch)
    PromptSegmenter(box_priors=())(image, prompts, onnx_segmenter)
    assert len(calls) == 1
    calls.clear()
    mask = PromptSegmenter(box_priors=(), grabcut_from_matte=False)(image, prompts, onnx_segmenter)[0]
    assert len(calls) == 0 and mask.any() and mask[:, :44].max() == 0.0  # still an answer, inside the box


def test_depth_is_one_at_a_regions_middle_and_small_on_its_rim():
    region = np.zeros((30, 30), bool)
    region[5:25, 5:25] = True
    assert _depth_at(region, 14, 14) > 0.9
    assert _depth_at(region, 5, 14) < 0.15
    assert _depth_at(region, 0, 0) == 0.0


def test_a_point_on_the_rim_of_a_big_region_looks_again_on_a_smaller_crop():
    """The whole photo's answer is a big region with the point near its rim (a cup on a table): the crop around
    the point, where the cup is a region of its own with the point in its middle, gives the object."""
    size = 128
    image = np.zeros((size, size, 3), np.float32)
    cup = np.zeros((size, size), bool)
    cup[30:46, 30:46] = True
    table = np.zeros((size, size), bool)
    table[30:120, 30:120] = True

    class ByCrop:
        def __call__(self, patch: np.ndarray) -> np.ndarray:
            if patch.shape[:2] == (size, size):  # the whole photo: one region, table and cup together
                return table.astype(np.float32)
            return np.zeros(patch.shape[:2], np.float32)

    calls = []

    class Crops(ByCrop):
        def __call__(self, patch: np.ndarray) -> np.ndarray:
            calls.append(patch.shape[:2])
            if patch.shape[:2] == (size, size):
                return super().__call__(patch)
            out = np.zeros(patch.shape[:2], np.float32)
            side = patch.shape[0]
            out[side // 2 - 8 : side // 2 + 8, side // 2 - 8 : side // 2 + 8] = 1.0  # the cup, centred on the point
            return out

    masks = PromptSegmenter(split_instances=False)(image, parse_prompts(points=[(38, 38)], size=(size, size)), Crops())
    assert iou(masks[0], cup) > 0.9
    assert calls[0] == (size, size) and len(calls) == 2  # the whole photo, then the first crop
    # The point in the table's middle is well inside: the whole photo's region is taken at once.
    calls.clear()
    masks = PromptSegmenter(split_instances=False)(image, parse_prompts(points=[(75, 75)], size=(size, size)), Crops())
    assert iou(masks[0], table) > 0.9 and len(calls) == 1


def test_a_point_on_a_big_object_the_segmenter_misses_grows_on_a_crop_that_holds_it():
    """GrabCut from the point runs on the crops from large to small; the small crop inside the object would only
    give back its seed disc, the whole photo gives the object."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal((0.45, 0.55, 0.45), 0.02, (128, 128, 3)), 0, 1).astype(np.float32)
    blue = np.zeros(image.shape[:2], bool)
    blue[20:108, 24:104] = True
    image[blue] = (0.1, 0.2, 0.8)

    def blind(patch: np.ndarray) -> np.ndarray:
        return np.zeros(patch.shape[:2], np.float32)

    prompts = parse_prompts(points=[(64, 64)], size=(128, 128))
    assert iou(PromptSegmenter()(image, prompts, blind)[0], blue) > 0.9
    assert iou(PromptSegmenter(point_crops=(0.2,))(image, prompts, blind)[0], blue) < 0.2  # the seed disc only


def test_the_whole_photo_pass_is_shared_by_peeling_and_prompts():
    calls = []

    class Counting:
        name = "counting"

        def __call__(self, image: np.ndarray) -> np.ndarray:
            calls.append(image.shape)
            return np.zeros(image.shape[:2], np.float32)

    remembering = RememberingSegmenter(Counting())
    image, _, _ = two_things(32)
    remembering(image)
    remembering(image.copy())
    assert len(calls) == 1
    remembering(image[:16])
    assert len(calls) == 2


def test_prompt_dataclasses_take_pixels_as_given():
    prompts = parse_prompts(boxes=[BoxPrompt(1.5, 2, 10, 12)], points=[PointPrompt(3, 4)], size=(20, 20))
    assert prompts.boxes[0].pixels((20, 20)) == (1, 2, 10, 12)
    assert prompts.points[0].pixel((20, 20)) == (3, 4)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_box_point_and_only_prompts(tmp_path, capsys):
    from PIL import Image

    image, _, _ = two_things()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    argv = ["decompose", str(tmp_path / "photo.png"), "-o", str(out), "-f", "zip", "-q"]
    assert (
        liwi([*argv, "--box", "6,40,50,84", "--point", "0.73,0.27", "--negative-point", "2,2", "--only-prompts"]) == 0
    )
    layered = load_layered(out / "photo.zip")
    assert layered.num_objects == 2


def test_cli_checks_prompts_against_every_photo_before_writing_any(tmp_path, capsys):
    from PIL import Image

    image, _, _ = two_things()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.round(image[:40, :40] * 255).astype(np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    argv = ["decompose", str(tmp_path / "big.png"), str(tmp_path / "small.png"), "-o", str(out), "-q"]
    assert liwi([*argv, "--box", "6,40,50,84"]) == 2
    assert "small.png: --box (6, 40, 50, 84) reaches outside the 40x40 image" in capsys.readouterr().err
    assert not out.exists()  # nothing written, not even for the first photo


def test_a_box_over_the_whole_photo_keeps_a_frame_of_background():
    image = np.full((32, 32, 3), (0.8, 0.2, 0.2), np.float32)  # one flat colour: the object is everything
    with pytest.warns(DecomposerNote, match="covered the whole photo; a 6-pixel frame was kept as background"):
        layered = ToolChainDecomposer(segmenter=None)(image, boxes=[(0, 0, 32, 32)], only_prompts=True)
    alpha = layered.foregrounds[0][:, :, 3]
    assert layered.num_objects == 1 and alpha[16, 16] == 1.0 and alpha[:2].max() < 0.5
    assert layered.check(image).ok()
