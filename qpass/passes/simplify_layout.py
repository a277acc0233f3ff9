"""simplify-layout: a chain of layout-only ops collapses into at most one Transpose and one Reshape.

    a = Unsqueeze(x: [1,100,6], [1])            →   y = Transpose(x, perm=[0,2,1])   ([1,6,100])
    b = Transpose(a, perm=[0,3,1,2])
    y = Squeeze(b, [2])

Layout ops are Unsqueeze, Squeeze, Transpose, Reshape, Flatten and Identity with static shapes. The
chain's effect is found by running it on an index tensor (np.arange): if the indices come out in
order it is a Reshape (or nothing, when the shape is unchanged); otherwise the permutation of the
input that produces them is searched, giving Transpose (+ Reshape when the shape still differs).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, fresh_name, new_initializer, single_consumer

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
            if node.graph is None or node.op_type not in LAYOUT_OPS or "qpass.lstm" in node.metadata_props:
                continue  # an unrolled LSTM keeps its tagged form for the lowering
            prev = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if prev is not None and prev.op_type in LAYOUT_OPS and single_consumer(prev.outputs[0]) is node:
                continue  # not the head of its chain
            modified |= self._collapse(graph, node, taken)
        return ir.passes.PassResult(model, modified)

    def _collapse(self, graph: ir.Graph, head: ir.Node, taken: set[str]) -> bool:
        x = head.inputs[0]
        src_shape = _static(x)
        if src_shape is None or len(src_shape) > MAX_PERM_RANK:
            return False
        chain, arr = [], np.arange(int(np.prod(src_shape))).reshape(src_shape)
        node: ir.Node | None = head
        while node is not None and node.op_type in LAYOUT_OPS:
            nxt = _apply(node, arr)
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
        name = (head.name or "layout").replace("/", "_")
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
