"""Text prompts to boxes: a `transformers` zero-shot object detector (OWLv2, OWL-ViT, Grounding DINO).

`TextPromptDetector` finds, for each text prompt ("red car", "dog"), the boxes the detector scores above a
threshold, keeps the best few after non-maximum suppression within that prompt, and returns `Detection`s in
pixel coordinates of the photo. `detections_to_prompts` turns them into the box prompts and layer labels the
tool-chain decomposer takes.

Weights are the user's (for example ``google/owlv2-base-patch16-ensemble`` or ``IDEA-Research/grounding-dino-tiny``
from the Hugging Face Hub, or a local folder saved with ``save_pretrained``); nothing is bundled or downloaded by
this module beyond what ``from_pretrained`` does for a Hub id. `TextPrompted` wraps a decomposer that takes box
prompts (`ToolChainDecomposer`) so that its calls take text prompts too, and labels each prompted layer with its
text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..layers import LayeredImage
from ._utils import as_rgb

__all__ = [
    "DETECTOR_HELP",
    "Detection",
    "DetectorError",
    "TextPromptDetector",
    "TextPromptNote",
    "TextPrompted",
    "check_prompts",
    "detections_to_prompts",
    "non_max_suppression",
]

OWL_TYPES = ("owlv2", "owlvit")
GROUNDING_TYPES = ("grounding-dino", "mm-grounding-dino")
SUPPORTED_TYPES = OWL_TYPES + GROUNDING_TYPES
DETECTOR_HELP = (
    "download a zero-shot object detector once (e.g. `hf download google/owlv2-base-patch16-ensemble` on a "
    "connected machine) and pass its Hub id or a local folder with --detector NAME_OR_PATH "
    "(OWLv2, OWL-ViT or Grounding DINO)"
)


class DetectorError(RuntimeError):
    """A detector that cannot be loaded or run, or a bad prompt; one line naming the fix."""


class TextPromptNote(UserWarning):
    """Something the user should know about a text prompt (e.g. nothing found for it); the layers are still made."""


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box = (x0, y0, x1, y1)`` in pixels (x1, y1 exclusive), the prompt that found it."""

    box: tuple[float, float, float, float]
    label: str
    score: float


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices of the boxes kept by greedy NMS, best score first (``boxes`` ``(N, 4)`` as x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = list(np.argsort(-np.asarray(scores, np.float64), kind="stable"))
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: list[int] = []
    while order:
        best, rest = order[0], np.asarray(order[1:], int)
        kept.append(int(best))
        if not rest.size:
            break
        width = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        height = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = [int(i) for i in rest[iou <= iou_threshold]]
    return kept


def check_prompts(prompts: Any) -> list[str]:
    """Prompts as a list of stripped, non-empty strings; `DetectorError` otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise DetectorError("no text prompt given: pass one or more, e.g. --prompt 'red car'")
    cleaned = []
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise DetectorError(f"text prompt {prompt!r} is not a string")
        text = " ".join(prompt.split())
        if not text:
            raise DetectorError("empty text prompt: give the object in words, e.g. --prompt 'red car'")
        cleaned.append(text)
    return cleaned


def detections_to_prompts(detections: Sequence[Detection]) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """Box prompts (integer pixels, x1/y1 exclusive, at least 1 px) and their layer labels, in order."""
    boxes, labels = [], []
    for detection in detections:
        x0, y0, x1, y1 = detection.box
        left, top = int(np.floor(x0)), int(np.floor(y0))
        boxes.append((left, top, max(int(np.ceil(x1)), left + 1), max(int(np.ceil(y1)), top + 1)))
        labels.append(detection.label)
    return boxes, labels


def _resolve_device(device: Any) -> str:
    import torch

    device = str(device or "cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"detector device {device!r}: torch sees no CUDA device; use --device cpu")
    return device


def _first_line(error: BaseException) -> str:
    return ((str(error).strip().splitlines() or [type(error).__name__])[0])[:200]


class TextPromptDetector:
    """Zero-shot object detection from text prompts with a `transformers` model.

    Args:
        model: an ``AutoModelForZeroShotObjectDetection`` model (OWLv2, OWL-ViT, Grounding DINO).
        processor: its ``AutoProcessor`` (image processor and tokenizer).
        device: "cpu", "cuda", "cuda:N" or "auto".
        name: what messages call the model.

    Raises:
        DetectorError: the model is not one of the supported zero-shot detectors.
    """

    def __init__(self, model: Any, processor: Any, device: str = "cpu", name: str = "") -> None:
        model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
        if model_type not in SUPPORTED_TYPES:
            raise DetectorError(
                f"detector {name or type(model).__name__}: model type {model_type or 'unknown'!r} is not supported; "
                "use an OWLv2, OWL-ViT or Grounding DINO model"
            )
        self.model_type = model_type
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name or str(getattr(model.config, "_name_or_path", "") or model_type)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str = "cpu", local_files_only: bool | None = None
    ) -> TextPromptDetector:
        """Load a detector from a local folder (``save_pretrained`` layout) or a Hub id.

        Raises:
            DetectorError: in one line, what is missing (folder, config, weights, processor, a reachable Hub) and
                what to do.
        """
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        name = str(name_or_path)
        path = Path(name).expanduser()
        is_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
        if is_local:
            if not path.exists():
                raise DetectorError(f"detector folder {name} does not exist; {DETECTOR_HELP}")
            if not path.is_dir():
                raise DetectorError(f"detector {name} is a file; pass the model's folder (config.json, weights)")
            if not (path / "config.json").is_file():
                raise DetectorError(f"detector {name} is not a model folder (no config.json); {DETECTOR_HELP}")
        options: dict[str, Any] = {} if local_files_only is None else {"local_files_only": local_files_only}
        try:
            config = AutoConfig.from_pretrained(str(path) if is_local else name, **options)
        except Exception as error:  # OSError (offline, missing repo), ValueError (unknown model type), JSON errors
            where = "the folder" if is_local else "the local Hugging Face cache or the Hub"
            raise DetectorError(
                f"cannot load detector {name!r} from {where} ({_first_line(error)}); {DETECTOR_HELP}"
            ) from None
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in SUPPORTED_TYPES:
            raise DetectorError(
                f"detector {name!r} is a {model_type or 'unknown'!r} model, not a zero-shot object detector; "
                "use an OWLv2, OWL-ViT or Grounding DINO model"
            )
        source = str(path) if is_local else name
        try:
            model = AutoModelForZeroShotObjectDetection.from_pretrained(source, config=config, **options)
        except Exception as error:
            where = "the folder needs" if is_local else "download the whole repository, with"
            raise DetectorError(
                f"detector {name!r}: cannot load its weights ({_first_line(error)}); {where} "
                "model.safetensors (or pytorch_model.bin) next to config.json"
            ) from None
        try:
            processor = AutoProcessor.from_pretrained(source, **options)
        except Exception as error:
            where = "the folder needs" if is_local else "download the whole repository, with"
            raise DetectorError(
                f"detector {name!r}: cannot load its processor ({_first_line(error)}); {where} the processor's "
                "files (preprocessor_config.json and the tokenizer's), as save_pretrained writes them"
            ) from None
        if not hasattr(processor, "tokenizer"):
            raise DetectorError(f"detector {name!r}: its processor has no tokenizer, so it cannot read text prompts")
        return cls(model, processor, device=device, name=name)

    def validate_prompts(self, prompts: Sequence[str] | str) -> list[str]:
        """The prompts as the detector reads them (see `check_prompts`); `DetectorError` for one it cannot read."""
        prompts = check_prompts(prompts)
        if self.model_type in GROUNDING_TYPES and any("." in prompt for prompt in prompts):
            raise DetectorError("Grounding DINO prompts cannot contain '.' (it separates prompts); reword the prompt")
        return prompts

    def __call__(
        self,
        image: Any,
        prompts: Sequence[str] | str,
        threshold: float = 0.1,
        max_per_prompt: int = 1,
        nms_iou: float = 0.3,
    ) -> list[Detection]:
        """Boxes found for each prompt, in prompt order, best score first within a prompt.

        Args:
            image: PIL image or ``(H, W, 3)`` array.
            prompts: text prompts; each detection's label is its prompt.
            threshold: keep boxes whose score for the prompt is at least this (0..1).
            max_per_prompt: at most this many boxes per prompt (after NMS).
            nms_iou: boxes of one prompt overlapping a better one by more than this IoU are dropped.
        """
        import torch
        from PIL import Image

        prompts = self.validate_prompts(prompts)
        if not 0.0 <= float(threshold) <= 1.0:
            raise DetectorError(f"detection threshold must lie in [0, 1], got {threshold}")
        if int(max_per_prompt) < 1:
            raise DetectorError(f"max_per_prompt must be at least 1, got {max_per_prompt}")
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        pil = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))
        with torch.inference_mode():
            if self.model_type in OWL_TYPES:
                scores, boxes = self._owl(pil, prompts, height, width)
            else:
                scores, boxes = self._grounding(pil, prompts, height, width)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, float(width))
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, float(height))
        valid = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
        detections: list[Detection] = []
        for index, prompt in enumerate(prompts):
            candidates = np.flatnonzero(valid & (scores[:, index] >= float(threshold)))
            kept = non_max_suppression(boxes[candidates], scores[candidates, index], nms_iou)[: int(max_per_prompt)]
            for i in candidates[kept]:
                x0, y0, x1, y1 = (float(v) for v in boxes[i])
                detections.append(Detection(box=(x0, y0, x1, y1), label=prompt, score=float(scores[i, index])))
        return detections

    def _inputs(self, **kwargs: Any) -> dict[str, Any]:
        inputs = self.processor(return_tensors="pt", **kwargs)
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}

    def _owl(self, pil: Any, prompts: list[str], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """OWL-ViT / OWLv2: one logit per (box, prompt); boxes through the processor's own scaling (padding)."""
        import torch

        outputs = self.model(**self._inputs(text=[prompts], images=pil))
        scores = torch.sigmoid(outputs.logits[0].float()).cpu().numpy()  # (queries, prompts)
        results = self.processor.image_processor.post_process_object_detection(
            outputs=outputs, threshold=-1.0, target_sizes=[(height, width)]
        )
        boxes = results[0]["boxes"].float().cpu().numpy().astype(np.float64)
        return scores.astype(np.float64), boxes

    def _grounding(self, pil: Any, prompts: list[str], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Grounding DINO: logits per text token; a prompt scores its best token. Prompts are joined by '.'."""
        import torch

        text = " . ".join(prompt.lower() for prompt in prompts) + " ."
        inputs = self._inputs(text=text, images=pil)
        outputs = self.model(**inputs)
        spans = self._token_spans(inputs["input_ids"][0].tolist(), len(prompts))
        probs = torch.sigmoid(outputs.logits[0].float()).cpu().numpy()  # (queries, text tokens)
        scores = np.stack([probs[:, span].max(axis=1) for span in spans], axis=1).astype(np.float64)
        centre = outputs.pred_boxes[0].float().cpu().numpy().astype(np.float64)  # (cx, cy, w, h) in [0, 1]
        boxes = np.stack(
            [
                (centre[:, 0] - centre[:, 2] / 2) * width,
                (centre[:, 1] - centre[:, 3] / 2) * height,
                (centre[:, 0] + centre[:, 2] / 2) * width,
                (centre[:, 1] + centre[:, 3] / 2) * height,
            ],
            axis=1,
        )
        return scores, boxes

    def _token_spans(self, input_ids: list[int], count: int) -> list[list[int]]:
        """Token positions of each prompt: the runs between special tokens and '.' tokens."""
        tokenizer = self.processor.tokenizer
        separators = set(tokenizer.all_special_ids)
        separators.add(tokenizer.convert_tokens_to_ids("."))
        limit = int(getattr(self.model.config, "max_text_len", len(input_ids)))
        spans: list[list[int]] = []
        current: list[int] = []
        for position, token in enumerate(input_ids[:limit]):
            if token in separators:
                if current:
                    spans.append(current)
                current = []
            else:
                current.append(position)
        if current:
            spans.append(current)
        if len(spans) != count:
            raise DetectorError(
                f"detector {self.name}: the prompts did not fit its text length ({limit} tokens); give fewer or "
                "shorter prompts"
            )
        return spans


class TextPrompted:
    """A decomposer that takes box prompts, called with text prompts as well.

    Each text prompt is detected (`TextPromptDetector`); its best ``max_per_prompt`` boxes become box prompts,
    after the caller's own boxes, and the object layers they give are labelled with the prompt's text. A prompt
    with nothing above ``threshold`` gives no layer and a `TextPromptNote`. ``metadata["text_prompts"]`` lists,
    per detection, its prompt, box, score and object layer.

    Args:
        decomposer: called as ``decomposer(image, num_layers, boxes=..., points=..., negative_points=...,
            only_prompts=...)`` (`ToolChainDecomposer`); it must report ``metadata["prompt_layers"]``.
        detector: a `TextPromptDetector` (or any callable with its signature).
        threshold: detection score to accept a box (0..1).
        max_per_prompt: boxes (objects) per prompt at most.
    """

    def __init__(self, decomposer: Any, detector: Any, threshold: float = 0.1, max_per_prompt: int = 1) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise DetectorError(f"detection threshold must lie in [0, 1], got {threshold}")
        if int(max_per_prompt) < 1:
            raise DetectorError(f"max_per_prompt must be at least 1, got {max_per_prompt}")
        self.decomposer = decomposer
        self.detector = detector
        self.threshold = float(threshold)
        self.max_per_prompt = int(max_per_prompt)

    def __call__(
        self,
        image: Any,
        num_layers: int | None = None,
        *,
        prompts: Sequence[str] | str | None = None,
        boxes: Any = None,
        points: Any = None,
        negative_points: Any = None,
        only_prompts: bool = False,
    ) -> LayeredImage:
        """Layers of ``image`` with an object per detected text prompt (labelled with it), besides the rest."""
        import warnings

        if isinstance(image, (str, os.PathLike)):
            from ..image_io import load_image

            image = load_image(image)
        texts = check_prompts(prompts) if prompts is not None else []
        detections = self.detector(image, texts, threshold=self.threshold, max_per_prompt=self.max_per_prompt)
        for text in texts:
            if not any(d.label == text for d in detections):
                warnings.warn(
                    f"text prompt {text!r}: nothing found with a score of at least {self.threshold:g} (a lower "
                    "threshold finds more, and more wrong things)",
                    TextPromptNote,
                    stacklevel=2,
                )
        detected_boxes, labels = detections_to_prompts(detections)
        own = len(list(boxes)) if boxes is not None and detected_boxes else 0
        if detected_boxes:  # after the caller's boxes (left as given when nothing was detected)
            boxes = [*(boxes if boxes is not None else []), *detected_boxes]
        if only_prompts and not (boxes or points):
            raise DetectorError(
                f"no object found for the text prompt{'s' if len(texts) != 1 else ''} "
                f"{', '.join(repr(t) for t in texts)}, and only prompted objects were asked for: lower the detection "
                "threshold, reword the prompt, or give a box or point"
            )
        layered = self.decomposer(
            image,
            num_layers,
            boxes=boxes,
            points=points,
            negative_points=negative_points,
            only_prompts=only_prompts,
        )
        where = list(layered.metadata.get("prompt_layers") or [])
        records = []
        for number, (detection, label) in enumerate(zip(detections, labels)):
            index = where[own + number] if own + number < len(where) else None
            if index is not None:
                layered.labels[index] = label
            records.append(
                {"prompt": label, "box": list(detection.box), "score": detection.score, "object_index": index}
            )
        layered.metadata["text_prompts"] = records
        layered.metadata["detector"] = str(getattr(self.detector, "name", type(self.detector).__name__))
        return layered
