"""The learned-segmenter path of the tool chain, on tiny models made here (nothing is downloaded).

- `OnnxSegmenter` runs a tiny ONNX graph with ISNet's input/output contract (1x3xSxS in, 1x1xSxS alpha out) that
  calls red things salient; wrong shapes and unreadable files are one-line errors.
- Model preparation: an exported-like graph (float16, fixed-size upsampling) runs at other input sizes (multiples of
  its stride), gives the exported answer at the nominal size, is kept on disk and reused; `at_side` runs it at a
  fixed side.
- `split_salient_matte` separates regions and cuts touching instances along a neck.
- Peeling: a segmenter that only ever sees the largest red thing still finds both objects, in two rounds, and
  the front one (removed first) ends up in front; metadata says how many and why it stopped.
- Mattes: an object with a soft edge composited on a colour that is not in the photo shows no halo.
- The weight-free fallback names the download command once, as a `DecomposerNote`.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools.decomposer import DecomposerNote
from liwi_diffusers.tools.instances import split_salient_matte
from liwi_diffusers.tools.segmenter import OnnxSegmenter, SegmenterError

SPEC = SimpleNamespace(
    input_size=64, mean=(128.0, 128.0, 128.0), std=(256.0, 256.0, 256.0), activation="none",
    input_dtype="float32", output_index=0,
)  # fmt: skip


def red_salience_model(path, size: int = 64, input_size: int | None = None) -> None:
    """An ONNX model: alpha = sigmoid(60 * (R - G)) of the normalised input (red things are salient)."""
    side = input_size or size
    red = helper.make_node("Slice", ["x", "s0", "s1", "axis"], ["r"])
    green = helper.make_node("Slice", ["x", "s1", "s2", "axis"], ["g"])
    diff = helper.make_node("Sub", ["r", "g"], ["d"])
    scaled = helper.make_node("Mul", ["d", "k"], ["z"])
    out = helper.make_node("Sigmoid", ["z"], ["alpha"])
    inits = [
        helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("s2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("k", TensorProto.FLOAT, [1], [60.0]),
    ]
    graph = helper.make_graph(
        [red, green, diff, scaled, out],
        "red_salience",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, side, side])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def scene(size: int = 96) -> np.ndarray:
    """Grey-green ground, a big red disc in front (lower) and a smaller red square behind (higher)."""
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (0.45, 0.55, 0.45)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    image[12:32, 60:80] = (0.85, 0.15, 0.1)  # behind
    yy, xx = np.mgrid[:size, :size]
    image[(yy - 64) ** 2 + (xx - 34) ** 2 <= 18**2] = (0.9, 0.1, 0.1)  # in front
    return np.clip(image, 0, 1)


class LargestRedThing:
    """A segmenter that sees only the largest red region (so the second object needs a second round)."""

    name = "largest-red"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        red = ((image[:, :, 0] - image[:, :, 1]) > 0.4).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(red)
        if count <= 1:
            return np.zeros(image.shape[:2], np.float32)
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        return (labels == biggest).astype(np.float32)


def test_onnx_segmenter_runs_a_model_with_the_isnet_contract(tmp_path):
    red_salience_model(tmp_path / "tiny.onnx")
    segmenter = OnnxSegmenter(tmp_path / "tiny.onnx", SPEC, name="tiny")
    image = scene()
    coverage = segmenter(image)
    assert coverage.shape == image.shape[:2] and coverage.dtype == np.float32
    red = (image[:, :, 0] - image[:, :, 1]) > 0.4
    assert coverage[red].mean() > 0.9 and coverage[~red].mean() < 0.1


def exported_like_model(path, size: int = 64) -> None:
    """A float16 encoder-decoder exported as ISNet is: two poolings, then a Resize to a *fixed* size (a constant)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float16)
    head = rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["p1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p2"], ["shape"]),
        helper.make_node("Slice", ["shape", "start", "stop"], ["nc"]),
        helper.make_node("Constant", [], ["fixed"], value=helper.make_tensor("v", TensorProto.INT64, [2], [size] * 2)),
        helper.make_node("Concat", ["nc", "fixed"], ["sizes"], axis=0),
        helper.make_node("Resize", ["p2", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Conv", ["up", "h"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["a16"]),
        helper.make_node("Cast", ["a16"], ["alpha"], to=TensorProto.FLOAT),
    ]
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT16, weight.shape, weight.view(np.uint16).ravel().tolist(), raw=False),
        helper.make_tensor("h", TensorProto.FLOAT16, head.shape, head.view(np.uint16).ravel().tolist(), raw=False),
        helper.make_tensor("start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("stop", TensorProto.INT64, [1], [2]),
    ]
    graph = helper.make_graph(
        nodes,
        "exported_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_prepared_models_run_at_free_sizes_and_are_kept(tmp_path):
    import onnxruntime as ort

    exported_like_model(tmp_path / "exported.onnx")
    segmenter = OnnxSegmenter(tmp_path / "exported.onnx", SPEC)
    assert segmenter.stride is None and not (tmp_path / "exported.prepared.onnx").exists()  # prepared on first use
    assert segmenter.at_side(40).side == 40 and segmenter.stride == 4  # 64 in, 16 at the smallest feature map
    copy = tmp_path / "exported.prepared.onnx"
    assert copy.is_file() and (tmp_path / "exported.prepared.json").is_file()
    prepared = onnx.load(str(copy))
    assert TensorProto.FLOAT16 in {t.data_type for t in prepared.graph.initializer}  # the weights as exported
    # At the nominal size the prepared graph answers what the exported one does (float16 rounding aside).
    x = np.random.default_rng(1).normal(0, 0.5, (1, 3, 64, 64)).astype(np.float32)
    exported = ort.InferenceSession(str(tmp_path / "exported.onnx"), providers=["CPUExecutionProvider"])
    want = exported.run(["alpha"], {"x": x})[0]
    got = segmenter._free_session().run(["alpha"], {"x": x})[0]
    assert np.abs(got - want).max() < 1e-3
    # Other sides are rounded to the stride; the nominal side or above is the segmenter itself.
    assert segmenter.at_side(64) is segmenter and segmenter.at_side(100) is segmenter
    assert segmenter.at_side(39).side == 40 and segmenter.at_side(1).side == 4
    sides = []
    session = segmenter._free_session()

    def recording(names, feed):
        sides.append(feed["x"].shape)
        return session.run(names, feed)

    segmenter._free = SimpleNamespace(run=recording)
    coverage = segmenter.at_side(40)(np.random.default_rng(2).random((38, 20, 3)).astype(np.float32))
    assert sides == [(1, 3, 40, 40)] and coverage.shape == (38, 20)
    # The copy is reused (not made again) while the model file is unchanged; a changed file gets a new copy.
    made = copy.stat().st_mtime_ns
    OnnxSegmenter(tmp_path / "exported.onnx", SPEC).at_side(32)
    assert copy.stat().st_mtime_ns == made
    exported_like_model(tmp_path / "exported.onnx", size=32)
    other = OnnxSegmenter(tmp_path / "exported.onnx", SimpleNamespace(**{**vars(SPEC), "input_size": 32}))
    assert other.at_side(16).name.endswith("@16") and other.stride == 4
    assert onnx.load(str(copy)).graph.input[0].type.tensor_type.shape.dim[2].dim_param


def test_at_side_runs_the_same_session_at_a_fixed_side_and_the_decomposer_uses_it(tmp_path):
    exported_like_model(tmp_path / "exported.onnx")
    segmenter = OnnxSegmenter(tmp_path / "exported.onnx", SPEC, name="tiny")
    assert segmenter.at_side(64) is segmenter and segmenter.at_side(500) is segmenter  # nominal or above: itself
    sized = segmenter.at_side(31)  # rounded to the stride (4)
    assert sized.name == "tiny@32" and sized.side == 32
    sides = []
    session = segmenter._free_session()

    def recording(names, feed):
        sides.append(feed["x"].shape[-1])
        return session.run(names, feed)

    segmenter._free = SimpleNamespace(run=recording)
    assert sized(np.zeros((90, 70, 3), np.float32)).shape == (90, 70) and sides == [32]
    with pytest.raises(ValueError, match="side must be a positive"):
        segmenter.at_side(0)

    class Recorder(LargestRedThing):
        """Records the side it was asked for: None for the plain call (the first, whole-photo pass)."""

        def __init__(self, side=None, log=None):
            super().__init__()
            self.side, self.log = side, [] if log is None else log

        def at_side(self, side):
            return Recorder(side, self.log)

        def __call__(self, image):
            self.log.append(self.side)
            return super().__call__(image)

    recorder = Recorder()
    layered = ToolChainDecomposer(segmenter=recorder, tile_side=96, later_round_side=80, extract_shadows=False)(scene())
    assert recorder.log == [None, 96, 96, 96, 96, 80]  # whole photo, four crops, then round 2
    assert layered.metadata["tile_side"] == 96 and layered.metadata["later_round_side"] == 80
    recorder = Recorder()
    ToolChainDecomposer(segmenter=recorder, tile_side=None, later_round_side=None, extract_shadows=False)(scene())
    assert recorder.log == [None] * 6
    with pytest.raises(ValueError, match="tile_side must be None or an int of at least 64"):
        ToolChainDecomposer(tile_side=10)


def test_models_the_preparation_cannot_follow_keep_their_size(tmp_path):
    """A graph with a fixed Reshape keeps its exported size (nominal only); a read-only folder prepares in memory."""
    red_salience_model(tmp_path / "plain.onnx")  # float32, no Resize: nothing to prepare, the file is used
    plain = OnnxSegmenter(tmp_path / "plain.onnx", SPEC)
    assert plain.at_side(20) is plain and plain.stride is None
    assert not (tmp_path / "plain.prepared.onnx").exists()
    model = onnx.load(str(tmp_path / "plain.onnx"))
    model.graph.node.append(helper.make_node("Reshape", ["alpha", "fixed_shape"], ["flat"]))
    model.graph.initializer.append(helper.make_tensor("fixed_shape", TensorProto.INT64, [2], [1, 64 * 64]))
    onnx.save(model, str(tmp_path / "reshaped.onnx"))
    reshaped = OnnxSegmenter(tmp_path / "reshaped.onnx", SPEC)
    assert reshaped.stride is None and reshaped.at_side(32) is reshaped
    import liwi_diffusers.export.atomic as atomic

    def refuse(path):
        raise PermissionError(13, "Read-only file system", str(path))

    exported_like_model(tmp_path / "exported.onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atomic, "atomic_write", refuse)
        in_memory = OnnxSegmenter(tmp_path / "exported.onnx", SPEC)
        assert in_memory.at_side(20).side == 20
    assert in_memory.stride == 4 and not (tmp_path / "exported.prepared.onnx").exists()


def test_onnx_segmenter_errors_are_one_line(tmp_path):
    red_salience_model(tmp_path / "other-size.onnx", input_size=32)
    with pytest.raises(SegmenterError, match=r"input shape \[1, 3, 32, 32\] does not match its config") as info:
        OnnxSegmenter(tmp_path / "other-size.onnx", SPEC)
    assert "\n" not in str(info.value)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(SegmenterError, match="not a usable ONNX model") as info:
        OnnxSegmenter(tmp_path / "broken.onnx", SPEC)
    assert "\n" not in str(info.value)


def test_separate_regions_become_separate_objects_and_a_neck_is_cut():
    coverage = np.zeros((80, 120), np.float32)
    coverage[10:30, 10:30] = 1.0
    coverage[50:70, 80:110] = 1.0
    objects = split_salient_matte(coverage)
    assert len(objects) == 2
    # Two discs joined by a thin bridge: one region, two instances.
    yy, xx = np.mgrid[:80, :120]
    touching = (((yy - 40) ** 2 + (xx - 35) ** 2 <= 22**2) | ((yy - 40) ** 2 + (xx - 85) ** 2 <= 22**2)).astype(
        np.float32
    )
    touching[38:42, 35:85] = 1.0
    parts = split_salient_matte(touching)
    assert len(parts) == 2
    centres = sorted(float(np.mean(np.nonzero(p >= 0.5)[1])) for p in parts)
    assert centres[0] < 50 < 70 < centres[1]
    assert np.allclose(np.sum(parts, axis=0), touching)  # every pixel in exactly one object
    # A plain disc stays whole.
    disc = ((yy - 40) ** 2 + (xx - 60) ** 2 <= 30**2).astype(np.float32)
    assert len(split_salient_matte(disc)) == 1


def test_peeling_finds_the_hidden_object_in_a_second_round_and_orders_back_to_front():
    image = scene()
    segmenter = LargestRedThing()
    layered = ToolChainDecomposer(segmenter=segmenter, tiles=0, extract_shadows=False)(image)
    assert layered.num_objects == 2
    assert segmenter.calls == 2  # round 2 found the square; the layer limit was not reached, so no round 3
    back, front = (fg[:, :, 3] >= 0.5 for fg in layered.foregrounds)
    assert back[12:32, 60:80].mean() > 0.9 and front[64, 34]  # the disc, removed first, is in front
    assert layered.metadata["objects_found"] == 2 and layered.metadata["peeling_rounds"] == 2
    assert layered.metadata["stop_reason"] == "peeling round limit 2 reached"
    assert layered.check(image).ok()
    # One round only (no peeling): the square is missed; a limit of 1 stops after the first object.
    single = ToolChainDecomposer(segmenter=LargestRedThing(), max_rounds=1, tiles=0, extract_shadows=False)(image)
    assert single.num_objects == 1
    limited = ToolChainDecomposer(segmenter=LargestRedThing(), tiles=0, extract_shadows=False)(image, num_layers=1)
    assert limited.num_objects == 1 and limited.metadata["stop_reason"] == "layer limit 1 reached"


def test_nothing_salient_gives_the_photo_as_background_and_says_why():
    image = np.full((64, 64, 3), 0.5, np.float32)
    layered = ToolChainDecomposer(segmenter=LargestRedThing())(image)
    assert layered.num_objects == 0
    assert layered.metadata["stop_reason"] == "no salient object found"
    assert np.array_equal(layered.background, image)


def test_a_soft_edged_object_shows_no_halo_on_a_new_background(tmp_path):
    """Blue object with a soft edge over a yellow ground; recomposed over magenta it must not carry yellow."""
    size = 96
    yy, xx = np.mgrid[:size, :size]
    radius = np.sqrt((yy - 48.0) ** 2 + (xx - 48.0) ** 2)
    alpha = np.clip((30.0 - radius) / 6.0, 0.0, 1.0).astype(np.float32)  # 6 px soft edge
    fg, bg = np.array([0.1, 0.2, 0.9], np.float32), np.array([0.9, 0.85, 0.1], np.float32)
    image = alpha[:, :, None] * fg + (1 - alpha[:, :, None]) * bg

    class KnownMatte:
        name = "known"

        def __call__(self, photo: np.ndarray) -> np.ndarray:
            return alpha.copy()

    layered = ToolChainDecomposer(segmenter=KnownMatte(), extract_shadows=False, max_rounds=1, tiles=0)(image)
    assert layered.num_objects == 1
    rgba = layered.foregrounds[0]
    magenta = np.array([1.0, 0.0, 1.0], np.float32)
    ours = rgba[:, :, 3:] * rgba[:, :, :3] + (1 - rgba[:, :, 3:]) * magenta
    truth = alpha[:, :, None] * fg + (1 - alpha[:, :, None]) * magenta
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert np.abs(ours - truth)[edge].max() < 0.08
    naive = alpha[:, :, None] * image + (1 - alpha[:, :, None]) * magenta  # colour copied from the photo
    assert np.abs(naive - truth)[edge].mean() > 3 * np.abs(ours - truth)[edge].mean()
    assert layered.check(image).ok()


def test_without_a_downloaded_segmenter_the_note_names_the_command_once():
    decomposer = ToolChainDecomposer()  # the test session's model cache is empty
    image = scene(64)
    with pytest.warns(DecomposerNote, match="liwi models download isnet"):
        decomposer(image, num_layers=1)
    assert decomposer.segmenter is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DecomposerNote)
        decomposer(image, num_layers=1)  # said once is enough


def test_a_path_is_accepted(tmp_path):
    from PIL import Image

    image = scene(64)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "scene.png")
    layered = ToolChainDecomposer(segmenter=LargestRedThing(), extract_shadows=False)(tmp_path / "scene.png")
    assert layered.size == (64, 64) and layered.num_objects == 2


def test_the_default_tool_chain_and_the_builder_use_a_downloaded_segmenter(tmp_path, monkeypatch):
    """With the default segmenter in the model cache (here a tiny stand-in with its own card), "auto" uses it."""
    import dataclasses
    import hashlib

    from liwi_dataset_builder.toolset import ToolSpec, build_tools, resolve_proposer
    from liwi_diffusers import model_zoo
    from liwi_diffusers.tools.decomposer import PeelingProposer
    from liwi_diffusers.tools.segmenter import SegmenterProposer

    monkeypatch.setenv("LIWI_MODELS_CACHE", str(tmp_path / "cache"))
    name = model_zoo.DEFAULT_SEGMENTER
    card = model_zoo.MODELS[name]
    folder = tmp_path / "cache" / name
    folder.mkdir(parents=True)
    red_salience_model(folder / card.filename)
    data = (folder / card.filename).read_bytes()
    spec = model_zoo.SegmenterSpec(64, (128.0,) * 3, (256.0,) * 3, "none", "float32")
    tiny = dataclasses.replace(card, sha256=hashlib.sha256(data).hexdigest(), size=len(data), segmenter=spec)
    monkeypatch.setitem(model_zoo.MODELS, name, tiny)

    decomposer = ToolChainDecomposer(extract_shadows=False)
    image = scene()
    layered = decomposer(image)
    assert decomposer.tool_names()["segmenter"] == name
    assert layered.num_objects == 2 and layered.check(image).ok()
    assert resolve_proposer("auto") == f"peeling:{name}"
    for choice, kind in ((resolve_proposer("auto"), PeelingProposer), (f"segmenter:{name}", SegmenterProposer)):
        tools = build_tools(ToolSpec(proposer=choice))
        assert isinstance(tools.proposer, kind)
        proposals = tools.proposer(image)
        assert len(proposals) == 2 and all(p.score > 0.9 for p in proposals)
    # A damaged file: the decomposer goes on without it and says why; verification names the fix.
    (folder / card.filename).write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(model_zoo.ModelError, match=f"liwi models download {name}"):
        model_zoo.verify_model(name)


def test_peeling_proposer_finds_what_one_pass_misses():
    from liwi_diffusers.tools import PeelingProposer
    from liwi_diffusers.tools.segmenter import SegmenterProposer

    image = scene()
    one_pass = SegmenterProposer(LargestRedThing())(image)
    assert len(one_pass) == 1  # this segmenter only ever sees the larger disc
    segmenter = LargestRedThing()
    proposer = PeelingProposer(segmenter, tiles=0, max_rounds=3)
    proposals = proposer(image)
    assert len(proposals) == 2 and segmenter.calls == 3  # round 1, round 2 (the square), round 3 (nothing)
    assert proposals[0].box[1] > proposals[1].box[1]  # front-most (the disc, lower) first, as peeled
    red = (image[:, :, 0] - image[:, :, 1]) > 0.4
    union = proposals[0].mask | proposals[1].mask
    assert (union & red).sum() / (union | red).sum() > 0.9
    assert proposer.last_stop_reason.startswith("nothing object-like left")
    assert len(proposer(image, max_objects=1)) == 1 and proposer.last_stop_reason == "layer limit 1 reached"
    assert proposer(image, max_objects=0) == []


def test_tiny_images_skip_the_segmenter():
    segmenter = LargestRedThing()
    for shape in ((1, 1, 3), (2, 200, 3)):
        image = np.full(shape, 0.5, np.float32)
        layered = ToolChainDecomposer(segmenter=segmenter)(image)
        assert layered.num_objects == 0 and np.array_equal(layered.background, image)
        assert layered.metadata["stop_reason"].startswith("image too small")
    assert segmenter.calls == 0


def test_reconciling_in_bands_gives_the_same_layers_as_at_once():
    from liwi_diffusers.tools.decomposer import _reconcile

    image = scene()
    layered = ToolChainDecomposer(segmenter=LargestRedThing())(image)
    perturbed = layered.copy()
    perturbed.background[:] = np.clip(perturbed.background * 0.9 + 0.05, 0, 1)  # something to reconcile
    for fg in perturbed.foregrounds:
        fg[:, :, :3] = np.clip(fg[:, :, :3] * 0.8, 0, 1)
    whole = _reconcile(perturbed.copy(), image, band_pixels=1 << 30)
    banded = _reconcile(perturbed.copy(), image, band_pixels=200)  # about two rows a band
    np.testing.assert_allclose(banded.background, whole.background, atol=1e-6)
    for a, b in zip(banded.foregrounds, whole.foregrounds):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert banded.check(image).ok()


class FixedMatte:
    """A segmenter that always answers the same matte (a learned model's answer, made up for the test)."""

    name = "fixed"

    def __init__(self, matte: np.ndarray) -> None:
        self.matte = matte

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.matte.copy() if image.shape[:2] == self.matte.shape else np.zeros(image.shape[:2], np.float32)


def test_a_learned_matte_keeps_the_dark_lower_half_of_an_object():
    """A grey object's dark lower half looks like a swallowed shadow; a learned matte is not trimmed by default."""
    image = np.full((96, 96, 3), 0.6, np.float32)
    image[20:50, 30:66] = (0.8, 0.2, 0.2)  # red top
    image[50:80, 30:66] = 0.3  # dark grey bottom: a darker copy of the ground, like a shadow
    matte = np.zeros((96, 96), np.float32)
    matte[20:80, 30:66] = 1.0
    kept = ToolChainDecomposer(segmenter=FixedMatte(matte), max_rounds=1)(image)
    assert kept.num_objects == 1
    assert (kept.foregrounds[0][50:80, 30:66, 3] >= 0.5).mean() > 0.95
    # Asked to trim (the weight-free proposer's default), the same matte loses its dark half to the shadow.
    trimmed = ToolChainDecomposer(segmenter=FixedMatte(matte), max_rounds=1, trim_shadows=True)(image)
    assert (trimmed.foregrounds[0][50:80, 30:66, 3] >= 0.5).mean() < 0.5
    assert kept.check(image).ok() and trimmed.check(image).ok()


def test_an_object_the_segmenter_is_unsure_of_throughout_becomes_opaque_and_keeps_its_edge():
    """A grey (0.75) matte all through an opaque object is stretched so the object is not see-through."""
    from liwi_diffusers.tools.matting import BandMatter

    image = np.full((96, 96, 3), 0.6, np.float32)
    image[20:76, 24:72] = (0.2, 0.3, 0.8)
    yy, xx = np.mgrid[:96, :96]
    inside = np.minimum.reduce([yy - 20.0, 75.0 - yy, xx - 24.0, 71.0 - xx])  # distance into the object
    edge = np.clip((inside + 2.0) / 4.0, 0.0, 1.0)  # a 4 px soft edge
    hazy = (0.75 * edge).astype(np.float32)
    matte = BandMatter()(image, hazy)
    assert matte.alpha[30:66, 34:62].min() == 1.0
    assert matte.alpha[:14].max() == 0.0 and matte.alpha[:, :18].max() == 0.0  # nothing grows outside
    kept = BandMatter(interior_quantile=None)(image, hazy)
    assert abs(float(kept.alpha[48, 48]) - 0.75) < 1e-6  # off: the matte as it came
    sure = BandMatter()(image, edge.astype(np.float32))  # a sure matte is not changed by it
    assert np.array_equal(sure.alpha, BandMatter(interior_quantile=None)(image, edge.astype(np.float32)).alpha)
    with pytest.raises(ValueError, match="interior_quantile"):
        BandMatter(interior_quantile=1.5)


def test_crops_of_the_first_round_find_an_object_the_whole_photo_hides():
    """The whole photo shows only the largest red thing; a crop without the disc shows the square too."""
    image = scene()
    segmenter = LargestRedThing()
    layered = ToolChainDecomposer(segmenter=segmenter, max_rounds=1, extract_shadows=False)(image)  # tiles=2
    assert segmenter.calls == 5  # the whole photo and the four crops of the 2 x 2 grid
    assert layered.num_objects == 2 and layered.metadata["tiles"] == 2
    solids = [fg[:, :, 3] >= 0.5 for fg in layered.foregrounds]
    assert any(s[12:32, 60:80].mean() > 0.9 for s in solids) and any(s[64, 34] for s in solids)
    assert layered.check(image).ok()
    # The disc seen again in the crops that hold it whole is not a second object; cut by a crop edge, it is not one.
    assert sum(s[64, 34] for s in solids) == 1
    whole_only = ToolChainDecomposer(segmenter=LargestRedThing(), max_rounds=1, tiles=0, extract_shadows=False)
    assert whole_only(image).num_objects == 1


@pytest.mark.parametrize("tiles", [-1, 5, 1.5, True])
def test_tiles_must_be_a_small_int(tiles):
    with pytest.raises(ValueError, match="tiles must be None or an int from 0 to 4"):
        ToolChainDecomposer(segmenter=None, tiles=tiles)


def test_a_weak_glow_of_coverage_over_the_whole_photo_does_not_stop_peeling():
    """Coverage of 0.05 everywhere plus one solid object: the hole to fill is the object, not the whole photo."""
    image = scene()
    matte = np.full((96, 96), 0.05, np.float32)
    yy, xx = np.mgrid[:96, :96]
    matte[(yy - 64) ** 2 + (xx - 34) ** 2 <= 18**2] = 1.0
    layered = ToolChainDecomposer(segmenter=FixedMatte(matte), tiles=0, extract_shadows=False)(image)
    assert layered.num_objects >= 1 and layered.metadata["peeling_rounds"] == 2
    assert layered.check(image).ok()


def test_a_point_prompt_reuses_the_whole_photo_pass_after_the_crops():
    segmenter = LargestRedThing()
    layered = ToolChainDecomposer(segmenter=segmenter, max_rounds=1, extract_shadows=False)(scene(), points=[(34, 64)])
    assert segmenter.calls == 5  # the whole photo and four crops; the point is answered from the first pass
    assert layered.metadata["prompt_layers"][0] is not None
