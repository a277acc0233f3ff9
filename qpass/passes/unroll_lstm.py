"""unroll-lstm: replace every ONNX LSTM by its per-timestep primitive ops, tagged so codegen can re-roll them.

    Y, Y_h, Y_c = LSTM(X, W, R, B, seq_lens, h0, c0, P)        for each direction d, step s = 0..T-1:
                                                                  t  = s (forward) or T-1-s (reverse half)
                                                                  x  = Gather(X, t, axis=layout)       [B, I]
                                                                  gates = x·Wᵀ + h·Rᵀ + (Wb + Rb)      [B, 4H]
                                                     →            i, o, f, c̃ = Split(gates)            [B, H] ×4
                                                                  i = σ(i + Pi⊙c)   f = σ(f + Pf⊙c)   g = tanh(c̃)
                                                                  c = f⊙c + i⊙g
                                                                  o = σ(o + Po⊙c)   h = o⊙tanh(c)
                                                                Y   = Concat(Unsqueeze(h) in time order)
                                                                Y_h = Unsqueeze(last h)   Y_c = Unsqueeze(last c)

Per step and direction the nodes are exactly, with the role each carries in `qpass.lstm.role`:

    x      Gather(X, t: int64 scalar, axis = 0 (layout 0) | 1 (layout 1))
    xw     MatMul(x, Wt)          Wt = W[d]ᵀ  [I, 4H]  (ONNX gate order i, o, f, c kept)
    hr     MatMul(h_prev, Rt)     Rt = R[d]ᵀ  [H, 4H]
    xh     Add(xw, hr)
    gates  Add(xh, Bsum)          Bsum = B[d, :4H] + B[d, 4H:]  (zeros without B)
    split  Split(gates, [H, H, H, H], axis=1) → gi, go, gf, gc
    peep_i_mul, peep_i   gi = Add(gi, Mul(c_prev, Pi))             (only with P)
    peep_f_mul, peep_f   gf = Add(gf, Mul(c_prev, Pf))             (only with P)
    clip_i, clip_f, clip_c   Clip(·, -clip, clip)                  (only with `clip`)
    i, f, g  Sigmoid(gi), Sigmoid(gf), Tanh(gc)
    fc, ig, c  Mul(f, c_prev), Mul(i, g), Add(fc, ig)
    peep_o_mul, peep_o   go = Add(go, Mul(c, Po))                  (only with P; uses the new c)
    clip_o   Clip(go, -clip, clip)                                 (only with `clip`)
    o      Sigmoid(go)
    tc, h  Tanh(c), Mul(o, tc)

Before step 0, h_prev/c_prev are `Gather(initial_h, d, axis=layout)` (roles "h0"/"c0", step "0") or, without
initial_h/initial_c, a constant zero initializer [B, H] (one per direction and state; no node). An initial state
that is a constant of zeros (PyTorch always writes one: `torch.zeros` / its default state, folded by
fold-constants) counts as absent. Matching ONNX and onnxruntime, a peephole is added before the clip and the clip
is applied to the activations' inputs.

The outputs are built only if used (a reader or a graph output), with step "-1":
    y    Unsqueeze each h to [1, 1, B, H] (layout 0) or [B, 1, 1, H] (layout 1), Concat them in time order
         (skipped when T = 1), then for two directions Concat the halves on the direction axis
    y_h  Unsqueeze the last processed h to [1, B, H] / [B, 1, H]; for two directions Concat the halves
    y_c  the same with c
A node that joins both directions carries direction "-1". The LSTM's output names move to the new values.

A reader of Y that takes one time step, a chain of layout ops (Squeeze, Transpose, Reshape, ...) ending in a
Gather with a constant index (PyTorch's `out[:, -1]`: Squeeze(Y, 1) → Transpose → Gather(-1, axis 1)) or a
constant one-step Slice (tf2onnx's `strided_slice` of the last step), reads that step's h instead (through one
untagged Reshape when the shapes differ): the whole sequence is then not built for it. A reader that takes one
direction's whole sequence in time order (tf2onnx's Slice of a bidirectional Y on its direction axis) reads
that direction's half of Y, and the two halves are joined only if something still reads all of Y; one that
takes both directions at one time step (PyTorch's bidirectional `out[:, -1]`) reads their two h side by side
(untagged Unsqueeze → Concat). The chain is
evaluated on an index array, so any layout that selects exactly h of one step and direction, in its [B, H]
order (or one direction's [T, B, H]), qualifies.

Every created node carries metadata_props `qpass.pass` = "unroll-lstm", `qpass.lstm` (the LSTM's name, or a
generated one), `qpass.lstm.direction`, `qpass.lstm.step`, `qpass.lstm.role`. Weights are shared by all steps
of a direction, so a later lowering can run one loop body for all of them.

Refused with UnsupportedOpError: unknown T/B/I/H, non-constant W/R/B/P, sequence_lens not a constant equal to
T everywhere, activations other than Sigmoid/Tanh/Tanh, input_forget=1, a model opset below 13 (the rewrite uses
the opset-13 forms of Split and Unsqueeze). activation_alpha/beta are ignored: Sigmoid and Tanh take none.
Only the main graph is rewritten (an LSTM inside a Loop/If/Scan body is left as is).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from qpass.errors import UnsupportedOpError
from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer, single_consumer
from qpass.passes._util import fresh_name as _unique  # the name unroll-gru imports from here


def tag_keys(op: str) -> tuple[str, str, str, str]:
    """The metadata keys an unroll pass tags its nodes with: `qpass.<op>` (the layer's name), and its
    `.direction`, `.step` and `.role`."""
    return f"qpass.{op}", f"qpass.{op}.direction", f"qpass.{op}.step", f"qpass.{op}.role"


LSTM_KEY, DIRECTION_KEY, STEP_KEY, ROLE_KEY = tag_keys("lstm")

_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
_MIN_OPSET = 13


def _is_used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def recurrence_shapes(node: ir.Node, refuse: Callable[[str], UnsupportedOpError], *, gates: int, dirs: int,
                      layout: int) -> tuple[ir.Value, np.ndarray, np.ndarray, int, int, int, int]:
    """An ONNX LSTM/GRU/RNN's X, constant W and R and its sizes (steps, batch, inputs, hidden), checked
    against each other; `gates` is 4 for an LSTM, 3 for a GRU."""
    x = _input(node, 0)
    if x is None or x.shape is None or len(x.shape) != 3 or not all(isinstance(d, int) for d in x.shape):
        raise refuse(f"X must have a static 3-D shape, got {None if x is None else x.shape}")
    steps, batch, n_in = (x.shape[0], x.shape[1], x.shape[2]) if layout == 0 else (x.shape[1], x.shape[0],
                                                                                   x.shape[2])
    w, r = const_value(_input(node, 1)), const_value(_input(node, 2))
    if w is None or r is None:
        raise refuse("W and R must be constants")
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != dirs or r.shape[0] != dirs or r.shape[1] != gates * r.shape[2]:
        direction = node.attributes.get_string("direction", "forward")
        raise refuse(f"W {w.shape} / R {r.shape} do not fit direction {direction!r}")
    hidden = r.shape[2]
    if node.attributes.get_int("hidden_size", hidden) != hidden or w.shape[1] != gates * hidden \
            or w.shape[2] != n_in:
        raise refuse(f"W {w.shape}, R {r.shape}, hidden_size and X {x.shape} disagree")
    if steps < 1 or batch < 1:
        raise refuse(f"empty sequence or batch: X {x.shape}")
    return x, w, r, steps, batch, n_in, hidden


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _output(node: ir.Node, index: int) -> ir.Value | None:
    return node.outputs[index] if len(node.outputs) > index else None


@dataclass
class _Lstm:
    """An LSTM node checked for support, with its constants in the compute dtype."""

    node: ir.Node
    name: str  # the node's name, or a generated unique one
    dirs: int
    reverse: tuple[bool, ...]  # per direction: does it walk time backwards
    layout: int
    steps: int
    batch: int
    inputs: int
    hidden: int
    dtype: np.dtype
    w: np.ndarray  # [dirs, 4H, I]
    r: np.ndarray  # [dirs, 4H, H]
    bias: np.ndarray  # [dirs, 4H]: Wb + Rb
    peep: np.ndarray | None  # [dirs, 3H] in order i, o, f
    clip: float | None


def refuser(node: ir.Node, name: str, pass_name: str) -> Callable[[str], UnsupportedOpError]:
    """The error a pass raises when it cannot unroll `node`: it names the node (or its generated name)."""

    def refuse(message: str) -> UnsupportedOpError:
        return UnsupportedOpError(node.name or name, node.op_type, f"{pass_name}: {message}")

    return refuse


def parse_recurrence(node: ir.Node, name: str, refuse: Callable[[str], UnsupportedOpError], *, gates: int,
                     states: int, sum_bias: bool) -> _Lstm:
    """The checks an ONNX LSTM/GRU/RNN shares: direction, layout, X/W/R (`recurrence_shapes`), B a constant
    [dirs, 2·gates·H] (zeros when absent; summed to Wb + Rb [dirs, gates·H] with `sum_bias`), sequence_lens equal
    to T, the `states` initial states (inputs 5, 6, ...) of static shape. The record has no peephole."""
    attrs = node.attributes
    direction = attrs.get_string("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise refuse(f"unknown direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    layout = attrs.get_int("layout", 0)
    if layout not in (0, 1):
        raise refuse(f"unknown layout {layout}")
    x, w, r, steps, batch, n_in, hidden = recurrence_shapes(node, refuse, gates=gates, dirs=dirs, layout=layout)
    dtype = np.dtype(x.dtype.numpy() if x.dtype is not None else w.dtype)
    b_in = _input(node, 3)
    bias = np.zeros((dirs, 2 * gates * hidden), dtype) if b_in is None else const_value(b_in)
    if bias is None or bias.shape != (dirs, 2 * gates * hidden):
        raise refuse(f"B must be a constant [{dirs}, {2 * gates * hidden}]")
    if sum_bias:
        bias = bias[:, :gates * hidden] + bias[:, gates * hidden:]
    seq_in = _input(node, 4)
    if seq_in is not None:
        seq = const_value(seq_in)
        if seq is None or seq.size != batch or not np.all(seq == steps):
            raise refuse(f"sequence_lens must be a constant equal to T={steps} for every batch entry")
    state_shape = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    for k, what in zip(range(5, 5 + states), ("initial_h", "initial_c"), strict=False):
        state = _input(node, k)
        if state is not None and (state.shape is None or tuple(state.shape) != state_shape):
            raise refuse(f"{what} must have the static shape {list(state_shape)}, got {state.shape}")
    reverse = (False, True) if dirs == 2 else (direction == "reverse",)
    return _Lstm(node, name, dirs, reverse, layout, steps, batch, n_in, hidden, dtype, w.astype(dtype),
                 r.astype(dtype), bias.astype(dtype), None, attrs.get_float("clip", None))


def check_activations(node: ir.Node, refuse: Callable[[str], UnsupportedOpError], dirs: int,
                      defaults: tuple[str, ...]) -> None:
    """Refuse `activations` other than `defaults` (lower case, one direction's) for every direction."""
    acts = node.attributes.get_strings("activations", None)
    if acts is not None and tuple(a.lower() for a in acts) != defaults * dirs:
        raise refuse(f"activations {list(acts)} are not the defaults {', '.join(a.title() for a in defaults)}")


def _parse(node: ir.Node, name: str) -> _Lstm:
    """Read an LSTM node, or raise UnsupportedOpError saying why it cannot be unrolled."""
    refuse = refuser(node, name, "unroll-lstm")
    lstm = parse_recurrence(node, name, refuse, gates=4, states=2, sum_bias=True)
    if node.attributes.get_int("input_forget", 0) != 0:
        raise refuse("input_forget=1 (coupled input and forget gates) is not supported")
    check_activations(node, refuse, lstm.dirs, _DEFAULT_ACTIVATIONS)
    p_in = _input(node, 7)
    if p_in is not None:
        peep = const_value(p_in)
        if peep is None or peep.shape != (lstm.dirs, 3 * lstm.hidden):
            raise refuse(f"P must be a constant [{lstm.dirs}, {3 * lstm.hidden}]")
        lstm.peep = peep.astype(lstm.dtype)
    return lstm


class _Builder:
    """Creates the nodes of one LSTM's unrolling, each tagged and named, in a list to insert at once."""

    keys = (LSTM_KEY, DIRECTION_KEY, STEP_KEY, ROLE_KEY)  # the tags: unroll-gru uses its own

    def __init__(self, qpass: QPass, graph: ir.Graph, lstm: _Lstm, taken: set[str]) -> None:
        self.qpass, self.graph, self.lstm, self.taken = qpass, graph, lstm, taken
        self.base = re.sub(r"[^0-9A-Za-z_.]", "_", lstm.name)
        self.type = ir.TensorType(ir.DataType.from_numpy(lstm.dtype))
        self.nodes: list[ir.Node] = []
        self.reads: list[ir.Node] = []  # untagged Reshapes of one step's h, for readers of one step of Y

    def const(self, hint: str, array: np.ndarray) -> ir.Value:
        return new_initializer(self.graph, _unique(self.taken, f"{self.base}_{hint}"), array)

    def op(self, op_type: str, inputs: list[ir.Value], shape: tuple[int, ...], *, d: int, s: int, role: str,
           attrs: dict[str, int] | None = None, names: tuple[str, ...] = ("",), tag: str = "") -> list[ir.Value]:
        """Append one tagged node named `{lstm}_d{d}_s{s}_{role}{tag}`; one output per entry of `names` (a
        suffix to the node name), each with `shape` and the LSTM's dtype. d = -1 / s = -1 read "dall" / no step."""
        where = f"d{d}" if d >= 0 else "dall"
        name = _unique(self.taken, f"{self.base}_{where}_s{s}_{role}{tag}" if s >= 0
                       else f"{self.base}_{where}_{role}{tag}")
        values = [ir.Value(name=_unique(self.taken, name + suffix) if suffix else name, shape=ir.Shape(shape),
                           type=self.type) for suffix in names]
        node = ir.node(op_type, inputs, attrs, outputs=values, name=name, metadata_props=dict(zip(
            self.keys, (self.lstm.name, str(d), str(s), role), strict=True)))
        self.nodes.append(self.qpass.mark(node))
        return values

    def clip_bounds(self) -> tuple[ir.Value, ir.Value] | None:
        """The constants -clip and clip, or None without `clip`."""
        clip, dtype = self.lstm.clip, self.lstm.dtype
        if clip is None:
            return None
        return self.const("clip_lo", np.array(-clip, dtype)), self.const("clip_hi", np.array(clip, dtype))

    def time_index(self) -> list[ir.Value]:
        """One int64 scalar constant per time step, the Gather index of X."""
        return [self.const(f"t{t}", np.array(t, np.int64)) for t in range(self.lstm.steps)]


@register_pass("unroll-lstm")
class UnrollLstmPass(QPass):
    """Unroll every LSTM into per-timestep MatMul/Add/Split/Sigmoid/Tanh/Mul ops tagged for re-rolling."""

    op_type: ClassVar[str] = "LSTM"  # the recurrence this pass unrolls: unroll-gru and unroll-rnn set theirs

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        found = [n for n in graph if n.op_type == self.op_type and n.domain in ("", "ai.onnx")]
        if not found:
            return ir.passes.PassResult(model, False)
        taken = _all_names(graph)
        parsed = []
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        for node in found:
            name = node.name or _unique(taken, self.op_type)
            if opset < _MIN_OPSET:
                raise UnsupportedOpError(node.name or name, self.op_type,
                                         f"{self.name} needs opset >= {_MIN_OPSET}, the model has {opset}")
            parsed.append(self._parse(node, name))  # check every node before changing anything
        for one in parsed:
            self._unroll(graph, one, taken)
        return ir.passes.PassResult(model, True)

    @staticmethod
    def _parse(node: ir.Node, name: str) -> _Lstm:
        return _parse(node, name)

    def _unroll(self, graph: ir.Graph, lstm: _Lstm, taken: set[str]) -> None:
        node, H, T = lstm.node, lstm.hidden, lstm.steps
        b = _Builder(self, graph, lstm, taken)
        x, h_init, c_init = node.inputs[0], _nonzero_state(node, 5), _nonzero_state(node, 6)
        split = b.const("split", np.array([H] * 4, np.int64))
        clip, time_index = b.clip_bounds(), b.time_index()
        hs: list[list[ir.Value]] = []  # per direction, h in processing order
        last_c: list[ir.Value] = []
        for d in range(lstm.dirs):
            wt = b.const(f"d{d}_Wt", np.ascontiguousarray(lstm.w[d].T))
            rt = b.const(f"d{d}_Rt", np.ascontiguousarray(lstm.r[d].T))
            bsum = b.const(f"d{d}_Bsum", lstm.bias[d])
            peep = None if lstm.peep is None else tuple(
                b.const(f"d{d}_P{g}", lstm.peep[d, k * H:(k + 1) * H]) for k, g in enumerate("iof"))
            index = None if h_init is None and c_init is None else b.const(f"dir{d}", np.array(d, np.int64))
            h = self._initial(b, h_init, index, d, "h0")
            c = self._initial(b, c_init, index, d, "c0")
            hs.append([])
            for s in range(T):
                t = T - 1 - s if lstm.reverse[d] else s
                h, c = self._step(b, d, s, x, time_index[t], h, c, wt, rt, bsum, split, peep, clip)
                hs[d].append(h)
            last_c.append(c)
        self._finish(graph, b, hs, {2: (last_c, "y_c")})

    def _finish(self, graph: ir.Graph, b: _Builder, hs: list[list[ir.Value]],
                states: dict[int, tuple[list[ir.Value], str]]) -> None:
        """Route the readers of one step of Y to that step's h, build the used outputs (Y, Y_h and the extra
        `states`: output index → (last value per direction, role)), insert the nodes and remove the recurrence."""
        node, T, taken = b.lstm.node, b.lstm.steps, b.taken
        lstm = b.lstm
        halves: dict[int, ir.Value] = {}
        for chain, t, d in _step_reads(lstm):  # Y read at one time step (t >= 0): that step's h; one direction's
            if t < 0:                          # whole sequence (t = -1): that direction's half of Y; both
                h = halves.setdefault(d, self._stack_half(b, hs, d))  # directions at time t (d = -1): their h
            elif d < 0:                                                # side by side
                h = self._both_at(b, hs, t)
            else:
                h = hs[d][T - 1 - t if lstm.reverse[d] else t]
            end = chain[-1].outputs[0]
            if h.shape != end.shape:
                shape = b.const("step_shape", np.array(list(end.shape), np.int64))
                reshape = self.mark(ir.node("Reshape", [h, shape], name=_unique(taken, f"{b.base}_d{d}_t{t}_read")))
                reshape.outputs[0].shape, reshape.outputs[0].type = ir.Shape(end.shape), end.type
                b.reads.append(reshape)
                h = reshape.outputs[0]
            ir.convenience.replace_all_uses_with(end, h)
            for n in reversed(chain):
                graph.remove(n, safe=True)

        results: dict[int, ir.Value] = {}
        if _is_used(_output(node, 0)):
            results[0] = self._stack_y(b, hs, halves)
        if _is_used(_output(node, 1)):
            results[1] = self._stack_last(b, [h[-1] for h in hs], "y_h")
        for index, (last, role) in states.items():
            if _is_used(_output(node, index)):
                results[index] = self._stack_last(b, last, role)

        graph.insert_before(node, b.nodes + b.reads)
        for index, new in results.items():
            old = node.outputs[index]
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
            if old.name:
                taken.discard(new.name)
                new.name, old.name = old.name, None
        graph.remove(node, safe=True)

    @staticmethod
    def _initial(b: _Builder, init: ir.Value | None, index: ir.Value | None, d: int, role: str) -> ir.Value:
        """h_prev / c_prev of step 0: Gather(init, d) from initial_h / initial_c, or a constant zero [B, H]."""
        lstm = b.lstm
        if init is None or index is None:
            return b.const(f"d{d}_{role}_zeros", np.zeros((lstm.batch, lstm.hidden), lstm.dtype))
        return b.op("Gather", [init, index], (lstm.batch, lstm.hidden), d=d, s=0, role=role,
                    attrs={"axis": lstm.layout})[0]

    @staticmethod
    def _step(b: _Builder, d: int, s: int, x: ir.Value, t: ir.Value, h_prev: ir.Value, c_prev: ir.Value,
              wt: ir.Value, rt: ir.Value, bsum: ir.Value, split: ir.Value,
              peep: tuple[ir.Value, ir.Value, ir.Value] | None,
              clip: tuple[ir.Value, ir.Value] | None) -> tuple[ir.Value, ir.Value]:
        """One cell update; returns (h_t, c_t)."""
        lstm = b.lstm
        bh, b4h = (lstm.batch, lstm.hidden), (lstm.batch, 4 * lstm.hidden)

        def op(op_type: str, inputs: list[ir.Value], role: str, shape: tuple[int, ...] = bh, **kw) -> ir.Value:
            return b.op(op_type, inputs, shape, d=d, s=s, role=role, **kw)[0]

        def peephole(gate: ir.Value, c: ir.Value, p: ir.Value, g: str) -> ir.Value:
            return op("Add", [gate, op("Mul", [c, p], f"peep_{g}_mul")], f"peep_{g}")

        def clipped(gate: ir.Value, g: str) -> ir.Value:
            return gate if clip is None else op("Clip", [gate, *clip], f"clip_{g}")

        x_t = op("Gather", [x, t], "x", (lstm.batch, lstm.inputs), attrs={"axis": lstm.layout})
        xw = op("MatMul", [x_t, wt], "xw", b4h)
        hr = op("MatMul", [h_prev, rt], "hr", b4h)
        xh = op("Add", [xw, hr], "xh", b4h)
        gates = op("Add", [xh, bsum], "gates", b4h)
        gi, go, gf, gc = b.op("Split", [gates, split], bh, d=d, s=s, role="split", attrs={"axis": 1},
                              names=("_i", "_o", "_f", "_c"))
        if peep is not None:
            gi = peephole(gi, c_prev, peep[0], "i")
            gf = peephole(gf, c_prev, peep[2], "f")
        i = op("Sigmoid", [clipped(gi, "i")], "i")
        f = op("Sigmoid", [clipped(gf, "f")], "f")
        g = op("Tanh", [clipped(gc, "c")], "g")
        c = op("Add", [op("Mul", [f, c_prev], "fc"), op("Mul", [i, g], "ig")], "c")
        if peep is not None:
            go = peephole(go, c, peep[1], "o")
        o = op("Sigmoid", [clipped(go, "o")], "o")
        h = op("Mul", [o, op("Tanh", [c], "tc")], "h")
        return h, c

    def _both_at(self, b: _Builder, hs: list[list[ir.Value]], t: int) -> ir.Value:
        """Every direction's h at time t: [dirs, B, H] (layout 0) or [B, dirs, H] (layout 1), untagged nodes."""
        lstm = b.lstm
        T, B, H, layout = lstm.steps, lstm.batch, lstm.hidden, lstm.layout
        axes = b.const("both_axes", np.array([layout], np.int64))
        parts = []
        for d in range(lstm.dirs):
            h = hs[d][T - 1 - t if lstm.reverse[d] else t]
            node = self.mark(ir.node("Unsqueeze", [h, axes], name=_unique(b.taken, f"{b.base}_d{d}_t{t}_both")))
            node.outputs[0].shape, node.outputs[0].type = ir.Shape((1, B, H) if layout == 0 else (B, 1, H)), b.type
            b.reads.append(node)
            parts.append(node.outputs[0])
        node = self.mark(ir.node("Concat", parts, {"axis": layout}, name=_unique(b.taken, f"{b.base}_t{t}_both")))
        node.outputs[0].shape = ir.Shape((lstm.dirs, B, H) if layout == 0 else (B, lstm.dirs, H))
        node.outputs[0].type = b.type
        b.reads.append(node)
        return node.outputs[0]

    @staticmethod
    def _stack_half(b: _Builder, hs: list[list[ir.Value]], d: int) -> ir.Value:
        """One direction's Y: [T, 1, B, H] (layout 0) or [B, T, 1, H] (layout 1), its h in time order."""
        lstm = b.lstm
        T, B, H, layout = lstm.steps, lstm.batch, lstm.hidden, lstm.layout
        axes = b.const("y_axes", np.array([0, 1] if layout == 0 else [1, 2], np.int64))
        one = (1, 1, B, H) if layout == 0 else (B, 1, 1, H)
        per_dir = (T, 1, B, H) if layout == 0 else (B, T, 1, H)
        in_time = hs[d][::-1] if lstm.reverse[d] else hs[d]
        parts = [b.op("Unsqueeze", [h, axes], one, d=d, s=-1, role="y", tag=f"_t{t}")[0] for t, h in enumerate(in_time)]
        return parts[0] if T == 1 else b.op("Concat", parts, per_dir, d=d, s=-1, role="y", attrs={"axis": layout})[0]

    @staticmethod
    def _stack_y(b: _Builder, hs: list[list[ir.Value]], halves: dict[int, ir.Value]) -> ir.Value:
        """Y: [T, dirs, B, H] (layout 0) or [B, T, dirs, H] (layout 1) from each direction's h in time order."""
        lstm = b.lstm
        T, B, H, layout = lstm.steps, lstm.batch, lstm.hidden, lstm.layout
        parts = [halves[d] if d in halves else UnrollLstmPass._stack_half(b, hs, d) for d in range(lstm.dirs)]
        if len(parts) == 1:
            return parts[0]
        full = (T, 2, B, H) if layout == 0 else (B, T, 2, H)
        return b.op("Concat", parts, full, d=-1, s=-1, role="y", attrs={"axis": layout + 1})[0]

    @staticmethod
    def _stack_last(b: _Builder, last: list[ir.Value], role: str) -> ir.Value:
        """Y_h / Y_c: [dirs, B, H] (layout 0) or [B, dirs, H] (layout 1)."""
        lstm = b.lstm
        B, H, layout = lstm.batch, lstm.hidden, lstm.layout
        axes = b.const(f"{role}_axes", np.array([layout], np.int64))
        one = (1, B, H) if layout == 0 else (B, 1, H)
        parts = [b.op("Unsqueeze", [v, axes], one, d=d, s=-1, role=role)[0] for d, v in enumerate(last)]
        if len(parts) == 1:
            return parts[0]
        full = (2, B, H) if layout == 0 else (B, 2, H)
        return b.op("Concat", parts, full, d=-1, s=-1, role=role, attrs={"axis": layout})[0]


def _nonzero_state(node: ir.Node, index: int) -> ir.Value | None:
    """initial_h / initial_c, or None when absent or a constant of zeros (the same as absent)."""
    value = _input(node, index)
    const = const_value(value)
    return None if const is not None and not np.any(const) else value


_LAYOUT = {"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Flatten", "Identity"}
_SELECT = {"Gather", "Slice"}  # a reader chain of Y ends in one of these


def _through(node: ir.Node, a: np.ndarray) -> np.ndarray | None:
    """What a layout op or a constant-index Gather does to an array, when known statically."""
    out = node.outputs[0].shape
    if out is None or not all(isinstance(d, int) for d in out):
        return None
    if node.op_type == "Transpose":
        a = np.transpose(a, node.attributes.get_ints("perm", None))
    elif node.op_type == "Gather":
        index = const_value(node.inputs[1])
        if index is None or index.size != 1 or np.issubdtype(index.dtype, np.floating):
            return None
        a = np.take(a, index, axis=node.attributes.get_int("axis", 0))
    elif node.op_type == "Slice":
        args = [const_value(v) if v is not None else None for v in node.inputs[1:5]]
        if any(v is None for v in args[:2]) or any(v is None for v, i in zip(args[2:], node.inputs[3:5],
                                                                              strict=False) if i is not None):
            return None
        starts, ends = args[0], args[1]
        axes = args[2] if len(args) > 2 and args[2] is not None else np.arange(starts.size)
        steps = args[3] if len(args) > 3 and args[3] is not None else np.ones(starts.size, np.int64)
        index = [slice(None)] * a.ndim
        for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
            dim = a.shape[int(ax)]
            index[int(ax)] = slice(int(np.clip(st, -dim - 1, dim)), int(np.clip(en, -dim - 1, dim)), int(sp))
        a = a[tuple(index)]
    elif any(v is not None and const_value(v) is None for v in node.inputs[1:]):
        return None  # a shape or axes computed at run time
    return a.reshape(tuple(out)) if a.size == int(np.prod(out)) else None


def _step_reads(lstm: _Lstm) -> list[tuple[list[ir.Node], int, int]]:
    """Readers of Y that take exactly one step's h, (layout ops ending in the Gather or Slice, time t, direction d),
    one direction's whole sequence in time order (..., t = -1, d) or both directions' h at time t (..., t, -1)."""
    y = _output(lstm.node, 0)
    if y is None or y.is_graph_output():
        return []
    T, B, H, dirs = lstm.steps, lstm.batch, lstm.hidden, lstm.dirs
    y_shape = (T, dirs, B, H) if lstm.layout == 0 else (B, T, dirs, H)
    index = np.arange(T * dirs * B * H).reshape(y_shape)
    found = []
    for reader in {id(n): n for n in y.consumers()}.values():
        chain, node, a, best = [], reader, index, None
        while node is not None and (node.op_type in _LAYOUT or node.op_type in _SELECT) and node.inputs[0] is (
                chain[-1].outputs[0] if chain else y):
            a = _through(node, a)
            if a is None or node.outputs[0].is_graph_output():
                break
            chain.append(node)
            if node.op_type in _SELECT:  # the longest chain that selects a step, a direction or both: the best
                what = _selected(a, index, lstm)
                best = (list(chain), *what) if what is not None else best
            node = single_consumer(node.outputs[0])
        if best is not None:
            found.append(best)
    return found


def _selected(a: np.ndarray, index: np.ndarray, lstm: _Lstm) -> tuple[int, int] | None:
    """(t, d) when `a` (Y's element indices after a reader chain) is one step's h of direction d, (-1, d) when it is
    direction d's whole sequence, (t, -1) when it is both directions at time t; else None."""
    T, B, H, dirs, layout = lstm.steps, lstm.batch, lstm.hidden, lstm.dirs, lstm.layout
    if a.size not in (B * H, T * B * H, dirs * B * H):
        return None
    first = np.unravel_index(int(a.reshape(-1)[0]), index.shape)
    t, d = (int(first[0]), int(first[1])) if layout == 0 else (int(first[1]), int(first[2]))
    if a.size == B * H:
        block = index[t, d] if layout == 0 else index[:, t, d]
    elif a.size == dirs * B * H and dirs == 2:
        d, block = -1, index[t] if layout == 0 else index[:, t]
    else:
        t, block = -1, index[:, d] if layout == 0 else index[:, :, d]
    return (t, d) if np.array_equal(a.reshape(-1), block.reshape(-1)) else None


def _all_names(graph: ir.Graph) -> set[str]:
    """Every value and node name in the graph and its subgraphs, so new names can avoid them."""
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        names.update(v.name for v in (*node.inputs, *node.outputs) if v is not None and v.name)
        if node.name:
            names.add(node.name)
    return names
