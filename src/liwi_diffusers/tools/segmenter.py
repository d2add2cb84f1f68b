"""Learned salient-object segmentation through ONNX Runtime: a photo in, a soft foreground matte out.

`Segmenter` is the interface; `OnnxSegmenter` runs any salient-object / dichotomous-segmentation export
(ISNet, the U2-Net family, BiRefNet) described by a small `SegmenterSpec`: square input size, per-channel
normalisation and output activation. Models come from the model cache (`liwi models download isnet`), never
from the repository; `OnnxSegmenter.from_cache` finds and verifies them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_rgb, resize

__all__ = ["OnnxSegmenter", "Segmenter", "SegmenterError", "SegmenterProposer"]


class SegmenterError(RuntimeError):
    """A segmentation model that cannot be used (wrong shape, unreadable file); one line naming the fix."""


@runtime_checkable
class Segmenter(Protocol):
    """Salient-object segmentation: ``(H, W)`` float32 foreground coverage in [0, 1] at the image's size."""

    def __call__(self, image: Any) -> np.ndarray: ...


class OnnxSegmenter:
    """An ONNX salient-object model run with ONNX Runtime (CPU, or CUDA when available and allowed).

    Args:
        model_path: the ``.onnx`` file.
        spec: how to run it (a `liwi_diffusers.model_zoo.SegmenterSpec`: ``input_size``, ``mean``, ``std``,
            ``activation``, ``input_dtype``, ``output_index``).
        device: "cpu", "cuda"/"cuda:N" or "auto" (CUDA when ONNX Runtime's CUDA provider is installed).
        threads: intra-op threads; None lets ONNX Runtime use every core.
        name: what messages call the model.

    Raises:
        SegmenterError: the file is not a readable ONNX model, or its input/output shapes do not match ``spec``.
    """

    def __init__(
        self, model_path: str | os.PathLike, spec: Any, device: str = "cpu", threads: int | None = None, name: str = ""
    ) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.name = name or Path(model_path).stem
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # No memory arena: ISNet's activations (~0.7 GB at 1024 px) go back to the system after each pass instead of
        # staying reserved while the full-size layers are built (measured peak 1.36 -> 1.16 GB, held 1.36 -> 0.50).
        options.enable_cpu_mem_arena = False
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            first = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise SegmenterError(f"{model_path}: not a usable ONNX model ({first})") from None
        self._check_shapes()

    @classmethod
    def from_cache(cls, name: str | None = None, device: str = "cpu", threads: int | None = None) -> OnnxSegmenter:
        """The model ``name`` (default: the default segmenter) from the model cache, hash-checked.

        Raises `liwi_diffusers.model_zoo.ModelError` when it is not downloaded or its file is damaged.
        """
        from ..model_zoo import DEFAULT_SEGMENTER, MODELS, ModelError, verify_model

        name = name or DEFAULT_SEGMENTER
        path = verify_model(name)
        card = MODELS[name]
        if card.segmenter is None:
            raise ModelError(f"model {name!r} is not a segmenter")
        return cls(path, card.segmenter, device=device, threads=threads, name=name)

    def _check_shapes(self) -> None:
        size = int(self.spec.input_size)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise SegmenterError(f"segmentation model {self.name}: expected one input, found {len(inputs)}")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape, (1, 3, size, size))):
            raise SegmenterError(
                f"segmentation model {self.name}: input shape {shape} does not match its config "
                f"(1, 3, {size}, {size}); check the model's SegmenterSpec"
            )
        if not 0 <= self.spec.output_index < len(outputs):
            raise SegmenterError(
                f"segmentation model {self.name}: output {self.spec.output_index} asked for, "
                f"the model has {len(outputs)}"
            )
        out = list(outputs[self.spec.output_index].shape)
        channels = out[1] if len(out) == 4 else 1
        if len(out) not in (3, 4) or (isinstance(channels, int) and channels != 1):
            raise SegmenterError(
                f"segmentation model {self.name}: output shape {out} is not a one-channel matte (1, 1, H, W)"
            )
        self._input_name = inputs[0].name
        self._output_name = outputs[self.spec.output_index].name

    def __call__(self, image: Any) -> np.ndarray:
        """Foreground coverage of ``image`` (PIL or float RGB), ``(H, W)`` float32 in [0, 1]."""
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        size = int(self.spec.input_size)
        shrinking = max(height, width) > size
        square = cv2.resize(rgb * 255.0, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        mean = np.asarray(self.spec.mean, np.float32)
        std = np.asarray(self.spec.std, np.float32)
        tensor = ((square - mean) / std).transpose(2, 0, 1)[None]
        tensor = np.ascontiguousarray(tensor, dtype=np.float16 if self.spec.input_dtype == "float16" else np.float32)
        (matte,) = self.session.run([self._output_name], {self._input_name: tensor})
        matte = np.asarray(matte, np.float32).reshape(matte.shape[-2:])
        if self.spec.activation == "sigmoid":
            matte = 1.0 / (1.0 + np.exp(-matte))
        return np.clip(resize(matte, (height, width), cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)


class SegmenterProposer:
    """A `Segmenter` behind the `ObjectProposer` interface: one pass, its regions split into instances.

    For tools that want proposals (the ADD builder's foreground curation) rather than a whole decomposition.
    Each proposal's score is the mean coverage inside its mask.
    """

    def __init__(self, segmenter: Segmenter, max_objects: int = 8, splitter: Any = None) -> None:
        from .instances import InstanceSplitter

        self.segmenter = segmenter
        self.max_objects = max_objects
        self.splitter = splitter or InstanceSplitter()
        self.name = getattr(segmenter, "name", type(segmenter).__name__)

    def __call__(self, image: Any, max_objects: int | None = None) -> list[Any]:
        from .proposals import ObjectProposal

        rgb = as_rgb(image)
        limit = self.max_objects if max_objects is None else max_objects
        coverage = np.asarray(self.segmenter(rgb), np.float32)
        proposals = []
        for alpha in self.splitter(coverage):
            mask = alpha >= 0.5
            if mask.any() and mask.mean() < 0.92:
                proposals.append(ObjectProposal(mask, float(alpha[mask].mean()), "object"))
        proposals.sort(key=lambda p: (-p.score, -p.area))
        return proposals[:limit]
