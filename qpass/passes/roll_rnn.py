"""roll-rnn: a recurrence written out step by step (PyTorch's dynamo export of nn.RNN) becomes one ONNX RNN node.

torch.onnx.export(dynamo=True) writes no RNN node for nn.RNN: it projects every input step at once, cuts the
projection into steps and writes the cell T times:

    P    = X·Wᵀ (+ b_ih)                           X [T,B,I] (MatMul, then Add)            P [T,B,H]
    x_t  = Squeeze(Slice(P, [t], [t+1], axis 0), 0)                                      [B,H]
    h_0  = f(C + x_0)                              C constant: h0·Rᵀ + b_hh, = b_hh for a zero h0
    h_t  = f(h_{t-1}·Rᵀ (+ b_hh) + x_t)            f = Tanh | Relu, the same R, b_hh every step (operand order free)
    Y    = Concat(h_0, …, h_{T-1}, axis 0)         (read by the layers above; the last h may be read too)
→
    Y4, Y_h = RNN(X, W, R, [b_ih, b_hh], hidden_size=H, activations=[f], direction=forward | reverse)
    Y = Squeeze(Y4, 1)        readers of the last processed h read Y_h

A chain processed from the last step to the first, or over a time-flipped P (Slice(P, [-1], [-∞], axis 0, step
−1): the backward half of a bidirectional nn.RNN, whose Concat is flipped back the same way), becomes
direction="reverse". A forward and a reverse RNN rolled from the same X whose sequences are only concatenated on the
feature axis (nn.RNN(bidirectional=True)) become one bidirectional RNN, as the classic exporter writes it:

    Concat(Y_fwd, Y_rev, axis -1) → Reshape(Transpose(RNN(X, direction=bidirectional).Y, [0, 2, 1, 3]), [T,B,2H])

Every step is checked: one P cut
into exactly T one-step slices, each read by its step only; the same constant R and b_hh; C equal to b_hh (a zero
initial state); each h read only by the next step, the Concat of all h in time order, or (the last) anyone. A
chain that does not match is left as it is (the support check names what remains).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer
from qpass.passes.keras_lstm import _prune

log = logging.getLogger(__name__)
_STD = ("", "ai.onnx")
_ACTS = ("Tanh", "Relu")


class _NoMatch(Exception):
    pass


def _need(ok: object, why: str) -> None:
    if not ok:
        raise _NoMatch(why)


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain in _STD else None


def _ints(value: ir.Value | None) -> list[int] | None:
    array = const_value(value) if value is not None else None
    return None if array is None else [int(v) for v in array.reshape(-1)]


def _step_of(x_t: ir.Value) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """(P, t, [Slice, Squeeze]) if x_t = Squeeze(Slice(P, [t], [t+1], axis 0), axis 0) (or a Reshape that drops
    that axis, as simplify-layout writes it), else None."""
    squeeze = _producer(x_t, "Squeeze") or _producer(x_t, "Reshape")
    sl = _producer(squeeze.inputs[0], "Slice") if squeeze is not None else None
    if sl is None or sl.outputs[0].shape is None or x_t.shape is None or \
            list(sl.outputs[0].shape)[1:] != list(x_t.shape) or sl.outputs[0].shape[0] != 1:
        return None
    starts, ends = _ints(sl.inputs[1]), _ints(sl.inputs[2])
    axes = _ints(sl.inputs[3]) if len(sl.inputs) > 3 and sl.inputs[3] is not None else [0]
    steps = _ints(sl.inputs[4]) if len(sl.inputs) > 4 and sl.inputs[4] is not None else [1]
    if starts is None or ends is None or axes != [0] or steps != [1] or len(starts) != 1 or ends[0] != starts[0] + 1:
        return None
    return sl.inputs[0], starts[0], [sl, squeeze]


def _flip_of(value: ir.Value) -> tuple[ir.Value, ir.Node] | None:
    """(X, the Slice) if value = Slice(X, [-1], [<= -T-1], axis 0, step -1): X with its first axis reversed."""
    sl = _producer(value, "Slice")
    if sl is None or len(sl.inputs) < 5 or sl.inputs[0].shape is None:
        return None
    starts, ends, axes, steps = (_ints(v) for v in sl.inputs[1:5])
    t = sl.inputs[0].shape[0]
    if axes != [0] or steps != [-1] or not isinstance(t, int) or starts not in ([-1], [t - 1]) or ends is None \
            or ends[0] > -t - 1:
        return None
    return sl.inputs[0], sl


def _split_pre(pre: ir.Node) -> tuple[ir.Value, int, list[ir.Node], ir.Value] | None:
    """(P, t, slice nodes, the other operand) of pre = Add(x_t, other) in either order."""
    for k in (0, 1):
        found = _step_of(pre.inputs[k])
        if found is not None:
            return (*found, pre.inputs[1 - k])
    return None


def _recurrent(other: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None, list[ir.Node]] | None:
    """(h_prev, Rᵀ, b_hh or None, nodes) of other = h_prev·Rᵀ (+ b_hh)."""
    nodes, bias = [], None
    add = _producer(other, "Add")
    if add is not None:
        consts = [const_value(v) for v in add.inputs]
        if sum(c is not None for c in consts) != 1:
            return None
        k = 0 if consts[0] is not None else 1
        bias, other, nodes = consts[k].reshape(-1), add.inputs[1 - k], [add]
    mm = _producer(other, "MatMul")
    rt = const_value(mm.inputs[1]) if mm is not None else None
    if rt is None or rt.ndim != 2:
        return None
    return mm.inputs[0], rt, bias, [*nodes, mm]


class _Chain:
    """One recurrence found from its first processed step."""

    def __init__(self, graph: ir.Graph, first: ir.Node) -> None:
        self.graph, self.first = graph, first
        self.nodes: list[ir.Node] = []

    def match(self) -> None:
        act = self.first
        op = act.op_type
        pre = _producer(act.inputs[0], "Add")
        _need(pre is not None, "the first step is not f(C + x_t)")
        split = _split_pre(pre)
        _need(split is not None, "the first step does not read one slice of a projection")
        p, t0, cut, c = split
        c0 = const_value(c)
        _need(c0 is not None, "the first step's other operand is not a constant")
        pshape = p.shape
        _need(pshape is not None and len(pshape) == 3 and all(isinstance(d, int) for d in pshape),
              "the projection is not a static [T,B,H]")
        steps, batch, hidden = (int(d) for d in pshape)
        _need(t0 in (0, steps - 1, -1), "the first step is neither the first nor the last time step")
        reverse = steps > 1 and t0 in (steps - 1, -1)
        hs, self.nodes = [act.outputs[0]], [*cut, pre, act]
        rt = b_hh = None
        for s in range(1, steps):
            users = [u for u in hs[-1].consumers() if u.op_type == "MatMul" and u.domain in _STD]
            _need(len(users) == 1, f"step {s - 1}'s h is not read by one MatMul")
            mm_out = users[0].outputs[0]
            nxt = [u for u in mm_out.consumers() if u.op_type == "Add"]
            _need(len(nxt) == 1, f"step {s}'s recurrent product is not added once")
            pre = nxt[0]
            if _split_pre(pre) is None:  # h·Rᵀ + b_hh first, then + x_t
                pre = _single(pre.outputs[0], "Add")
                _need(pre is not None, f"step {s} is not h·Rᵀ + b + x_t")
            split = _split_pre(pre)
            _need(split is not None and split[0] is p, f"step {s} does not read the same projection")
            _, t, cut, other = split
            want = steps - 1 - s if reverse else s
            _need(t in (want, want - steps), f"step {s} reads time {t}, not {want}")
            rec = _recurrent(other)
            _need(rec is not None and rec[0] is hs[-1], f"step {s} is not h_prev·Rᵀ (+ b)")
            _, r_s, b_s, rec_nodes = rec
            _need(r_s.shape == (hidden, hidden), f"step {s}'s R is not [H,H]")
            b_s = np.zeros(hidden, r_s.dtype) if b_s is None else b_s
            _need(b_s.size == hidden, f"step {s}'s recurrent bias is not [H]")
            if rt is None:
                rt, b_hh = r_s, b_s
            _need(np.array_equal(r_s, rt) and np.array_equal(b_s, b_hh), f"step {s} has other weights")
            act = _single(pre.outputs[0], op)
            _need(act is not None, f"step {s} has another activation")
            self.nodes += [*cut, *rec_nodes, pre, act]
            hs.append(act.outputs[0])
        if rt is None:  # one step: no recurrent product; its constant is the whole recurrent bias
            _need(c0.size == hidden, "the first step's constant is not [H]")
            rt, b_hh = np.zeros((hidden, hidden), np.float32), c0.reshape(-1)
        _need(c0.size == hidden and np.allclose(c0.reshape(-1), b_hh, rtol=1e-6, atol=1e-7),
              "the first step's constant is not b_hh (a non-zero initial state)")
        _need(len({id(u) for u in p.consumers()}) == steps and not p.is_graph_output(),
              "the projection is read by more than its T slices")
        flip = _flip_of(p)
        if flip is not None:  # the chain runs forward over the reversed projection: backwards in time
            p, flip_node = flip
            _need(len(p.consumers()) == 1, "the reversed projection is read elsewhere")
            self.nodes.append(flip_node)
            reverse = not reverse
        x, w, b_ih, proj = _projection(p, hidden)
        self.x, self.w, self.b_ih, self.rt, self.b_hh, self.proj = x, w, b_ih, rt, b_hh, proj
        self.op, self.reverse, self.steps, self.batch, self.hidden = op, reverse, steps, batch, hidden
        self.hs = hs[::-1] if reverse else hs  # in time order
        self.seqs, self.last_readers = self._readers(hs)

    def _readers(self, hs: list[ir.Value]) -> tuple[list[list[ir.Node]], list[ir.Node]]:
        """The node chains that make the whole sequence in time order (a Concat of every h in time order, or one in
        processing order flipped back by a Slice), and the other readers of the last processed h."""
        inner = set(map(id, self.nodes))
        seqs, last, seen = [], [], set()
        for s, h in enumerate(hs):
            _need(not h.is_graph_output(), "an h is a graph output")
            for user in {id(u): u for u in h.consumers()}.values():
                if id(user) in inner or id(user) in seen:
                    continue
                if user.op_type == "Concat" and user.attributes.get_int("axis", 0) == 0 and list(user.inputs) in (
                        self.hs, hs):
                    seen.add(id(user))
                    if list(user.inputs) == self.hs:
                        seqs.append([user])
                        continue
                    flips = [u for u in user.outputs[0].consumers() if _flip_of(u.outputs[0]) is not None]
                    _need(len(flips) == 1 and len(user.outputs[0].consumers()) == 1
                          and not user.outputs[0].is_graph_output(), "h in processing order is not flipped back")
                    seqs.append([user, flips[0]])
                elif s == len(hs) - 1:
                    last.append(user)
                else:
                    raise _NoMatch(f"step {s}'s h is read outside the recurrence by {user.op_type}")
        return seqs, last


def _single(value: ir.Value, op: str) -> ir.Node | None:
    users = value.consumers()
    ok = len(users) == 1 and not value.is_graph_output() and users[0].op_type == op and users[0].domain in _STD
    return users[0] if ok else None


def _projection(p: ir.Value, hidden: int) -> tuple[ir.Value, np.ndarray, np.ndarray, list[ir.Node]]:
    """(X, Wᵀ [I,H], b_ih [H], nodes) of P = X·Wᵀ (+ b_ih)."""
    nodes, b_ih = [], np.zeros(hidden, np.float32)
    add = _producer(p, "Add")
    if add is not None:
        consts = [const_value(v) for v in add.inputs]
        _need(sum(c is not None for c in consts) == 1, "the projection's Add is not + b_ih")
        k = 0 if consts[0] is not None else 1
        _need(consts[k].size == hidden, "b_ih is not [H]")
        b_ih, p, nodes = consts[k].reshape(-1), add.inputs[1 - k], [add]
    mm = _producer(p, "MatMul")
    wt = const_value(mm.inputs[1]) if mm is not None else None
    _need(wt is not None and wt.ndim == 2 and wt.shape[1] == hidden, "the projection is not X·Wᵀ")
    x = mm.inputs[0]
    _need(x.shape is not None and len(x.shape) == 3, "X is not [T,B,I]")
    _need(len(p.consumers()) == 1 and (add is None or len(add.outputs[0].consumers()) > 0),
          "X·Wᵀ is read elsewhere")
    return x, wt, b_ih, [*nodes, mm]


@register_pass("roll-rnn")
class RollRnnPass(QPass):
    """Roll a recurrence written out step by step (PyTorch's dynamo export of nn.RNN) back into one ONNX RNN."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))
        modified = False
        rolled: dict[int, ir.Node] = {}  # id(the Squeeze of a rolled RNN's Y) → the RNN
        for node in list(graph):
            if node.graph is not graph or node.op_type not in _ACTS or node.domain not in _STD:
                continue
            pre = _producer(node.inputs[0], "Add")
            if pre is None or not any(const_value(v) is not None for v in pre.inputs):
                continue  # not the first step of a chain
            chain = _Chain(graph, node)
            try:
                chain.match()
            except _NoMatch as why:
                log.debug("roll-rnn: leaving %s %r alone: %s", node.op_type, node.name, why)
                continue
            rnn, squeeze = self._rewrite(graph, chain, opset)
            rolled[id(squeeze)] = rnn
            modified = True
        for node in list(graph):
            if node.graph is graph and node.op_type == "Concat" and len(node.inputs) == 2:
                self._pair(graph, node, rolled, opset)
        return ir.passes.PassResult(model, modified)

    def _pair(self, graph: ir.Graph, concat: ir.Node, rolled: dict[int, ir.Node], opset: int) -> None:
        """Concat(Y_fwd, Y_rev) of two rolled RNNs over the same X → one bidirectional RNN (see the docstring)."""
        squeezes = [v.producer() for v in concat.inputs]
        rnns = [rolled.get(id(sq)) for sq in squeezes]
        if any(r is None for r in rnns) or any(r.graph is not graph for r in rnns):
            return
        fwd, rev = rnns
        shape = concat.outputs[0].shape
        directions = [r.attributes.get_string("direction", "forward") for r in rnns]
        if directions != ["forward", "reverse"] or fwd.inputs[0] is not rev.inputs[0] or shape is None \
                or len(shape) != 3 or concat.attributes.get_int("axis", 0) not in (2, -1) \
                or any(r.outputs[1].uses() for r in rnns) \
                or fwd.attributes.get_strings("activations") != rev.attributes.get_strings("activations") \
                or any(len(sq.outputs[0].uses()) != 1 or sq.outputs[0].is_graph_output() for sq in squeezes):
            return
        base = (concat.name or "rnn").replace("/", "_")
        consts = [np.concatenate([const_value(r.inputs[k]) for r in rnns]) for k in (1, 2, 3)]
        inputs = [fwd.inputs[0], *(new_initializer(graph, f"{base}_{k}", c) for k, c in zip("WRB", consts,
                                                                                           strict=True))]
        hidden = fwd.attributes.get_int("hidden_size")
        attrs = {"hidden_size": hidden, "direction": "bidirectional",
                 "activations": list(fwd.attributes.get_strings("activations")) * 2}
        if opset >= 14:
            attrs["layout"] = 0
        steps, batch = shape[0], shape[1]
        rnn = self.mark(ir.node("RNN", inputs, attrs, num_outputs=2, name=f"{base}_rnn"))
        rnn.outputs[0].shape = ir.Shape([steps, 2, batch, hidden])
        perm = self.mark(ir.node("Transpose", [rnn.outputs[0]], {"perm": [0, 2, 1, 3]}, name=f"{base}_perm"))
        perm.outputs[0].shape = ir.Shape([steps, batch, 2, hidden])
        flat = new_initializer(graph, f"{base}_shape", np.array(list(shape), np.int64))
        reshape = self.mark(ir.node("Reshape", [perm.outputs[0], flat], name=f"{base}_y"))
        reshape.outputs[0].shape = ir.Shape(list(shape))
        for v in (*rnn.outputs, perm.outputs[0], reshape.outputs[0]):
            v.type = ir.TensorType(ir.DataType.FLOAT)
        graph.insert_before(concat, [rnn, perm, reshape])
        out = concat.outputs[0]
        ir.convenience.replace_all_uses_with(out, reshape.outputs[0], replace_graph_outputs=True)
        if out.is_graph_output() or out.name:
            reshape.outputs[0].name, out.name = out.name, None
        graph.remove(concat, safe=True)
        _prune(graph, [sq.outputs[0] for sq in squeezes])

    def _rewrite(self, graph: ir.Graph, c: _Chain, opset: int) -> tuple[ir.Node, ir.Node]:
        base = (c.first.name or "rnn").replace("/", "_")
        w = new_initializer(graph, f"{base}_W", np.ascontiguousarray(c.w.T[None]).astype(np.float32))
        r = new_initializer(graph, f"{base}_R", np.ascontiguousarray(c.rt.T[None]).astype(np.float32))
        b = new_initializer(graph, f"{base}_B", np.concatenate([c.b_ih, c.b_hh]).reshape(1, -1).astype(np.float32))
        attrs = {"hidden_size": c.hidden, "direction": "reverse" if c.reverse else "forward", "activations": [c.op]}
        if opset >= 14:
            attrs["layout"] = 0
        rnn = self.mark(ir.node("RNN", [c.x, w, r, b], attrs, num_outputs=2, name=f"{base}_rolled"))
        y4, y_h = rnn.outputs
        y4.name, y_h.name = f"{base}_Y", f"{base}_Y_h"
        y4.shape, y_h.shape = ir.Shape([c.steps, 1, c.batch, c.hidden]), ir.Shape([1, c.batch, c.hidden])
        y4.type = y_h.type = ir.TensorType(ir.DataType.FLOAT)
        axes = new_initializer(graph, f"{base}_axis1", np.array([1], np.int64))
        squeeze = self.mark(ir.node("Squeeze", [y4, axes], name=f"{base}_y"))
        squeeze.outputs[0].shape = ir.Shape([c.steps, c.batch, c.hidden])
        squeeze.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        graph.insert_before(c.proj[-1], [rnn, squeeze])  # X·Wᵀ: X is defined before it
        last = c.hs[0] if c.reverse else c.hs[-1]  # the last processed h: Y_h (both [1,B,H] or [B,H])
        if tuple(last.shape or ()) != (1, c.batch, c.hidden):
            shape = new_initializer(graph, f"{base}_h_shape", np.array(list(last.shape), np.int64))
            reshape = self.mark(ir.node("Reshape", [y_h, shape], name=f"{base}_h"))
            reshape.outputs[0].shape, reshape.outputs[0].type = last.shape, last.type
            graph.insert_after(squeeze, [reshape])
            y_h = reshape.outputs[0]
        for user in c.last_readers:
            for i, v in enumerate(user.inputs):
                if v is last:
                    user.replace_input_with(i, y_h)
        for seq in c.seqs:  # Concat (→ flip Slice): the sequence in time order is Y
            end = seq[-1].outputs[0]
            ir.convenience.replace_all_uses_with(end, squeeze.outputs[0], replace_graph_outputs=True)
            if end.is_graph_output() or end.name:
                squeeze.outputs[0].name, end.name = end.name, None
            for node in reversed(seq):
                graph.remove(node, safe=True)
        roots = [*c.hs, *(v for n in c.nodes for v in n.inputs if v is not None)]
        _prune(graph, roots + [v for n in c.proj for v in n.outputs])
        return rnn, squeeze
