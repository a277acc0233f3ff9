"""fold-pad: a zero Pad in front of a Conv (how tf2onnx writes Keras `causal` padding) becomes the Conv's pads.

    p = Pad(x, pads=[0, 2, 0, 0, 0, 0])      (x: [N, T, C], zeros, constant mode)
    t = Transpose(p, perm=[0, 2, 1])           t = Transpose(x, perm=[0, 2, 1])
    y = Conv(t, W, pads=[0, 0])           →    y = Conv(t, W, pads=[2, 0])

A Conv pads with zeros, so the rewrite is exact when the Pad is constant mode with value 0, pads only
the axes that become the Conv's spatial axes (through at most one Transpose) and has no other reader.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, single_consumer


def _zero_pad(node: ir.Node) -> np.ndarray | None:
    """[2, rank] begin/end pads of a constant-mode, zero-valued Pad over all axes, else None."""
    if node.attributes.get_string("mode", "constant") != "constant" or len(node.inputs) < 2:
        return None
    pads = const_value(node.inputs[1])
    value = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    axes = node.inputs[3] if len(node.inputs) > 3 else None
    if pads is None or axes is not None or (value is not None and np.any(value != 0)):
        return None
    return pads.reshape(2, -1).astype(np.int64)


@register_pass("fold-pad")
class FoldPadPass(QPass):
    """Fold a zero Pad (through one Transpose) into the following Conv's pads."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type == "Pad" and node.domain in ("", "ai.onnx"):
                modified |= self._fold(model.graph, node)
        return ir.passes.PassResult(model, modified)

    def _fold(self, graph: ir.Graph, pad: ir.Node) -> bool:
        pads = _zero_pad(pad)
        nxt = single_consumer(pad.outputs[0])
        if pads is None or nxt is None:
            return False
        perm = list(range(pads.shape[1]))
        transpose = None
        if nxt.op_type == "Transpose":
            transpose, perm = nxt, list(nxt.attributes.get_ints("perm", perm[::-1]))
            nxt = single_consumer(nxt.outputs[0])
        if nxt is None or nxt.op_type != "Conv" or nxt.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return False
        pads = pads[:, perm]  # in the Conv's axis order
        if np.any(pads[:, :2] != 0):
            return False
        spatial = pads.shape[1] - 2
        attr = nxt.attributes.get("pads")
        old = np.array(list(attr.as_ints()) if attr is not None else [0] * 2 * spatial).reshape(2, spatial)
        nxt.attributes["pads"] = ir.AttrInt64s("pads", [int(v) for v in (old + pads[:, 2:]).reshape(-1)])
        x = pad.inputs[0]
        if transpose is not None:
            transpose.replace_input_with(0, x)
            if x.shape is not None:
                transpose.outputs[0].shape = ir.Shape([x.shape[p] for p in perm])
        else:
            nxt.replace_input_with(0, x)
        nxt.metadata_props.setdefault("qpass.pass", self.name)
        graph.remove(pad, safe=True)
        return True
