"""squeeze-conv2d: a 2-D Conv, MaxPool or AveragePool that spans one spatial axis becomes 1-D.

Over a height of 1 with a (1, k) kernel (how tf2onnx writes Conv1D), or over a width of 1 with a (k, 1)
kernel (streaming keyword models written as Conv2D over [T, 1, C]):

    x4 = Unsqueeze(x, axes=[2])                          (any producer of a [N, C, 1, W] tensor)
    y4 = Conv(x4, W: [M, C, 1, k], pads=[0, p0, 0, p1])   →   y = Conv(x, W: [M, C, k], pads=[p0, p1])
    y  = Squeeze(y4, axes=[2])                                 y4 = Unsqueeze(y, axes=[2])

(the (k, 1) form squeezes axis 3 instead). The node is rewritten as Squeeze → 1-D op → Unsqueeze;
`simplify-layout` then cancels the Squeeze/Unsqueeze pairs this leaves next to the layout ops tf2onnx wrapped around it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


@register_pass("squeeze-conv2d")
class SqueezeConv2dPass(QPass):
    """Rewrite 2-D Conv/MaxPool over one spatial axis ((1,k) over height 1, (k,1) over width 1) as 1-D ops."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type in ("Conv", "MaxPool", "AveragePool") and node.domain in ("", "ai.onnx"):
                modified |= self._rewrite(graph, node)
        return ir.passes.PassResult(model, modified)

    def _rewrite(self, graph: ir.Graph, node: ir.Node) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or len(x.shape) != 4 or y.shape is None:
            return False
        kernel = _ints(node, "kernel_shape", [])
        if not kernel and node.op_type == "Conv" and const_value(node.inputs[1]) is not None:
            kernel = list(const_value(node.inputs[1]).shape[2:])
        # the unit axis dropped (2: height 1, kernel (1, k); 3: width 1, kernel (k, 1)) and the one kept
        drop = 2 if x.shape[2] == 1 and kernel[:1] == [1] else 3 if x.shape[3] == 1 and kernel[1:] == [1] else None
        if drop is None or len(kernel) != 2:
            return False
        keep = 5 - drop
        pads = _ints(node, "pads", [0, 0, 0, 0])
        if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return False
        if pads[drop - 2] or pads[drop] or len(node.outputs) > 1:
            return False
        attrs: dict = {}
        if node.op_type == "Conv":
            w = const_value(node.inputs[1])
            if w is None or w.shape[drop] != 1:
                return False
            w1d = np.ascontiguousarray(w[:, :, 0, :] if drop == 2 else w[:, :, :, 0])
            w_in = new_initializer(graph, f"{node.name or 'conv'}_w1d", w1d)
            inputs = [None, w_in, *node.inputs[2:]]
            attrs["group"] = node.attributes.get_int("group", 1)
        else:
            inputs = [None]
            if node.attributes.get_int("ceil_mode", 0) or node.attributes.get_int("storage_order", 0):
                return False
            if node.op_type == "AveragePool":
                attrs["count_include_pad"] = node.attributes.get_int("count_include_pad", 0)
        attrs["kernel_shape"] = [kernel[keep - 2]]
        attrs["strides"] = [_ints(node, "strides", [1, 1])[keep - 2]]
        attrs["pads"] = [pads[keep - 2], pads[keep]]
        if node.op_type == "Conv" or node.attributes.get("dilations") is not None:
            attrs["dilations"] = [_ints(node, "dilations", [1, 1])[keep - 2]]
        name = node.name or node.op_type
        axes = new_initializer(graph, f"{name}_axis{drop}", np.array([drop], dtype=np.int64))
        sq = self.mark(ir.node("Squeeze", [x, axes], name=f"{name}_squeeze"))
        sq.outputs[0].shape = ir.Shape([x.shape[0], x.shape[1], x.shape[keep]])
        sq.outputs[0].type = x.type
        inputs[0] = sq.outputs[0]
        op = self.mark(ir.node(node.op_type, inputs, attributes=attrs, name=f"{name}_1d"))
        op.outputs[0].shape = ir.Shape([y.shape[0], y.shape[1], y.shape[keep]])
        op.outputs[0].type = y.type
        un = self.mark(ir.node("Unsqueeze", [op.outputs[0], axes], name=f"{name}_unsqueeze"))
        graph.insert_before(node, [sq, op, un])
        ir.convenience.replace_all_uses_with(y, un.outputs[0], replace_graph_outputs=True)
        un.outputs[0].shape, un.outputs[0].type = y.shape, y.type
        if y.is_graph_output():
            un.outputs[0].name, y.name = y.name, None
        graph.remove(node, safe=True)
        return True
