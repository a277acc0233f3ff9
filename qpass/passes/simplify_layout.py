"""simplify-layout: a chain of layout-only ops collapses into at most one Transpose and one Reshape.

    a = Unsqueeze(x: [1,100,6], [1])            →   y = Transpose(x, perm=[0,2,1])   ([1,6,100])
    b = Transpose(a, perm=[0,3,1,2])
    y = Squeeze(b, [2])

Layout ops are Unsqueeze, Squeeze, Transpose, Reshape, Flatten and Identity with static shapes, and a
Gather with constant indices that keeps every element (a permutation, as PyTorch's dynamo exporter writes
`as_strided` after a mean). The chain's effect is found by running it on an index tensor (np.arange): if the
indices come out in order it is a Reshape (or nothing, when the shape is unchanged); otherwise the permutation
of the input that produces them is searched, giving Transpose (+ Reshape when the shape still differs).

First, a one-input Concat goes (the classic exporter's `torch.cat(list(h_n[-1:]))`), so does a Slice or a
one-piece Split that keeps its whole axis (`h_n[-1:]` of a one-layer RNN, `list()` of it), and a Slice (step 1,
constant bounds, on one axis), a Split or a constant scalar-index Gather whose every output holds exactly the
elements of a run of whole Concat inputs, in order, reads those inputs: the Concat may be behind order-keeping
reshapes and on another axis (PyTorch's `h_n[-2:]` and `unbind` of a stacked or bidirectional LSTM/GRU's states;
`out[:, -1]` of an unrolled LSTM's steps, the graph output itself). Index arrays decide it:

    c = Concat(a: [1,B,H], b: [1,B,H], axis=0)  →   y = b          z = Reshape(a, [B,H])
    y = Slice(c, [1], [2], [0])                     (Concat removed when nothing else reads it)
    z = Gather(c, 0, axis=0)

    c = Concat(y0..y49: [1,1,1,H], axis=0)      →   out = Reshape(y49, [1,H])   (the graph output, by its name)
    r = Reshape(c, [1,50,H])
    out = Gather(r, -1, axis=1)
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, fresh_name, new_initializer, single_consumer

LAYOUT_OPS = {"Unsqueeze", "Squeeze", "Transpose", "Reshape", "Flatten", "Identity"}
_VIEWS = LAYOUT_OPS - {"Transpose"}  # they keep the elements' order
MAX_PERM_RANK = 6


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def _apply(node: ir.Node, a: np.ndarray) -> np.ndarray | None:
    """The node's effect on an array, for the layout ops; None if not computable statically."""
    op = node.op_type
    out_shape = _static(node.outputs[0])
    if op == "Transpose":
        perm = node.attributes.get_ints("perm", None)
        return np.transpose(a, perm if perm is not None else None)
    if op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"):
        if op in ("Unsqueeze", "Squeeze", "Reshape") and len(node.inputs) > 1 and node.inputs[1] is not None \
                and const_value(node.inputs[1]) is None:
            return None
        return None if out_shape is None else a.reshape(out_shape)
    return None


def _gather(node: ir.Node, a: np.ndarray) -> np.ndarray | None:
    """A constant-index Gather's effect on an array of distinct indices, if it keeps every element once."""
    index = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if index is None or not np.issubdtype(index.dtype, np.integer):
        return None
    axis = node.attributes.get_int("axis", 0)
    if not -a.ndim <= axis < a.ndim or np.any(index < -a.shape[axis]) or np.any(index >= a.shape[axis]):
        return None
    out = np.take(a, index, axis=axis)
    return out if out.size == a.size and np.array_equal(np.sort(out, axis=None), np.sort(a, axis=None)) else None


def _recurrent(node: ir.Node) -> bool:
    """A node of an unrolled LSTM/GRU (tagged with its role): kept in its tagged form for the lowering."""
    return any(key.endswith(".role") for key in node.metadata_props)


def _is_layout(node: ir.Node) -> bool:
    if _recurrent(node):
        return False
    return node.op_type in LAYOUT_OPS or (node.op_type == "Gather" and const_value(node.inputs[1]) is not None)


def _view_source(value: ir.Value) -> ir.Value:
    """The value `value` is an order-keeping reshape of (through any number of them, static shapes)."""
    while value.producer() is not None and value.producer().op_type in _VIEWS and \
            _static(value.producer().inputs[0]) is not None:
        value = value.producer().inputs[0]
    return value


def _concat_source(value: ir.Value | None) -> ir.Node | None:
    """The Concat (static shapes) that `value` is, directly or through order-keeping reshapes (Reshape, Squeeze,
    Unsqueeze, Flatten, Identity with static shapes)."""
    node = value.producer() if value is not None else None
    while node is not None and node.op_type in _VIEWS and not _recurrent(node) \
            and _static(node.inputs[0]) is not None and _static(node.outputs[0]) is not None:
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Concat" or not node.inputs:
        return None
    return node if all(_static(v) is not None for v in [*node.inputs, node.outputs[0]]) else None


def _select_ranges(node: ir.Node, rank: int, total: int) -> tuple[int, list[tuple[int, int | None]]] | None:
    """(axis, [(start, end) per output]) of a one-axis step-1 Slice, a Split with known sizes, or a scalar Gather
    (end None: the axis goes)."""
    params = [const_value(v) if v is not None else None for v in node.inputs[1:]]
    if any(p is None and v is not None for p, v in zip(params, node.inputs[1:], strict=True)):
        return None
    if node.op_type == "Gather":
        index = params[0]
        if index is None or index.ndim != 0 or not -total <= int(index) < total:
            return None
        return node.attributes.get_int("axis", 0) % rank, [(int(index) % total, None)]
    if node.op_type == "Split":
        axis = node.attributes.get_int("axis", 0) % rank
        sizes = params[0] if params and params[0] is not None else node.attributes.get_ints("split", None)
        if sizes is None:
            shapes = [_static(v) for v in node.outputs]
            sizes = None if any(sh is None for sh in shapes) else [sh[axis] for sh in shapes]
        if sizes is None or int(np.sum(sizes)) != total:
            return None
        ends = np.cumsum(sizes)
        return axis, [(int(e - n), int(e)) for e, n in zip(ends, sizes, strict=True)]
    if node.op_type != "Slice" or len(params) < 2 or params[0].size != 1:
        return None
    axis = int(params[2].reshape(-1)[0]) % rank if len(params) > 2 and params[2] is not None else 0
    if len(params) > 3 and params[3] is not None and int(params[3].reshape(-1)[0]) != 1:
        return None
    start, end = (int(p.reshape(-1)[0]) for p in params[:2])  # ONNX: a negative bound counts from the end
    start, end = (min(max(b + total if b < 0 else b, 0), total) for b in (start, end))
    return axis, [(start, end)]


def _selection(node: ir.Node) -> tuple[int, list[tuple[int, int | None]]] | None:
    """`_select_ranges` of a Slice/Split/Gather on its own static input."""
    shape = _static(node.inputs[0])
    for axis, size in enumerate(shape or ()):
        got = _select_ranges(node, len(shape), size)
        if got is not None and got[0] == axis:
            return got
    return None


def _whole_axis(node: ir.Node) -> bool:
    """A one-axis step-1 Slice, or a Split in one piece, that keeps all of its axis (PyTorch's h_n[-1:] of a
    one-layer RNN, and `list()` of it)."""
    got = _selection(node)
    return got is not None and got[1] == [(0, _static(node.inputs[0])[got[0]])]


def _concat_runs(node: ir.Node, concat: ir.Node) -> list[tuple[int, int]] | None:
    """For each output of the selection `node` over (reshapes of) `concat`: the run [first, last) of Concat inputs
    whose concatenation holds exactly its elements in order, found on index arrays; None if one has no such run."""
    picked = _selection(node)
    if picked is None:
        return None
    axis, ranges = picked
    shapes = [_static(v) for v in concat.inputs]
    caxis = concat.attributes.get_int("axis", 0) % len(shapes[0])
    index = np.arange(int(np.prod(_static(concat.outputs[0])))).reshape(_static(concat.outputs[0]))
    owner = np.concatenate([np.full(sh, k) for k, sh in enumerate(shapes)], axis=caxis).reshape(-1)
    offsets = np.cumsum([0] + [sh[caxis] for sh in shapes])
    seen = index.reshape(_static(node.inputs[0]))
    runs = []
    for start, end in ranges:
        got = np.take(seen, start if end is None else np.arange(start, end), axis=axis).reshape(-1)
        if got.size == 0:
            return None
        first, last = int(owner[got].min()), int(owner[got].max()) + 1
        whole = np.take(index, np.arange(offsets[first], offsets[last]), axis=caxis).reshape(-1)
        if not np.array_equal(whole, got):
            return None
        runs.append((first, last))
    return runs


def _find_perm(src_shape: tuple[int, ...], result: np.ndarray) -> tuple[int, ...] | None:
    base = np.arange(int(np.prod(src_shape))).reshape(src_shape)
    flat = result.reshape(-1)
    best = None
    for perm in itertools.permutations(range(len(src_shape))):
        t = np.transpose(base, perm)
        if np.array_equal(t.reshape(-1), flat):
            if t.shape == result.shape:
                return perm
            best = best or perm
    return best


@register_pass("simplify-layout")
class SimplifyLayoutPass(QPass):
    """Collapse chains of Unsqueeze/Squeeze/Transpose/Reshape/Flatten into one Transpose and/or Reshape."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        taken = {n.name for n in graph if n.name}  # new nodes get names no other node has
        for node in list(graph):
            if node.op_type == "Concat" and len(node.inputs) == 1 and node.graph is not None and not _recurrent(node):
                bypass(node, node.inputs[0])  # one input: a copy (torch.cat(list(h_n[-1:])))
                modified |= node.graph is None
            elif node.op_type in ("Slice", "Split", "Gather") and node.graph is not None and not _recurrent(node):
                modified |= self._select_concat(graph, node, taken)
        for node in list(graph):
            if node.graph is None or not _is_layout(node):
                continue
            prev = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if prev is not None and _is_layout(prev) and single_consumer(prev.outputs[0]) is node:
                continue  # not the head of its chain
            modified |= self._collapse(graph, node, taken)
        return ir.passes.PassResult(model, modified)

    def _select_concat(self, graph: ir.Graph, node: ir.Node, taken: set[str]) -> bool:
        """A Slice/Split/Gather that takes whole inputs of a Concat reads them (module docstring)."""
        if node.op_type in ("Slice", "Split") and len(node.outputs) == 1 and _whole_axis(node):
            bypass(node, node.inputs[0])
            return node.graph is None
        concat = _concat_source(node.inputs[0])
        runs = _concat_runs(node, concat) if concat is not None else None
        if runs is None:
            return False
        name = node.name or node.outputs[0].name or "select"
        caxis = concat.attributes.get_int("axis", 0) % len(_static(concat.outputs[0]))
        for out, (first, last) in zip(node.outputs, runs, strict=True):
            cur, made = concat.inputs[first], False
            if last > first + 1:
                new = self.mark(ir.node("Concat", list(concat.inputs[first:last]), {"axis": caxis},
                                        name=fresh_name(taken, f"{name}_concat")))
                shape = list(_static(cur))
                shape[caxis] = sum(_static(v)[caxis] for v in new.inputs)
                new.outputs[0].shape, new.outputs[0].type = ir.Shape(shape), out.type
                graph.insert_before(node, new)
                cur, made = new.outputs[0], True
            if _static(cur) != _static(out) or (out.is_graph_output() and not made):  # an output keeps a node
                cur = _view_source(cur)  # a Reshape of a reshape reads its source (an unrolled step's h)
                target = new_initializer(graph, f"{name}_shape", np.array(_static(out), np.int64))
                new = self.mark(ir.node("Reshape", [cur, target], name=fresh_name(taken, f"{name}_reshape")))
                new.outputs[0].shape, new.outputs[0].type = out.shape, out.type
                graph.insert_before(node, new)
                cur = new.outputs[0]
            was_output = out.is_graph_output()
            ir.convenience.replace_all_uses_with(out, cur, replace_graph_outputs=True)
            if was_output:  # the replacement (a node's, made above) takes the output's place, and its name
                out_name, out.name = out.name, None
                cur.name = out_name
        graph.remove(node, safe=True)
        return True

    def _collapse(self, graph: ir.Graph, head: ir.Node, taken: set[str]) -> bool:
        x = head.inputs[0]
        src_shape = _static(x)
        if src_shape is None or len(src_shape) > MAX_PERM_RANK:
            return False
        chain, arr = [], np.arange(int(np.prod(src_shape))).reshape(src_shape)
        node: ir.Node | None = head
        while node is not None and _is_layout(node):
            nxt = _gather(node, arr) if node.op_type == "Gather" else _apply(node, arr)
            if nxt is None:
                break
            chain.append(node)
            arr = nxt
            node = single_consumer(node.outputs[0])
        if not chain:
            return False
        last = chain[-1].outputs[0]
        out_shape = arr.shape
        perm = None
        if not np.array_equal(arr.reshape(-1), np.arange(arr.size)):
            perm = _find_perm(src_shape, arr)
            if perm is None:
                return False
        mid_shape = tuple(src_shape[p] for p in perm) if perm is not None else src_shape
        plan = (["Transpose"] if perm is not None else []) + (["Reshape"] if mid_shape != out_shape else [])
        if len(plan) >= len(chain) and plan == [c.op_type for c in chain]:
            return False  # already minimal
        if not plan and last.is_graph_output() and (x.is_graph_input() or x.is_initializer()):
            return False
        # build the replacement only now: a node made and dropped would stay a consumer of x
        ops: list[ir.Node] = []
        cur = x
        name = (head.name or chain[-1].outputs[0].name or "layout").replace("/", "_")  # node names must be unique
        if perm is not None:
            t = self.mark(ir.node("Transpose", [cur], attributes={"perm": list(perm)},
                                  name=fresh_name(taken, f"{name}_transpose")))
            t.outputs[0].shape, t.outputs[0].type = ir.Shape(mid_shape), x.type
            ops.append(t)
            cur = t.outputs[0]
        if mid_shape != out_shape:
            shape = new_initializer(graph, f"{name}_shape", np.array(out_shape, dtype=np.int64))
            r = self.mark(ir.node("Reshape", [cur, shape], name=fresh_name(taken, f"{name}_reshape")))
            r.outputs[0].shape, r.outputs[0].type = ir.Shape(out_shape), x.type
            ops.append(r)
            cur = r.outputs[0]
        if ops:
            graph.insert_after(chain[-1], ops)
        was_output = last.is_graph_output()
        ir.convenience.replace_all_uses_with(last, cur, replace_graph_outputs=True)
        if was_output:
            name_out = last.name
            last.name = None
            cur.name = name_out
        for n in reversed(chain):
            graph.remove(n, safe=True)
        return True
