"""keras-lstm: replace the Loop that tf2onnx emits for a Keras LSTM layer by one ONNX LSTM node.

With Keras 3, tf2onnx leaves the layer's `while` loop as an ONNX Loop around the cell:

    Xt = <time-major input [T,B,I]>                       (go_backwards: Xt = ReverseSequence(X, [T..]))
    _, h_T, c_T, Wk, Rk, bk, H = Loop(T, cond0, t=0, h0, c0, Wk, Rk, bk) {
        x = Gather(Xt, t)
        z = Gemm(x, Wk, Squeeze(MatMul(h, Rk))) + bk      (or MatMul/Add in any order)
        zi, zf, zc, zo = Split(z, 4, axis=-1)             (Keras gate order i, f, c, o)
        c' = σ(zf)·c + σ(zi)·tanh(zc)
        h' = σ(zo)·tanh(c')
        return t+1 < T and iter < T,  t+1, h', c', Wk, Rk, bk,  scan h'
    }
    last = Squeeze(Slice(H, [-1:], axis 0), 0)            (return_sequences=False)
→
    Y, Y_h, Y_c = LSTM(Xt, W, R, B, , h0?, c0?, hidden_size=H, layout=0)
    H    = Squeeze(Y, 1)                [T,B,H]   only if something still reads the whole sequence
    h_T  = last = Squeeze(Y_h, 0)       [B,H]
    c_T  = Squeeze(Y_c, 0)              [B,H]

    W = Wkᵀ and R = Rkᵀ with gate blocks reordered (i, f, c, o) → (i, o, f, c):  [1,4H,I], [1,4H,H]
    B = [bk reordered; 0]  [1,8H]  (omitted without a bias); zero h0/c0 are omitted.

For go_backwards with nothing but the last step read, `LSTM(X, direction="reverse")` replaces the
ReverseSequence; when the whole sequence is read the reversal stays outside and the LSTM runs forward.

Every piece is checked: the gate wiring, that the weights are loop-invariant constants, and, by
evaluating the loop's integer bookkeeping step by step, that it runs exactly T times with the Gather
index 0, 1, …, T−1. Every body node must be part of the cell or of that bookkeeping. A Loop that does
not match is left alone and the reason is logged at debug level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer

log = logging.getLogger(__name__)

_STD = ("", "ai.onnx")
_KERAS_TO_ONNX_GATES = [0, 3, 1, 2]  # ONNX (i, o, f, c) taken from Keras (i, f, c, o)
_RESHAPES = ("Squeeze", "Unsqueeze", "Reshape", "Identity")
_COMPARE = {"Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
            "GreaterOrEqual": np.greater_equal, "Equal": np.equal}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Min": np.minimum, "Max": np.maximum,
           "And": np.logical_and, "Or": np.logical_or, **_COMPARE}


class _NoMatch(Exception):
    """Why a Loop is not a Keras LSTM (logged, never raised out of the pass)."""


def _need(ok: object, reason: str) -> None:
    if not ok:
        raise _NoMatch(reason)


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _broadcasts_into(shape: tuple[int, ...] | None, target: tuple[int, ...]) -> bool:
    """True if `shape` broadcasts into `target` without changing `target` (right-aligned, dims equal or 1)."""
    if shape is None or len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


@dataclass
class _Match:
    """A recognized Keras LSTM Loop; carried slot k is Loop input 2+k, body input 2+k, body output 1+k."""

    x: ir.Value
    w: np.ndarray  # Keras kernel [I, 4H]
    r: np.ndarray  # Keras recurrent kernel [H, 4H]
    b: np.ndarray | None  # [4H]
    h_slot: int
    c_slot: int
    steps: int
    batch: int
    hidden: int
    invariant: dict[int, ir.Value] = field(default_factory=dict)
    control_final: dict[int, np.ndarray] = field(default_factory=dict)


class _Matcher:
    """Reads one Loop node; `match()` returns a `_Match` or raises `_NoMatch` with the reason."""

    def __init__(self, loop: ir.Node) -> None:
        self.loop = loop
        attr = loop.attributes.get("body")
        _need(attr is not None and attr.type == ir.AttributeType.GRAPH, "no body graph")
        self.body: ir.Graph = attr.as_graph()
        self.carried = len(loop.inputs) - 2
        _need(self.carried >= 0 and len(self.body.inputs) == self.carried + 2, "inputs do not match the body")
        self.scans = len(loop.outputs) - self.carried
        _need(self.scans >= 0 and len(self.body.outputs) == 1 + self.carried + self.scans,
              "outputs do not match the body")
        self.invariant = {k: loop.inputs[2 + k] for k in range(self.carried)
                          if self.body.outputs[1 + k] is self.body.inputs[2 + k] and loop.inputs[2 + k] is not None}
        self.seen: set[ir.Node] = set()
        self.evaluate = _Evaluator(self.body, self._outer)

    # --- helpers -----------------------------------------------------------------------------------
    def _in_body(self, node: ir.Node | None) -> bool:
        return node is not None and node.graph is self.body

    def _slot(self, value: ir.Value) -> int | None:
        """k if `value` is the body input of carried slot k."""
        for k in range(self.carried):
            if self.body.inputs[2 + k] is value:
                return k
        return None

    def _outer(self, value: ir.Value) -> ir.Value:
        """The value outside the loop that `value` stands for (a pass-through slot → its initial value)."""
        k = self._slot(value)
        return self.invariant.get(k, value) if k is not None else value

    def _const(self, value: ir.Value, what: str) -> np.ndarray | None:
        """The constant behind `value` (a pass-through slot, an outer or body constant); None if `what` is ''."""
        value = self._outer(value)
        array = const_value(value)
        _need(array is not None or not what, f"{what} is not a loop-invariant constant")
        if array is not None and self._in_body(value.producer()):
            self.seen.add(value.producer())  # a Constant node in the body
        return array

    def _only_user(self, value: ir.Value, op_type: str, what: str) -> ir.Node:
        users = value.consumers()
        _need(len(users) == 1 and not value.is_graph_output() and users[0].op_type == op_type
              and users[0].domain in _STD and self._in_body(users[0]), f"{what} is not read by one {op_type}")
        self.seen.add(users[0])
        return users[0]

    def _unwrap_identity(self, value: ir.Value) -> ir.Value:
        node = value.producer()
        while self._in_body(node) and node.op_type == "Identity":
            self.seen.add(node)
            value = node.inputs[0]
            node = value.producer()
        return value

    # --- the cell ----------------------------------------------------------------------------------
    def match(self) -> _Match:
        splits = [n for n in self.body if n.op_type == "Split"]
        _need(len(splits) == 1, f"{len(splits)} Split nodes in the body, expected 1")
        split = splits[0]
        self.seen.add(split)
        _need(len(split.outputs) == 4, "the gate Split does not have 4 outputs")
        z = split.inputs[0]
        zshape = _static(z)
        _need(zshape is not None and len(zshape) == 2 and zshape[1] % 4 == 0, "gate pre-activation is not [B,4H]")
        batch, hidden = zshape[0], zshape[1] // 4
        axis = split.attributes.get_int("axis", 0)
        _need(axis in (1, -1), "the gate Split is not on the last axis")
        if len(split.inputs) > 1 and split.inputs[1] is not None:
            sizes = const_value(split.inputs[1])
            _need(sizes is not None and sizes.tolist() == [hidden] * 4, "the gate Split is not in 4 equal parts")
        for out in split.outputs:
            _need(_static(out) == (batch, hidden), "a gate is not [B,H]")

        gates = []
        for j, act in enumerate(("Sigmoid", "Sigmoid", "Tanh", "Sigmoid")):
            gates.append(self._only_user(split.outputs[j], act, f"gate {'ifco'[j]}").outputs[0])
        i_g, f_g, c_g, o_g = gates

        mul_ic = self._only_user(i_g, "Mul", "input gate")
        _need(self._only_user(c_g, "Mul", "candidate") is mul_ic and set(mul_ic.inputs) == {i_g, c_g},
              "input gate and candidate are not multiplied together")
        mul_fc = self._only_user(f_g, "Mul", "forget gate")
        c_prev = mul_fc.inputs[1] if mul_fc.inputs[0] is f_g else mul_fc.inputs[0]
        c_slot = self._slot(c_prev)
        _need(c_slot is not None and c_slot not in self.invariant, "forget gate does not multiply the carried cell")
        add = self._only_user(mul_fc.outputs[0], "Add", "f·c")
        _need(self._only_user(mul_ic.outputs[0], "Add", "i·g") is add, "cell update is not f·c + i·g")
        c_new = add.outputs[0]
        tanhs = [u for u in c_new.consumers() if u.op_type == "Tanh" and self._in_body(u)]
        _need(len(tanhs) == 1, "the new cell is not read by one Tanh")
        self.seen.add(tanhs[0])
        mul_h = self._only_user(o_g, "Mul", "output gate")
        _need(self._only_user(tanhs[0].outputs[0], "Mul", "tanh(c)") is mul_h, "h is not o·tanh(c)")
        h_new = mul_h.outputs[0]

        terms = self._sum_terms(z, (batch, 4 * hidden))
        x_t, w, h_prev, r, bias = self._classify(terms, hidden)
        h_slot = self._slot(h_prev)
        _need(h_slot is not None and h_slot not in self.invariant and h_slot != c_slot,
              "the recurrent MatMul does not read a carried hidden state")
        _need(self._unwrap_identity(self.body.outputs[1 + h_slot]) is h_new, "the carried h is not updated to h'")
        _need(self._unwrap_identity(self.body.outputs[1 + c_slot]) is c_new, "the carried c is not updated to c'")
        x, steps, final = self._finish_match(x_t, h_new, (h_slot, c_slot), batch, hidden, w.shape[0])
        return _Match(x=x, w=w, r=r, b=bias, h_slot=h_slot, c_slot=c_slot, steps=steps, batch=batch,
                      hidden=hidden, invariant=self.invariant, control_final=final)

    def _finish_match(self, x_t: ir.Value, h_new: ir.Value, slots: tuple[int, ...], batch: int, hidden: int,
                      n_in: int) -> tuple[ir.Value, int, dict[int, np.ndarray]]:
        """The checks every cell shares once its h' and carried states (`slots`) are known: every scan output is
        h', the initial states are [B,H], the input step is Gather(X, t) of a float [T,B,I] sequence from outside,
        and nothing in the body is left unexplained. Returns X, T and the control slots' final values."""
        for s in range(self.scans):
            _need(self._unwrap_identity(self.body.outputs[1 + self.carried + s]) is h_new,
                  f"scan output {s} is not h'")
        for k in slots:
            state = self.loop.inputs[2 + k]
            _need(state is not None and _static(state) == (batch, hidden), f"initial state {k} is not [B,H]")
        gather = x_t.producer()
        _need(self._in_body(gather) and gather.op_type == "Gather" and gather.domain in _STD
              and gather.attributes.get_int("axis", 0) == 0, "the input step is not Gather(X, t, axis=0)")
        self.seen.add(gather)
        x = self._outer(gather.inputs[0])
        _need(not self._in_body(x.producer()) and not (x.producer() is None and x.graph is self.body),
              "the sequence is not defined outside the loop")
        xshape = _static(x)
        _need(xshape is not None and len(xshape) == 3 and xshape[1:] == (batch, n_in), "the sequence is not [T,B,I]")
        _need(x.dtype == ir.DataType.FLOAT, "the sequence is not float32")
        controls = [k for k in range(self.carried) if k not in self.invariant and k not in slots]
        final = self._simulate(gather.inputs[1], controls, xshape[0])
        for node in self.body:
            _need(node in self.seen or node in self.evaluate.seen,
                  f"body node {node.op_type} {node.name!r} is neither the cell nor its bookkeeping")
        return x, xshape[0], final

    def _sum_terms(self, value: ir.Value, target: tuple[int, ...]) -> list:
        """Flatten the sum that forms the gate pre-activation into MatMul terms and other leaves."""
        _need(_broadcasts_into(_static(value), target), f"{value.name!r} does not broadcast into {target}")
        node = value.producer()
        if not self._in_body(node) or node.domain not in _STD:
            return [value]
        if node.op_type == "Add":
            self.seen.add(node)
            return self._sum_terms(node.inputs[0], target) + self._sum_terms(node.inputs[1], target)
        if node.op_type == "MatMul":
            self.seen.add(node)
            return [("matmul", node.inputs[0], node.inputs[1], False)]
        if node.op_type == "Gemm":
            attrs = node.attributes
            _need(attrs.get_float("alpha", 1.0) == 1.0 and attrs.get_float("beta", 1.0) == 1.0
                  and attrs.get_int("transA", 0) == 0, "Gemm with alpha, beta or transA")
            self.seen.add(node)
            terms = [("matmul", node.inputs[0], node.inputs[1], bool(attrs.get_int("transB", 0)))]
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                terms += self._sum_terms(node.inputs[2], target)
            return terms
        if node.op_type in _RESHAPES:
            before, after = _static(node.inputs[0]), _static(value)
            if before is not None and after is not None and _strip_ones(before) == _strip_ones(after):
                self.seen.add(node)
                return self._sum_terms(node.inputs[0], target)
        return [value]

    def _classify(self, terms: list, hidden: int, gates: int = 4):
        """(x, W [I, gates·H], h, R [H, gates·H], bias or None) of the gate sum's terms (gates: 1 for keras-rnn)."""
        x_t = w = h_prev = r = None
        bias = np.zeros(gates * hidden, dtype=np.float32)
        has_bias = False
        for term in terms:
            if isinstance(term, tuple):
                _, a, b, trans = term
                weight = self._const(b, "a MatMul weight").astype(np.float32)
                _need(weight.ndim == 2, "a MatMul weight is not 2-D")
                weight = weight.T if trans else weight
                _need(weight.shape[1] == gates * hidden, f"a MatMul weight is not [*,{gates}H]")
                if self._slot(a) is not None:
                    _need(h_prev is None, "two recurrent MatMuls")
                    h_prev, r = a, weight
                else:
                    _need(x_t is None, "two input MatMuls")
                    x_t, w = a, weight
            else:
                array = self._const(term, "")
                _need(array is not None and array.size == gates * hidden
                      and _strip_ones(array.shape) == (gates * hidden,),
                      f"{term.name!r} in the gate sum is neither a MatMul nor a [{gates}H] bias")
                bias = bias + array.astype(np.float32).reshape(-1)
                has_bias = True
        _need(x_t is not None and h_prev is not None, "the gate sum lacks x·W or h·R")
        _need(r.shape == (hidden, gates * hidden), f"the recurrent kernel is not [H,{gates}H]")
        return x_t, w, h_prev, r, bias if has_bias else None

    # --- the bookkeeping ---------------------------------------------------------------------------
    def _simulate(self, index: ir.Value, controls: list[int], steps: int) -> dict[int, np.ndarray]:
        """Run the loop's counters; require exactly `steps` trips reading steps 0, 1, …, steps−1."""
        body, loop = self.body, self.loop
        trip = self.evaluate(loop.inputs[0], {}) if loop.inputs[0] is not None else None
        cond = bool(self.evaluate(loop.inputs[1], {})) if loop.inputs[1] is not None else True
        state = {k: self.evaluate(loop.inputs[2 + k], {}) for k in controls}
        order = []
        while (trip is None or len(order) < int(trip)) and cond:
            _need(len(order) < steps, f"the loop runs more than {steps} steps")
            env = {body.inputs[0]: np.array(len(order), dtype=np.int64), body.inputs[1]: np.array(cond)}
            env.update({body.inputs[2 + k]: v for k, v in state.items()})
            t = self.evaluate(index, env)
            _need(t.ndim == 0 and np.issubdtype(t.dtype, np.integer), "the step index is not an integer scalar")
            order.append(int(t) + steps if int(t) < 0 else int(t))
            cond = bool(self.evaluate(body.outputs[0], env))
            state = {k: self.evaluate(body.outputs[1 + k], env) for k in controls}
        _need(order == list(range(steps)), f"the loop reads steps {order[:4]}…, not 0..{steps - 1}")
        return state


class _Evaluator:
    """Evaluates integer/boolean bookkeeping (trip count, condition, counters, indices) with numpy.

    `resolve` maps a loop-body value to the outer value it stands for; nodes of `body` that are
    evaluated are recorded in `seen`.
    """

    def __init__(self, body: ir.Graph | None = None, resolve=lambda v: v) -> None:
        self.body, self.resolve = body, resolve
        self.seen: set[ir.Node] = set()

    def __call__(self, value: ir.Value, env: dict) -> np.ndarray:
        if value in env:
            return env[value]
        outer = self.resolve(value)
        if outer is not value:
            return self(outer, env)
        array = const_value(value)
        node = value.producer()
        if array is not None:
            if node is not None and self.body is not None and node.graph is self.body:
                self.seen.add(node)  # a Constant node in the body
            return array
        _need(node is not None and node.domain in _STD, f"{value.name!r} is not loop bookkeeping")
        op = node.op_type
        if op == "Shape":
            shape = _static(node.inputs[0])
            _need(shape is not None, f"Shape of {node.inputs[0].name!r} is not static")
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(shape))
            result = np.array(shape[start:end], dtype=np.int64)
        else:
            args = [self(v, env) for v in node.inputs if v is not None]
            if op in _BINARY and len(args) == 2:
                result = _BINARY[op](args[0], args[1])
            elif op == "Not" and len(args) == 1:
                result = np.logical_not(args[0])
            elif op == "Identity" and len(args) == 1:
                result = args[0]
            elif op == "Cast" and len(args) == 1 and "to" in node.attributes:
                result = args[0].astype(ir.DataType(node.attributes.get_int("to")).numpy())
            elif op == "Gather" and len(args) == 2:
                result = np.take(args[0], args[1], axis=node.attributes.get_int("axis", 0))
            elif op == "Expand" and len(args) == 2:
                result = np.broadcast_to(args[0], np.broadcast_shapes(args[0].shape, tuple(args[1].tolist())))
            else:
                raise _NoMatch(f"{op} {node.name!r} is not loop bookkeeping")
        if self.body is not None and node.graph is self.body:
            self.seen.add(node)
        env[value] = np.asarray(result)
        return env[value]


def _is_last_step(node: ir.Node, steps: int) -> bool:
    """Slice(seq, [-1:], axis 0) or Gather(seq, -1, axis 0) with constant parameters."""
    if node.domain not in _STD:
        return False
    if node.op_type == "Gather":
        idx = const_value(node.inputs[1])
        return (node.attributes.get_int("axis", 0) == 0 and idx is not None and idx.ndim == 0
                and int(idx) in (-1, steps - 1))
    if node.op_type != "Slice" or len(node.inputs) < 3:
        return False
    params = [const_value(v) if v is not None else None for v in node.inputs[1:5]]
    if any(p is None for p, v in zip(params, node.inputs[1:5], strict=True) if v is not None):
        return False
    starts, ends = params[0], params[1]
    axes = params[2] if len(params) > 2 and params[2] is not None else np.array([0])
    step = params[3] if len(params) > 3 and params[3] is not None else np.array([1])
    if any(p.size != 1 for p in (starts, ends, axes, step)):
        return False
    if int(axes.flat[0]) not in (0, -3) or int(step.flat[0]) != 1:
        return False
    s, e = int(starts.flat[0]), int(ends.flat[0])
    s, e = (s + steps if s < 0 else s), (e + steps if e < 0 else e)
    return min(max(s, 0), steps) == steps - 1 and min(max(e, 0), steps) == steps


def _squeezes_axis0(node: ir.Node) -> bool:
    if node.op_type != "Squeeze" or node.domain not in _STD:
        return False
    axes = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None and "axes" in node.attributes:
        axes = np.array(node.attributes.get_ints("axes"))
    return axes is not None and axes.reshape(-1).tolist() in ([0], [-3])


@register_pass("keras-lstm")
class KerasLstmPass(QPass):
    """Replace tf2onnx's Loop for a Keras LSTM layer by one ONNX LSTM node (weights converted)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return rewrite_loops(self, model, _Matcher, _Rewrite)


def rewrite_loops(owner: QPass, model: ir.Model, matcher: type, rewrite: type) -> ir.passes.PassResult:
    """Every top-level Loop that `matcher(node).match()` recognizes is replaced by `rewrite(...).apply()`;
    a Loop it refuses (raising _NoMatch with the reason) stays, logged. Shared by keras-lstm, -gru and -rnn."""
    graph = model.graph
    opset = model.opset_imports.get("", 17)
    modified = False
    for node in list(graph):
        if node.graph is None or node.op_type != "Loop" or node.domain not in _STD:
            continue
        try:
            match = matcher(node).match()
        except _NoMatch as why:
            log.debug("%s: leaving Loop %r alone: %s", owner.name, node.name, why)
            continue
        rewrite(owner, graph, node, match, opset).apply()
        modified = True
    return ir.passes.PassResult(model, modified)


class _Rewrite:
    """Builds the LSTM for one matched Loop, rewires every reader of the Loop, removes what died."""

    def __init__(self, qpass: KerasLstmPass, graph: ir.Graph, loop: ir.Node, m: _Match, opset: int) -> None:
        self.qpass, self.graph, self.loop, self.m, self.opset = qpass, graph, loop, m, opset
        self.base = (loop.name or "keras_lstm").replace("/", "_").replace(":", "_")
        self.new_nodes: list[ir.Node] = []
        self.axes: dict[int, ir.Value] = {}

    def _add(self, op: str, inputs: list, attrs: dict | None = None, shapes: list | None = None,
             num_outputs: int = 1) -> ir.Node:
        node = self.qpass.mark(ir.node(op, inputs, attrs or {}, num_outputs=num_outputs,
                                       name=f"{self.base}_{op.lower()}_{len(self.new_nodes)}"))
        for out, shape in zip(node.outputs, shapes or [], strict=False):
            out.shape, out.type = ir.Shape(shape), ir.TensorType(ir.DataType.FLOAT)
        self.new_nodes.append(node)
        return node

    def _axis_op(self, op: str, src: ir.Value, axis: int, shape: list[int]) -> ir.Value:
        if self.opset >= 13:
            if axis not in self.axes:
                self.axes[axis] = new_initializer(self.graph, f"{self.base}_axis{axis}", np.array([axis], np.int64))
            return self._add(op, [src, self.axes[axis]], shapes=[shape]).outputs[0]
        return self._add(op, [src], {"axes": [axis]}, shapes=[shape]).outputs[0]

    def _state(self, slot: int, what: str) -> ir.Value | None:
        value = self.loop.inputs[2 + slot]
        array = const_value(value)
        if array is not None:
            if not array.any():
                return None
            return new_initializer(self.graph, f"{self.base}_{what}",
                                   array.astype(np.float32).reshape(1, self.m.batch, self.m.hidden))
        return self._axis_op("Unsqueeze", value, 0, [1, self.m.batch, self.m.hidden])

    def _redirect(self, old: ir.Value, make) -> None:
        """Point every reader of `old` at `make()`; a graph output gets its own fresh value, renamed."""
        if not old.uses() and not old.is_graph_output():
            return
        new = make()
        if old.is_graph_output():
            if new.is_graph_input() or new.is_initializer() or new.is_graph_output() or new.producer() not in \
                    self.new_nodes:
                new = self._add("Identity", [new], shapes=[list(_static(old) or _static(new) or [])]).outputs[0]
                new.type = old.type or new.type
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
            new.name, old.name = old.name, None
        else:
            ir.convenience.replace_all_uses_with(old, new)

    def _add_recurrence(self, op_type: str, x: ir.Value, w: np.ndarray, r: np.ndarray, bias: np.ndarray | None,
                        slots: list[int], attrs: dict) -> list[ir.Value]:
        """The ONNX LSTM/GRU/RNN node reading X: W [1, gH, I], R [1, gH, H] and B [2gH] as initializers, the
        initial states of the carried `slots` (h0, then c0); its outputs Y [T,1,B,H], Y_h and Y_c [1,B,H]."""
        m, graph = self.m, self.graph
        steps, batch, hidden = m.steps, m.batch, m.hidden
        w_init = new_initializer(graph, f"{self.base}_W", np.ascontiguousarray(w).astype(np.float32))
        r_init = new_initializer(graph, f"{self.base}_R", np.ascontiguousarray(r).astype(np.float32))
        b = None if bias is None else new_initializer(graph, f"{self.base}_B",
                                                       bias.reshape(1, -1).astype(np.float32))
        inputs = [x, w_init, r_init, b, None, *(self._state(k, f"{s}0") for k, s in zip(slots, "hc", strict=False))]
        while inputs[-1] is None:
            inputs.pop()
        if self.opset >= 14:
            attrs = {**attrs, "layout": 0}
        shapes = [[steps, 1, batch, hidden]] + [[1, batch, hidden]] * len(slots)
        node = self._add(op_type, inputs, attrs, num_outputs=1 + len(slots), shapes=shapes)
        for value, suffix in zip(node.outputs, ("Y", "Y_h", "Y_c"), strict=False):
            value.name = f"{self.base}_{suffix}"
        return list(node.outputs)

    def _recurrence(self, x: ir.Value, direction: str) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """The ONNX LSTM node for the match: its Y, Y_h, Y_c."""
        m, hidden = self.m, self.m.hidden

        def gates(a: np.ndarray) -> np.ndarray:
            return a.reshape(4, hidden, -1)[_KERAS_TO_ONNX_GATES].reshape(1, 4 * hidden, -1)

        bias = None if m.b is None else np.concatenate([gates(m.b.reshape(-1, 1)).reshape(-1),
                                                        np.zeros(4 * hidden, np.float32)])
        y, y_h, y_c = self._add_recurrence("LSTM", x, gates(m.w.T), gates(m.r.T), bias, [m.h_slot, m.c_slot],
                                           {"hidden_size": hidden, "direction": direction})
        return y, y_h, y_c

    def apply(self) -> None:
        m, loop, graph = self.m, self.loop, self.graph
        steps, batch, hidden = m.steps, m.batch, m.hidden
        n_carried = len(loop.inputs) - 2
        scan_outputs = loop.outputs[n_carried:]

        # Readers of the scan output that only take the last step read Y_h instead.
        last_values, needs_sequence = [], False
        for seq in scan_outputs:
            needs_sequence |= seq.is_graph_output()
            for user, index in list(seq.uses()):
                if index == 0 and _is_last_step(user, steps):
                    if user.op_type == "Gather":
                        last_values.append(user.outputs[0])
                        continue
                    sliced = user.outputs[0]
                    squeezes = [u for u in sliced.consumers() if _squeezes_axis0(u)]
                    last_values += [sq.outputs[0] for sq in squeezes]
                    if len(squeezes) == len(sliced.uses()) and not sliced.is_graph_output():
                        continue
                needs_sequence = True

        x, direction = m.x, "forward"
        rev = x.producer()
        if (not needs_sequence and rev is not None and rev.op_type == "ReverseSequence" and rev.domain in _STD
                and rev.attributes.get_int("time_axis", 0) == 0 and rev.attributes.get_int("batch_axis", 1) == 1):
            try:
                lengths = _Evaluator()(rev.inputs[1], {})
            except _NoMatch:
                lengths = None
            if lengths is not None and lengths.shape == (batch,) and (lengths == steps).all():
                x, direction = rev.inputs[0], "reverse"

        y, y_h, y_c = self._recurrence(x, direction)
        cache: dict[str, ir.Value] = {}

        def squeezed(key: str, src: ir.Value, axis: int, shape: list[int]):
            def make() -> ir.Value:
                if key not in cache:
                    cache[key] = self._axis_op("Squeeze", src, axis, shape)
                return cache[key]
            return make

        last = squeezed("h", y_h, 0, [batch, hidden])
        for value in last_values:
            self._redirect(value, last)
        self._redirect(loop.outputs[m.h_slot], last)
        if y_c is not None:
            self._redirect(loop.outputs[m.c_slot], squeezed("c", y_c, 0, [batch, hidden]))
        for seq in scan_outputs:
            self._redirect(seq, squeezed("y", y, 1, [steps, batch, hidden]))
        for k, outer in m.invariant.items():
            self._redirect(loop.outputs[k], lambda outer=outer: outer)
        for k, array in m.control_final.items():
            self._redirect(loop.outputs[k], lambda k=k, a=array: new_initializer(
                graph, f"{self.base}_final{k}", np.asarray(a)))

        graph.insert_before(loop, self.new_nodes)
        roots = [*last_values, *loop.outputs, *(v for v in loop.inputs if v is not None)]
        for node in ir.traversal.RecursiveGraphIterator(loop.attributes["body"].as_graph()):
            roots += [v for v in node.inputs if v is not None]  # values the body captured from outside
            for i in range(len(node.inputs)):
                node.replace_input_with(i, None)
        _prune(graph, roots)
        if loop.graph is graph:
            graph.remove(loop, safe=True)


def _prune(graph: ir.Graph, roots: list[ir.Value]) -> None:
    """Remove the producers (and initializers) of `roots` that nothing reads any more, transitively."""
    work = list(roots)
    while work:
        value = work.pop()
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.is_initializer():
            if value.name in graph.initializers and graph.initializers[value.name] is value:
                del graph.initializers[value.name]
            continue
        node = value.producer()
        if node is None or node.graph is not graph or any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        work += [v for v in node.inputs if v is not None]
        graph.remove(node, safe=True)
