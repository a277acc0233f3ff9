"""onnxruntime sessions for onnx_ir models, quiet and single-threaded-friendly."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxruntime as ort


def session(model: ir.Model | onnx.ModelProto, extra_outputs: list[onnx.ValueInfoProto] | None = None,
            optimize: bool = True) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        proto.graph.output.extend(extra_outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
