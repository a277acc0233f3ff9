"""fold-batchnorm: fold BatchNormalization (and the Mul/Add form tf2onnx leaves) into the linear op before it.

    y = Gemm(x, W, b)                          y = Gemm(x, W', b')
    z = BatchNormalization(y, g, β, μ, σ²)  →   with  s = g / sqrt(σ² + ε),  t = β − μ·s
                                                W' = W·s (per output channel),  b' = b·s + t

The same holds for Conv (output channel = axis 1) and MatMul with a constant weight (output channel =
last axis; a bias Add after the MatMul is scaled too). tf2onnx usually leaves an inference BN as
`Mul(y, s)` then `Add(·, t)`; those fold the same way. A BN with no linear op before it becomes one
per-channel affine, `Add(Mul(x, s), t)`, which later stages treat as an element-wise op. A Reshape that
only appends or drops trailing unit axes may sit between the linear op and the Mul/Add (a Conv2D with a
(k, 1) kernel made 1-D): the constant is re-expressed over the linear op's output and folds the same way.

The fold is refused when the linear op's bias is not a per-channel constant (a graph input, a per-row
[M,1] or full [M,N] Gemm bias): b·s + t has no per-channel form then. The arithmetic runs in float32 and
the new weights and biases take the original weight's dtype, so a float16 model stays float16.
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
        self.node, self.out_rank = node, out_rank
        self.dtype = weight.dtype  # what the new weight and bias are stored as
        self.weight = weight.astype(np.float32)
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
            scaled = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        elif self.node.op_type == "Gemm" and self.node.attributes.get_int("transB", 0):
            scaled = w * s[:, None]
        else:
            scaled = w * s
        return scaled.astype(self.dtype)

    def bias_input(self) -> ir.Value | None:
        """Gemm's C or Conv's B, when present."""
        if self.node.op_type in ("Gemm", "Conv") and len(self.node.inputs) > 2:
            return self.node.inputs[2]
        return None


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
    if not np.issubdtype(weight.dtype, np.floating):
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_value(node.inputs[2]) is None:
        return None  # a bias computed at run time cannot absorb s and t
    return _Linear(node, weight, len(value.shape))


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
        eps = np.float32(node.attributes.get_float("epsilon", 1e-5))
        gamma, beta, mean, var = (a.astype(np.float32) for a in (gamma, beta, mean, var))
        s = gamma / np.sqrt(var + eps)
        t = beta - mean * s
        dtype = x.dtype.numpy() if x.dtype is not None else np.float32
        s, t = s.astype(dtype), t.astype(dtype)
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
        if lin is None and (through := _unit_axes_reshape(y, c)) is not None:
            y_lin, c = through  # Reshape(conv) * c == Reshape(conv * c'): the Reshape stays, c' folds
            lin = _as_linear(y_lin)
            if lin is None:
                return False
        elif lin is None and y.producer() is not None and y.producer().op_type == "Add" and single_consumer(y):
            bias_add = y.producer()
            has_const = const_value(bias_add.inputs[1]) is not None
            lin = _as_linear(bias_add.inputs[0]) if has_const else None
            if lin is None or lin.node.op_type != "MatMul":
                return False
        if lin is None or (node.op_type == "Add" and lin.node.op_type == "MatMul" and bias_add is None):
            return False  # MatMul then Add(bias) is already the canonical linear form
        vec = _channel_vector(c, lin.out_rank, lin.channel_axis, lin.channels)
        if vec is None:
            return False
        per_channel, bias = self._bias(lin, bias_add)
        if not per_channel:
            return False  # checked before any edit: a refused fold leaves the graph as it was
        if node.op_type == "Mul":
            lin.node.replace_input_with(1, new_initializer(graph, _hint(lin.node, "w"), lin.scale_weight(vec)))
            bias = None if bias is None else bias * vec
        else:
            bias = vec if bias is None else bias + vec
        self._set_bias(graph, lin, bias_add, bias)
        bypass(node, y)
        return True

    @staticmethod
    def _bias(lin: _Linear, bias_add: ir.Node | None) -> tuple[bool, np.ndarray | None]:
        """(per_channel, b): the existing bias as a float32 channel vector, None when there is none.

        per_channel is False when a bias exists but varies along another axis than the channel one
        (a per-row [M,1] or full [M,N] Gemm bias, a [1,1,N] bias Add on a 2-D MatMul).
        """
        if bias_add is not None:
            b = const_value(bias_add.inputs[1])  # matched only with a constant bias
        else:
            b_in = lin.bias_input()
            if b_in is None:
                return True, None
            b = const_value(b_in)  # _as_linear refuses a bias computed at run time
            if lin.node.op_type == "Conv":  # B is [M] by definition: it broadcasts as [M,1,...,1]
                b = b.reshape((-1,) + (1,) * (lin.out_rank - 2))
        vec = _channel_vector(b, lin.out_rank, lin.channel_axis, lin.channels)
        return vec is not None, vec

    def _set_bias(self, graph: ir.Graph, lin: _Linear, bias_add: ir.Node | None, bias: np.ndarray | None) -> None:
        if bias is None:
            return
        value = new_initializer(graph, _hint(lin.node, "b"), bias.astype(lin.dtype))
        if bias_add is not None:
            bias_add.replace_input_with(1, value)
        else:
            if len(lin.node.inputs) < 3:
                lin.node.resize_inputs(3)
            lin.node.replace_input_with(2, value)


def _unit_axes_reshape(y: ir.Value, c: np.ndarray) -> tuple[ir.Value, np.ndarray] | None:
    """y = Reshape/Squeeze/Unsqueeze(x) that only appends or drops trailing unit axes (how tf2onnx wraps a
    1-D conv written as Conv2D over [T, 1, C]): x, and c re-expressed over x's rank; else None."""
    node = y.producer()
    if node is None or node.op_type not in ("Reshape", "Squeeze", "Unsqueeze") or single_consumer(y) is None:
        return None
    x = node.inputs[0]
    if x is None or x.shape is None or y.shape is None:
        return None
    xs, ys = list(x.shape), list(y.shape)
    if not all(isinstance(d, int) for d in xs + ys) or c.ndim > len(ys):
        return None
    rx, ry = len(xs), len(ys)
    full = [1] * (ry - c.ndim) + list(c.shape)
    if rx <= ry and ys[:rx] == xs and all(d == 1 for d in ys[rx:] + full[rx:]):
        return x, c.reshape(full[:rx])
    if rx > ry and xs[:ry] == ys and all(d == 1 for d in xs[ry:]):
        return x, c.reshape(full + [1] * (rx - ry))
    return None


def _hint(node: ir.Node, what: str) -> str:
    return f"{(node.name or node.op_type).replace('/', '_')}_{what}"
