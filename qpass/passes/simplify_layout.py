"""simplify-layout: a chain of layout-only ops collapses into at most one Transpose and one Reshape.

    a = Unsqueeze(x: [1,100,6], [1])            →   y = Transpose(x, perm=[0,2,1])   ([1,6,100])
    b = Transpose(a, perm=[0,3,1,2])
    y = Squeeze(b, [2])

Layout ops are Unsqueeze, Squeeze, Transpose, Reshape, Flatten and Identity with static shapes, and a
Gather with constant indices that keeps every element (a permutation, as PyTorch's dynamo exporter writes
`as_strided` after a mean). The chain's effect is found by running it on an index tensor (np.arange): if the
indices come out in order it is a Reshape (or nothing, when the shape is unchanged); otherwise the permutation
of the input that produces them is searched, giving Transpose (+ Reshape when the shape still differs).

First, a Slice or a one-piece Split that keeps its whole axis goes (`h_n[-1:]` of a one-layer RNN, `list()` of
it), and a Slice (step 1, constant bounds, on one axis), a Split or a constant scalar-index Gather that takes
exactly whole inputs of a Concat on the same axis reads those inputs (PyTorch's `h_n[-2:]` and `unbind` of the
states of a stacked or bidirectional LSTM/GRU):

    c = Concat(a: [1,B,H], b: [1,B,H], axis=0)  →   y = b          z = Squeeze(a, [0])
    y = Slice(c, [1], [2], [0])                     (Concat removed when nothing else reads it)
    z = Gather(c, 0, axis=0)
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, fresh_name, new_initializer, single_consumer

LAYOUT_OPS = {"Unsqueeze", "Squeeze", "Transpose", "Reshape", "Flatten", "Identity"}
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


def _concat_parts(node: ir.Node) -> tuple[ir.Node, int, list[int]] | None:
    """(the Concat `node` reads, its axis, the offsets of its inputs along it) when the sizes are static."""
    concat = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    shapes = [_static(v) for v in concat.inputs] if concat is not None and concat.op_type == "Concat" else [None]
    if any(s is None for s in shapes):
        return None
    axis = concat.attributes.get_int("axis", 0) % len(shapes[0])
    return concat, axis, [int(o) for o in np.cumsum([0] + [s[axis] for s in shapes])]


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


def _whole_axis(node: ir.Node) -> bool:
    """A one-axis step-1 Slice, or a Split in one piece, that keeps all of its axis (PyTorch's h_n[-1:] of a
    one-layer RNN, and `list()` of it)."""
    shape = _static(node.inputs[0])
    for axis, size in enumerate(shape or ()):
        got = _select_ranges(node, len(shape), size)
        if got is not None and got[0] == axis:
            return got[1] == [(0, size)]
    return False


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
            if node.op_type in ("Slice", "Split", "Gather") and node.graph is not None and not _recurrent(node):
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
        """A Slice/Split/Gather that takes whole inputs of a Concat on its axis reads them (module docstring)."""
        if any(v.is_graph_output() for v in node.outputs):
            return False
        if node.op_type in ("Slice", "Split") and len(node.outputs) == 1 and _whole_axis(node):
            bypass(node, node.inputs[0])
            return True
        found = _concat_parts(node)
        if found is None:
            return False
        concat, axis, offsets = found
        picked = _select_ranges(node, len(_static(concat.inputs[0])), offsets[-1])
        if picked is None or picked[0] != axis or any(a not in offsets or (b is not None and b not in offsets)
                                                      for a, b in picked[1]):
            return False
        parts = [(offsets.index(a), offsets.index(b) if b is not None else None) for a, b in picked[1]]
        if any(b is None and offsets[a + 1] - offsets[a] != 1 or b is not None and b <= a for a, b in parts):
            return False  # a Gather of an input wider than 1, or an empty piece
        name = node.name or node.outputs[0].name or "select"
        for out, (first, end) in zip(node.outputs, parts, strict=True):
            if end == first + 1:
                ir.convenience.replace_all_uses_with(out, concat.inputs[first])
                continue
            if end is None:  # a Gather: that input without the axis
                axes = new_initializer(graph, f"{name}_axes", np.array([axis], np.int64))
                new = self.mark(ir.node("Squeeze", [concat.inputs[first], axes],
                                        name=fresh_name(taken, f"{name}_squeeze")))
            else:
                new = self.mark(ir.node("Concat", list(concat.inputs[first:end]), {"axis": axis},
                                        name=fresh_name(taken, f"{name}_concat")))
            new.outputs[0].shape, new.outputs[0].type = out.shape, out.type
            graph.insert_before(node, new)
            ir.convenience.replace_all_uses_with(out, new.outputs[0])
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
