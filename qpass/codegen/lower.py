"""Lowering: a QDQ ONNX graph → an integer `Program` (the short list of kernels runtime_ref and C run).

Every compute node must read DequantizeLinear outputs and feed one QuantizeLinear; the integers and
scales around it give the kernel's integer constants, computed with runtime_ref.intmath. Because the
input is standard QDQ, models quantized elsewhere lower too, as long as their ops have an emitter.
Emitters are registered by ONNX op type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qpass.codegen.lower_lstm import group_key, lower_lstm  # noqa: E402  (after Lowering's deps)
from qpass.errors import SolverError, UnsupportedOpError
from qpass.passes._util import const_value
from qpass.runtime_ref.intmath import (
    QMAX,
    QMIN,
    build_lut,
    build_lut16,
    quantize_multiplier,
    shared_shift_multipliers,
    softmax_exp_table,
)
from qpass.runtime_ref.program import Program, QTensor, Step

Emitter = Callable[["Lowering", ir.Node], None]
SOFTMAX_OUT = {"int8": (256, -128), "int16": (32768, 0)}  # 1/scale and zero point of a softmax output
log = logging.getLogger(__name__)
EMITTERS: dict[str, Emitter] = {}
UNARY_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": np.tanh,
}


def emitter(*ops: str) -> Callable[[Emitter], Emitter]:
    def wrap(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return wrap


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
        groups: dict[tuple[str, str], list[ir.Node]] = {}
        for node in graph:
            key = group_key(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        done: set[tuple[str, str]] = set()
        for node in graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type == "Constant":
                continue
            key = group_key(node)
            if key is not None:
                if key not in done:
                    done.add(key)
                    lower_lstm(self, groups[key])
                continue
            fn = EMITTERS.get(node.op_type)
            if fn is None or node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(node.name or "", node.op_type,
                                         f"no integer kernel for this op (supported: {sorted(EMITTERS)})")
            fn(self, node)
        out = graph.outputs[0].producer()
        if out is None or out.op_type != "DequantizeLinear" or id(out.inputs[0]) not in self.by_value:
            raise UnsupportedOpError(graph.outputs[0].name or "", "Output", "the graph output must be dequantized")
        y = self.by_value[id(out.inputs[0])]
        root, offset = Program(self.name, self.tensors, self.steps, t_in.id, y.id).view(y.id)
        if offset or self.tensors[root].size != y.size:
            # a view into a larger tensor (one step of an LSTM's h sequence): the caller's buffer holds only y
            own = self.new_tensor(y.shape, y.dtype, y.scale, y.zero_point, f"{y.source} (graph output)")
            self.step("copy", [y], own, out).origin = "graph output"
            y = own
        program = Program(self.name, self.tensors, self.steps, t_in.id, y.id)
        program.constants = self.constants
        _fuse_clamps(program)
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
        if (s.kernel == "clamp" and prev is not None and prev.kernel in ("linear", "conv1d", "add")
                and prev.outputs[0] == s.inputs[0] and readers.get(program.root(s.inputs[0]), 0) == 1
                and program.output != s.inputs[0]):
            prev.params["lo"] = max(prev.params["lo"], s.params["lo"])
            prev.params["hi"] = min(prev.params["hi"], s.params["hi"])
            program.tensors[s.outputs[0]].alias_of = prev.outputs[0]
            continue
        kept.append(s)
    program.steps[:] = kept


# -- emitters ---------------------------------------------------------------------------------
@emitter("Gemm", "MatMul")
def _linear(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    w, w_scale = lw.weight(node, 1)
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1.0 or \
                node.attributes.get_float("beta", 1.0) != 1.0:
            raise UnsupportedOpError(node.name or "", "Gemm", "only transA=0, alpha=beta=1 are supported")
        w_nk = w if node.attributes.get_int("transB", 0) else w.T
    else:
        w_nk = w.T
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


@emitter("Add")
def _add(lw: Lowering, node: ir.Node) -> None:
    a, b = lw.input_of(node, 0), lw.input_of(node, 1)
    if b.size == lw.tensors[b.id].size and a.size < b.size:
        a, b = b, a
    y = lw.output_of(node)
    inner = _channel_inner(node, y.shape, b.shape)
    (ma, mb), shift = shared_shift_multipliers([a.scale / y.scale, b.scale / y.scale])
    lw.step("add", [a, b], y, node, a_zp=a.zero_point, b_zp=b.zero_point, a_mult=ma, b_mult=mb,
            shift=shift, y_zp=y.zero_point, n=y.size, b_n=b.size, inner=inner, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


def _channel_inner(node: ir.Node, shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """For b broadcast over `shape` (numpy rules): 1 if b has one value or all of them, else the number
    of elements after b's single non-unit axis (b varies along exactly one axis: per channel)."""
    size = int(np.prod(shape))
    b_size = int(np.prod(b_shape)) if b_shape else 1
    if b_size in (1, size):
        return 1
    full = (1,) * (len(shape) - len(b_shape)) + tuple(b_shape)
    axes = [i for i, d in enumerate(full) if d != 1]
    if len(full) != len(shape) or len(axes) != 1 or full[axes[0]] != shape[axes[0]]:
        raise UnsupportedOpError(node.name or "", node.op_type, f"broadcast of {b_shape} over {shape} is not "
                                 "supported (one value, all, or one per channel)")
    return int(np.prod(shape[axes[0] + 1:]))


@emitter("Mul")
def _mul(lw: Lowering, node: ir.Node) -> None:
    k = 1 if const_value(node.inputs[1].producer().inputs[0] if node.inputs[1].producer() else None) is not None \
        else 0
    x = lw.input_of(node, 1 - k)
    w, w_scale = lw.weight(node, k)
    y = lw.output_of(node)
    inner = _channel_inner(node, y.shape, w.shape)
    mults, shifts = zip(*(quantize_multiplier(x.scale * float(ws) / y.scale) for ws in
                          np.broadcast_to(w_scale, (w.size,))), strict=True)
    lw.step("mul", [x], y, node, weight=np.ascontiguousarray(w.reshape(-1)), mult=np.array(mults, dtype=np.int32),
            shift=np.array(shifts, dtype=np.int32), channels=w.size, inner=inner, x_zp=x.zero_point,
            y_zp=y.zero_point, lo=QMIN[y.dtype], hi=QMAX[y.dtype])


@emitter("Relu")
def _relu(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        raise UnsupportedOpError(node.name or "", "Relu", "input and output must share scale and zero point")
    lw.step("clamp", [x], y, node, lo=max(y.zero_point, QMIN[y.dtype]), hi=QMAX[y.dtype], n=y.size)


@emitter("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
def _view(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node, alias_of=x)
    if y.alias_of is None:  # the contracts were cut here: an explicit requantize
        _rescale(lw, node, x, y)


@emitter(*UNARY_FUNCTIONS)
def _lut(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    fn = UNARY_FUNCTIONS[node.op_type]
    if x.dtype == "int8":
        table = build_lut(fn, x.scale, x.zero_point, y.scale, y.zero_point, "int8", y.dtype)
    elif x.zero_point == 0:
        table = build_lut16(fn, x.scale, y.scale, y.zero_point, y.dtype)
    else:
        raise UnsupportedOpError(node.name or "", node.op_type, "int16 inputs must be symmetric (zero point 0)")
    lw.step("lut", [x], y, node, table=table, n=y.size)


@emitter("Softmax")
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


def _conv_dims(node: ir.Node, x: QTensor, y: QTensor, k: int) -> dict:
    def ints(name: str, default: list[int]) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.as_ints()) if attr is not None else default

    if len(x.shape) != 3 or x.shape[0] != 1:
        raise UnsupportedOpError(node.name or "", node.op_type, f"only 1-D, batch 1 is supported; input {x.shape}")
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or \
            node.attributes.get_int("ceil_mode", 0):
        raise UnsupportedOpError(node.name or "", node.op_type, "auto_pad SAME_* and ceil_mode are not supported")
    pads = ints("pads", [0, 0])
    p = {"c_in": x.shape[1], "l_in": x.shape[2], "c_out": y.shape[1], "l_out": y.shape[2], "k": k,
         "stride": ints("strides", [1])[0], "dilation": ints("dilations", [1])[0], "pad_left": pads[0],
         "groups": node.attributes.get_int("group", 1)}
    p["dims"] = np.array([p["c_in"], p["l_in"], p["c_out"], p["l_out"], k, p["stride"], p["dilation"],
                          p["pad_left"], p["groups"]], dtype=np.int32)
    return p


@emitter("Conv")
def _conv(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    w, w_scale = lw.weight(node, 1)
    if w.ndim != 3:
        raise UnsupportedOpError(node.name or "", "Conv", "only 1-D convolution is supported (run squeeze-conv2d)")
    y = lw.output_of(node)
    c_out = w.shape[0]
    bias = _bias(lw, node, c_out)
    lw.step("conv1d", [x], y, node, **_conv_dims(node, x, y, w.shape[2]),
            **_requant_params(node, x, y, w, w_scale, bias), weight=np.ascontiguousarray(w))


@emitter("MaxPool")
def _maxpool(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if (x.scale, x.zero_point) != (y.scale, y.zero_point) or len(node.outputs) > 1:
        raise UnsupportedOpError(node.name or "", "MaxPool", "input and output must share scale and zero point")
    k = list(node.attributes["kernel_shape"].as_ints())
    if len(k) != 1:
        raise UnsupportedOpError(node.name or "", "MaxPool", "only 1-D pooling is supported (run squeeze-conv2d)")
    lw.step("maxpool1d", [x], y, node, **_conv_dims(node, x, y, k[0]))


@emitter("Transpose")
def _transpose(lw: Lowering, node: ir.Node) -> None:
    x = lw.input_of(node, 0)
    y = lw.output_of(node)
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        raise UnsupportedOpError(node.name or "", "Transpose", "input and output must share scale and zero point")
    rank = len(x.shape)
    perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
    if rank > 6:
        raise UnsupportedOpError(node.name or "", "Transpose", "rank above 6 is not supported")
    in_strides = [int(np.prod(x.shape[i + 1:])) for i in range(rank)]
    dims = [x.shape[p] for p in perm] + [1] * (6 - rank)
    strides = [in_strides[p] for p in perm] + [0] * (6 - rank)
    lw.step("transpose", [x], y, node, in_dims=list(x.shape), perm=perm,
            dims=np.array(dims, dtype=np.int32), strides=np.array(strides, dtype=np.int32))


def _rescale(lw: Lowering, node: ir.Node, x: QTensor, y: QTensor) -> None:
    """y = x rescaled to y's parameters: an explicit requantize (an `add` with a zero second operand)."""
    (m,), shift = shared_shift_multipliers([x.scale / y.scale])
    zero = lw.new_tensor((1,), x.dtype, x.scale, x.zero_point, "zero")
    lw.constants[zero.id] = np.array([x.zero_point], dtype=x.dtype)
    lw.step("add", [x, zero], y, node, a_zp=x.zero_point, b_zp=x.zero_point, a_mult=m, b_mult=0, shift=shift,
            y_zp=y.zero_point, n=y.size, b_n=1, inner=1, lo=QMIN[y.dtype], hi=QMAX[y.dtype])
    log.info("requantize inserted at %s %r: %s", node.op_type, node.name, x.source)


def _requantized(lw: Lowering, node: ir.Node, x: QTensor, like: QTensor) -> QTensor:
    """x, or a copy of x rescaled to `like`'s parameters (where contracts conflict)."""
    if (x.scale, x.zero_point, x.dtype) == (like.scale, like.zero_point, like.dtype):
        return x
    y = lw.new_tensor(x.shape, like.dtype, like.scale, like.zero_point, f"{x.source} requantized")
    _rescale(lw, node, x, y)
    return y


@emitter("Concat")
def _concat(lw: Lowering, node: ir.Node) -> None:
    y = lw.output_of(node)
    parts = [_requantized(lw, node, lw.input_of(node, i), y) for i in range(len(node.inputs))]
    axis = node.attributes.get_int("axis", 0) % len(y.shape)
    inner = int(np.prod(y.shape[axis + 1:]))
    chunks = [int(p.shape[axis]) * inner for p in parts]
    offsets = [int(sum(chunks[:i])) for i in range(len(chunks))]
    lw.step("concat", parts, y, node, axis=axis, outer=int(np.prod(y.shape[:axis])), out_chunk=sum(chunks),
            chunks=chunks, offsets=offsets)
