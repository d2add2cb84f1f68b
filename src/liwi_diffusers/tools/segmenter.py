"""Learned salient-object segmentation through ONNX Runtime: a photo in, a soft foreground matte out.

`Segmenter` is the interface; `OnnxSegmenter` runs any salient-object / dichotomous-segmentation export
(ISNet, the U2-Net family, BiRefNet) described by a small `SegmenterSpec`: square input size, per-channel
normalisation and output activation. Models come from the model cache (`liwi models download isnet`), never
from the repository; `OnnxSegmenter.from_cache` finds and verifies them.

The model is prepared once, when it is first loaded: upsampling nodes exported with fixed target sizes get sizes
computed from their input's shape, so that the same weights take other input sides (multiples of the model's
stride). The prepared copy is kept beside the download (``NAME.prepared.onnx``; the downloaded file stays as it is,
hash and all). `OnnxSegmenter.at_side` then runs passes that need less detail at a smaller side: a pass at 640
costs 0.39 of one at 1024. (Widening ISNet's float16 weights to float32 was measured too: no faster on a quiet
2-core machine, 0.9-1.2x the time, so the weights stay as exported.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ._utils import as_rgb, resize

__all__ = [
    "OnnxSegmenter",
    "Segmenter",
    "SegmenterError",
    "SegmenterProposer",
    "coverage_proposals",
    "prepare_onnx_model",
]


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
        prepare: prepare the model for free input sizes (see the module's docstring); False runs the file exactly
            as exported, at the nominal size only.

    Raises:
        SegmenterError: the file is not a readable ONNX model, or its input/output shapes do not match ``spec``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        spec: Any,
        device: str = "cpu",
        threads: int | None = None,
        name: str = "",
        prepare: bool = True,
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
        # No memory pattern either: for the exported file's fixed shapes ONNX Runtime would otherwise allocate the
        # whole activation plan at once (measured on ISNet at 1024 on 2 cores: peak RSS of a pass 1330-1410 MB
        # with it, 1090-1100 MB without; 3.8-4.3 s against 3.8-4.0 s a pass).
        options.enable_mem_pattern = False
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
        # Passes at the nominal side run the file as exported: its fixed shapes let ONNX Runtime plan memory ahead
        # (the prepared graph at 1024 took 1.14x the time). Other sides run the prepared copy, in a second session
        # made on first use (it holds about 0.3-0.5 GB more).
        self._options, self._providers = options, providers
        self._model_path, self._prepare = Path(model_path), prepare
        self.stride: int | None = None  # known once the prepared model is loaded; other sides are multiples of it
        self._free: Any = None

    @classmethod
    def from_cache(
        cls, name: str | None = None, device: str = "cpu", threads: int | None = None, prepare: bool = True
    ) -> OnnxSegmenter:
        """The model ``name`` (default: the default segmenter) from the model cache, hash-checked.

        Raises `liwi_diffusers.model_zoo.ModelError` when it is not downloaded or its file is damaged.
        """
        from ..model_zoo import DEFAULT_SEGMENTER, MODELS, ModelError, verify_model

        name = name or DEFAULT_SEGMENTER
        path = verify_model(name)
        card = MODELS[name]
        if card.segmenter is None:
            raise ModelError(f"model {name!r} is not a segmenter")
        return cls(path, card.segmenter, device=device, threads=threads, name=name, prepare=prepare)

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

    def at_side(self, side: int) -> Segmenter:
        """This model run at a ``side x side`` input whatever the image's size (rounded to the stride).

        The same weights (the prepared model's session); what messages and caches call it is ``"<name>@<side>"``.
        A model that takes only its nominal size, or ``side`` at least the nominal size, gives this segmenter.
        """
        side = int(side)
        if side < 1:
            raise ValueError(f"side must be a positive number of pixels, got {side}")
        if side >= int(self.spec.input_size) or self._free_session() is None:
            return self
        return _AtSide(self, max(self.stride, round(side / self.stride) * self.stride))

    def _free_session(self) -> Any:
        """The session of the prepared model (free input sizes), made on first use; None when it does not run.

        One tiny pass at twice the stride proves that the rewired graph answers at the size it is given.
        """
        if self._prepare:
            self._prepare = False  # one try
            prepared = _prepared_model(self._model_path, int(self.spec.input_size))
            if prepared is not None:
                import onnxruntime as ort

                try:
                    session = ort.InferenceSession(prepared[0], sess_options=self._options, providers=self._providers)
                    side = 2 * int(prepared[1])
                    probe = np.zeros((1, 3, side, side), self._input_dtype())
                    (out,) = session.run([self._output_name], {self._input_name: probe})
                    if tuple(out.shape[-2:]) == (side, side):
                        self._free, self.stride = session, int(prepared[1])
                except Exception:  # a graph the preparation got wrong: the nominal size only
                    pass
        return self._free

    def _input_dtype(self) -> type:
        return np.float16 if self.spec.input_dtype == "float16" else np.float32

    def __call__(self, image: Any) -> np.ndarray:
        """Foreground coverage of ``image`` (PIL or float RGB), ``(H, W)`` float32 in [0, 1]."""
        return self._segment(as_rgb(image), int(self.spec.input_size))

    def _segment(self, rgb: np.ndarray, size: int) -> np.ndarray:
        height, width = rgb.shape[:2]
        session = self.session if size == int(self.spec.input_size) else self._free_session()
        (matte,) = session.run([self._output_name], {self._input_name: self._input_tensor(rgb, size)})
        matte = self._activated(np.asarray(matte, np.float32).reshape(matte.shape[-2:]))
        return np.clip(resize(matte, (height, width), cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)

    def _input_tensor(self, rgb: np.ndarray, size: int) -> np.ndarray:
        """``rgb`` stretched to a ``size`` square and normalised as the model expects, ``(1, 3, size, size)``."""
        shrinking = max(rgb.shape[:2]) > size
        square = cv2.resize(rgb * 255.0, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        mean = np.asarray(self.spec.mean, np.float32)
        std = np.asarray(self.spec.std, np.float32)
        tensor = ((square - mean) / std).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(tensor, dtype=self._input_dtype())

    def _activated(self, matte: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-matte)) if self.spec.activation == "sigmoid" else matte

    def feature_names(self) -> list[str]:
        """The model's outputs that are feature maps (more than one channel), finest first."""
        maps = [
            output
            for output in self.session.get_outputs()
            if len(output.shape) == 4 and isinstance(output.shape[1], int) and output.shape[1] > 1
        ]
        sides = {output.name: output.shape[-1] if isinstance(output.shape[-1], int) else 0 for output in maps}
        return sorted(sides, key=lambda name: -sides[name])

    def features(self, image: Any, side: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """The matte and the decoder's feature maps of one pass on ``image`` stretched to a ``side`` square.

        Returns ``(matte, maps)``: the matte ``(side, side)`` float32 in [0, 1] at the model's output size (not
        resized to the image), and the feature maps ``(C, h, w)`` float32, finest first. ``side`` defaults to the
        nominal input size; other sides need the prepared model (`at_side`).

        Raises:
            SegmenterError: the model has no feature outputs, or cannot run at ``side``.
        """
        names = self.feature_names()
        if not names:
            raise SegmenterError(f"segmentation model {self.name}: no feature-map outputs to give")
        nominal = int(self.spec.input_size)
        size = nominal if side is None else int(side)
        session = self.session if size == nominal else self._free_session()
        if session is None:
            raise SegmenterError(f"segmentation model {self.name}: runs at {nominal} px only, not at {size}")
        if size != nominal:
            size = max(self.stride, round(size / self.stride) * self.stride)
        matte, *maps = session.run(
            [self._output_name, *names], {self._input_name: self._input_tensor(as_rgb(image), size)}
        )
        matte = self._activated(np.asarray(matte, np.float32).reshape(matte.shape[-2:]))
        return np.clip(matte, 0.0, 1.0), [np.asarray(m[0], np.float32) for m in maps]


class _AtSide:
    """An `OnnxSegmenter` at a fixed input side (see `OnnxSegmenter.at_side`)."""

    def __init__(self, segmenter: OnnxSegmenter, side: int) -> None:
        self.segmenter = segmenter
        self.side = side
        self.name = f"{segmenter.name}@{side}"

    def __call__(self, image: Any) -> np.ndarray:
        return self.segmenter._segment(as_rgb(image), self.side)


_PREPARATION = 2  # bump when `prepare_onnx_model` changes what it writes: prepared copies are then made again


def _prepared_model(path: str | os.PathLike, nominal: int) -> tuple[str | bytes, int | None] | None:
    """`prepare_onnx_model`'s answer, kept on disk beside the model (``NAME.prepared.onnx`` and its ``.json``).

    The copy is made once (a few seconds) and used while the model file keeps its size and modification time.
    Where the folder is read-only the prepared model is made in memory at every load instead.
    """
    import json

    source = Path(path)
    try:
        stat = source.stat()
    except OSError:
        return None
    key = {"version": _PREPARATION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "nominal": nominal}
    copy = source.with_name(f"{source.stem}.prepared.onnx")
    record = copy.with_suffix(".json")
    try:
        known = json.loads(record.read_text())
        if known.get("key") == key and copy.is_file():
            return str(copy), known.get("stride")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        prepared = prepare_onnx_model(source, nominal=nominal)
    except Exception:  # not a graph the preparation understands (or not ONNX): the caller loads the file itself
        return None
    if prepared is None:
        return None
    model_bytes, stride = prepared
    try:
        from ..export.atomic import atomic_write

        with atomic_write(copy) as handle:
            handle.write(model_bytes)
        with atomic_write(record) as handle:
            handle.write(json.dumps({"key": key, "stride": stride}).encode())
    except OSError:  # a read-only cache: use the bytes this once
        return model_bytes, stride
    return str(copy), stride


def prepare_onnx_model(path: str | os.PathLike, nominal: int) -> tuple[bytes, int] | None:
    """The model at ``path`` with free input sizes, ``(model bytes, stride)``; None when it cannot have them.

    Upsampling (``Resize``) nodes whose target sizes were fixed at export get ``Shape(input) x ratio`` instead, the
    ratio read from the exported shapes. ``stride`` is the input-side multiple that keeps every feature map an
    integer ratio of the input (nominal side / smallest feature side). None without the ``onnx`` package, when
    the model's input is not ``1 x 3 x nominal x nominal`` (the caller then loads the file as it is, and its shape
    check names the mismatch), or when some node keeps the graph at its exported size.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper, shape_inference
    except ImportError:
        return None
    model = onnx.load(str(path))
    graph = model.graph
    declared = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] if len(graph.input) == 1 else []
    if declared != [1, 3, nominal, nominal]:
        return None
    stride = _free_input_sizes(model, onnx, helper, numpy_helper, shape_inference, TensorProto)
    if stride is None:
        return None
    return model.SerializeToString(), stride


def _free_input_sizes(
    model: Any, onnx: Any, helper: Any, numpy_helper: Any, shape_inference: Any, tensors: Any
) -> int | None:
    """Rewire fixed-size ``Resize`` nodes of ``model`` (in place) to sizes from their input; the stride, or None."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.input[0].type.tensor_type.shape.dim) != 4:
        return None
    nominal = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[2:]]
    if nominal[0] <= 0 or nominal[0] != nominal[1]:
        return None
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    del inferred
    constants = {
        node.output[0]: numpy_helper.to_array(attribute.t)
        for node in graph.node
        if node.op_type == "Constant"
        for attribute in node.attribute
        if attribute.name == "value"
    }
    pairs = [tensor for tensor in graph.initializer if list(tensor.dims) == [2]]
    constants.update({tensor.name: numpy_helper.to_array(tensor) for tensor in pairs})
    producers = {output: node for node in graph.node for output in node.output}
    smallest = nominal[0]
    rewired: dict[int, list[Any]] = {}
    for node in graph.node:
        if node.op_type in ("Reshape", "Expand", "ConstantOfShape", "Tile"):
            return None  # fixed shapes that this rewiring does not follow
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        source = shapes.get(node.input[0], [])
        concat = producers.get(node.input[3])
        if len(source) != 4 or min(source[2:], default=0) <= 0 or concat is None or concat.op_type != "Concat":
            return None
        fixed = constants.get(concat.input[-1])
        if fixed is None or fixed.shape != (2,):
            return None
        ratio = [int(f) // int(s) for f, s in zip(fixed, source[2:])]
        if any(int(f) != r * int(s) for f, r, s in zip(fixed, ratio, source[2:])):
            return None
        smallest = min(smallest, *source[2:])
        name = f"{node.name or node.output[0]}_free_size"
        graph.initializer.append(helper.make_tensor(f"{name}_ratio", tensors.INT64, [4], [1, 1, *ratio]))
        rewired[id(node)] = [
            helper.make_node("Shape", [node.input[0]], [f"{name}_shape"]),
            helper.make_node("Mul", [f"{name}_shape", f"{name}_ratio"], [name]),
        ]
        node.input[3] = name
    if not rewired:
        return None
    ordered = [copy for node in graph.node for copy in [*rewired.get(id(node), []), _copied(node)]]
    graph.ClearField("node")
    graph.node.extend(ordered)
    del graph.value_info[:]
    for info in [*graph.input, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[2].dim_param, dims[3].dim_param = f"{info.name}_height", f"{info.name}_width"
    return nominal[0] // smallest  # ONNX Runtime checks the graph when it loads it (the caller runs a tiny pass)


def _copied(node: Any) -> Any:
    copy = type(node)()
    copy.CopyFrom(node)
    return copy


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
        rgb = as_rgb(image)
        limit = self.max_objects if max_objects is None else max_objects
        coverage = np.asarray(self.segmenter(rgb), np.float32)
        proposals = coverage_proposals(self.splitter(coverage))
        proposals.sort(key=lambda p: (-p.score, -p.area))
        return proposals[:limit]


def coverage_proposals(coverages: Any) -> list[Any]:
    """One `ObjectProposal` per object coverage (solid where >= 0.5; score: the mean coverage there), in order.

    Empty coverages and those covering 92 % of the image or more (the whole photo is no object) are left out.
    """
    from .proposals import ObjectProposal

    proposals = []
    for alpha in coverages:
        mask = alpha >= 0.5
        if mask.any() and mask.mean() < 0.92:
            proposals.append(ObjectProposal(mask, float(alpha[mask].mean()), "object"))
    return proposals
