"""Text prompts through `TextPromptDetector`: tiny random OWLv2, OWL-ViT and Grounding DINO models, built offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_tokenizers import tiny_clip_tokenizer

from liwi_diffusers.tools.detector import (
    Detection,
    DetectorError,
    TextPromptDetector,
    check_prompts,
    detections_to_prompts,
    non_max_suppression,
)

HEIGHT, WIDTH = 60, 80  # not square: OWLv2 pads to a square, so its boxes reach below the photo until clipped


def _save_owl(folder: Path, kind: str, widen: float = 1.5) -> Path:
    """A tiny random OWLv2 / OWL-ViT (4x4 patches) saved with its processor; boxes widened (a patch's box is 60 %
    of the image across with ``widen=1.5``) so that they overlap."""
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTProcessor,
    )
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(folder)
    towers = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**towers, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 16}
    text.update(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    vision = {**towers, "image_size": 32, "patch_size": 8}
    size = {"height": 32, "width": 32}
    torch.manual_seed(0)
    if kind == "owlv2":
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
        processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size=size), tokenizer=tokenizer)
    else:
        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16))
        image_processor = OwlViTImageProcessorPil(size=size, crop_size=size)
        processor = OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.no_grad():  # random box heads give degenerate boxes: each patch's box, 60 % of the image across
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.copy_(torch.tensor([0.0, 0.0, widen, widen]))
    target = folder / (kind if widen == 1.5 else f"{kind}-{widen:g}")
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def _save_grounding_dino(folder: Path, kind: str) -> Path:
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "car", "dog", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=32)
    backbone = SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=4, out_indices=[1, 2]
    )
    text = BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config_class, model_class = {
        "grounding-dino": (GroundingDinoConfig, GroundingDinoForObjectDetection),
        "mm-grounding-dino": (MMGroundingDinoConfig, MMGroundingDinoForObjectDetection),
    }[kind]
    config = config_class(
        backbone_config=backbone,
        text_config=text,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(0)
    model = model_class(config)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 48})
    target = folder / kind
    model.save_pretrained(target)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("detectors")
    return {
        "owlv2": _save_owl(folder, "owlv2"),
        "owlvit": _save_owl(folder, "owlvit"),
        "grounding-dino": _save_grounding_dino(folder, "grounding-dino"),
        "mm-grounding-dino": _save_grounding_dino(folder, "mm-grounding-dino"),
    }


def _photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((HEIGHT, WIDTH, 3)).astype(np.float32)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _check_boxes(detections: list[Detection], prompts: list[str]) -> None:
    for detection in detections:
        x0, y0, x1, y1 = detection.box
        assert min(x0, y0) >= 0.0 and x1 <= WIDTH and y1 <= HEIGHT, detection
        assert x1 - x0 >= 1.0 and y1 - y0 >= 1.0, detection
        assert detection.label in prompts and 0.0 <= detection.score <= 1.0
    labels = [d.label for d in detections]
    assert labels == sorted(labels, key=prompts.index)  # in prompt order


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_owl_detector_boxes_threshold_and_nms(models: dict[str, Path], kind: str) -> None:
    detector = TextPromptDetector.from_pretrained(models[kind], device="cpu")
    assert detector.model_type == kind
    prompts = ["red car", "dog"]
    everything = detector(_photo(), prompts, threshold=0.0, max_per_prompt=100, nms_iou=1.0)
    _check_boxes(everything, prompts)
    assert [d.label for d in everything].count("dog") == 16  # one box per patch (4x4), none suppressed
    if kind == "owlv2":  # padded to 80x80: the bottom row's boxes reach past y = 60 and are clipped
        assert max(d.box[3] for d in everything) == HEIGHT
    suppressed = detector(_photo(), prompts, threshold=0.0, max_per_prompt=100, nms_iou=0.3)
    _check_boxes(suppressed, prompts)
    for prompt in prompts:
        kept = [d for d in suppressed if d.label == prompt]
        assert 1 <= len(kept) < 16
        assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
        assert all(_iou(a.box, b.box) <= 0.3 for i, a in enumerate(kept) for b in kept[i + 1 :])
        best = max((d for d in everything if d.label == prompt), key=lambda d: d.score)
        assert kept[0] == best  # NMS keeps the best box
    dog_scores = sorted(d.score for d in everything if d.label == "dog")
    cut = dog_scores[8]
    above = detector(_photo(), ["dog"], threshold=cut, max_per_prompt=100, nms_iou=1.0)
    assert len(above) == 8 and all(d.score >= cut for d in above)
    assert len(detector(_photo(), prompts, threshold=0.0, max_per_prompt=2)) == 4
    # Deterministic: the same call, and a fresh load of the same folder, give the same detections.
    again = TextPromptDetector.from_pretrained(models[kind])(_photo(), prompts, threshold=0.0, max_per_prompt=100)
    assert again == suppressed


@pytest.mark.parametrize("kind", ["grounding-dino", "mm-grounding-dino"])
def test_grounding_dino_scores_each_prompt_on_its_own_tokens(models: dict[str, Path], kind: str) -> None:
    detector = TextPromptDetector.from_pretrained(models[kind])
    assert detector.model_type == kind
    prompts = ["red car", "dog"]
    detections = detector(_photo(), prompts, threshold=0.0, max_per_prompt=3)
    _check_boxes(detections, prompts)
    assert {d.label for d in detections} == set(prompts)
    assert all(sum(d.label == p for d in detections) <= 3 for p in prompts)
    assert detector(_photo(), prompts, threshold=0.0, max_per_prompt=3) == detections
    alone = detector(_photo(), ["dog"], threshold=0.0, max_per_prompt=1)
    assert len(alone) == 1 and alone[0].label == "dog"
    with pytest.raises(DetectorError, match=r"cannot contain '\.'"):
        detector(_photo(), ["a dog. a car"])


def test_prompts_and_boxes_for_the_decomposer() -> None:
    assert check_prompts(["  red   car ", "dog"]) == ["red car", "dog"]
    assert check_prompts("cat") == ["cat"]
    for bad, message in (([], "no text prompt"), ([" "], "empty text prompt"), ([3], "not a string")):
        with pytest.raises(DetectorError, match=message):
            check_prompts(bad)
    detections = [Detection((1.2, 2.7, 10.5, 20.0), "red car", 0.9), Detection((5.0, 5.0, 5.2, 5.1), "dog", 0.5)]
    assert detections_to_prompts(detections) == ([(1, 2, 11, 20), (5, 5, 6, 6)], ["red car", "dog"])


def test_non_max_suppression() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.5, 0.9, 0.4, 0.1])
    assert non_max_suppression(boxes, scores, 0.5) == [1, 2]
    assert non_max_suppression(boxes, scores, 1.0) == [1, 0, 2, 3]
    assert non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5) == []


def test_call_checks_its_options(models: dict[str, Path]) -> None:
    detector = TextPromptDetector.from_pretrained(models["owlvit"])
    with pytest.raises(DetectorError, match=r"threshold must lie in \[0, 1\]"):
        detector(_photo(), ["dog"], threshold=1.5)
    with pytest.raises(DetectorError, match="max_per_prompt must be at least 1"):
        detector(_photo(), ["dog"], max_per_prompt=0)
    with pytest.raises(DetectorError, match="empty text prompt"):
        detector(_photo(), [""])


def test_loading_errors_are_one_line(tmp_path: Path, models: dict[str, Path]) -> None:
    import shutil

    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(models["owlvit"], no_weights)
    (no_weights / "model.safetensors").unlink()
    no_processor = tmp_path / "no-processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models["owlvit"] / name, no_processor / name)
    cases = {
        str(tmp_path / "missing"): "does not exist; download a zero-shot object detector",
        str(tmp_path / "not-a-model"): r"not a model folder \(no config\.json\)",
        str(models["owlvit"] / "config.json"): "is a file; pass the model's folder",
        str(tmp_path / "bert"): "is a 'bert' model, not a zero-shot object detector",
        str(no_weights): "cannot load its weights .*model.safetensors",
        str(no_processor): "cannot load its processor",
        "liwi-tests/no-such-detector": "from the local Hugging Face cache or the Hub .* --detector NAME_OR_PATH",
    }
    for name, message in cases.items():
        with pytest.raises(DetectorError, match=message) as caught:
            TextPromptDetector.from_pretrained(name)
        assert "\n" not in str(caught.value), str(caught.value)


class _FixedDetector:
    """Detections given in advance (the wrapper's logic without a model)."""

    name = "fixed"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections
        self.calls: list[list[str]] = []

    def __call__(self, image, prompts, threshold=0.1, max_per_prompt=1):
        self.calls.append(list(prompts))
        found = [d for d in self.detections if d.label in prompts and d.score >= threshold]
        return [d for p in prompts for d in [d for d in found if d.label == p][:max_per_prompt]]


class _RecordingDecomposer:
    """Three object layers; prompt k is object layer 2 - k (front to back), as a decomposer reports it."""

    def __init__(self) -> None:
        self.kwargs: dict = {}

    def __call__(self, image, num_layers=None, **kwargs):
        from liwi_diffusers import LayeredImage

        self.kwargs = {"num_layers": num_layers, **kwargs}
        count = len(kwargs.get("boxes") or []) + len(kwargs.get("points") or [])
        background = np.zeros((HEIGHT, WIDTH, 3), np.float32)
        layers = [np.zeros((HEIGHT, WIDTH, 4), np.float32) for _ in range(3)]
        layered = LayeredImage(background, layers, labels=["", "", "cup"])
        layered.metadata["prompt_layers"] = [2 - k if k < 3 else None for k in range(count)]
        return layered


def test_text_prompted_decomposer_labels_the_prompted_layers() -> None:
    import warnings

    from liwi_diffusers.tools.detector import TextPrompted, TextPromptNote

    detector = _FixedDetector(
        [Detection((10.2, 5.0, 40.0, 30.5), "red car", 0.8), Detection((50.0, 20.0, 70.0, 50.0), "dog", 0.05)]
    )
    decomposer = _RecordingDecomposer()
    wrapped = TextPrompted(decomposer, detector, threshold=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layered = wrapped(_photo(), 4, prompts=["red car", "dog"], boxes=[(0, 0, 5, 5)], points=[(3, 3)])
    assert [str(w.message) for w in caught if w.category is TextPromptNote] == [
        "text prompt 'dog': nothing found with a score of at least 0.1 (a lower threshold finds more, and more "
        "wrong things)"
    ]
    # The caller's box first, then the detection; the caller's points and limit pass through.
    assert decomposer.kwargs["boxes"] == [(0, 0, 5, 5), (10, 5, 40, 31)]
    assert decomposer.kwargs["points"] == [(3, 3)] and decomposer.kwargs["num_layers"] == 4
    assert layered.labels == ["", "red car", "cup"]  # prompt 1 (the detection) is object layer 1
    assert layered.metadata["text_prompts"] == [
        {"prompt": "red car", "box": [10.2, 5.0, 40.0, 30.5], "score": 0.8, "object_index": 1}
    ]
    # Lower threshold: both found, one layer each, labelled; no prompt found and only prompts asked: one line.
    both = TextPrompted(decomposer, detector, threshold=0.0)(_photo(), prompts=["red car", "dog"])
    assert decomposer.kwargs["boxes"] == [(10, 5, 40, 31), (50, 20, 70, 50)]
    assert both.labels == ["", "dog", "red car"]
    only_dog = "no object found for the text prompt 'dog', and only prompted"
    with pytest.raises(DetectorError, match=only_dog), pytest.warns(TextPromptNote, match="nothing found"):
        wrapped(_photo(), prompts=["dog"], only_prompts=True)
    with pytest.raises(DetectorError, match="empty text prompt"):
        wrapped(_photo(), prompts=["  "])
    # No detection: the caller's boxes go through untouched (the decomposer's own checks then apply).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextPromptNote)
        wrapped(_photo(), prompts=["dog"], boxes="not boxes")
    assert decomposer.kwargs["boxes"] == "not boxes"


def test_liwi_decompose_with_text_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--prompt`` end to end: a tiny OWLv2 whose boxes span the photo; its best box for 'red car' becomes a
    box prompt, the layer it gives is named 'red car'; a prompt scoring below the threshold gets a note."""
    from PIL import Image

    from liwi_diffusers.cli import main
    from liwi_diffusers.export import load_layered

    model = _save_owl(tmp_path / "models", "owlv2", widen=3.0)
    photo = np.full((HEIGHT, WIDTH, 3), 150, np.uint8)
    photo[18:42, 28:52] = (200, 30, 30)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    scores = {
        d.label: d.score for d in TextPromptDetector.from_pretrained(model)(photo, ["red car", "dog"], threshold=0.0)
    }
    assert scores["red car"] != scores["dog"]
    found, missed = sorted(scores, key=scores.get, reverse=True)
    threshold = (scores[found] + scores[missed]) / 2
    args = ["decompose", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--format", "zip"]
    args += ["--method", "weight-free", "--prompt", found, "--prompt", missed, "--detector", str(model)]
    assert main([*args, "--prompt-threshold", f"{threshold:.6f}"]) == 0
    captured = capsys.readouterr()
    assert f"liwi: note: {tmp_path / 'photo.png'}: text prompt {missed!r}: nothing found" in captured.err
    assert "1 prompted object" in captured.out
    layered = load_layered(tmp_path / "out" / "photo.zip")
    assert layered.labels.count(found) == 1 and missed not in layered.labels
    assert layered.foregrounds[layered.labels.index(found)][30, 40, 3] > 0.5  # the red square is in its layer


def test_text_prompts_with_box_prompts_and_only_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--box`` first, then the detected ``--prompt``: only these two layers (``--only-prompts``), one named."""
    from PIL import Image

    from liwi_diffusers.cli import main
    from liwi_diffusers.export import load_layered

    model = _save_owl(tmp_path / "models", "owlv2", widen=3.0)
    photo = np.full((HEIGHT, WIDTH, 3), 150, np.uint8)
    photo[18:42, 28:52] = (200, 30, 30)
    photo[5:15, 5:15] = (30, 30, 200)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    args = ["decompose", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--format", "zip", "--only-prompts"]
    args += ["--method", "weight-free", "--box", "2,2,18,18", "--prompt", "red car", "--detector", str(model)]
    assert main([*args, "--prompt-threshold", "0"]) == 0
    assert "2 prompted objects" in capsys.readouterr().out
    layered = load_layered(tmp_path / "out" / "photo.zip")
    assert sorted(layered.labels) == ["", "red car"]
    box_layer = layered.foregrounds[layered.labels.index("")]
    text_layer = layered.foregrounds[layered.labels.index("red car")]
    assert box_layer[10, 10, 3] > 0.5 and text_layer[30, 40, 3] > 0.5  # the blue square, the red one
