"""div-to-mul: a division by a constant becomes a multiplication by its reciprocal.

    y = Div(x, c)          →      y = Mul(x, 1/c)        (c a float constant without zeros)

PyTorch's classic exporter writes GELU as x * 0.5 * (1 + Erf(x / √2)) and scalings as `x / c`; the integer C has
a Mul kernel (by a constant: one multiplier per value or per channel), not a Div one. x / c and x · (1/c) differ
by at most one float32 rounding. A Div by a non-constant, an integer constant or a constant containing zero is
left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer


@register_pass("div-to-mul")
class DivToMulPass(QPass):
    """Div(x, constant c) → Mul(x, 1/c)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "Div" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                continue
            c = const_value(node.inputs[1])
            if c is None or not np.issubdtype(c.dtype, np.floating) or not np.all(c != 0):
                continue
            name = node.name or node.outputs[0].name or "div"
            inverse = new_initializer(graph, f"{name}_reciprocal", (np.ones((), c.dtype) / c).astype(c.dtype))
            mul = self.mark(ir.node("Mul", [node.inputs[0], inverse], name=f"{name}_mul"))
            out = node.outputs[0]
            mul.outputs[0].shape, mul.outputs[0].type = out.shape, out.type
            graph.insert_before(node, mul)
            ir.convenience.replace_all_uses_with(out, mul.outputs[0], replace_graph_outputs=True)
            name, out.name = out.name, None  # the Mul's output takes the Div's name (a graph output keeps it)
            mul.outputs[0].name = name
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
