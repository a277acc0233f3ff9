"""TensorFlow Lite flatbuffers (.tflite) → ONNX through tf2onnx's TFLite route (`tf2onnx.convert.from_tflite`).

qpass takes float models: float .tflite files, and "dynamic range" ones whose weights are stored as int8. The
latter convert to

    w_q: int8 initializer → DequantizeLinear(w_q, scale) → MatMul / Conv           (weights: kept here; the
    x → DynamicQuantizeLinear → DequantizeLinear → MatMul                            fold-constants pass folds
                                                                                     the weight dequantize)

where the DynamicQuantizeLinear/DequantizeLinear pair re-creates TFLite's hybrid kernels, which quantize the
activations at run time. This converter removes that pair (x → MatMul): qpass quantizes activations itself,
from calibration. A fully integer .tflite (int8/uint8 input or output) is refused: qpass needs the float model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from qpass.converters.keras import CONVERTER_KEY, quiet_tensorflow
from qpass.errors import ConvertError

log = logging.getLogger(__name__)


def convert_tflite(path: Path, *, opset: int) -> onnx.ModelProto:
    quiet_tensorflow()
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
    except Exception as exc:  # noqa: BLE001 - tf2onnx and the flatbuffer reader raise many kinds
        raise ConvertError(f"{path}: tf2onnx could not convert this .tflite file: {type(exc).__name__}: "
                           f"{exc}") from None
    float_types = (onnx.TensorProto.FLOAT,)
    for value in [*proto.graph.input, *proto.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem not in float_types:
            raise ConvertError(f"{path}: {value.name!r} is {onnx.TensorProto.DataType.Name(elem)}: a fully "
                               "integer-quantized .tflite; qpass needs the float model (float, or dynamic range "
                               "with int8 weights) and quantizes it itself")
    bad = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    if bad:
        raise ConvertError(f"{path}: tf2onnx could not convert TFLite op {bad[0].op_type!r} (node {bad[0].name!r}); "
                           "qpass needs standard ONNX ops")
    removed = _drop_dynamic_quantization(proto)
    if removed:
        log.info("%s: removed %d run-time activation quantization(s) of TFLite hybrid kernels "
                 "(DynamicQuantizeLinear → DequantizeLinear); qpass quantizes activations from calibration",
                 path, removed)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        CONVERTER_KEY: f"tf2onnx {tf2onnx.__version__} from TFLite"})
    return proto


def _drop_dynamic_quantization(proto: onnx.ModelProto) -> int:
    """x → DynamicQuantizeLinear → DequantizeLinear(q, scale, zp) → y  becomes  x → y. Returns the count."""
    graph = proto.graph
    producers = {out: n for n in graph.node for out in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    drop: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        dyn = producers.get(node.input[0])
        if (dyn is None or dyn.op_type != "DynamicQuantizeLinear" or list(dyn.output) != list(node.input[:3])
                or node.output[0] in outputs):
            continue
        users = [n for n in graph.node if n is not node and any(i in dyn.output for i in n.input)]
        if users or any(o in outputs for o in dyn.output):
            continue
        rename[node.output[0]] = dyn.input[0]
        drop += [dyn, node]
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    return len(drop) // 2
