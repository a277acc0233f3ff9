"""Float C backend: the float graph the solver sees, as float32 C99: the honest baseline for speed and memory.

The input is the float `onnx_ir` model after the float passes (before calibration). It is lowered to the same
kind of `Program` the integer backend runs (tensors of dtype float32, scale 1, zero point 0), so the arena
planner, views and clamp fusion are the integer backend's, and rendered from one jinja2 template per float
kernel under `templates/float/`:

    Gemm/MatMul → linear (alpha, beta, transB folded into the constants)   Add → add (scalar/trailing broadcast)
    Relu, Clip → clamp (fused into a preceding linear/add as in the integer lowering)
    Conv → conv1d   MaxPool → maxpool1d   Transpose → transpose   Sigmoid → sigmoid   Tanh → tanh
    Softmax → softmax   Reshape/Flatten/Squeeze/Unsqueeze/Identity → views (no code)   Sub → add (signs)
    Concat → concat
    LeakyRelu, Elu, HardSwish, Softplus, ... → unary (a <math.h> expression)   AveragePool, GlobalAveragePool,
    GlobalMaxPool, ReduceMean, ReduceMax → pool
    the per-step nodes `unroll-lstm` tagged (qpass.lstm, .direction, .step, .role) → one `lstm` loop over T
    the per-step nodes `unroll-gru` tagged (qpass.gru, ...) → one `gru` loop over T
    the per-step nodes `unroll-rnn` tagged (qpass.rnn, ...) → one `rnn` loop over T

The C uses float and <math.h> (expf, tanhf; link with -lm) and nothing else: `NAME_float_run(const float
*input, float *output)`, a static arena, const weights, sizes as `NAME_FLOAT_*` macros.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx_ir as ir
from jinja2 import Environment, PackageLoader, StrictUndefined

from qpass import __version__
from qpass.codegen.arena import plan_arena
from qpass.codegen.build import HARNESS, WARN_FLAGS
from qpass.codegen.emit import GeneratedC, comment
from qpass.codegen.emit import write as write_c
from qpass.codegen.layout_2d import fold_layout_transposes
from qpass.codegen.lower import reduce_axes, same_pads, window_2d
from qpass.codegen.lower_gru import TAGS as GRU_TAGS
from qpass.codegen.lower_gru import gather_steps as gather_gru_steps
from qpass.codegen.lower_gru import gru_key
from qpass.codegen.lower_lstm import TAGS as LSTM_TAGS
from qpass.codegen.lower_lstm import gather_steps, step_time
from qpass.codegen.lower_recurrent import Tags, joins_directions
from qpass.codegen.lower_rnn import TAGS as RNN_TAGS
from qpass.codegen.lower_rnn import gather_rnn_steps, rnn_key
from qpass.errors import CodegenError, UnsupportedOpError
from qpass.passes._util import const_value
from qpass.passes.unroll_lstm import DIRECTION_KEY as DIR_KEY
from qpass.passes.unroll_lstm import LSTM_KEY
from qpass.runtime_ref.program import Program, QTensor, Step

FLOAT_ARRAYS = ("weight", "weight_h", "bias")  # kernel params rendered as `static const float` arrays
INT_ARRAYS = ("dims", "strides")  # ... as `static const int32_t` arrays
F32 = "float32"

FloatEmitter = Callable[["FloatLowering", ir.Node], None]
FLOAT_EMITTERS: dict[str, FloatEmitter] = {}


def float_emitter(*ops: str) -> Callable[[FloatEmitter], FloatEmitter]:
    def wrap(fn: FloatEmitter) -> FloatEmitter:
        for op in ops:
            FLOAT_EMITTERS[op] = fn
        return fn

    return wrap


class FloatLowering:
    """Walks the float graph once, in order, and fills a float32 `Program`."""

    def __init__(self, model: ir.Model, name: str) -> None:
        self.model, self.name = model, name
        self.tensors: dict[str, QTensor] = {}
        self.steps: list[Step] = []
        self.constants: dict[str, np.ndarray] = {}
        self.by_value: dict[int, QTensor] = {}  # id(ir.Value) → its float tensor
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))

    # -- tensors --------------------------------------------------------------------------
    def new_tensor(self, shape, source: str, alias_of: QTensor | None = None, offset: int = 0) -> QTensor:
        t = QTensor(f"t{len(self.tensors)}", tuple(int(d) for d in shape), F32, 1.0, 0, source,
                    None if alias_of is None else alias_of.id, offset)
        self.tensors[t.id] = t
        return t

    def input_of(self, node: ir.Node, i: int) -> QTensor:
        """The float tensor behind a node's i-th input: an earlier result, the graph input or a constant."""
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} is missing")
        if id(value) not in self.by_value:
            data = const_value(value)
            if data is None:
                raise UnsupportedOpError(node.name or "", node.op_type, f"input {i} has no float kernel behind it")
            t = self.new_tensor(data.shape, value.name or "constant")
            self.constants[t.id] = np.asarray(data, dtype=np.float32)
            self.by_value[id(value)] = t
        return self.by_value[id(value)]

    def output_of(self, node: ir.Node, shape=None, alias_of: QTensor | None = None, offset: int = 0,
                  index: int = 0) -> QTensor:
        value = node.outputs[index]
        if shape is None:
            shape = _static_shape(node, value)
        elif value.shape is not None and _static(value.shape) and tuple(value.shape) != tuple(shape):
            raise UnsupportedOpError(node.name or "", node.op_type,
                                     f"output shape {tuple(value.shape)} differs from the computed {tuple(shape)}")
        t = self.new_tensor(shape, value.name or "", alias_of, offset)
        self.by_value[id(value)] = t
        return t

    def const(self, node: ir.Node, i: int, what: str) -> np.ndarray:
        data = const_value(node.inputs[i]) if i < len(node.inputs) else None
        if data is None:
            raise UnsupportedOpError(node.name or "", node.op_type, f"{what} (input {i}) must be a constant")
        return np.asarray(data)

    def step(self, kernel: str, inputs: list[QTensor], outputs: list[QTensor], origin: str, **params) -> Step:
        s = Step(kernel, [t.id for t in inputs], [t.id for t in outputs], params, origin)
        self.steps.append(s)
        return s

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> Program:
        graph = self.model.graph
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise UnsupportedOpError(graph.name or "graph", "Graph", "exactly one input and one output supported")
        x = graph.inputs[0]
        t_in = self.new_tensor(_static_shape(None, x), x.name or "input")
        self.by_value[id(x)] = t_in
        groups: dict[tuple[str, ...], list[ir.Node]] = defaultdict(list)
        for node in graph:
            key = _group_key(node)
            if key is not None:
                groups[key].append(node)
        done: set[tuple[str, ...]] = set()
        for node in graph:
            key = _group_key(node)
            if key is not None:
                if key not in done:
                    done.add(key)
                    ({"GRU": lower_gru_float, "RNN": lower_rnn_float}[key[0]] if len(key) == 3
                     else lower_lstm_float)(self, groups[key])
                continue
            if node.op_type == "Constant":
                continue
            fn = FLOAT_EMITTERS.get(node.op_type)
            if fn is None or node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(node.name or "", node.op_type,
                                         f"no float kernel for this op (supported: {sorted(FLOAT_EMITTERS)})")
            fn(self, node)
        y = graph.outputs[0]
        if id(y) not in self.by_value:
            raise UnsupportedOpError(y.name or "", "Output", "the graph output is not computed by a kernel")
        t_out = self.by_value[id(y)]
        program = Program(self.name, self.tensors, self.steps, t_in.id, t_out.id, self.constants)
        root, offset = program.view(t_out.id)
        if offset or self.tensors[root].size != t_out.size or root == program.root(t_in.id) or root in self.constants:
            # the caller's output buffer cannot hold the tensor it is a view of: copy the output out
            copy = self.new_tensor(t_out.shape, t_out.source)
            self.step("copy", [t_out], [copy], "output", n=t_out.size)
            program.output = copy.id
        _fuse_clamps(program)
        return program


def _group_key(node: ir.Node) -> tuple[str, ...] | None:
    """(name, direction) of an unrolled LSTM's node, ("GRU" | "RNN", name, direction) of an unrolled GRU's or RNN's,
    else None."""
    if LSTM_KEY in node.metadata_props:
        return node.metadata_props[LSTM_KEY], node.metadata_props.get(DIR_KEY, "0")
    return gru_key(node) or rnn_key(node)


def _static(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def _static_shape(node: ir.Node | None, value: ir.Value) -> tuple[int, ...]:
    if value.shape is None or not _static(value.shape):
        where = (node.name or node.op_type) if node is not None else (value.name or "input")
        raise UnsupportedOpError(where, node.op_type if node is not None else "Input",
                                 f"tensor {value.name!r} needs a static shape, got {value.shape}")
    return tuple(int(d) for d in value.shape)


def _fuse_clamps(program: Program) -> None:
    """The integer lowering's rule: a clamp right after a linear/add that alone reads its output moves into
    that kernel's bounds (so both backends run the same number of passes over memory)."""
    readers: dict[str, int] = defaultdict(int)
    for s in program.steps:
        for i in s.inputs:
            readers[program.root(i)] += 1
    kept: list[Step] = []
    for s in program.steps:
        prev = kept[-1] if kept else None
        if (s.kernel == "clamp" and prev is not None and prev.kernel in ("linear", "add")
                and prev.outputs[0] == s.inputs[0] and readers[program.root(s.inputs[0])] == 1
                and program.output != s.inputs[0]):
            prev.params["lo"] = max(prev.params["lo"], s.params["lo"])
            prev.params["hi"] = min(prev.params["hi"], s.params["hi"])
            program.tensors[s.outputs[0]].alias_of = prev.outputs[0]
            continue
        kept.append(s)
    program.steps[:] = kept


def lower(model: ir.Model, name: str) -> Program:
    """The float32 program of a float model (after the float passes)."""
    program = FloatLowering(model, name).run()
    fold_layout_transposes(program)
    return program


# -- emitters ---------------------------------------------------------------------------------
@float_emitter("Gemm", "MatMul")
def _linear(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    w = fl.const(node, 1, "the weight").astype(np.float64)
    if w.ndim != 2:
        raise UnsupportedOpError(node.name or "", node.op_type, f"the weight must be 2-D, got {w.shape}")
    alpha, beta = 1.0, 1.0
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            raise UnsupportedOpError(node.name or "", "Gemm", "transA=1 is not supported")
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        w_nk = w if node.attributes.get_int("transB", 0) else w.T
    else:
        w_nk = w.T
    n, k = w_nk.shape
    if x.shape[-1] != k:
        raise UnsupportedOpError(node.name or "", node.op_type, f"input {x.shape} does not fit weight {w.shape}")
    bias = np.zeros(n)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = fl.const(node, 2, "the bias").astype(np.float64)
        if c.size not in (1, n) or (c.ndim >= 1 and c.shape[-1] != c.size):
            raise UnsupportedOpError(node.name or "", node.op_type, f"bias {c.shape} must be per output column")
        bias = np.broadcast_to(c.reshape(-1), (n,)) * beta
    y = fl.output_of(node, (*x.shape[:-1], n))
    fl.step("linear", [x], [y], node.name or node.op_type, weight=(alpha * w_nk).astype(np.float32),
            bias=bias.astype(np.float32), rows=x.size // k, in_features=k, out_features=n,
            lo=-np.inf, hi=np.inf)


@float_emitter("Add", "Sub")
def _add(fl: FloatLowering, node: ir.Node) -> None:
    a, b = fl.input_of(node, 0), fl.input_of(node, 1)
    a_sign, b_sign = 1.0, (-1.0 if node.op_type == "Sub" else 1.0)
    y_shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    if a.size != int(np.prod(y_shape)):
        a, b, a_sign, b_sign = b, a, b_sign, a_sign  # the full-size operand goes first
    if a.size != int(np.prod(y_shape)) or not _trailing(b.shape, y_shape):
        raise UnsupportedOpError(node.name or "", node.op_type, f"broadcast {a.shape}, {b.shape} is not supported")
    y = fl.output_of(node, y_shape)
    fl.step("add", [a, b], [y], node.name or node.op_type, n=y.size, b_n=b.size, lo=-np.inf, hi=np.inf,
            a_sign=a_sign, b_sign=b_sign)


def _trailing(b_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> bool:
    """b repeats with period b.size over y (a scalar, y's own shape, or y's trailing dims)."""
    dims = list(b_shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return not dims or tuple(dims) == tuple(y_shape[len(y_shape) - len(dims):])


@float_emitter("Relu", "Clip")
def _clamp(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    lo, hi = -np.inf, np.inf
    if node.op_type == "Relu":
        lo = 0.0
    elif fl.opset < 11:
        lo, hi = node.attributes.get_float("min", -np.inf), node.attributes.get_float("max", np.inf)
    else:
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            lo = float(fl.const(node, 1, "min").reshape(()))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            hi = float(fl.const(node, 2, "max").reshape(()))
    y = fl.output_of(node, x.shape)
    fl.step("clamp", [x], [y], node.name or node.op_type, n=y.size, lo=lo, hi=hi)


@float_emitter("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
def _view(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    y = fl.output_of(node, alias_of=x)
    if y.size != x.size:
        raise UnsupportedOpError(node.name or "", node.op_type, f"{x.shape} → {y.shape} changes the size")


@float_emitter("Concat")
def _concat(fl: FloatLowering, node: ir.Node) -> None:
    """Concat (a Keras Bidirectional's halves): each input's blocks copied to its offset in the output."""
    parts = [fl.input_of(node, i) for i in range(len(node.inputs))]
    y = fl.output_of(node)
    axis = node.attributes.get_int("axis", 0) % len(y.shape)
    inner = int(np.prod(y.shape[axis + 1:]))
    chunks = [int(p.shape[axis]) * inner for p in parts]
    dims = [int(np.prod(y.shape[:axis])), sum(chunks)]
    for i, chunk in enumerate(chunks):
        dims += [chunk, sum(chunks[:i])]
    fl.step("concat", parts, [y], node.name or node.op_type, dims=np.array(dims, dtype=np.int32))


@float_emitter("Sigmoid", "Tanh")
def _unary(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    y = fl.output_of(node, x.shape)
    fl.step(node.op_type.lower(), [x], [y], node.name or node.op_type, n=y.size)


def _unary_expr(node: ir.Node) -> str:
    """The C expression of an element-wise op of `v` (float), its attributes as float literals."""
    def attr(name: str, default: float) -> str:
        return float_literal(node.attributes.get_float(name, default))

    alpha = {"LeakyRelu": 0.01, "Elu": 1.0, "Selu": 1.67326319217681884765625, "Celu": 1.0, "HardSigmoid": 0.2,
             "ThresholdedRelu": 1.0}
    a = attr("alpha", alpha.get(node.op_type, 1.0))
    exprs = {
        "LeakyRelu": f"(v < 0.0f ? {a} * v : v)", "Elu": f"(v < 0.0f ? {a} * (expf(v) - 1.0f) : v)",
        "Selu": f"{attr('gamma', 1.05070102214813232421875)} * (v <= 0.0f ? {a} * (expf(v) - 1.0f) : v)",
        "Celu": f"(fmaxf(0.0f, v) + fminf(0.0f, {a} * (expf(v / {a}) - 1.0f)))",
        "HardSigmoid": f"fmaxf(0.0f, fminf(1.0f, {a} * v + {attr('beta', 0.5)}))",
        "HardSwish": "(v * fmaxf(0.0f, fminf(1.0f, v / 6.0f + 0.5f)))",
        "Gelu": ("(0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v))))"
                 if node.attributes.get_string("approximate", "none") == "tanh"
                 else "(0.5f * v * (1.0f + erff(v * 0.70710678118f)))"),
        "Softplus": "log1pf(expf(v))", "Softsign": "(v / (1.0f + fabsf(v)))", "Exp": "expf(v)", "Erf": "erff(v)",
        "Mish": "(v * tanhf(log1pf(expf(v))))", "ThresholdedRelu": f"(v > {a} ? v : 0.0f)", "Neg": "(-v)",
        "Abs": "fabsf(v)", "Sin": "sinf(v)", "Cos": "cosf(v)", "Atan": "atanf(v)", "Sinh": "sinhf(v)",
        "Asinh": "asinhf(v)", "Round": "rintf(v)", "Floor": "floorf(v)", "Ceil": "ceilf(v)",
        "Sign": "(float)((v > 0.0f) - (v < 0.0f))",
    }
    return exprs[node.op_type]


UNARY_EXPR_OPS = ("LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Gelu", "Softplus", "Softsign",
                  "Exp", "Erf", "Mish", "ThresholdedRelu", "Neg", "Abs", "Sin", "Cos", "Atan", "Sinh", "Asinh",
                  "Round", "Floor", "Ceil", "Sign")


@float_emitter(*UNARY_EXPR_OPS)
def _unary_math(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    y = fl.output_of(node, x.shape)
    fl.step("unary", [x], [y], node.name or node.op_type, n=y.size, expr=_unary_expr(node))


POOL_OPS = ("AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


@float_emitter(*POOL_OPS)
def _pool(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    if node.op_type == "AveragePool":
        k = int(node.attributes["kernel_shape"].as_ints()[0])
        stride = list(node.attributes.get_ints("strides", [1]))[0]
        dil = list(node.attributes.get_ints("dilations", [1]))[0]
        pads = same_pads(node, x.shape[2], k, stride, dil)
        l_out = (x.shape[2] + pads[0] + pads[1] - dil * (k - 1) - 1) // stride + 1
        dims = [x.shape[1], x.shape[2], 1, l_out, k, stride, dil, pads[0]]
        shape = (1, x.shape[1], l_out)
        count_pad = node.attributes.get_int("count_include_pad", 0)
    else:
        axes = reduce_axes(node, len(x.shape))
        if axes is None or (axes and axes != list(range(axes[0], axes[-1] + 1))):
            raise UnsupportedOpError(node.name or "", node.op_type, "only constant, adjacent axes are supported")
        a0, a1 = (axes[0], axes[-1] + 1) if axes else (0, 0)
        length = int(np.prod(x.shape[a0:a1]))
        dims = [int(np.prod(x.shape[:a0])), length, int(np.prod(x.shape[a1:])), 1, length, 1, 1, 0]
        shape = _static_shape(node, node.outputs[0])
        count_pad = 0
    is_max = int(node.op_type in ("GlobalMaxPool", "ReduceMax"))
    y = fl.output_of(node, shape)
    fl.step("pool", [x], [y], node.name or node.op_type, dims=np.array(dims + [is_max, count_pad], np.int32))


@float_emitter("Softmax")
def _softmax(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    rank = len(x.shape)
    if fl.opset < 13:  # softmax over the flattened dims from `axis` on (default 1)
        axis = node.attributes.get_int("axis", 1) % rank
        n = int(np.prod(x.shape[axis:]))
    else:
        axis = node.attributes.get_int("axis", -1) % rank
        if axis != rank - 1:
            raise UnsupportedOpError(node.name or "", "Softmax", "only the last axis is supported")
        n = x.shape[-1]
    y = fl.output_of(node, x.shape)
    fl.step("softmax", [x], [y], node.name or "Softmax", rows=x.size // n, n=n)


def _conv_dims(node: ir.Node, x: QTensor, k: int, c_out: int) -> dict:
    def ints(name: str, default: list[int]) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.as_ints()) if attr is not None else default

    if len(x.shape) != 3 or x.shape[0] != 1:
        raise UnsupportedOpError(node.name or "", node.op_type, f"only 1-D, batch 1 is supported; input {x.shape}")
    if node.attributes.get_int("ceil_mode", 0):
        raise UnsupportedOpError(node.name or "", node.op_type, "ceil_mode is not supported")
    stride, dil = ints("strides", [1])[0], ints("dilations", [1])[0]
    c_in, l_in = x.shape[1], x.shape[2]
    pads = same_pads(node, l_in, k, stride, dil)
    l_out = (l_in + pads[0] + pads[1] - dil * (k - 1) - 1) // stride + 1
    groups = node.attributes.get_int("group", 1)
    return {"shape": (1, c_out, l_out), "dims": np.array([c_in, l_in, c_out, l_out, k, stride, dil, pads[0],
                                                          groups], dtype=np.int32)}


@float_emitter("Conv")
def _conv(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    w = fl.const(node, 1, "the weight")
    if w.ndim != 3:
        raise UnsupportedOpError(node.name or "", "Conv", "only 1-D convolution is supported (run squeeze-conv2d)")
    c_out = w.shape[0]
    bias = fl.const(node, 2, "the bias").reshape(-1) if len(node.inputs) > 2 and node.inputs[2] is not None else \
        np.zeros(c_out)
    d = _conv_dims(node, x, w.shape[2], c_out)
    y = fl.output_of(node, d["shape"])
    fl.step("conv1d", [x], [y], node.name or "Conv", dims=d["dims"], weight=w.astype(np.float32),
            bias=bias.astype(np.float32))


@float_emitter("MaxPool")
def _maxpool(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    k = list(node.attributes["kernel_shape"].as_ints())
    if len(k) != 1 or len([o for o in node.outputs if o is not None and o.uses()]) > 1:
        raise UnsupportedOpError(node.name or "", "MaxPool", "only 1-D pooling without indices is supported")
    d = _conv_dims(node, x, k[0], x.shape[1])
    y = fl.output_of(node, d["shape"])
    fl.step("maxpool1d", [x], [y], node.name or "MaxPool", dims=d["dims"])


@float_emitter("Transpose")
def _transpose(fl: FloatLowering, node: ir.Node) -> None:
    x = fl.input_of(node, 0)
    rank = len(x.shape)
    perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
    if rank > 6:
        raise UnsupportedOpError(node.name or "", "Transpose", "rank above 6 is not supported")
    in_strides = [int(np.prod(x.shape[i + 1:])) for i in range(rank)]
    y = fl.output_of(node, tuple(x.shape[p] for p in perm))
    fl.step("transpose", [x], [y], node.name or "Transpose", perm=perm,
            dims=np.array([x.shape[p] for p in perm] + [1] * (6 - rank), dtype=np.int32),
            strides=np.array([in_strides[p] for p in perm] + [0] * (6 - rank), dtype=np.int32))


# -- the re-rolled LSTM, GRU and RNN ---------------------------------------------------------
def _recurrent_input(fl: FloatLowering, nodes: list[ir.Node], tags: Tags,
                     gather: Callable[[list[ir.Node]], tuple[dict[int, dict[str, ir.Node]], int, bool]]):
    """One direction's name, steps by step and role, T, whether it runs backwards, and its [T, 1, I] / [1, T, I]
    input (as the integer lowerings read them; shared by the LSTM, the GRU and the RNN)."""
    name = nodes[0].metadata_props[tags.name]
    if joins_directions(nodes, tags):
        raise UnsupportedOpError(name, tags.op, f"bidirectional {tags.op}s are not in the float C baseline yet")
    steps, t_len, reverse = gather(nodes)
    x = fl.input_of(steps[0]["x"], 0)
    if len(x.shape) != 3 or x.size != t_len * x.shape[-1]:
        raise UnsupportedOpError(name, tags.op, f"input must be [T, 1, I] or [1, T, I] (batch 1); got {x.shape}")
    return name, steps, t_len, reverse, x


def _find(steps: dict[int, dict[str, ir.Node]], role: str) -> ir.Node | None:
    """The first step's node with `role` (step 0's recurrent product is folded away: it reads a zero h)."""
    return next((st[role] for st in steps.values() if role in st), None)


def _const_input(node: ir.Node | None, size: int) -> np.ndarray:
    """A node's constant input (a bias Add's), flattened, or zeros [size] without one."""
    consts = [const_value(v) for v in node.inputs] if node is not None else []
    return next((c for c in consts if c is not None), np.zeros(size)).reshape(-1)


def _recurrent_step(fl: FloatLowering, kernel: str, nodes: list[ir.Node], tags: Tags, x: QTensor, t_len: int,
                    reverse: bool, steps: dict[int, dict[str, ir.Node]], weights: tuple[np.ndarray, ...],
                    scratch: tuple[int, str] | None = None, **params) -> None:
    """The `kernel` step from x to the h sequence [T, 1, H] (plus a scratch buffer), weights (W [I, gH], R [H, gH],
    B) stored transposed as float arrays, and the views of its outputs."""
    name = nodes[0].metadata_props[tags.name]
    wx, wh, bias = weights
    hid = wh.shape[0]
    hseq = fl.new_tensor((t_len, 1, hid), f"{name} h")
    outs = [hseq] if scratch is None else [hseq, fl.new_tensor((scratch[0],), f"{name} {scratch[1]} (scratch)")]
    fl.step(kernel, [x], outs, f"{tags.op} {name}", t=t_len, n_in=wx.shape[0], hidden=hid, reverse=int(reverse),
            **params, weight=np.ascontiguousarray(wx.T, dtype=np.float32),
            weight_h=np.ascontiguousarray(wh.T, dtype=np.float32), bias=bias.astype(np.float32))
    _map_outputs(fl, nodes, steps, hseq, hid, tags.role, tags.op)


def lower_lstm_float(fl: FloatLowering, nodes: list[ir.Node]) -> None:
    """One `lstm` step for the tagged nodes of one direction (as lower_lstm.py reads them), and its views."""
    name, steps, t_len, reverse, x = _recurrent_input(fl, nodes, LSTM_TAGS, gather_steps)
    n_in = x.shape[-1]
    wx = fl.const(steps[0]["xw"], 1, "W")  # [I, 4H]
    hid = wx.shape[1] // 4
    hr = _find(steps, "hr")
    wh = fl.const(hr, 1, "R") if hr is not None else np.zeros((hid, 4 * hid))  # [H, 4H]; T = 1: never used
    bias = _const_input(steps[0].get("gates"), 4 * hid)
    if wx.shape != (n_in, 4 * hid) or wh.shape != (hid, 4 * hid) or bias.shape != (4 * hid,):
        raise UnsupportedOpError(name, "LSTM", f"W {wx.shape}, R {wh.shape}, B {bias.shape} do not fit I={n_in}")
    _recurrent_step(fl, "lstm", nodes, LSTM_TAGS, x, t_len, reverse, steps, (wx, wh, bias), (hid, "c"))


def _map_outputs(fl: FloatLowering, nodes: list[ir.Node], steps: dict[int, dict[str, ir.Node]], hseq: QTensor,
                 hid: int, role_key: str, what: str) -> None:
    """h_t, the Unsqueezes of Y and Y_h and Y's Concat become views of the h sequence; nothing else may leave
    (shared by the LSTM, the GRU and the RNN: `role_key` is the role tag, `what` the op named in errors)."""
    members = {id(n) for n in nodes}
    for s in range(max(steps) + 1):
        if "h" in steps[s]:  # the last h is gone when only Y_c was read
            fl.output_of(steps[s]["h"], (1, hid), alias_of=hseq, offset=step_time(steps[s]["x"]) * hid)
    for node in nodes:  # in graph order: an Unsqueeze's h is mapped before it
        role = node.metadata_props.get(role_key, "")
        if role in ("y", "y_h") and node.op_type == "Unsqueeze":
            src = fl.input_of(node, 0)
            fl.output_of(node, alias_of=src)
        elif role == "y" and node.op_type == "Concat":
            fl.output_of(node, alias_of=hseq)
        elif role != "h":
            for out in node.outputs:
                if out.is_graph_output() or any(id(u) not in members for u in out.consumers()):
                    raise UnsupportedOpError(node.name or "", node.op_type,
                                             f"{what} {role!r} output is used outside the {what}; only Y and Y_h are")



def lower_gru_float(fl: FloatLowering, nodes: list[ir.Node]) -> None:
    """One `gru` step for the tagged nodes of one direction (as lower_gru.py reads them), and its views."""
    name, steps, t_len, reverse, x = _recurrent_input(fl, nodes, GRU_TAGS, gather_gru_steps)
    first, n_in = steps[0], x.shape[-1]
    lbr = any("rn" in st for st in steps.values())
    wx = fl.const(first["xw"], 1, "W")  # [I, 3H]
    hid = wx.shape[1] // 3
    hr, hn = _find(steps, "hr"), _find(steps, "hn")
    wh = fl.const(hr, 1, "R") if hr is not None else np.zeros((hid, 3 * hid if lbr else 2 * hid))
    if not lbr:
        wh = np.concatenate([wh, fl.const(hn, 1, "Rn") if hn is not None else np.zeros((hid, hid))], axis=1)
    if not lbr:
        bias_n = np.zeros(hid)
    elif _find(steps, "hb") is not None:
        bias_n = _const_input(_find(steps, "hb"), 3 * hid)[2 * hid:]
    else:  # T = 1, recurrent terms folded away: r multiplies Rn·0 + bn = bn, a constant
        bias_n = _const_input(first["rn"], hid)
    bias = np.concatenate([_const_input(first.get("xb"), 3 * hid), bias_n])
    if wx.shape != (n_in, 3 * hid) or wh.shape != (hid, 3 * hid) or bias.shape != (4 * hid,):
        raise UnsupportedOpError(name, "GRU", f"W {wx.shape}, R {wh.shape}, B {bias.shape} do not fit I={n_in}")
    _recurrent_step(fl, "gru", nodes, GRU_TAGS, x, t_len, reverse, steps, (wx, wh, bias), (3 * hid, "gates"),
                    lbr=int(lbr))


def lower_rnn_float(fl: FloatLowering, nodes: list[ir.Node]) -> None:
    """One `rnn` step for the tagged nodes of one direction (as lower_rnn.py reads them), and its views."""
    name, steps, t_len, reverse, x = _recurrent_input(fl, nodes, RNN_TAGS, gather_rnn_steps)
    n_in = x.shape[-1]
    wx = fl.const(steps[0]["xw"], 1, "W")  # [I, H]
    hid = wx.shape[1]
    hr = _find(steps, "hr")
    wh = fl.const(hr, 1, "R") if hr is not None else np.zeros((hid, hid))  # T = 1: never used
    bias = _const_input(steps[0]["xb"], hid)
    if wx.shape != (n_in, hid) or wh.shape != (hid, hid) or bias.shape != (hid,):
        raise UnsupportedOpError(name, "RNN", f"W {wx.shape}, R {wh.shape}, B {bias.shape} do not fit I={n_in}")
    _recurrent_step(fl, "rnn", nodes, RNN_TAGS, x, t_len, reverse, steps, (wx, wh, bias),
                    relu=int(steps[0]["h"].op_type == "Relu"))


# -- C ----------------------------------------------------------------------------------------
def _env() -> Environment:
    return Environment(loader=PackageLoader("qpass.codegen", "templates"), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def float_literal(v: float) -> str:
    """The shortest C literal that reads back as the same float32 (±inf as ±HUGE_VALF from <math.h>)."""
    f = np.float32(v)
    if np.isnan(f):
        raise CodegenError("a constant of the float model is NaN")
    if np.isinf(f):
        return "HUGE_VALF" if f > 0 else "(-HUGE_VALF)"
    text = str(f)
    return (text if any(ch in text for ch in ".e") else text + ".0") + "f"


def render(program: Program, source: str = "model") -> GeneratedC:
    """NAME_float.c and NAME_float.h for a float32 program."""
    env = _env()
    # the planner sizes tensors by element width; float32 is as wide as int32
    arena = plan_arena(replace(program, tensors={k: replace(t, dtype="int32") for k, t in program.tensors.items()}))
    constants: list[dict] = []
    const_bytes = 0

    def add_const(values: np.ndarray, ctype: str) -> str:
        nonlocal const_bytes
        cname = f"qf_c{len(constants)}"
        values = np.asarray(values).reshape(-1)
        body = ",".join(float_literal(v) if ctype == "float" else str(int(v)) for v in values)
        constants.append({"cname": cname, "ctype": ctype, "count": max(1, values.size), "body": body or "0"})
        const_bytes += values.size * 4
        return cname

    buf = {tid: add_const(data, "float") for tid, data in program.constants.items()}
    in_root, out_root = program.root(program.input), program.root(program.output)

    def expr(tid: str) -> str:
        root, offset = program.view(tid)
        base = buf.get(root) or ("input" if root == in_root else "output" if root == out_root else None)
        if base is None:
            base, offset = "qf_arena", arena.offsets[root] // 4 + offset
        return f"({base} + {offset})" if offset else base

    modules: dict[str, object] = {}
    calls = []
    for step in program.steps:
        if step.kernel not in modules:
            modules[step.kernel] = env.get_template(f"float/{step.kernel}.c.j2").module
        consts = {k: add_const(v, "float") for k, v in step.params.items() if k in FLOAT_ARRAYS}
        consts |= {k: add_const(v, "int32_t") for k, v in step.params.items() if k in INT_ARRAYS}
        scalars = {k: float_literal(v) if isinstance(v, float | np.floating) else str(int(v))
                   for k, v in step.params.items() if isinstance(v, int | float | np.integer | np.floating)}
        ctx = {"inputs": [expr(i) for i in step.inputs], "output": expr(step.outputs[0]),
               "scratch": [expr(o) for o in step.outputs[1:]], "c": consts, "p": scalars,
               "e": {k: v for k, v in step.params.items() if isinstance(v, str)}}  # generated C expressions
        calls.append({"comment": comment(f"{step.kernel}: {step.origin}"),
                      "code": str(modules[step.kernel].call(ctx)).strip()})
    needs = sorted({h for m in modules.values() for h in getattr(m, "needs", [])})
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    ctx = {
        "name": f"{program.name}_float", "NAME": f"{program.name}_float".upper(), "version": __version__,
        "source": comment(source), "input": tin, "output": tout, "arena_bytes": arena.size,
        "arena_floats": arena.size // 4, "const_bytes": const_bytes, "helpers": needs,
        "kernel_defs": [str(m.define()).strip() for m in modules.values()],
        "constants": constants, "calls": calls,
    }
    return GeneratedC(env.get_template("float/model.c.j2").render(ctx),
                      env.get_template("float/model.h.j2").render(ctx), arena.size, const_bytes)


def generate(model: ir.Model, name: str, source: str = "model") -> GeneratedC:
    """Lower and render in one call: the float C of a float model after the float passes."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", name):
        raise CodegenError(f"{name!r} is not a C identifier")
    return render(lower(model, name), source)


def write(gen: GeneratedC, out_dir: Path, name: str) -> list[Path]:
    """NAME_float.c and NAME_float.h in out_dir."""
    return write_c(gen, out_dir, f"{name}_float")


def compile_and_run(c_file: Path, h_file: Path, name: str, inputs: np.ndarray, out_size: int,
                    cc: str = "gcc") -> np.ndarray:
    """Build NAME_float.c with the host harness, -Werror and all warnings, -lm; run it on float32 `inputs`."""
    if shutil.which(cc) is None:
        raise CodegenError(f"C compiler {cc!r} not found")
    api = f"{name}_float"
    with tempfile.TemporaryDirectory(prefix="qpass-fcc-") as tmp:
        tmpd = Path(tmp)
        shutil.copy(c_file, tmpd / c_file.name)
        shutil.copy(h_file, tmpd / h_file.name)
        (tmpd / "main.c").write_text(HARNESS.format(name=api, NAME=api.upper(), in_t="float", out_t="float"))
        exe = tmpd / "model"
        cmd = [cc, *WARN_FLAGS, "-O2", "-o", str(exe), str(tmpd / c_file.name), str(tmpd / "main.c"), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or proc.stderr.strip():
            raise CodegenError(f"compiling {c_file.name} failed or warned:\n{proc.stderr.strip()[:4000]}")
        run = subprocess.run([str(exe)], input=np.ascontiguousarray(inputs, dtype=np.float32).tobytes(),
                             capture_output=True, check=False, timeout=600)
        if run.returncode != 0:
            raise CodegenError(f"running the compiled {api} failed with exit code {run.returncode}")
    out = np.frombuffer(run.stdout, dtype=np.float32)
    if out.size != len(inputs) * out_size:
        raise CodegenError(f"the compiled {api} wrote {out.size} values, expected {len(inputs) * out_size}")
    return out.reshape(len(inputs), out_size)


# -- 2-D section (issue 13): Conv, MaxPool, AveragePool over [1, C, H, W] (the integer lowering's window_2d) -----
_CONV1D, _MAXPOOL1D, _POOL1D = FLOAT_EMITTERS["Conv"], FLOAT_EMITTERS["MaxPool"], FLOAT_EMITTERS["AveragePool"]


@float_emitter("Conv")
def _conv_2d(fl: FloatLowering, node: ir.Node) -> None:
    w = fl.const(node, 1, "the weight")
    if w.ndim != 4:
        _CONV1D(fl, node)
        return
    x = fl.input_of(node, 0)
    c_out, k = w.shape[0], (int(w.shape[2]), int(w.shape[3]))
    bias = fl.const(node, 2, "the bias").reshape(-1) if len(node.inputs) > 2 and node.inputs[2] is not None else \
        np.zeros(c_out)
    win = window_2d(node, x.shape, k)
    dims = [x.shape[1], win["h_in"], win["w_in"], c_out, win["h_out"], win["w_out"], *k, *win["stride"],
            *win["dilation"], win["pads"][0], win["pads"][1], node.attributes.get_int("group", 1), 0, 0]
    y = fl.output_of(node, (1, c_out, win["h_out"], win["w_out"]))
    fl.step("conv2d", [x], [y], node.name or "Conv", dims=np.array(dims, np.int32), weight=w.astype(np.float32),
            bias=bias.astype(np.float32))


@float_emitter("MaxPool", "AveragePool")
def _pool_2d(fl: FloatLowering, node: ir.Node) -> None:
    k = tuple(int(v) for v in node.attributes["kernel_shape"].as_ints())
    if len(k) != 2:
        (_MAXPOOL1D if node.op_type == "MaxPool" else _POOL1D)(fl, node)
        return
    x = fl.input_of(node, 0)
    win = window_2d(node, x.shape, k)
    is_max = int(node.op_type == "MaxPool")
    count_pad = node.attributes.get_int("count_include_pad", 0)
    dims = [x.shape[1], win["h_in"], win["w_in"], win["h_out"], win["w_out"], *k, *win["stride"], *win["dilation"],
            win["pads"][0], win["pads"][1], is_max, count_pad, 0, 0]
    y = fl.output_of(node, (1, x.shape[1], win["h_out"], win["w_out"]))
    fl.step("pool2d", [x], [y], node.name or node.op_type, dims=np.array(dims, np.int32))
