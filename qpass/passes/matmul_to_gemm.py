"""matmul-to-gemm: a 2-D MatMul with constant weights, and the bias Add after it, become one Gemm.

    y = MatMul(x: [M,K], W: [K,N])
    z = Add(y, b: [N])                  →   z = Gemm(x, W, b)

Without a bias Add the Gemm gets a zero bias, so every linear layer reaches the solver in one form.
MatMuls on 3-D inputs (Dense on a sequence) are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, new_initializer, single_consumer


@register_pass("matmul-to-gemm")
class MatMulToGemmPass(QPass):
    """Turn 2-D MatMul (+ bias Add) with constant weights into Gemm."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            x, w_val = node.inputs[0], node.inputs[1]
            w = const_value(w_val)
            if x is None or x.shape is None or len(x.shape) != 2 or w is None or w.ndim != 2:
                continue
            n = w.shape[1]
            y = node.outputs[0]
            bias = np.zeros(n, dtype=np.float32)
            out = y
            add = single_consumer(y)
            if add is not None and add.op_type == "Add":
                other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
                b = const_value(other)
                if b is not None and b.size in (1, n) and (b.ndim <= 1 or b.shape[-1] == b.size):
                    bias = np.broadcast_to(b.reshape(-1), (n,)).astype(np.float32)
                    out = add.outputs[0]
                else:
                    add = None
            else:
                add = None
            name = (node.name or "gemm").replace("/", "_")
            b_val = new_initializer(graph, name + "_bias", bias)
            gemm = self.mark(ir.node("Gemm", [x, w_val, b_val], name=name + "_gemm"))
            gemm.outputs[0].shape, gemm.outputs[0].type = out.shape, out.type
            graph.insert_after(add if add is not None else node, [gemm])
            bypass(add if add is not None else node, gemm.outputs[0])
            if add is not None:
                graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
