"""A closed-set object detector through ONNX Runtime: boxes of the objects in a photo, offline.

`OnnxObjectDetector` runs a NanoDet-style export (`liwi_diffusers.model_zoo.DetectorSpec`; `liwi models download
nanodet` converts the published TensorFlow.js model to ONNX) and returns `Detection`s in pixels of the photo,
best first, after class-agnostic non-maximum suppression. The tool-chain decomposer turns each box into an
object layer with the learned segmenter (`ToolChainDecomposer(detector=...)`): a salient-object segmenter
answers "what is the subject", a detector answers "where are the things", which is what crowded street and
table scenes need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import as_rgb, resize
from .detector import Detection, non_max_suppression

__all__ = ["ObjectDetectorError", "OnnxObjectDetector"]

_CPU = ["CPUExecutionProvider"]


class ObjectDetectorError(RuntimeError):
    """A detector model that cannot be loaded or does not have the outputs its spec describes."""


class OnnxObjectDetector:
    """Boxes of the objects in a photo from an ONNX NanoDet-style model.

    Args:
        model_path: the ONNX file.
        spec: its `DetectorSpec` (input size, normalisation, strides, labels).
        threshold: the least class score a detection needs. 0.3 (default) against 0.35 before, on the real-photo
            benchmark (all 105 photos, fast preset): annotated objects found 0.473 -> 0.506, object layers 329 ->
            395, of which matching an annotated object 0.541 -> 0.489 (many of the others are real things COCO
            does not annotate: a sink, a pillow, a sandal); 0.25 found 0.527 with 467 layers (0.430 matching).
        iou_threshold: non-maximum suppression across classes (one object, one box).
        min_side: boxes thinner than this many pixels of the photo are dropped.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        spec: Any,
        threshold: float = 0.3,
        iou_threshold: float = 0.6,
        min_side: int = 8,
        threads: int | None = None,
        name: str = "",
    ) -> None:
        import onnxruntime as ort

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.spec, self.threshold, self.iou_threshold, self.min_side = spec, threshold, iou_threshold, min_side
        self.name = name or Path(model_path).stem
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            first = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise ObjectDetectorError(f"{model_path}: not a usable ONNX model ({first})") from None
        self._input = self.session.get_inputs()[0].name
        self._outputs = self._match_outputs()

    @classmethod
    def from_cache(cls, name: str | None = None, **kwargs: Any) -> OnnxObjectDetector:
        """The detector ``name`` (default: ``nanodet``) from the model cache, hash-checked; `ModelError` if absent."""
        from ..model_zoo import DEFAULT_DETECTOR, MODELS, ModelError, verify_model

        name = name or DEFAULT_DETECTOR
        path = verify_model(name)
        if MODELS[name].detector is None:
            raise ModelError(f"model {name!r} is not an object detector")
        return cls(path, MODELS[name].detector, name=name, **kwargs)

    def _match_outputs(self) -> list[tuple[int, int, int]]:
        """Per stride: (stride, index of the score output, index of the box output), found by their shapes."""
        spec = self.spec
        shapes = [tuple(output.shape) for output in self.session.get_outputs()]
        matched = []
        for stride in spec.strides:
            cells = (spec.input_size // stride) ** 2
            score = [i for i, s in enumerate(shapes) if s[-2:] == (cells, len(spec.labels))]
            box = [i for i, s in enumerate(shapes) if s[-2:] == (cells, 4 * (spec.reg_max + 1))]
            if not score or not box:
                raise ObjectDetectorError(
                    f"{self.name}: no outputs of {cells} x {len(spec.labels)} scores and {cells} x "
                    f"{4 * (spec.reg_max + 1)} boxes for stride {stride}; the model does not match its spec"
                )
            matched.append((stride, score[0], box[0]))
        return matched

    def __call__(self, image: Any, max_detections: int | None = None) -> list[Detection]:
        """`Detection`s in pixels of ``image`` (RGB array in [0, 1] or 8-bit, or PIL), best score first."""
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        spec = self.spec
        side = spec.input_size
        pixels = resize(rgb, (side, side)) * 255.0
        if spec.channel_order == "bgr":
            pixels = pixels[:, :, ::-1]
        pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        outputs = self.session.run(None, {self._input: pixels.transpose(2, 0, 1)[None].astype(np.float32)})
        boxes, scores, classes = [], [], []
        bins = np.arange(spec.reg_max + 1, dtype=np.float32)
        for stride, score_index, box_index in self._outputs:
            class_scores = np.asarray(outputs[score_index]).reshape(-1, len(spec.labels))
            best = class_scores.max(axis=1)
            cells = np.flatnonzero(best >= self.threshold)
            if not cells.size:
                continue
            logits = np.asarray(outputs[box_index]).reshape(-1, 4, spec.reg_max + 1)[cells]
            weights = np.exp(logits - logits.max(axis=2, keepdims=True))
            distances = (weights / weights.sum(axis=2, keepdims=True) * bins).sum(axis=2) * stride
            grid = side // stride
            centre_x = (cells % grid + 0.5) * stride
            centre_y = (cells // grid + 0.5) * stride
            boxes.append(
                np.stack(
                    [
                        centre_x - distances[:, 0],
                        centre_y - distances[:, 1],
                        centre_x + distances[:, 2],
                        centre_y + distances[:, 3],
                    ],
                    axis=1,
                )
            )
            scores.append(best[cells])
            classes.append(class_scores[cells].argmax(axis=1))
        if not boxes:
            return []
        box_array = np.concatenate(boxes) * np.asarray([width, height, width, height], np.float32) / side
        box_array = np.clip(box_array, 0, [width, height, width, height])
        score_array, class_array = np.concatenate(scores), np.concatenate(classes)
        detections = []
        for index in non_max_suppression(box_array, score_array, self.iou_threshold):
            x0, y0, x1, y1 = (float(v) for v in box_array[index])
            if min(x1 - x0, y1 - y0) < self.min_side:
                continue
            detections.append(
                Detection((x0, y0, x1, y1), spec.labels[int(class_array[index])], float(score_array[index]))
            )
            if max_detections is not None and len(detections) >= max_detections:
                break
        return detections
