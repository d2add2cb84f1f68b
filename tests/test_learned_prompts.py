"""The learned prompt head: `PromptHead`, `prompt_maps`, `LearnedPromptSegmenter` and their wiring.

- `prompt_maps` puts the box, its outline distance and the points where the grid says; `PromptHead` answers at 1/4
  of the view and names a feature map of the wrong shape.
- `OnnxSegmenter.features` returns the matte and the feature outputs of a tiny ONNX model, finest first.
- `LearnedPromptSegmenter` maps photo pixels to the head's grid and back (a head that echoes its prompt gives the
  box, or a blob at the point), keeps nothing outside a box, keeps the region under a point and looks again at a
  small object in a crop around it.
- Loading: a checkpoint that does not match its config, or no checkpoint, is a one-line `PromptHeadError`; the
  decomposer uses a head only when given one (the rules are the default), and only with a segmenter that gives
  features; a decomposition with a head gives the boxed object its layer and still recomposes the photo.
- The recipe's prompts lie on their object.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from liwi_diffusers.models.prompt_head import PROMPT_CHANNELS, PromptHead, prompt_maps
from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools.learned_prompts import LearnedPromptSegmenter, PromptHeadError, deepest_point
from liwi_diffusers.tools.prompts import BoxPrompt, PointPrompt, Prompts, PromptSegmenter
from liwi_diffusers.tools.segmenter import OnnxSegmenter, SegmenterError

TINY = {"feature_channels": (4, 4, 4, 4), "hidden_channels": 8, "num_blocks": 1}


def test_prompt_maps_place_box_outline_and_points_on_the_grid():
    maps = prompt_maps((16, 20), box=(4, 2, 12, 10), points=[(8.5, 6.5)], negative_points=[(18.5, 14.5)])
    assert maps.shape == (PROMPT_CHANNELS, 16, 20)
    inside = maps[0].numpy() > 0.5
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 9, 4, 11)
    assert maps[1, 6, 8] > 0 and maps[1, 14, 18] < 0  # inside positive, outside negative
    assert np.unravel_index(int(maps[2].argmax()), (16, 20)) == (6, 8)
    assert np.unravel_index(int(maps[3].argmax()), (16, 20)) == (14, 18)
    assert float(maps[4].mean()) == 1.0
    assert float(prompt_maps((8, 8), points=[(2, 2)])[4].mean()) == 0.5
    assert float(prompt_maps((8, 8))[4].abs().sum()) == 0.0


def test_prompt_head_answers_at_a_quarter_and_names_a_wrong_feature_map():
    torch.manual_seed(0)
    head = PromptHead(**TINY)
    features = [torch.rand(2, 4, 32 // 2**k, 32 // 2**k) for k in range(4)]
    matte, rgb = torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32)
    prompts = torch.stack([prompt_maps((32, 32), box=(4, 4, 20, 20)), prompt_maps((32, 32), points=[(9, 9)])])
    logits = head(features, matte, rgb, prompts)
    assert logits.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="feature map 2: expected"):
        head([*features[:2], torch.rand(2, 5, 8, 8), features[3]], matte, rgb, prompts)
    with pytest.raises(ValueError, match="prompt channels"):
        head(features, matte, rgb, prompts[:, :3])


def test_deepest_point_is_the_middle_of_a_square():
    mask = np.zeros((20, 30), bool)
    mask[4:15, 6:17] = True
    assert deepest_point(mask) == (11.5, 9.5)
    with pytest.raises(ValueError, match="empty"):
        deepest_point(np.zeros((4, 4), bool))


def pooled_features_model(path, size: int = 64) -> None:
    """A tiny ONNX model: alpha = sigmoid(R - G); feature outputs = the input averaged over 2, 4, 8 and 16 pixels."""
    nodes = [
        helper.make_node("Slice", ["x", "s0", "s1", "axis"], ["r"]),
        helper.make_node("Slice", ["x", "s1", "s2", "axis"], ["g"]),
        helper.make_node("Sub", ["r", "g"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["alpha"]),
    ]
    outputs = [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, size, size])]
    for pool in (16, 2, 8, 4):  # out of order: features() sorts them finest first
        nodes.append(
            helper.make_node("AveragePool", ["x"], [f"pool{pool}"], kernel_shape=[pool, pool], strides=[pool, pool])
        )
        outputs.append(
            helper.make_tensor_value_info(f"pool{pool}", TensorProto.FLOAT, [1, 3, size // pool, size // pool])
        )
    inits = [
        helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("s2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_segmenter_features_are_the_feature_outputs_finest_first(tmp_path):
    from types import SimpleNamespace

    spec = SimpleNamespace(
        input_size=64, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), activation="none",
        input_dtype="float32", output_index=0,
    )  # fmt: skip
    pooled_features_model(tmp_path / "pooled.onnx")
    segmenter = OnnxSegmenter(tmp_path / "pooled.onnx", spec, name="pooled")
    image = np.zeros((40, 50, 3), np.float32)
    image[:, :25] = (1.0, 0.0, 0.0)
    matte, maps = segmenter.features(image)
    assert matte.shape == (64, 64)
    assert [m.shape for m in maps] == [(3, 32, 32), (3, 16, 16), (3, 8, 8), (3, 4, 4)]
    assert maps[0][0, :, :15].mean() > 0.99 and maps[0][0, :, 17:].mean() < 0.01  # the red half, stretched
    assert matte[:, :30].mean() > matte[:, 34:].mean()
    with pytest.raises(SegmenterError, match="runs at 64 px only"):
        segmenter.features(image, 32)  # no upsampling to rewire: the nominal size only


class EchoHead(PromptHead):
    """Answers with its prompt: the box's interior, else the positive points' blobs (to test the geometry)."""

    def forward(self, features, matte, rgb, prompts):
        if float(prompts[:, 4].max()) == 1.0:
            return (prompts[:, 0:1] * 2 - 1) * 10
        return (prompts[:, 2:3] - 0.3) * 40


class FakeFeatureSegmenter:
    """`features` like ISNet's at a 64 px view: six maps from 1/2 to 1/64 (4 channels each)."""

    name = "fake-features"

    def __init__(self) -> None:
        self.views = []

    def features(self, image, side=None):
        self.views.append(image.shape[:2])
        side = 64
        return np.zeros((side, side), np.float32), [
            np.zeros((4, side // 2**k, side // 2**k), np.float32) for k in range(1, 7)
        ]

    def __call__(self, image):
        return np.zeros(image.shape[:2], np.float32)


def photo(height: int = 90, width: int = 120) -> np.ndarray:
    return np.full((height, width, 3), 0.5, np.float32)


def test_learned_prompts_map_photo_pixels_to_the_grid_and_back():
    prompts = LearnedPromptSegmenter(EchoHead(**TINY), FakeFeatureSegmenter(), view_side=64)
    mask = prompts.box_mask(photo(), (30, 20, 90, 70))
    solid = mask >= 0.5
    rows, cols = np.nonzero(solid)
    assert abs(rows.min() - 20) <= 2 and abs(rows.max() - 69) <= 2 and abs(cols.min() - 30) <= 2
    assert abs(cols.max() - 89) <= 2
    assert not mask[:20].any() and not mask[:, 90:].any()  # nothing outside the box
    assert solid[25:65, 35:85].all()


def test_a_point_keeps_the_region_under_it_and_a_small_object_is_looked_at_again():
    segmenter = FakeFeatureSegmenter()
    prompts = LearnedPromptSegmenter(EchoHead(**TINY), segmenter, view_side=64, point_refine_below=0.6)
    mask = prompts.point_mask(photo(), (60, 45))
    solid = mask >= 0.5
    assert solid[45, 60] and mask.dtype == np.float32
    rows, cols = np.nonzero(solid)
    assert abs(rows.mean() - 45.5) <= 2 and abs(cols.mean() - 60.5) <= 2
    assert segmenter.views[0] == (90, 120) and len(segmenter.views) == 2  # the photo, then a crop around the blob
    assert segmenter.views[1][0] < 90 and segmenter.views[1][1] < 120


def test_learned_prompts_refuse_a_segmenter_without_features_and_a_mismatched_checkpoint(tmp_path):
    with pytest.raises(PromptHeadError, match="gives none"):
        LearnedPromptSegmenter(PromptHead(**TINY), lambda image: image[..., 0])
    with pytest.raises(PromptHeadError, match=r"config\.json missing"):
        LearnedPromptSegmenter.from_pretrained(tmp_path / "nothing", segmenter=FakeFeatureSegmenter())
    PromptHead(**TINY).save_pretrained(tmp_path / "head")
    config = (tmp_path / "head" / "config.json").read_text().replace('"hidden_channels": 8', '"hidden_channels": 16')
    (tmp_path / "head" / "config.json").write_text(config)
    with pytest.raises(PromptHeadError, match="do not match its config"):
        LearnedPromptSegmenter.from_pretrained(tmp_path / "head", segmenter=FakeFeatureSegmenter())


def test_the_decomposer_uses_a_trained_head_only_when_asked_and_only_with_features(tmp_path):
    PromptHead(**TINY).save_pretrained(tmp_path / "head")
    assert ToolChainDecomposer(segmenter=FakeFeatureSegmenter()).prompt_segmenter.learned is None  # rules: default
    asked = ToolChainDecomposer(segmenter=FakeFeatureSegmenter(), prompt_head=tmp_path / "head")
    learned = asked.prompt_segmenter.learned
    assert isinstance(learned, LearnedPromptSegmenter) and learned.head.config.hidden_channels == 8
    weight_free = ToolChainDecomposer(segmenter=None, prompt_head=tmp_path / "head")
    assert weight_free.prompt_segmenter.learned is None  # GrabCut only
    plain = ToolChainDecomposer(
        segmenter=lambda image: np.zeros(image.shape[:2], np.float32), prompt_head=tmp_path / "head"
    )
    with pytest.raises(PromptHeadError, match="gives none"):
        plain.prompt_segmenter  # noqa: B018


def test_a_decomposition_with_a_learned_head_gives_the_boxed_object_a_layer(tmp_path):
    decomposer = ToolChainDecomposer(segmenter=FakeFeatureSegmenter(), extract_shadows=False)
    decomposer.prompt_segmenter = PromptSegmenter(
        learned=LearnedPromptSegmenter(EchoHead(**TINY), FakeFeatureSegmenter(), view_side=64)
    )
    image = photo()
    image[30:60, 40:80] = (0.8, 0.2, 0.2)
    layered = decomposer(image, boxes=[(40, 30, 80, 60)], only_prompts=True)
    layer = layered.metadata["prompt_layers"][0]
    alpha = layered.foregrounds[layer][:, :, 3]
    assert alpha[35:55, 45:75].mean() > 0.9 and alpha[:25].max() < 0.05
    assert layered.check(image).mean_abs_error < 1 / 255


def test_prompt_segmenter_hands_boxes_and_points_to_the_learned_head():
    prompts = PromptSegmenter(learned=LearnedPromptSegmenter(EchoHead(**TINY), FakeFeatureSegmenter(), view_side=64))
    image = photo()
    masks = prompts(image, Prompts(boxes=(BoxPrompt(10, 10, 50, 40),), points=(PointPrompt(90, 60),)))
    assert len(masks) == 2
    assert masks[0][25, 30] > 0.5 and not masks[0][45:].any()
    assert masks[1][60, 90] > 0.5 and masks[1][10, 10] < 0.01


def test_the_recipes_prompts_lie_on_their_object():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from train_prompt_head import sample_prompt

    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.float32)
    mask[10:40, 20:50] = 1.0
    other = np.zeros_like(mask)
    other[45:60, 5:20] = 1.0
    for _ in range(40):
        prompt = sample_prompt(mask, [other], rng)
        for x, y in prompt["points"]:
            assert mask[int(y), int(x)] == 1.0
        for x, y in prompt["negative_points"]:
            assert other[int(y), int(x)] == 1.0
        if prompt["box"] is not None:
            x0, y0, x1, y1 = prompt["box"]
            assert abs(x0 - 20) <= 2 and abs(y0 - 10) <= 2 and abs(x1 - 50) <= 2 and abs(y1 - 40) <= 2
        assert prompt["box"] is not None or prompt["points"]
