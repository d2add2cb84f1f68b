"""Recursive decomposition: an object layer split into parts with the same peeling (a tree of layers).

- `decompose_layer` with the weight-free tool chain splits a two-colour object into its parts; the parts
  partition the object (disjoint, the object's own RGBA), so the tree recomposes to the photo within 1/255.
- The learned path: a tiny ONNX segmenter (red things are salient) finds the red part of a blue object.
- Depth 3 splits the parts again; an object that has nothing inside stays whole and the metadata says why.
- `LayeredImage.parts`: checked on creation, kept by copy/select/quantized, the flat stack round-trips.
- `liwi decompose --depth 2` writes a PSD whose object group holds its parts.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_segmenter import SPEC, red_salience_model

from liwi_diffusers import LayeredImage, LayerPart, decompose_layer, decompose_to_depth
from liwi_diffusers.cli import main
from liwi_diffusers.cli.decompose import MAX_DEPTH as CLI_MAX_DEPTH
from liwi_diffusers.export import load_layered
from liwi_diffusers.layers import LayeredImageError, flatten_parts, parse_layer_name, parse_part_path, part_layer_name
from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools.recursive import MAX_DEPTH, REST_LABEL
from liwi_diffusers.tools.segmenter import OnnxSegmenter

SIZE = 96
YELLOW, BLUE, GROUND = (0.95, 0.85, 0.1), (0.1, 0.3, 0.8), (0.45, 0.55, 0.45)


def two_colour_object(inner: tuple[float, float, float] = YELLOW) -> tuple[LayeredImage, np.ndarray]:
    """A layered image of a blue square (soft edge) holding a disc of ``inner`` colour, on a green ground."""
    rng = np.random.default_rng(0)
    background = np.clip(np.full((SIZE, SIZE, 3), GROUND, np.float32) + rng.normal(0, 0.01, (SIZE, SIZE, 3)), 0, 1)
    rgba = np.zeros((SIZE, SIZE, 4), np.float32)
    rgba[20:76, 20:76] = (*BLUE, 1.0)
    rgba[19, 20:76, :3], rgba[19, 20:76, 3] = BLUE, 0.4  # a soft top edge
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rgba[(yy - 48) ** 2 + (xx - 40) ** 2 <= 12**2, :3] = inner
    layered = LayeredImage(background, [rgba], [np.zeros((SIZE, SIZE), np.float32)], ["box"])
    return layered, layered.compose()


def assert_partition(layered: LayeredImage, index: int) -> None:
    """The leaf parts of object ``index`` are disjoint and each holds the object's own RGBA on its pixels."""
    obj = layered.foregrounds[index]
    leaves = [leaf.rgba for part in layered.parts[index] for _, leaf in part.leaves()]
    owners = np.sum([leaf[:, :, 3] > 0 for leaf in leaves], axis=0)
    assert owners.max() == 1  # disjoint
    np.testing.assert_array_equal(owners, obj[:, :, 3] > 0)  # together: exactly the object's pixels
    for leaf in leaves:
        mine = leaf[:, :, 3] > 0
        np.testing.assert_array_equal(leaf[mine], obj[mine])


def test_a_two_colour_object_splits_into_its_parts_and_the_tree_recomposes():
    layered, photo = two_colour_object()
    split = decompose_layer(layered, 0, ToolChainDecomposer(segmenter=None))
    assert layered.parts == {}  # the input is not changed
    parts = split.parts[0]
    assert [part.label for part in parts] == [REST_LABEL, ""]
    disc = parts[1].rgba[:, :, 3] > 0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    truth = (yy - 48) ** 2 + (xx - 40) ** 2 <= 12**2
    assert (disc & truth).sum() / (disc | truth).sum() > 0.9  # the disc is the part that came off
    assert_partition(split, 0)
    report = split.check(photo)
    assert report.ok() and report.max_abs_error < 1e-5  # a partition: exact up to float round-off
    assert split.quantized().check(photo).ok()  # and in 8 bits
    assert split.layer_names() == ["background", "shadow 1: box", "part 1.1: rest", "part 1.2"]
    assert split.metadata["parts"]["1"][0]["parts_found"] == 2


def test_the_learned_segmenter_finds_the_red_part(tmp_path):
    red_salience_model(tmp_path / "tiny.onnx")
    decomposer = ToolChainDecomposer(segmenter=OnnxSegmenter(tmp_path / "tiny.onnx", SPEC, name="tiny"))
    layered, photo = two_colour_object(inner=(0.9, 0.1, 0.1))
    split = decompose_layer(layered, 0, decomposer)
    assert decomposer.extract_shadows  # the caller's decomposer is left as it was (parts use a copy)
    parts = split.parts[0]
    assert len(parts) == 2
    red = parts[1].rgba
    assert float(red[:, :, 0][red[:, :, 3] > 0].min()) > 0.8  # the red part holds only red pixels
    assert_partition(split, 0)
    assert split.check(photo).ok()


def test_depth_three_splits_the_parts_again_and_records_why_leaves_stay():
    layered, photo = two_colour_object()
    layered = LayeredImage(
        layered.background, [*layered.foregrounds, layered.foregrounds[0] * 0], None, ["box", "ghost"]
    )  # a second object with nothing in it
    tree = decompose_to_depth(layered, 3, ToolChainDecomposer(segmenter=None))
    assert set(tree.parts) == {0}  # the empty layer stays whole
    assert tree.metadata["parts"]["2"][0]["stop_reason"] == "empty layer"
    assert len(tree.metadata["parts"]["1"]) == 3  # one split of the object, then one try per part
    assert_partition(tree, 0)
    assert tree.check(photo).ok()
    assert decompose_to_depth(layered, 1) is layered
    for depth in (0, MAX_DEPTH + 1):
        with pytest.raises(ValueError, match=f"depth must be between 1 .* and {MAX_DEPTH}, got {depth}"):
            decompose_to_depth(layered, depth)
    assert CLI_MAX_DEPTH == MAX_DEPTH


def test_a_plain_object_stays_whole_and_says_why():
    layered, _ = two_colour_object(inner=BLUE)
    same = decompose_layer(layered, 0, ToolChainDecomposer(segmenter=None))
    assert same.parts == {}
    assert "the object" in same.metadata["parts"]["1"][0]["stop_reason"]
    with pytest.raises(IndexError, match="object index 1 out of range for 1 object"):
        decompose_layer(layered, 1)


def _tree_image() -> LayeredImage:
    """Two objects; the first split in two, its second part split again (depth 3), soft alphas."""
    rng = np.random.default_rng(1)
    height, width = 24, 30
    obj = np.zeros((height, width, 4), np.float32)
    obj[3:20, 2:28, :3] = rng.random((17, 26, 3))
    obj[3:20, 2:28, 3] = rng.uniform(0.3, 1.0, (17, 26))

    def piece(mask: np.ndarray) -> np.ndarray:
        out = np.zeros_like(obj)
        out[mask] = obj[mask]
        return out

    left = np.zeros((height, width), bool)
    left[:, :12] = True
    top = np.zeros((height, width), bool)
    top[:10] = True
    parts = [
        LayerPart(piece(~left), "rest"),
        LayerPart(None, "arm", [LayerPart(piece(left & top), "hand"), LayerPart(piece(left & ~top))]),
    ]
    other = np.zeros((height, width, 4), np.float32)
    other[10:22, 15:29] = (0.2, 0.3, 0.9, 0.7)
    shadows = [rng.uniform(0, 0.3, (height, width)).astype(np.float32), np.zeros((height, width), np.float32)]
    return LayeredImage(rng.random((height, width, 3)), [obj, other], shadows, ["car", ""], parts={0: parts})


def test_parts_are_checked_kept_and_round_trip_through_the_flat_stack():
    layered = _tree_image()
    assert layered.layer_names() == [
        "background", "shadow 1: car", "part 1.1: rest", "part 1.2.1: hand", "part 1.2.2", "shadow 2", "object 2",
    ]  # fmt: skip
    np.testing.assert_allclose(flatten_parts(layered.parts[0]), layered.foregrounds[0], atol=1e-6)
    composite = np.asarray(layered.compose())
    back = LayeredImage.from_rgba_stack(layered.to_rgba_stack())
    assert back.layer_names() == layered.layer_names() and back.labels == layered.labels
    assert back.parts[0][1].label == ""  # a part split again keeps no label in a flat stack (documented)
    assert back.check(composite).max_abs_error < 1e-5
    for other in (layered.copy(), layered.quantized(), layered.select([1, 0]).select([1, 0])):
        assert other.layer_names() == layered.layer_names()
        assert other.check(composite).ok()
    assert layered.select([1]).parts == {}
    assert "1 split into parts" in repr(layered)


def test_parts_that_do_not_make_the_object_are_refused_in_one_line():
    layered = _tree_image()
    half = layered.parts[0][0].rgba
    with pytest.raises(LayeredImageError, match=r"parts of object 1 do not recompose to object 1's layer") as caught:
        LayeredImage(layered.background, layered.foregrounds, layered.shadows, layered.labels, parts={0: [half]})
    assert "\n" not in str(caught.value)
    with pytest.raises(LayeredImageError, match="parts given for object index 5; there are 2 objects"):
        LayeredImage(layered.background, layered.foregrounds, layered.shadows, layered.labels, parts={5: [half]})
    stack = layered.to_rgba_stack()
    shuffled = [*stack[:3], stack[4], stack[3], *stack[5:]]  # hand and its sibling swapped: fine, same part
    LayeredImage.from_rgba_stack(shuffled)
    split = [*stack[:3], stack[3], ("part 1.3", stack[2][1] * 0), stack[4], *stack[5:]]
    with pytest.raises(LayeredImageError, match="layers of part 2 are not next to each other"):
        LayeredImage.from_rgba_stack(split)


def test_part_names():
    assert part_layer_name((2, 1)) == "part 2.1"
    assert part_layer_name((2, 1, 3), "wheel: front") == "part 2.1.3: wheel: front"
    assert parse_part_path("part 2.1.3: wheel: front") == ((2, 1, 3), "wheel: front")
    assert parse_layer_name("part 2.1") == ("part", 2, None)
    assert parse_part_path("object 2") is None and parse_layer_name("part 2") == ("other", None, "part 2")
    with pytest.raises(ValueError, match="part path"):
        part_layer_name((2,))


def test_cli_depth_two_writes_a_group_per_object_holding_its_parts(tmp_path, monkeypatch, capsys):
    from psd_tools import PSDImage

    monkeypatch.setenv("LIWI_MODELS_CACHE", str(tmp_path / "no-models"))  # the weight-free tools, everywhere
    _, photo = two_colour_object()
    path = tmp_path / "box.png"
    photo = np.round(photo * 255).astype(np.uint8)
    Image.fromarray(photo).save(path)
    assert main(["decompose", str(path), "-o", str(tmp_path / "out"), "--depth", "2", "--method", "weight-free"]) == 0
    assert "split into 2 parts" in capsys.readouterr().out
    psd = tmp_path / "out" / "box.psd"
    groups = [layer for layer in PSDImage.open(psd) if layer.is_group()]
    assert len(groups) == 1
    shadow, parts = list(groups[0])
    assert shadow.name == "shadow 1" and parts.is_group() and parts.name == f"{groups[0].name} parts"
    assert [layer.name for layer in parts] == ["part 1.1: rest", "part 1.2"]
    back = load_layered(psd)
    assert len(back.parts[0]) == 2 and back.check(photo).ok()
