"""Lowering: a QDQ ONNX graph → an integer `Program` (the short list of kernels runtime_ref and C run).

Every compute node must read DequantizeLinear outputs and feed one QuantizeLinear; the integers and
scales around it give the kernel's integer constants, computed with runtime_ref.intmath. Because the
input is standard QDQ, models quantized elsewhere lower too, as long as their ops have an emitter.
Emitters are registered by ONNX op type together with their support rule (`emitter(*ops, check=...)`):
codegen/support.py runs the same rules on the float graph right after the passes, and `qpass ops` and the
README table are generated from the same records. Recurrent ops: RECURRENT below and lower_lstm.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpass.codegen.layout_2d import fold_layout_transposes
from qpass.codegen.lower_gru import gru_key, lower_gru  # noqa: E402  (after Lowering's deps)
from qpass.codegen.lower_lstm import group_key, lower_lstm  # noqa: E402
from qpass.codegen.lower_rnn import lower_rnn, rnn_key
from qpass.errors import SolverError, UnsupportedOpError
from qpass.passes._util import const_value
from qpass.runtime_ref.intmath import (
    QMAX,
    QMIN,
    build_lut,
    build_lut16,
    quantize,
    quantize_multiplier,
    shared_shift_multipliers,
    softmax_exp_table,
)
from qpass.runtime_ref.program import Program, QTensor, Step

Emitter = Callable[["Lowering", ir.Node], None]
SOFTMAX_OUT = {"int8": (256, -128), "int16": (32768, 0)}  # 1/scale and zero point of a softmax output
log = logging.getLogger(__name__)
EMITTERS: dict[str, Emitter] = {}


Check = Callable[[ir.Node], "str | None"]  # a node → why it cannot be lowered, or None


@dataclass(frozen=True)
class Support:
    """What one emitter lowers: the ONNX ops, the layers users write them with, and its limits.

    `check` reads the float node (before calibration) and the QDQ node alike and returns the reason a
    node cannot be lowered; the early support check and the lowering both call it, and `qpass ops` and the
    README table are generated from these records."""

    ops: tuple[str, ...]
    keras: str
    torch: str
    constraints: str
    precisions: str = "int8, int16"
    check: Check | None = None


SUPPORT: list[Support] = []
CHECKS: dict[str, Check] = {}


def emitter(*ops: str, keras: str = "", torch: str = "", constraints: str = "", precisions: str = "int8, int16",
            check: Check | None = None) -> Callable[[Emitter], Emitter]:
    """Register an emitter for ONNX `ops` together with its support record (the rule lives with the kernel)."""
    def wrap(fn: Emitter) -> Emitter:
        SUPPORT.append(Support(tuple(ops), keras, torch, constraints, precisions, check))
        for op in ops:
            EMITTERS[op] = fn
            if check is not None:
                CHECKS[op] = check
        return fn

    return wrap


def unsupported_reason(node: ir.Node) -> str | None:
    """Why the lowering would refuse this (untagged) node, or None: the one rule both stages apply."""
    if node.domain not in ("", "ai.onnx"):
        return f"custom-domain op {node.domain!r}: no integer kernel"
    if node.op_type in RECURRENT:
        batch_first = node.op_type != "Loop" and node.attributes.get_int("layout", 0) == 1
        return RECURRENT[node.op_type] + ("; its layout=1 (batch first) cannot run in onnxruntime, which qpass "
                                          "calibrates with: export it with layout 0" if batch_first else "")
    if node.op_type in PASS_HINTS:
        return PASS_HINTS[node.op_type]
    if node.op_type not in EMITTERS:
        return "no integer kernel for this op (`qpass ops` lists the supported ones)"
    check = CHECKS.get(node.op_type)
    return check(node) if check is not None else None


PASS_HINTS: dict[str, str] = {  # ops a float pass removes, and which one
    "Pad": "a zero Pad before a Conv (Keras causal padding) folds into it with the fold-pad pass; other Pads "
           "have no kernel",
    "Pow": "no integer kernel for this op; the x³ of a tanh-form GELU (Keras gelu(approximate=True)) goes into "
           "one Gelu table with the fuse-gelu pass",
    "BatchNormalization": "folds into the Conv/Gemm before it (or becomes Mul/Add) with the fold-batchnorm pass",
}


# Recurrent ONNX ops are lowered only after a pass has unrolled and tagged them (codegen/lower_lstm.py
# re-rolls the tagged steps into one loop kernel). An op here left in the graph names the pass to add.
RECURRENT: dict[str, str] = {
    "LSTM": "an ONNX LSTM is lowered after the unroll-lstm pass; add `unroll-lstm` to passes",
    "Loop": "tf2onnx writes a Keras LSTM/GRU/SimpleRNN as a Loop: the keras-lstm/-gru/-rnn and unroll-lstm/-gru/"
            "-rnn passes turn it into kernels; "
            "other loops have no kernel",
    "GRU": "an ONNX GRU is lowered after the unroll-gru pass; add `unroll-gru` to passes",
    "RNN": "an ONNX RNN is lowered after the unroll-rnn pass; add `unroll-rnn` to passes",
}
RECURRENT_LOWERINGS = {"GRU": lower_gru, "RNN": lower_rnn}  # by the first item of a 3-item group key
SUPPORT.append(Support(
    ("RNN",), keras="SimpleRNN (tanh, relu; return_sequences, go_backwards), Bidirectional(SimpleRNN)",
    torch="nn.RNN (tanh, relu; num_layers, bidirectional): classic export, and the dynamo export after roll-rnn",
    constraints="after the keras-rnn (or roll-rnn) and unroll-rnn passes: batch 1, Tanh or Relu, no clip or initial "
    "state; "
    "bidirectional as two kernels; the activation a table; one loop over T in C",
    precisions="int8, int16; weights int8, int16"))
SUPPORT.append(Support(
    ("GRU",), keras="GRU (reset_after=True or False; return_sequences, go_backwards), Bidirectional(GRU)",
    torch="nn.GRU (num_layers, bidirectional, batch_first; out[:, -1] or h_n; classic and dynamo exports)",
    constraints="after the keras-gru and unroll-gru passes: batch 1, default activations, no clip or "
    "initial state; ONNX GRU with either linear_before_reset; bidirectional as two kernels; one loop over T in C",
    precisions="int8, int16; weights int8, int16"))
SUPPORT.append(Support(
    ("LSTM",), keras="LSTM (return_sequences, go_backwards), Bidirectional(LSTM, merge_mode='concat')",
    torch="nn.LSTM (num_layers, bidirectional, batch_first; out[:, -1] or h_n; classic and dynamo exports)",
    constraints="after the keras-lstm and unroll-lstm passes: "
    "batch 1, default activations, no peepholes, clip or initial state; one loop over T in C",
    precisions="int8, int16 (cell state int16); weights int8, int16"))


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """A constant input's values: an initializer in the float graph, the integers behind a DequantizeLinear
    in the QDQ graph."""
    if value is None:
        return None
    data = const_value(value)
    dq = value.producer()
    if data is None and dq is not None and dq.op_type == "DequantizeLinear":
        data = const_value(dq.inputs[0])
    return data


def _shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


class Lowering:
    def __init__(self, model: ir.Model, name: str) -> None:
        self.model = model
        self.name = name
        self.tensors: dict[str, QTensor] = {}
        self.steps: list[Step] = []
        self.by_value: dict[int, QTensor] = {}  # id(ir.Value of a quantized tensor) → QTensor

    # -- tensors --------------------------------------------------------------------------
    def new_tensor(self, shape, dtype: str, scale: float, zp: int, source: str, alias_of: str | None = None
                   ) -> QTensor:
        t = QTensor(f"t{len(self.tensors)}", tuple(int(d) for d in shape), dtype, float(scale), int(zp),
                    source, alias_of)
        self.tensors[t.id] = t
        return t

    def qparams(self, node: ir.Node) -> tuple[float, int, str]:
        scale = const_value(node.inputs[1])
        zp = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None or scale.size != 1:
            raise UnsupportedOpError(node.name or "", node.op_type, "activation scale must be one constant")
        dtype = str(zp.dtype) if zp is not None else "uint8"
        if dtype not in ("int8", "int16"):
            raise UnsupportedOpError(node.name or "", node.op_type, f"{dtype} activations are not supported yet")
        return float(scale.reshape(())), int(zp.reshape(())), dtype

    def input_of(self, node: ir.Node, i: int) -> QTensor:
        """The integer tensor behind a node's i-th input, which must come from a DequantizeLinear."""
        value = node.inputs[i]
        dq = value.producer() if value is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} is not quantized (no DequantizeLinear)")
        src = dq.inputs[0]
        if id(src) not in self.by_value:
            if src.const_value is None:
                raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} was never quantized")
            scale, zp, dtype = self.qparams(dq)
            t = self.new_tensor(src.shape, dtype, scale, zp, src.name or "")
            t_data = src.const_value.numpy()
            self.constants[t.id] = t_data
            self.by_value[id(src)] = t
        return self.by_value[id(src)]

    def output_of(self, node: ir.Node, alias_of: QTensor | None = None) -> QTensor:
        """The integer tensor a node's output is quantized into by its QuantizeLinear."""
        value = node.outputs[0]
        users = value.consumers()
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            raise UnsupportedOpError(node.name or "", node.op_type, "output must feed exactly one QuantizeLinear")
        q = users[0]
        scale, zp, dtype = self.qparams(q)
        root = None
        if alias_of is not None and (alias_of.scale, alias_of.zero_point, alias_of.dtype) == (scale, zp, dtype):
            root = alias_of.id  # a view of a view: offsets add up through program.view
        t = self.new_tensor(value.shape, dtype, scale, zp, value.name or "", root)
        self.by_value[id(q.outputs[0])] = t
        return t

    def weight(self, node: ir.Node, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer constant and its (per-channel) scale behind the node's i-th input."""
        dq = node.inputs[i].producer() if node.inputs[i] is not None else None
        q = const_value(dq.inputs[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None:
            raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} must be a quantized constant")
        zp = const_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
        if zp is not None and np.any(zp != 0):
            raise UnsupportedOpError(node.name or "", node.op_type, "weights must be symmetric (zero point 0)")
        return q, const_value(dq.inputs[1]).astype(np.float64).reshape(-1)

    def step(self, kernel: str, inputs: list[QTensor], output: QTensor, node: ir.Node, **params) -> Step:
        s = Step(kernel, [t.id for t in inputs], [output.id], params, node.name or node.op_type)
        self.steps.append(s)
        return s

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> Program:
        self.constants: dict[str, np.ndarray] = {}
        graph = self.model.graph
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise UnsupportedOpError(graph.name or "graph", "Graph", "exactly one input and one output supported")
        x = graph.inputs[0]
        qs = [u for u in x.consumers() if u.op_type == "QuantizeLinear"]
        if len(qs) != 1:
            raise UnsupportedOpError(x.name or "", "Input", "the graph input must be quantized once")
        scale, zp, dtype = self.qparams(qs[0])
        t_in = self.new_tensor(x.shape, dtype, scale, zp, x.name or "")
        self.by_value[id(qs[0].outputs[0])] = t_in
        groups: dict[tuple[str, ...], list[ir.Node]] = {}
        for node in graph:
            key = group_key(node) or gru_key(node) or rnn_key(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        done: set[tuple[str, ...]] = set()
        for node in graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type == "Constant":
                continue
            key = group_key(node) or gru_key(node) or rnn_key(node)
            if key is not None:
                if key not in done:
                    done.add(key)
                    (RECURRENT_LOWERINGS[key[0]] if len(key) == 3 else lower_lstm)(self, groups[key])
                continue
            reason = unsupported_reason(node)
            if reason is not None:
                raise UnsupportedOpError(node.name or "", node.op_type, reason)
            EMITTERS[node.op_type](self, node)
        out = graph.outputs[0].producer()
        if out is None or out.op_type != "DequantizeLinear" or id(out.inputs[0]) not in self.by_value:
            raise UnsupportedOpError(graph.outputs[0].name or "", "Output", "the graph output must be dequantized")
        y = self.by_value[id(out.inputs[0])]
        program = Program(self.name, self.tensors, self.steps, t_in.id, y.id)
        program.constants = self.constants
        root, offset = program.view(y.id)
        if offset or self.tensors[root].size != y.size or root in (program.root(t_in.id), *self.constants):
            # a view into a larger tensor (one step of an LSTM's h sequence), or the input or a constant itself
            # (an identity graph: Dropout-only, Reshape-only): the caller's output buffer gets its own copy
            own = self.new_tensor(y.shape, y.dtype, y.scale, y.zero_point, f"{y.source} (graph output)")
            self.step("copy", [y], own, out).origin = "graph output"
            program.output = own.id
        _fuse_clamps(program)
        _fuse_input_transposes(program)
        fold_layout_transposes(program)
        return program


def lower(model: ir.Model, name: str) -> Program:
    return Lowering(model, name).run()


def _fuse_clamps(program: Program) -> None:
    """A clamp right after a linear/add whose output nothing else reads moves into that kernel's bounds."""
    readers: dict[str, int] = {}
    for s in program.steps:
        for i in s.inputs:
            readers[program.root(i)] = readers.get(program.root(i), 0) + 1
    kept: list[Step] = []
    for s in program.steps:
        prev = kept[-1] if kept else None
        if (s.kernel == "clamp" and prev is not None and prev.kernel in ("linear", "conv1d", "conv2d", "add")
                and prev.outputs[0] == s.inputs[0] and readers.get(program.root(s.inputs[0]), 0) == 1
                and program.output != s.inputs[0]):
            prev.params["lo"] = max(prev.params["lo"], s.params["lo"])
            prev.params["hi"] = min(prev.params["hi"], s.params["hi"])
            program.tensors[s.outputs[0]].alias_of = prev.outputs[0]
            continue
        kept.append(s)
    program.steps[:] = kept


def _fuse_input_transposes(program: Program) -> None:
    """transpose [1, L, C] -> [1, C, L] read only by a conv1d: the conv reads channels-last instead.

    before: x[1,L,C] -> transpose(perm 0,2,1) -> t[1,C,L] -> conv1d -> y
    after:  x[1,L,C] -> conv1d(channels_last=1) -> y            (same integers, one copy fewer)
    """
    readers: dict[str, list[Step]] = {}
    for s in program.steps:
        for i in s.inputs:
            readers.setdefault(program.root(i), []).append(s)
    drop: set[int] = set()
    for s in program.steps:
        t = s.outputs[0]
        users = readers.get(program.root(t), [])
        if (s.kernel != "transpose" or s.params["perm"] != [0, 2, 1] or len(users) != 1
                or users[0].kernel != "conv1d" or users[0].inputs[0] != t or t == program.output
                or program.tensors[t].alias_of is not None
                or any(program.tensors[v].alias_of == t for v in program.tensors)):
            continue
        users[0].inputs[0] = s.inputs[0]
        users[0].params["channels_last"] = 1
        drop.add(id(s))
        del program.tensors[t]
    program.steps[:] = [s for s in program.steps if id(s) not in drop]


# -- emitters ---------------------------------------------------------------------------------
def _check_linear(node: ir.Node) -> str | None:
    w = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "the second operand must be a constant weight (a product of two activations has no kernel)"
    if w.ndim < 2:
        return f"a {w.ndim}-D constant operand is not supported (2-D weight expected)"
    if w.ndim > 2 and any(d != 1 for d in w.shape[:-2]):
        return f"a batched constant operand of shape {tuple(w.shape)} (one matrix per batch) is not supported"
    if node.op_type == "Gemm":
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        if alpha != 1.0 or beta != 1.0:
            return f"alpha={alpha:g}, beta={beta:g}: only alpha = beta = 1 is supported"
    return None


@emitter("Gemm", "MatMul", keras="Dense, TimeDistributed(Dense)", torch="nn.Linear",
         constraints="constant 2-D weight (leading 1s allowed), optional bias; Gemm alpha = beta = 1, transA, "
         "transB", precisions="int8, int16; weights int8, int16", check=_check_linear)
def _linear(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    w, w_scale = lw.weight(node, 1)
    w = w.reshape(w.shape[-2:])
    w_nk = w.T
    if node.op_type == "Gemm":
        w_nk = w if node.attributes.get_int("transB", 0) else w.T
        if node.attributes.get_int("transA", 0):  # A is [K, M]: transpose it into a fresh [M, K] buffer
            xt = lw.new_tensor(tuple(x.shape)[::-1], x.dtype, x.scale, x.zero_point, f"{x.source} transposed")
            _transpose_step(lw, node, x, xt, [1, 0])
            x = xt
    n, k = w_nk.shape
    bias = _bias(lw, node, n)
    y = lw.output_of(node)
    lw.step("linear", [x], y, node, **_requant_params(node, x, y, w_nk, w_scale, bias),
            weight=np.ascontiguousarray(w_nk), in_features=k, out_features=n, rows=x.size // k)


def _bias(lw: Lowering, node: ir.Node, n: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias and its per-channel left shift k: bias scale = s_x · s_w · 2^k (k > 0 only when needed)."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    bias, b_scale = lw.weight(node, 2)
    x_scale = lw.input_of(node, 0).scale
    _, w_scale = lw.weight(node, 1)
    ratio = np.broadcast_to(b_scale, (n,)) / (np.float32(x_scale) * np.broadcast_to(w_scale, (n,)).astype(np.float32))
    k = np.rint(np.log2(ratio)).astype(np.int32)
    if np.any(k < 0) or not np.allclose(ratio, np.exp2(k), rtol=1e-5):
        raise UnsupportedOpError(node.name or "", node.op_type, "bias scale must be input scale x weight scale "
                                 "(times a power of two)")
    return np.broadcast_to(bias.reshape(-1), (n,)).astype(np.int32), k


def _requant_params(node: ir.Node, x: QTensor, y: QTensor, w: np.ndarray, w_scale: np.ndarray,
                    bias: tuple[np.ndarray, np.ndarray]) -> dict:
    """Per-output-channel multipliers, bias and the accumulator width, from the proven bound.

    |acc| ≤ |bias| + Σ|w|·max|x − zp_x|; beyond int32 the accumulator widens to int64 and the
    multiplier loses bits so that acc·M still fits int64.
    """
    n = w.shape[0]
    bias, bias_shift = bias
    span = max(QMAX[x.dtype] - x.zero_point, x.zero_point - QMIN[x.dtype])
    b_abs = np.abs(bias.astype(np.int64)) << bias_shift.astype(np.int64)
    bound = int((b_abs + np.abs(w.reshape(n, -1).astype(np.int64)).sum(axis=1) * span).max())
    acc_bits, bits = 32, 31
    if bound >= 2**31:
        acc_bits, bits = 64, min(31, 62 - bound.bit_length())
        if bits < 12:
            raise SolverError(f"{node.op_type} node {node.name!r}: accumulator bound {bound} leaves too few "
                              "multiplier bits; use narrower weights or activations")
        log.info("%s %r: accumulator widened to int64 (bound %d)", node.op_type, node.name, bound)
    w_scale = np.broadcast_to(w_scale, (n,))
    mults, shifts = zip(*(quantize_multiplier(x.scale * float(ws) / y.scale, bits) for ws in w_scale),
                        strict=True)
    return {"bias": np.asarray(bias, dtype=np.int32), "bias_shift": np.asarray(bias_shift, dtype=np.int32),
            "mult": np.array(mults, dtype=np.int32),
            "shift": np.array(shifts, dtype=np.int32), "acc_bits": acc_bits, "acc_bound": bound,
            "x_zp": x.zero_point, "y_zp": y.zero_point, "lo": QMIN[y.dtype], "hi": QMAX[y.dtype]}


def _broadcast_reason(shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str | None:
    """None if b broadcasts over `shape` as the kernels can: one value, all of them, or one per channel."""
    size = int(np.prod(shape))
    b_size = int(np.prod(b_shape)) if b_shape else 1
    if b_size in (1, size) and len(b_shape) <= len(shape):
        return None
    full = (1,) * (len(shape) - len(b_shape)) + tuple(b_shape)
    axes = [i for i, d in enumerate(full) if d != 1]
    if len(full) != len(shape) or len(axes) != 1 or full[axes[0]] != shape[axes[0]]:
        return (f"broadcast of {tuple(b_shape)} over {tuple(shape)} is not supported (one value, all, or one per "
                "channel)")
    return None


def _channel_inner(node: ir.Node, shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """For b broadcast over `shape` (numpy rules): 1 if b has one value or all of them, else the number
    of elements after b's single non-unit axis (b varies along exactly one axis: per channel)."""
    reason = _broadcast_reason(shape, b_shape)
    if reason is not None:
        raise UnsupportedOpError(node.name or "", node.op_type, reason)
    size = int(np.prod(shape))
    b_size = int(np.prod(b_shape)) if b_shape else 1
    if b_size in (1, size):
        return 1
    full = (1,) * (len(shape) - len(b_shape)) + tuple(b_shape)
    axis = next(i for i, d in enumerate(full) if d != 1)
    return int(np.prod(shape[axis + 1:]))


def _check_binary(node: ir.Node) -> str | None:
    y = _shape(node.outputs[0])
    shapes = [_shape(v) for v in node.inputs[:2]]
    if y is None or any(s is None for s in shapes):
        return None
    a, b = sorted(shapes, key=lambda s: int(np.prod(s)) if s else 1, reverse=True)
    if int(np.prod(a)) != int(np.prod(y)):
        return f"both operands are broadcast ({shapes[0]} and {shapes[1]}): one must have the output's shape"
    return _broadcast_reason(y, b)


@emitter("Add", "Sub", keras="Add, Subtract, residual connections, BatchNormalization without a linear op",
         torch="x + y, x - y", constraints="operands may have different scales; the smaller one broadcast as "
         "one value or one per channel", check=_check_binary)
def _add(lw: Lowering, node: ir.Node) -> None:
    a, b = lw.input_of(node, 0), lw.input_of(node, 1)
    sign_a, sign_b = 1, (-1 if node.op_type == "Sub" else 1)
    if a.size < b.size:
        a, b, sign_a, sign_b = b, a, sign_b, sign_a
    y = lw.output_of(node)
    inner = _channel_inner(node, y.shape, b.shape)
    (ma, mb), shift = shared_shift_multipliers([a.scale / y.scale, b.scale / y.scale])
    lw.step("add", [a, b], y, node, a_zp=a.zero_point, b_zp=b.zero_point, a_mult=sign_a * ma, b_mult=sign_b * mb,
            shift=shift, y_zp=y.zero_point, n=y.size, b_n=b.size, inner=inner, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


@emitter("Mul", keras="Multiply, Activation('swish'/'silu'), BatchNormalization without a linear op",
         torch="x * y, x * c, nn.SiLU", constraints="a constant or a second activation, broadcast as one value, "
         "all, or one per channel", check=_check_binary)
def _mul(lw: Lowering, node: ir.Node) -> None:
    if all(_constant(v) is None for v in node.inputs[:2]):
        _mul2(lw, node)
        return
    k = 1 if _constant(node.inputs[1]) is not None else 0
    x = lw.input_of(node, 1 - k)
    w, w_scale = lw.weight(node, k)
    y = lw.output_of(node)
    inner = _channel_inner(node, y.shape, w.shape)
    mults, shifts = zip(*(quantize_multiplier(x.scale * float(ws) / y.scale) for ws in
                          np.broadcast_to(w_scale, (w.size,))), strict=True)
    lw.step("mul", [x], y, node, weight=np.ascontiguousarray(w.reshape(-1)), mult=np.array(mults, dtype=np.int32),
            shift=np.array(shifts, dtype=np.int32), channels=w.size, inner=inner, x_zp=x.zero_point,
            y_zp=y.zero_point, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


def _mul2(lw: Lowering, node: ir.Node) -> None:
    """The product of two activations: one multiplier s_a·s_b/s_y on the exact integer product."""
    a, b = lw.input_of(node, 0), lw.input_of(node, 1)
    if a.size < b.size:
        a, b = b, a
    y = lw.output_of(node)
    inner = _channel_inner(node, y.shape, b.shape)
    bits = 31 if a.dtype == b.dtype == "int8" else 30  # |a·b| < 2^32 with int16: acc·M stays in int64
    mult, shift = quantize_multiplier(a.scale * b.scale / y.scale, bits)
    lw.step("mul2", [a, b], y, node, a_zp=a.zero_point, b_zp=b.zero_point, mult=mult, shift=shift,
            y_zp=y.zero_point, n=y.size, b_n=b.size, inner=inner, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


def clip_bounds(node: ir.Node) -> tuple[float, float]:
    """The real bounds of a Relu or Clip (attributes before opset 11, constant inputs after)."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    lo, hi = node.attributes.get_float("min", -math.inf), node.attributes.get_float("max", math.inf)
    bounds = [lo, hi]
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        c = const_value(v) if v is not None else None
        if c is not None:
            bounds[i - 1] = float(c.reshape(()))
    return bounds[0], bounds[1]


def _check_clip(node: ir.Node) -> str | None:
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is not None and (const_value(v) is None or const_value(v).size != 1):
            return f"input {i} ({'min' if i == 1 else 'max'}) must be one constant"
    return None


@emitter("Relu", "Clip", keras="ReLU, ReLU(max_value=6), Activation('relu'), Activation('relu6')",
         torch="nn.ReLU, nn.ReLU6, nn.Hardtanh", constraints="a clamp (fused into the kernel before it); Clip "
         "bounds constant", check=_check_clip)
def _clamp(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    lo_f, hi_f = clip_bounds(node)
    lo = QMIN[y.dtype] if lo_f == -math.inf else int(quantize(np.array(lo_f), y.scale, y.zero_point, y.dtype))
    hi = QMAX[y.dtype] if hi_f == math.inf else int(quantize(np.array(hi_f), y.scale, y.zero_point, y.dtype))
    if (x.scale, x.zero_point, x.dtype) == (y.scale, y.zero_point, y.dtype):
        lw.step("clamp", [x], y, node, lo=lo, hi=hi, n=y.size)
    else:  # the contracts were cut here: rescale and clamp in one step
        _rescale(lw, node, x, y, lo, hi)


@emitter("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
         keras="Reshape, Flatten, Dropout (inference), Permute of size-1 axes", torch="view, flatten, nn.Dropout",
         constraints="no code: a view of the same buffer (a requantize where contracts were cut)")
def _view(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node, alias_of=x)
    if y.alias_of is None:  # the contracts were cut here: an explicit requantize
        _rescale(lw, node, x, y)


# Element-wise functions of one tensor: a lookup table evaluated from the ONNX node itself at build time.
LUT_OPS = ("Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Gelu", "Softplus",
           "Softsign", "Exp", "Erf", "Mish", "ThresholdedRelu", "Neg", "Abs", "Sin", "Cos", "Atan", "Sinh", "Asinh",
           "Round", "Floor", "Ceil", "Sign")


def float_function(node: ir.Node) -> Callable[[np.ndarray], np.ndarray]:
    """The node's own float function, run by onnx's reference evaluator on a copy of the node (same
    attributes, constant extra inputs such as Clip's bounds), in float64."""
    import onnx
    import onnx.reference

    proto = ir.serde.serialize_node(node)
    extra = []
    names = ["x"]
    for i, v in enumerate(node.inputs[1:], start=1):
        c = const_value(v) if v is not None else None
        names.append(f"c{i}" if v is not None else "")
        if v is not None:
            if c is None:
                raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} must be a constant")
            extra.append(onnx.numpy_helper.from_array(np.asarray(c, dtype=np.float64), f"c{i}"))
    del proto.input[:]
    proto.input.extend(names)
    del proto.output[:]
    proto.output.append("y")
    proto.name = "f"
    opset = node.graph.opset_imports.get("", 21) if node.graph is not None else 21
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.DOUBLE, None) for n in ("x", "y")]
    model = onnx.helper.make_model(onnx.helper.make_graph([proto], "f", vi[:1], vi[1:], extra),
                                   opset_imports=[onnx.helper.make_opsetid("", max(opset, 13))])
    ref = onnx.reference.ReferenceEvaluator(model)

    def fn(x: np.ndarray) -> np.ndarray:
        return np.asarray(ref.run(None, {"x": np.asarray(x, dtype=np.float64)})[0], dtype=np.float64)

    return fn


def _check_lut(node: ir.Node) -> str | None:
    try:
        y = float_function(node)(np.linspace(-4.0, 4.0, 9))
    except Exception as exc:  # noqa: BLE001  (the reference evaluator's own error names the attribute)
        return f"cannot evaluate this op to build its table: {type(exc).__name__}: {str(exc)[:160]}"
    if y.shape != (9,):
        return "not an element-wise function of one tensor"
    return None


@emitter(*LUT_OPS, keras="Activation(sigmoid, tanh, elu, selu, gelu (fuse-gelu pass), softplus, softsign, "
         "hard_sigmoid, hard_swish/hard_silu, exponential), LeakyReLU, ELU",
         torch="nn.Sigmoid, Tanh, LeakyReLU, ELU, SELU, CELU, GELU, Softplus, Softsign, Hardsigmoid, Hardswish, Mish",
         constraints="any element-wise function of one tensor: a table computed from the ONNX op (256 entries for "
         "int8, 257 interpolated for int16)",
         check=_check_lut)
def _lut(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    fn = float_function(node)
    if x.dtype == "int8":
        table = build_lut(fn, x.scale, x.zero_point, y.scale, y.zero_point, "int8", y.dtype)
    elif x.zero_point == 0:
        table = build_lut16(fn, x.scale, y.scale, y.zero_point, y.dtype)
    else:
        raise UnsupportedOpError(node.name or "", node.op_type, "int16 inputs must be symmetric (zero point 0)")
    lw.step("lut", [x], y, node, table=table, n=y.size)


def _check_softmax(node: ir.Node) -> str | None:
    x = _shape(node.inputs[0])
    axis = node.attributes.get_int("axis", -1)
    if x is not None and axis % len(x) != len(x) - 1:
        return f"axis={axis}: only the last axis is supported"
    return None


@emitter("Softmax", keras="Dense(activation='softmax'), Softmax", torch="nn.Softmax(dim=-1)",
         constraints="last axis; output scale 1/256 (int8) or 1/32768 (int16)", check=_check_softmax)
def _softmax(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    axis = node.attributes.get_int("axis", -1)
    if axis not in (-1, len(x.shape) - 1):
        raise UnsupportedOpError(node.name or "", "Softmax", "only the last axis is supported")
    one, zp = SOFTMAX_OUT[y.dtype]
    if not math.isclose(y.scale, 1 / one) or y.zero_point != zp:
        raise UnsupportedOpError(node.name or "", "Softmax", f"{y.dtype} output must have scale 1/{one}, "
                                 f"zero point {zp}")
    n = x.shape[-1]
    if n >= 1 << 16:
        raise UnsupportedOpError(node.name or "", "Softmax", f"{n} classes: the int32 sum of 2^15 terms needs < 65536")
    table, sh = softmax_exp_table(x.scale, x.dtype)
    lw.step("softmax", [x], y, node, exp_table=table, sh=sh, one=one, y_zp=zp, lo=QMIN[y.dtype],
            hi=QMAX[y.dtype], n=n, rows=x.size // n)


def same_pads(node: ir.Node, l_in: int, k: int, stride: int, dilation: int) -> list[int]:
    """Explicit [left, right] pads of a 1-D Conv/pool, also for auto_pad SAME_UPPER/SAME_LOWER."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        l_out = -(-l_in // stride)
        total = max(0, (l_out - 1) * stride + (k - 1) * dilation + 1 - l_in)
        small = total // 2
        return [small, total - small] if auto == "SAME_UPPER" else [total - small, small]
    if auto == "VALID":
        return [0, 0]
    attr = node.attributes.get("pads")
    return list(attr.as_ints()) if attr is not None else [0, 0]


def _conv_dims(node: ir.Node, x: QTensor, y: QTensor, k: int) -> dict:
    def ints(name: str, default: list[int]) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.as_ints()) if attr is not None else default

    if len(x.shape) != 3 or x.shape[0] != 1:
        raise UnsupportedOpError(node.name or "", node.op_type, f"only 1-D, batch 1 is supported; input {x.shape}")
    stride, dilation = ints("strides", [1])[0], ints("dilations", [1])[0]
    pads = same_pads(node, x.shape[2], k, stride, dilation)
    p = {"c_in": x.shape[1], "l_in": x.shape[2], "c_out": y.shape[1], "l_out": y.shape[2], "k": k,
         "stride": stride, "dilation": dilation, "pad_left": pads[0],
         "groups": node.attributes.get_int("group", 1)}
    p["dims"] = np.array([p["c_in"], p["l_in"], p["c_out"], p["l_out"], k, p["stride"], p["dilation"],
                          p["pad_left"], p["groups"]], dtype=np.int32)
    return p


def _check_spatial(node: ir.Node, what: str, kernel: tuple[int, ...]) -> str | None:
    """The 1-D rule shared by Conv and the pools: one spatial axis, batch 1; names a 2-D op as such and
    suggests squeeze-conv2d only when it would make the op 1-D."""
    x = _shape(node.inputs[0])
    if len(kernel) == 2:
        one_axis = x is not None and len(x) == 4 and ((x[2] == 1 and kernel[0] == 1) or (x[3] == 1 and kernel[1] == 1))
        hint = "; it spans one axis only: the squeeze-conv2d pass makes it 1-D (explicit pads)" if one_axis else ""
        return f"2-D {what} (kernel {kernel[0]}x{kernel[1]}) is not supported, only 1-D{hint}"
    if len(kernel) != 1:
        return f"{len(kernel)}-D {what} is not supported, only 1-D and 2-D"
    if x is not None and (len(x) != 3 or x[0] != 1):
        return f"input {x}: only [1, C, T] (batch 1) is supported"
    return None


def _check_conv(node: ir.Node) -> str | None:
    w = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "the weight (input 1) must be a constant"
    return _check_spatial(node, "convolution", tuple(w.shape[2:]))


@emitter("Conv", keras="Conv1D (valid, same, causal; strides, dilation), DepthwiseConv1D, SeparableConv1D, "
         "Conv2D/DepthwiseConv2D with a (k,1) or (1,k) kernel over one axis", torch="nn.Conv1d (groups, padding)",
         constraints="1-D, batch 1, any groups, optional bias, explicit or SAME pads",
         precisions="int8, int16; weights int8, int16", check=_check_conv)
def _conv(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    w, w_scale = lw.weight(node, 1)
    y = lw.output_of(node)
    c_out = w.shape[0]
    bias = _bias(lw, node, c_out)
    lw.step("conv1d", [x], y, node, **_conv_dims(node, x, y, w.shape[2]),
            **_requant_params(node, x, y, w, w_scale, bias), weight=np.ascontiguousarray(w))


def _check_maxpool(node: ir.Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].consumers():
        return "the indices output is not supported"
    attr = node.attributes.get("kernel_shape")
    return _check_spatial(node, "max pooling", tuple(attr.as_ints()) if attr is not None else ())


@emitter("MaxPool", keras="MaxPooling1D", torch="nn.MaxPool1d", constraints="1-D, batch 1; scale kept",
         check=_check_maxpool)
def _maxpool(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        raise UnsupportedOpError(node.name or "", "MaxPool", "input and output must share scale and zero point")
    k = list(node.attributes["kernel_shape"].as_ints())
    lw.step("maxpool1d", [x], y, node, **_conv_dims(node, x, y, k[0]))


def _check_transpose(node: ir.Node) -> str | None:
    x = _shape(node.inputs[0])
    return f"rank {len(x)} above 6 is not supported" if x is not None and len(x) > 6 else None


def _transpose_step(lw: Lowering, node: ir.Node, x: QTensor, y: QTensor, perm: list[int]) -> None:
    rank = len(x.shape)
    in_strides = [int(np.prod(x.shape[i + 1:])) for i in range(rank)]
    dims = [x.shape[p] for p in perm] + [1] * (6 - rank)
    strides = [in_strides[p] for p in perm] + [0] * (6 - rank)
    lw.step("transpose", [x], y, node, in_dims=list(x.shape), perm=perm,
            dims=np.array(dims, dtype=np.int32), strides=np.array(strides, dtype=np.int32))


@emitter("Transpose", keras="Permute, layout changes tf2onnx adds", torch="permute, transpose",
         constraints="rank <= 6; scale kept", check=_check_transpose)
def _transpose(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        raise UnsupportedOpError(node.name or "", "Transpose", "input and output must share scale and zero point")
    perm = list(node.attributes.get_ints("perm", list(range(len(x.shape)))[::-1]))
    _transpose_step(lw, node, x, y, perm)


def _rescale(lw: Lowering, node: ir.Node, x: QTensor, y: QTensor, lo: int | None = None,
             hi: int | None = None) -> None:
    """y = x rescaled to y's parameters, then clamped to [lo, hi]: an explicit requantize (an `add` with a
    zero second operand)."""
    (m,), shift = shared_shift_multipliers([x.scale / y.scale])
    zero = lw.new_tensor((1,), x.dtype, x.scale, x.zero_point, "zero")
    lw.constants[zero.id] = np.array([x.zero_point], dtype=x.dtype)
    lw.step("add", [x, zero], y, node, a_zp=x.zero_point, b_zp=x.zero_point, a_mult=m, b_mult=0, shift=shift,
            y_zp=y.zero_point, n=y.size, b_n=1, inner=1, lo=QMIN[y.dtype] if lo is None else lo,
            hi=QMAX[y.dtype] if hi is None else hi)
    log.info("requantize inserted at %s %r: %s", node.op_type, node.name, x.source)


def _requantized(lw: Lowering, node: ir.Node, x: QTensor, like: QTensor) -> QTensor:
    """x, or a copy of x rescaled to `like`'s parameters (where contracts conflict)."""
    if (x.scale, x.zero_point, x.dtype) == (like.scale, like.zero_point, like.dtype):
        return x
    y = lw.new_tensor(x.shape, like.dtype, like.scale, like.zero_point, f"{x.source} requantized")
    _rescale(lw, node, x, y)
    return y


def _concat_input(lw: Lowering, node: ir.Node, i: int, y: QTensor) -> QTensor:
    """Input i of a Concat; a float constant (no DequantizeLinear) is quantized with the output's parameters."""
    value = node.inputs[i]
    data = const_value(value) if value is not None else None
    if data is None:
        return lw.input_of(node, i)
    t = lw.new_tensor(data.shape, y.dtype, y.scale, y.zero_point, value.name or "constant")
    lw.constants[t.id] = quantize(data, y.scale, y.zero_point, y.dtype)
    return t


@emitter("Concat", keras="Concatenate, Bidirectional(merge_mode='concat')", torch="torch.cat",
         constraints="inputs of different scales are requantized to the output's; constant inputs allowed")
def _concat(lw: Lowering, node: ir.Node) -> None:
    y = lw.output_of(node)
    parts = [_requantized(lw, node, _concat_input(lw, node, i, y), y) for i in range(len(node.inputs))]
    axis = node.attributes.get_int("axis", 0) % len(y.shape)
    inner = int(np.prod(y.shape[axis + 1:]))
    chunks = [int(p.shape[axis]) * inner for p in parts]
    offsets = [int(sum(chunks[:i])) for i in range(len(chunks))]
    lw.step("concat", parts, y, node, axis=axis, outer=int(np.prod(y.shape[:axis])), out_chunk=sum(chunks),
            chunks=chunks, offsets=offsets)


POOL_OPS = ("AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def reduce_axes(node: ir.Node, rank: int) -> list[int] | None:
    """The reduced axes, sorted and non-negative (all of them when none are given), or None if unknown."""
    if node.op_type.startswith("Global"):
        return list(range(2, rank))
    attr = node.attributes.get("axes")
    axes = list(attr.as_ints()) if attr is not None else None
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        c = const_value(node.inputs[1])
        if c is None:
            return None
        axes = [int(a) for a in c.reshape(-1)]
    if not axes:
        return [] if node.attributes.get_int("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def _check_pool(node: ir.Node) -> str | None:
    if node.op_type == "AveragePool":
        attr = node.attributes.get("kernel_shape")
        return _check_spatial(node, "average pooling", tuple(attr.as_ints()) if attr is not None else ())
    x = _shape(node.inputs[0])
    if x is None:
        return None
    axes = reduce_axes(node, len(x))
    if axes is None:
        return "the axes input must be a constant"
    if axes and axes != list(range(axes[0], axes[-1] + 1)):
        return f"axes {axes}: only adjacent axes can be reduced"
    return None


@emitter(*POOL_OPS, keras="AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D",
         torch="nn.AvgPool1d, nn.AdaptiveAvgPool1d(1), nn.AdaptiveMaxPool1d(1), mean/amax over time",
         constraints="1-D windows or a reduction over adjacent axes; the integer mean is the exact sum times "
         "s_x/(s_y*n), rounded half up once", check=_check_pool)
def _pool(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if node.op_type == "AveragePool":
        k = int(node.attributes["kernel_shape"].as_ints()[0])
        d = _conv_dims(node, x, y, k)
        dims = [d["c_in"], d["l_in"], 1, d["l_out"], k, d["stride"], d["dilation"], d["pad_left"]]
        count_pad = node.attributes.get_int("count_include_pad", 0)
    else:
        axes = reduce_axes(node, len(x.shape)) or []
        a0, a1 = (axes[0], axes[-1] + 1) if axes else (0, 0)
        length = int(np.prod(x.shape[a0:a1]))
        dims = [int(np.prod(x.shape[:a0])), length, int(np.prod(x.shape[a1:])), 1, length, 1, 1, 0]
        count_pad = 0
    is_max = node.op_type in ("GlobalMaxPool", "ReduceMax")
    k = dims[4]
    span = max(QMAX[x.dtype] - x.zero_point, x.zero_point - QMIN[x.dtype])
    if k * span >= 2**31:
        raise UnsupportedOpError(node.name or "", node.op_type, f"a window of {k} values overflows the int32 sum")
    pos = np.arange(dims[3])[:, None] * dims[5] - dims[7] + np.arange(k)[None, :] * dims[6]
    count_pad = int(count_pad or bool(np.all((pos >= 0) & (pos < dims[1]))))  # every window full: n = K always
    counts = [1] if is_max else [k] if count_pad else range(1, k + 1)
    mults, shifts = zip(*(quantize_multiplier(x.scale / (y.scale * n)) for n in counts), strict=True)
    lw.step("pool", [x], y, node, dims=np.array(dims + [int(is_max), count_pad], dtype=np.int32),
            mult=np.array(mults, dtype=np.int32), shift=np.array(shifts, dtype=np.int32), is_max=int(is_max),
            count_pad=count_pad, x_zp=x.zero_point, y_zp=y.zero_point, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


# -- 2-D section (issue 13): Conv, MaxPool and AveragePool over [1, C, H, W] ------------------------------------
# The same ONNX ops as the 1-D emitters above; these emitters take the 2-D nodes (a 2-D kernel shape) and hand
# every other node to the 1-D emitter and rule they replace. Kernels: runtime_ref/kernels2d.py, conv2d.c.j2,
# pool2d.c.j2. GlobalAveragePool over H, W is the `pool` reduction above (two adjacent axes).
_CONV1D, _CHECK_CONV1D = EMITTERS["Conv"], CHECKS["Conv"]
_POOL1D = {"MaxPool": (EMITTERS["MaxPool"], CHECKS["MaxPool"]), "AveragePool": (EMITTERS["AveragePool"],
                                                                               CHECKS["AveragePool"])}


def _kernel_2d(node: ir.Node) -> tuple[int, int] | None:
    """(KH, KW) of a 2-D Conv or pool, None for any other rank."""
    if node.op_type == "Conv":
        w = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
        k = tuple(w.shape[2:]) if w is not None else ()
    else:
        attr = node.attributes.get("kernel_shape")
        k = tuple(attr.as_ints()) if attr is not None else ()
    return (int(k[0]), int(k[1])) if len(k) == 2 else None


def pads_2d(node: ir.Node, size: tuple[int, int], k: tuple[int, int], stride: tuple[int, int],
            dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads of a 2-D Conv/pool, also for auto_pad SAME_UPPER/SAME_LOWER."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        begin, end = [], []
        for n, kk, s, d in zip(size, k, stride, dilation, strict=True):
            total = 0 if auto == "VALID" else max(0, (-(-n // s) - 1) * s + (kk - 1) * d + 1 - n)
            small = total // 2
            begin.append(small if auto != "SAME_LOWER" else total - small)
            end.append(total - begin[-1])
        return begin[0], begin[1], end[0], end[1]
    attr = node.attributes.get("pads")
    pads = tuple(int(p) for p in attr.as_ints()) if attr is not None else (0, 0, 0, 0)
    return pads[0], pads[1], pads[2], pads[3]


def window_2d(node: ir.Node, x_shape: tuple[int, ...], k: tuple[int, int]) -> dict:
    """Strides, dilations, pads and output size of a 2-D window over x [1, C, H, W] (shared with float_c)."""
    size = (int(x_shape[2]), int(x_shape[3]))
    stride = tuple(int(v) for v in node.attributes.get_ints("strides", [1, 1]))
    dilation = tuple(int(v) for v in node.attributes.get_ints("dilations", [1, 1]))
    pt, pl, pb, pr = pads_2d(node, size, k, stride, dilation)
    h_out = (size[0] + pt + pb - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    w_out = (size[1] + pl + pr - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    return {"h_in": size[0], "w_in": size[1], "h_out": h_out, "w_out": w_out, "stride": stride,
            "dilation": dilation, "pads": (pt, pl, pb, pr)}


def _check_2d(node: ir.Node, what: str) -> str | None:
    x = _shape(node.inputs[0])
    if x is not None and (len(x) != 4 or x[0] != 1):
        return f"2-D {what} on input {x}: only [1, C, H, W] (batch 1) is supported"
    if node.attributes.get_int("ceil_mode", 0):
        return "ceil_mode=1 is not supported"
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].consumers():
        return "the indices output is not supported"
    return None


def _one_axis(node: ir.Node, k: tuple[int, int]) -> bool:
    """A 2-D window over an axis of size 1 with a kernel of 1 there: squeeze-conv2d makes it the 1-D kernel."""
    x = _shape(node.inputs[0])
    return x is not None and len(x) == 4 and ((x[2] == 1 and k[0] == 1) or (x[3] == 1 and k[1] == 1))


def _check_conv_2d(node: ir.Node) -> str | None:
    k = _kernel_2d(node)
    if k is None or _one_axis(node, k):  # the 1-D rule; a one-axis 2-D conv is told to run squeeze-conv2d
        return _CHECK_CONV1D(node)
    return _check_2d(node, "convolution")


@emitter("Conv", keras="Conv2D (valid, same; strides, dilation), DepthwiseConv2D (depth multiplier 1), "
         "SeparableConv2D, ZeroPadding2D before a conv (fold-pad)", torch="nn.Conv2d (groups, padding)",
         constraints="2-D over [1, C, H, W] (channels first in C), batch 1, any groups, optional bias, explicit "
         "or SAME pads; a 1x1 kernel is a matrix multiply over the pixels",
         precisions="int8, int16; weights int8, int16", check=_check_conv_2d)
def _conv_2d(lw: Lowering, node: ir.Node) -> None:
    k = _kernel_2d(node)
    if k is None:
        _CONV1D(lw, node)
        return
    x = lw.input_of(node, 0)
    w, w_scale = lw.weight(node, 1)
    y = lw.output_of(node)
    c_out = w.shape[0]
    win = window_2d(node, x.shape, k)
    groups = node.attributes.get_int("group", 1)
    dims = [x.shape[1], win["h_in"], win["w_in"], c_out, win["h_out"], win["w_out"], *k, *win["stride"],
            *win["dilation"], win["pads"][0], win["pads"][1], groups, 0, 0]
    lw.step("conv2d", [x], y, node, dims=np.array(dims, dtype=np.int32), groups=groups,
            **_requant_params(node, x, y, w, w_scale, _bias(lw, node, c_out)), weight=np.ascontiguousarray(w))


NARROW_BITS = 15  # the fewest multiplier bits a pooling rescale takes to stay in 32-bit arithmetic


def pool_multipliers(ratio: float, counts, acc_bound: int) -> tuple[list[int], list[int]]:
    """M_n·2^-s_n ≈ ratio / n for each window count n. When |acc| <= acc_bound leaves at least NARROW_BITS for M
    with |acc|·M + 2^(s-1) < 2^31, M gets only those bits (relative error <= 2^-15): the C's rescale is then one
    32-bit multiply (no 64-bit multiply call on a Cortex-M0); else the usual 31-bit multiplier."""
    bits = 30 - int(acc_bound).bit_length()
    pairs = []
    for n in counts:
        m, sh = quantize_multiplier(ratio / n, bits) if bits >= NARROW_BITS and ratio / n < 2 ** (bits - 2) else (0, 0)
        if m == 0 or acc_bound * m + (1 << (sh - 1)) >= 2**31 or sh > 30:
            m, sh = quantize_multiplier(ratio / n)
        pairs.append((m, sh))
    return [m for m, _ in pairs], [sh for _, sh in pairs]


def _check_pool_2d(node: ir.Node) -> str | None:
    k = _kernel_2d(node)
    if k is None or _one_axis(node, k):
        return _POOL1D[node.op_type][1](node)
    return _check_2d(node, "max pooling" if node.op_type == "MaxPool" else "average pooling")


@emitter("MaxPool", "AveragePool", keras="MaxPooling2D, AveragePooling2D (valid, same); GlobalAveragePooling2D "
         "is the GlobalAveragePool reduction",
         torch="nn.MaxPool2d, nn.AvgPool2d", constraints="2-D over [1, C, H, W], batch 1, strides, dilations, "
         "pads; the mean divides by the valid taps (count_include_pad: by KH·KW)", check=_check_pool_2d)
def _pool_2d(lw: Lowering, node: ir.Node) -> None:
    k = _kernel_2d(node)
    if k is None:
        _POOL1D[node.op_type][0](lw, node)
        return
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    win = window_2d(node, x.shape, k)
    is_max = int(node.op_type == "MaxPool")
    taps = k[0] * k[1]
    span = max(QMAX[x.dtype] - x.zero_point, x.zero_point - QMIN[x.dtype])
    if taps * span >= 2**31:
        raise UnsupportedOpError(node.name or "", node.op_type, f"a window of {taps} values overflows the int32 sum")
    pt, pl, pb, pr = win["pads"]
    full = (pt == pl == 0 and (win["h_out"] - 1) * win["stride"][0] + (k[0] - 1) * win["dilation"][0] < win["h_in"]
            and (win["w_out"] - 1) * win["stride"][1] + (k[1] - 1) * win["dilation"][1] < win["w_in"])
    count_pad = int(node.attributes.get_int("count_include_pad", 0) or full)
    counts = [1] if is_max else [taps] if count_pad else range(1, taps + 1)
    mults, shifts = pool_multipliers(x.scale / y.scale, counts, span if is_max else taps * span)
    dims = [x.shape[1], win["h_in"], win["w_in"], win["h_out"], win["w_out"], *k, *win["stride"], *win["dilation"],
            pt, pl, is_max, count_pad, 0, 0]
    lw.step("pool2d", [x], y, node, dims=np.array(dims, dtype=np.int32), mult=np.array(mults, dtype=np.int32),
            shift=np.array(shifts, dtype=np.int32), x_zp=x.zero_point, y_zp=y.zero_point, lo=QMIN[y.dtype],
            hi=QMAX[y.dtype])
