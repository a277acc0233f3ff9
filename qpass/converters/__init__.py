"""Converters: any supported model file → a float `onnx_ir.Model` with static shapes.

Keras `.h5` / `.keras`, SavedModel directories and `.tflite` files go through tf2onnx; `.onnx` is loaded
as is, with the weights it keeps in external-data files next to it (`MODEL.onnx.data`).
The batch dimension is fixed (1 by default) and shapes are inferred, so later stages see static shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from qpass.errors import ConvertError


def load_model(path: Path, *, batch_size: int = 1, safe_mode: bool = True, opset: int = 17) -> ir.Model:
    """Load or convert `path` into a float ONNX model with static shapes."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        from qpass.converters.keras import convert_keras

        proto = convert_keras(path, batch_size=batch_size, safe_mode=safe_mode, opset=opset)
    elif path.suffix.lower() == ".tflite":
        from qpass.converters.tflite import convert_tflite

        proto = _fix_batch(convert_tflite(path, opset=opset), batch_size, path)
    elif path.suffix.lower() == ".onnx":
        proto = _read_onnx(path)
        if _external_files(proto, path):
            onnx.load_external_data_for_model(proto, str(path.parent))
        _standard_ops(proto, path)
        proto = _fix_batch(proto, batch_size, path)
    else:
        raise ConvertError(f"{path}: unknown model format; expected .h5, .keras, .tflite, .onnx or a "
                           "SavedModel folder")
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{path}: the ONNX graph is not valid: {' '.join(str(exc).split())[:400]}") from None
    return ir.serde.deserialize_model(proto)


STANDARD_DOMAINS = ("", "ai.onnx")


def _read_onnx(path: Path) -> onnx.ModelProto:
    """The .onnx file's graph, without the weights it keeps in external files."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many kinds
        raise ConvertError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant tensor of the graph and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _external_files(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """The files next to `path` that hold the model's external-data tensors (torch's dynamo exporter writes
    MODEL.onnx.data); refuse a missing one, or a location outside the model's folder."""
    folder = path.resolve().parent
    files: dict[Path, None] = {}
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        file = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not file.is_relative_to(folder):
            raise ConvertError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file "
                               "in the model's folder; re-save the model with its weights inside")
        if not file.is_file():
            raise ConvertError(f"{path}: tensor {tensor.name!r} keeps its data in {file}, which does not exist; "
                               f"put {location} next to the .onnx file (or export with external_data=False)")
        files[file] = None
    return list(files)


def onnx_data_files(path: Path) -> list[Path]:
    """The external-data files an .onnx model reads (for the build cache's key)."""
    return _external_files(_read_onnx(path), path)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph and of its subgraphs (Loop, If, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub)


def _standard_ops(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a node outside the standard ONNX domain (custom ops, ONNX-ML, model-local functions)."""
    for node in _nodes(proto.graph):
        if node.domain not in STANDARD_DOMAINS:
            raise ConvertError(f"{path}: node {node.name!r} is {node.domain}::{node.op_type}, not a standard ONNX "
                               "op; qpass needs standard ONNX ops (export without custom ops)")


def check_one_input(model: ir.Model, path: Path) -> None:
    """The C API takes one input array: refuse a graph with several inputs, naming them."""
    names = [v.name for v in model.graph.inputs if not v.is_initializer()]
    if len(names) != 1:
        raise ConvertError(f"{path}: the graph has {len(names)} inputs {names}; qpass needs exactly one input "
                           "(export a model with a single input tensor)")


def _fix_batch(proto: onnx.ModelProto, batch_size: int, path: Path) -> onnx.ModelProto:
    """Pin a symbolic leading dimension of each graph input to `batch_size`; refuse other symbolic dims
    and a batch dimension already fixed to another number."""
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        for k, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                if k == 0 and dim.dim_value != batch_size:
                    raise ConvertError(f"{path}: input {inp.name!r} has its batch dimension fixed to "
                                       f"{dim.dim_value}, but batch_size is {batch_size}; export the model "
                                       "with a symbolic batch or use its batch size")
                continue
            if k != 0:
                raise ConvertError(f"{path}: input {inp.name!r} has a symbolic dimension {k} ({dim.dim_param!r}); "
                                   "export the model with static shapes except the batch")
            dim.Clear()
            dim.dim_value = batch_size
    for out in proto.graph.output:  # let shape inference recompute the outputs
        for dim in out.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    # intermediate shapes the exporter wrote with the symbolic batch (torch's dynamo exporter writes them all)
    # would keep Shape(x) chains from folding: drop them, shape inference recomputes them with the batch pinned
    info = proto.graph.value_info
    for v in [v for v in info if any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)]:
        info.remove(v)
    return proto
