"""onnxruntime sessions for onnx_ir models, quiet and single-threaded-friendly."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import onnx
import onnx_ir as ir
import onnxruntime as ort

from qpass.errors import OrtError


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


_NODE = re.compile(r"Node \(([^)]*)\)|node\. Name:'([^']*)'|node ([^\s:]+)")


@contextlib.contextmanager
def ort_errors(stage: str) -> Iterator[None]:
    """Turn an exception escaping onnxruntime into a one-line QpassError naming the node when ORT does."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        text = " ".join(str(exc).split())
        m = _NODE.search(text)
        node = next((g for g in m.groups() if g), None) if m else None
        where = f" at node {node!r}" if node else ""
        raise OrtError(f"onnxruntime failed during {stage}{where}: {text[:400]}; qpass does not support this "
                       "model as it is") from exc
