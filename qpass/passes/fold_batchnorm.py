"""fold-batchnorm: fold BatchNormalization (and the Mul/Add form tf2onnx leaves) into the linear op before it.

    y = Gemm(x, W, b)                          y = Gemm(x, W', b')
    z = BatchNormalization(y, g, β, μ, σ²)  →   with  s = g / sqrt(σ² + ε),  t = β − μ·s
                                                W' = W·s (per output channel),  b' = b·s + t

The same holds for Conv (output channel = axis 1) and MatMul with a constant weight (output channel =
last axis; a bias Add after the MatMul is scaled too). tf2onnx usually leaves an inference BN as
`Mul(y, s)` then `Add(·, t)`; those fold the same way. A BN with no linear op before it becomes one
per-channel affine, `Add(Mul(x, s), t)`, which later stages treat as an element-wise op.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, new_initializer, single_consumer

_LINEAR = ("Gemm", "MatMul", "Conv")


def _channel_vector(const: np.ndarray, out_rank: int, channel_axis: int, channels: int) -> np.ndarray | None:
    """`const` as a length-`channels` vector if it broadcasts along `channel_axis` only, else None."""
    if const.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - const.ndim) + const.shape
    if const.size == 1:
        return np.full(channels, const.reshape(()), dtype=np.float32)
    if shape[channel_axis] != channels or const.size != channels:
        return None
    return const.reshape(channels).astype(np.float32)


class _Linear:
    """A Gemm/MatMul/Conv with constant weights whose per-output-channel affine can absorb s·y + t."""

    def __init__(self, node: ir.Node, weight: np.ndarray, out_rank: int) -> None:
        self.node, self.weight, self.out_rank = node, weight, out_rank
        if node.op_type == "Conv":
            self.channel_axis, self.channels = 1, weight.shape[0]
        elif node.op_type == "Gemm":
            trans_b = node.attributes.get_int("transB", 0)
            self.channel_axis, self.channels = out_rank - 1, weight.shape[0 if trans_b else 1]
        else:
            self.channel_axis, self.channels = out_rank - 1, weight.shape[-1]

    def scale_weight(self, s: np.ndarray) -> np.ndarray:
        w = self.weight
        if self.node.op_type == "Conv":
            return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        if self.node.op_type == "Gemm" and self.node.attributes.get_int("transB", 0):
            return w * s[:, None]
        return w * s


def _as_linear(value: ir.Value) -> _Linear | None:
    node = value.producer()
    if node is None or node.op_type not in _LINEAR or single_consumer(value) is None:
        return None
    if node.op_type == "Gemm" and (node.attributes.get_float("alpha", 1.0) != 1.0
                                   or node.attributes.get_float("beta", 1.0) != 1.0):
        return None
    weight = const_value(node.inputs[1])
    if weight is None or value.shape is None or (node.op_type == "MatMul" and weight.ndim != 2):
        return None
    return _Linear(node, weight.astype(np.float32), len(value.shape))


@register_pass("fold-batchnorm")
class FoldBatchNormPass(QPass):
    """Fold BatchNormalization and constant per-channel Mul/Add into the preceding Gemm/MatMul/Conv."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
                modified |= self._decompose(graph, node)
        for node in list(graph):
            if node.graph is None or node.op_type not in ("Mul", "Add"):
                continue
            modified |= self._fold_affine(graph, node)
        return ir.passes.PassResult(model, modified)

    def _decompose(self, graph: ir.Graph, node: ir.Node) -> bool:
        """BatchNormalization (inference) → Mul(x, s) then Add(·, t), broadcast on axis 1."""
        gamma, beta, mean, var = (const_value(v) for v in node.inputs[1:5])
        x = node.inputs[0]
        if any(a is None for a in (gamma, beta, mean, var)) or x is None or x.shape is None:
            return False
        if node.attributes.get_int("training_mode", 0) or len(node.outputs) > 1 and any(
                o.consumers() for o in node.outputs[1:]):
            return False
        eps = node.attributes.get_float("epsilon", 1e-5)
        s = (gamma / np.sqrt(var + eps)).astype(np.float32)
        t = (beta - mean * s).astype(np.float32)
        bshape = (-1,) + (1,) * (len(x.shape) - 2)
        base = (node.name or "bn").replace("/", "_")
        s_v = new_initializer(graph, base + "_scale", s.reshape(bshape))
        t_v = new_initializer(graph, base + "_shift", t.reshape(bshape))
        mul = self.mark(ir.node("Mul", [x, s_v], name=base + "_mul"))
        add = self.mark(ir.node("Add", [mul.outputs[0], t_v], name=base + "_add"))
        mul.outputs[0].shape, mul.outputs[0].type = x.shape, x.type
        add.outputs[0].shape, add.outputs[0].type = x.shape, x.type
        graph.insert_before(node, [mul, add])
        bypass(node, add.outputs[0])
        return True

    def _fold_affine(self, graph: ir.Graph, node: ir.Node) -> bool:
        """Mul(y, s) or Add(y, t), with y = the output of a linear op or of its bias Add."""
        y, c = node.inputs[0], const_value(node.inputs[1])
        if c is None or y is None:
            y, c = node.inputs[1], const_value(node.inputs[0])
        if c is None or y is None:
            return False
        bias_add = None
        lin = _as_linear(y)
        if lin is None and y.producer() is not None and y.producer().op_type == "Add" and single_consumer(y):
            bias_add = y.producer()
            bias = const_value(bias_add.inputs[1])
            lin = _as_linear(bias_add.inputs[0]) if bias is not None else None
            if lin is None or lin.node.op_type != "MatMul":
                return False
        if lin is None or (node.op_type == "Add" and lin.node.op_type == "MatMul" and bias_add is None):
            return False  # MatMul then Add(bias) is already the canonical linear form
        vec = _channel_vector(c, lin.out_rank, lin.channel_axis, lin.channels)
        if vec is None:
            return False
        bias = self._bias(lin, bias_add)
        if node.op_type == "Mul":
            lin.node.replace_input_with(1, new_initializer(graph, _hint(lin.node, "w"), lin.scale_weight(vec)))
            bias = None if bias is None else bias * vec
        else:
            bias = vec if bias is None else bias + vec
        self._set_bias(graph, lin, bias_add, bias)
        bypass(node, y)
        return True

    @staticmethod
    def _bias(lin: _Linear, bias_add: ir.Node | None) -> np.ndarray | None:
        if bias_add is not None:
            b = const_value(bias_add.inputs[1])
            return np.broadcast_to(b.astype(np.float32).reshape(-1), (lin.channels,)).copy()
        if lin.node.op_type in ("Gemm", "Conv") and len(lin.node.inputs) > 2 and lin.node.inputs[2] is not None:
            b = const_value(lin.node.inputs[2])
            return None if b is None else np.broadcast_to(b.astype(np.float32).reshape(-1), (lin.channels,)).copy()
        return None

    def _set_bias(self, graph: ir.Graph, lin: _Linear, bias_add: ir.Node | None, bias: np.ndarray | None) -> None:
        if bias is None:
            return
        value = new_initializer(graph, _hint(lin.node, "b"), bias.astype(np.float32))
        if bias_add is not None:
            bias_add.replace_input_with(1, value)
        else:
            if len(lin.node.inputs) < 3:
                lin.node.resize_inputs(3)
            lin.node.replace_input_with(2, value)


def _hint(node: ir.Node, what: str) -> str:
    return f"{(node.name or node.op_type).replace('/', '_')}_{what}"
