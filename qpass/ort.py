"""onnxruntime sessions for onnx_ir models, quiet and single-threaded-friendly.

An exception escaping onnxruntime (a graph it cannot load or run) becomes a one-line OrtError that names
the node when onnxruntime's message does, or else the node(s) of the op type the message is about.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import onnx
import onnx_ir as ir
import onnxruntime as ort

from qpass.errors import OrtError

ort.set_default_logger_severity(4)  # errors come back as exceptions; ORT's own log would be a second line

_NODE = re.compile(r"Node \(([^)]*)\)|node\. Name:'([^']*)'|[Nn]ode name: ?'?([^'\s,]+)")
_NOISE = re.compile(r"/onnxruntime_src/\S+|onnxruntime::\S+\([^)]*\)|\[ONNXRuntimeError\] : \d+ : ")


def session(model: ir.Model | onnx.ModelProto, extra_outputs: list[onnx.ValueInfoProto] | None = None,
            optimize: bool = True) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        proto.graph.output.extend(extra_outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with ort_errors("loading the graph", proto):
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _node_named(text: str, proto: onnx.ModelProto | None) -> str:
    m = _NODE.search(text)
    if m:
        return f" at node {next(g for g in m.groups() if g)!r}"
    if proto is None:
        return ""
    words = {w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", text)}
    hits = [n for n in proto.graph.node if len(n.op_type) >= 3 and n.op_type.lower() in words]
    if not hits:
        return ""
    names = ", ".join(repr(n.name) for n in hits[:3]) + (" ..." if len(hits) > 3 else "")
    return f" at node {names} ({hits[0].op_type})"


@contextlib.contextmanager
def ort_errors(stage: str, proto: onnx.ModelProto | None = None) -> Iterator[None]:
    """Turn an exception escaping onnxruntime into a one-line OrtError naming the node when it can."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        text = " ".join(_NOISE.sub("", str(exc)).split())
        raise OrtError(f"onnxruntime failed {stage}{_node_named(str(exc), proto)}: {text[:300]}") from None
