"""Calibration: run onnxruntime over representative data and record every float tensor's range.

Memory stays bounded whatever the data size: samples stream through in batches and only a running
min/max per tensor is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from qpass.ort import session


@dataclass
class Range:
    lo: float
    hi: float

    def union(self, other: Range) -> Range:
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))


def float_values(model: ir.Model) -> list[ir.Value]:
    """Graph inputs and node outputs that are float tensors (the ones that get quantized)."""
    out = [v for v in model.graph.inputs if v.dtype == ir.DataType.FLOAT]
    out += [v for node in model.graph for v in node.outputs if v.dtype == ir.DataType.FLOAT]
    return out


def calibrate(model: ir.Model, batches: Iterable[np.ndarray]) -> dict[str, Range]:
    """Min/max of every float tensor over all samples; the graph's batch is fixed, so samples run one by one."""
    values = float_values(model)
    outputs = {v.name for v in model.graph.outputs}
    extra = [onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None)
             for v in values if v.name not in outputs and not v.is_graph_input()]
    sess = session(model, extra)
    in_name = model.graph.inputs[0].name
    in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)
    names = [o.name for o in sess.get_outputs()]
    ranges: dict[str, Range] = {}
    for batch in batches:
        samples = batch.reshape((-1, *in_shape[1:]))
        for start in range(0, len(samples) - in_shape[0] + 1, in_shape[0]):
            x = samples[start:start + in_shape[0]].astype(np.float32)
            results = dict(zip(names, sess.run(names, {in_name: x}), strict=True))
            results[in_name] = x
            for name, arr in results.items():
                r = Range(float(arr.min()), float(arr.max()))
                ranges[name] = ranges[name].union(r) if name in ranges else r
    return ranges
