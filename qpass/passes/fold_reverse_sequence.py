"""fold-reverse-sequence: a whole-sequence time reversal around a recurrence becomes the recurrence's direction.

Keras `go_backwards` layers (the backward half of `Bidirectional`) reverse their input, and with
`return_sequences=True` Keras reverses their output back; tf2onnx writes both as ReverseSequence:

    Xr = ReverseSequence(X, lens = T for every batch entry)            Y', Y_h, Y_c = LSTM(X, direction=reverse)
    Y, Y_h, Y_c = LSTM(Xr, direction=forward)                 →        S' = Reshapes(Y')
    S = ReverseSequence(Reshapes(Y), lens = T)                         (S's readers read S')

since running forward over the reversed sequence is running backward over X, and the reversed output is
then in time order (Y_h and Y_c, the last processed state, are the same). The output side needs every reader
of Y to be such a chain of pure reshapes (Reshape, Squeeze, Unsqueeze, Flatten, Identity, and a Transpose that
moves only unit dimensions, as tf2onnx's [T,1,H] ↔ [1,T,H] pairs at batch 1; other readers of their outputs may
only be Shape nodes, tf2onnx's way of computing `lens`) ending in a ReverseSequence whose time axis has only unit
dimensions in front of it, so that reversing it reverses Y's rows in memory; Y unread needs nothing. LSTM, GRU
and RNN nodes (layout 0) qualify. `lens` must be known to equal T everywhere: a constant, or a Shape of a static
tensor through Gather/Expand/Cast/Slice/Squeeze/Unsqueeze/Concat (what tf2onnx writes). Anything else is left
as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, single_consumer

RECURRENT = {"LSTM", "GRU", "RNN"}
_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def _static(value: ir.Value | None, depth: int = 0) -> np.ndarray | None:
    """The value of a small integer shape computation, when every leaf is a constant or a static Shape."""
    c = const_value(value)
    if c is not None or value is None or depth > 8:
        return c
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Shape":
        shape = node.inputs[0].shape
        if shape is None or not all(isinstance(d, int) for d in shape) or node.attributes:
            return None
        return np.array(list(shape), np.int64)
    args = [_static(v, depth + 1) for v in node.inputs if v is not None]
    if any(a is None for a in args):
        return None
    if node.op_type == "Gather" and len(args) == 2:
        return np.take(args[0], args[1], axis=node.attributes.get_int("axis", 0))
    if node.op_type == "Expand" and len(args) == 2:
        return args[0] * np.ones(tuple(int(d) for d in args[1]), args[0].dtype)
    if node.op_type in ("Cast", "Identity") and len(args) == 1:
        return args[0]
    if node.op_type in ("Squeeze", "Unsqueeze", "Reshape") and node.outputs[0].shape is not None:
        shape = node.outputs[0].shape
        return args[0].reshape(tuple(shape)) if all(isinstance(d, int) for d in shape) else None
    if node.op_type == "Concat":
        return np.concatenate([a.reshape(-1) for a in args])
    return None


def _full_reversal(node: ir.Node) -> bool:
    """ReverseSequence whose lengths all equal the time axis: it reverses the whole sequence."""
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return False
    lens = _static(node.inputs[1]) if len(node.inputs) > 1 else None
    t = x.shape[node.attributes.get_int("time_axis", 0)]
    return lens is not None and lens.size == x.shape[node.attributes.get_int("batch_axis", 1)] and bool(
        np.all(lens == t))


def _unit_transpose(node: ir.Node) -> bool:
    """A Transpose that moves only unit dimensions: it keeps the order of the elements in memory (tf2onnx's
    [T,B,H] ↔ [B,T,H] pairs at batch 1)."""
    shape = node.inputs[0].shape if node.op_type == "Transpose" and node.inputs else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        return False
    perm = node.attributes.get_ints("perm", list(reversed(range(len(shape)))))
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _data_reader(value: ir.Value) -> ir.Node | None:
    """The one reader of `value` besides Shape nodes (which read only its static shape), if there is one."""
    readers = [n for n in {id(n): n for n in value.consumers()}.values() if n.op_type != "Shape"]
    return readers[0] if len(readers) == 1 and not value.is_graph_output() else None


def _output_reversal(y: ir.Value) -> list[tuple[ir.Node, ir.Value]] | None:
    """For each reader of Y: (the ReverseSequence ending its reshape chain, the chain's last value before it)."""
    if y.is_graph_output():
        return None
    ends = []
    for reader in {id(n): n for n in y.consumers()}.values():
        node, cur = reader, y
        while node is not None and (node.op_type in _RESHAPES or _unit_transpose(node)) and node.inputs[0] is cur:
            cur = node.outputs[0]
            node = _data_reader(cur)
        if node is None or node.op_type != "ReverseSequence" or node.inputs[0] is not cur or not _full_reversal(node):
            return None
        axis = node.attributes.get_int("time_axis", 0)
        if any(d != 1 for d in cur.shape[:axis]):
            return None
        ends.append((node, cur))
    return ends


@register_pass("fold-reverse-sequence")
class FoldReverseSequencePass(QPass):
    """Fold the ReverseSequence pair of a go_backwards LSTM/GRU/RNN into direction=reverse."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type not in RECURRENT or node.domain not in ("", "ai.onnx") or not node.inputs:
                continue
            attrs = node.attributes
            if attrs.get_string("direction", "forward") != "forward" or attrs.get_int("layout", 0) != 0:
                continue
            rev = node.inputs[0].producer()
            if rev is None or rev.op_type != "ReverseSequence" or single_consumer(rev.outputs[0]) is not node:
                continue
            if (rev.attributes.get_int("time_axis", 0), rev.attributes.get_int("batch_axis", 1)) != (0, 1) or \
                    not _full_reversal(rev):
                continue
            y = node.outputs[0] if node.outputs else None
            ends = [] if y is None or not (y.uses() or y.is_graph_output()) else _output_reversal(y)
            if ends is None:
                continue
            node.replace_input_with(0, rev.inputs[0])
            graph.remove(rev, safe=True)
            attrs["direction"] = ir.AttrString("direction", "reverse")
            self.mark(node)
            for end, cur in ends:
                bypass(end, cur)
            modified = True
        return ir.passes.PassResult(model, modified)
