"""fold-time-distributed: T copies of one Dense, one per time step, become one Gemm over all steps.

tf2onnx writes Keras TimeDistributed(Dense) on a sequence as T copies of the same layer:

    x_t = Reshape(Slice(X: [T,1,F], [t], [t+1], axis=0), [1,F])       for t = 0..T−1
    y_t = Reshape(Act(Gemm(x_t, W, b)), [1,1,N])
    Y   = Concat(y_0, ..., y_{T−1}, axis=0)
                                  →   Y = Reshape(Act(Gemm(Reshape(X, [T,F]), W, b)), Y.shape)

A MatMul without bias works the same way. The copies must share W and b (the same constants),
apply the same element-wise activation (or none), read consecutive single steps of X in Concat
order, and every dimension in front of the time axis must be 1 in X and in Y so that each step is
one contiguous block. Code size then no longer grows with T.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer

LAYOUT = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
ACTIVATIONS = {"Relu", "Sigmoid", "Tanh"}


def _skip_layout_back(value: ir.Value) -> ir.Value:
    node = value.producer()
    while node is not None and node.op_type in LAYOUT:
        value = node.inputs[0]
        node = value.producer()
    return value


def _one_step(piece: ir.Value) -> tuple[ir.Value, int, ir.Node, ir.Node | None] | None:
    """For a Concat input: (X, t, Gemm, activation) when it is Layout(Act(Gemm(Layout(Slice(X, t)))))."""
    v = _skip_layout_back(piece)
    act = v.producer()
    if act is not None and act.op_type in ACTIVATIONS:
        v = act.inputs[0]
    else:
        act = None
    gemm = v.producer()
    if gemm is None or gemm.op_type not in ("Gemm", "MatMul") or len(gemm.inputs) < 2:
        return None
    if gemm.op_type == "MatMul" and (const_value(gemm.inputs[1]) is None or const_value(gemm.inputs[1]).ndim != 2):
        return None
    if gemm.attributes.get_int("transA", 0) or gemm.attributes.get_float("alpha", 1.0) != 1.0 or \
            gemm.attributes.get_float("beta", 1.0) != 1.0:
        return None
    sl = _skip_layout_back(gemm.inputs[0]).producer()
    if sl is None or sl.op_type != "Slice" or len(sl.inputs) < 4:
        return None
    starts, ends, axes = (const_value(sl.inputs[i]) for i in (1, 2, 3))
    steps = const_value(sl.inputs[4]) if len(sl.inputs) > 4 and sl.inputs[4] is not None else np.ones(1)
    if any(a is None or a.size != 1 for a in (starts, ends, axes, steps)) or int(steps.reshape(())) != 1:
        return None
    x = sl.inputs[0]
    if x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return None
    axis = int(axes.reshape(())) % len(x.shape)
    t = int(starts.reshape(())) % x.shape[axis]
    if int(ends.reshape(())) != t + 1 or any(d != 1 for d in x.shape[:axis]):
        return None
    return x, t, gemm, act


def _same_const(a: ir.Value | None, b: ir.Value | None) -> bool:
    if a is b:
        return True
    ca, cb = const_value(a), const_value(b)
    return ca is not None and cb is not None and ca.shape == cb.shape and np.array_equal(ca, cb)


@register_pass("fold-time-distributed")
class FoldTimeDistributedPass(QPass):
    """Fold the per-step copies of a TimeDistributed(Dense) back into one Gemm over all time steps."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type == "Concat" and node.graph is not None and len(node.inputs) > 1:
                modified |= self._fold(graph, node)
        return ir.passes.PassResult(model, modified)

    def _fold(self, graph: ir.Graph, concat: ir.Node) -> bool:
        out = concat.outputs[0]
        steps = [_one_step(v) for v in concat.inputs if v is not None]
        if out.shape is None or any(s is None for s in steps) or len(steps) != len(concat.inputs):
            return False
        x, _, gemm0, act0 = steps[0]
        for i, (xi, t, gemm, act) in enumerate(steps):
            if xi is not x or t != i or gemm.op_type != gemm0.op_type or (act is None) != (act0 is None) or \
                    (act is not None and act.op_type != act0.op_type):
                return False
            if not _same_const(gemm.inputs[1], gemm0.inputs[1]) or not (
                    len(gemm.inputs) == len(gemm0.inputs) and (len(gemm.inputs) < 3 or _same_const(
                        gemm.inputs[2], gemm0.inputs[2]))) or \
                    gemm.attributes.get_int("transB", 0) != gemm0.attributes.get_int("transB", 0):
                return False
        axis = concat.attributes.get_int("axis", 0) % len(out.shape)
        t_len = len(steps)
        k = int(gemm0.inputs[0].shape[-1]) if gemm0.inputs[0].shape is not None else -1
        n = int(gemm0.outputs[0].shape[-1]) if gemm0.outputs[0].shape is not None else -1
        if any(d != 1 for d in out.shape[:axis]) or x.shape is None or int(np.prod(x.shape)) != t_len * k or \
                int(np.prod(out.shape)) != t_len * n:
            return False
        name = (concat.name or "time_distributed").replace("/", "_")
        rows = new_initializer(graph, f"{name}_rows", np.array([t_len, k], dtype=np.int64))
        shape = new_initializer(graph, f"{name}_shape", np.array(list(out.shape), dtype=np.int64))
        r1 = self.mark(ir.node("Reshape", [x, rows], name=f"{name}_steps"))
        r1.outputs[0].shape, r1.outputs[0].type = ir.Shape([t_len, k]), x.type
        attrs = {"transB": gemm0.attributes.get_int("transB", 0)} if gemm0.op_type == "Gemm" else None
        g = self.mark(ir.node(gemm0.op_type, [r1.outputs[0], *gemm0.inputs[1:]], attributes=attrs,
                              name=f"{name}_{gemm0.op_type.lower()}"))
        g.outputs[0].shape, g.outputs[0].type = ir.Shape([t_len, n]), out.type
        ops = [r1, g]
        last = g.outputs[0]
        if act0 is not None:
            a = self.mark(ir.node(act0.op_type, [last], name=f"{name}_{act0.op_type.lower()}"))
            a.outputs[0].shape, a.outputs[0].type = last.shape, out.type
            ops.append(a)
            last = a.outputs[0]
        r2 = self.mark(ir.node("Reshape", [last, shape], name=f"{name}_unsteps"))
        r2.outputs[0].shape, r2.outputs[0].type = out.shape, out.type
        ops.append(r2)
        graph.insert_before(concat, ops)
        was_output = out.is_graph_output()
        ir.convenience.replace_all_uses_with(out, r2.outputs[0], replace_graph_outputs=True)
        if was_output:
            r2.outputs[0].name, out.name = out.name, None
        graph.remove(concat, safe=True)
        return True
