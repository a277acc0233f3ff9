"""matmul-to-gemm: a MatMul with constant 2-D weights, and the bias Add after it, become one Gemm.

    y = MatMul(x: [M,K], W: [K,N])
    z = Add(y, b: [N])                  →   z = Gemm(x, W, b)

On an N-D input (Dense on a sequence, TimeDistributed(Dense)) the Gemm sits between two Reshapes,
which later stages treat as views:

    z = Add(MatMul(x: [B,T,K], W), b)   →   z = Reshape(Gemm(Reshape(x, [B·T, K]), W, b), [B,T,N])

Without a bias Add the Gemm gets a zero bias, so every linear layer reaches the solver in one form.
The Add is absorbed only when its output has the MatMul's shape (a [1,1,N] bias on a 2-D MatMul adds a
dimension, which a Gemm cannot). The bias takes the weight's dtype, so a float16 model stays float16.
MatMuls that `unroll-lstm` / `unroll-gru` / `unroll-rnn` made (tagged `qpass.lstm` / `.gru` / `.rnn`) are left
alone: the lowering re-rolls them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, new_initializer, single_consumer

RECURRENT_TAGS = {"qpass.lstm", "qpass.gru", "qpass.rnn"}  # nodes unroll-lstm / -gru / -rnn made


def _bias_add(y: ir.Value, y_shape: tuple[int, ...], dtype: np.dtype) -> tuple[ir.Node | None, np.ndarray]:
    """The Add(y, b) after the MatMul when b is a constant per-output vector, and b (as `dtype`)."""
    n = y_shape[-1]
    none = None, np.zeros(n, dtype=dtype)
    add = single_consumer(y)
    if add is None or add.op_type != "Add":
        return none
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    b = const_value(other)
    if b is None or b.size not in (1, n) or (b.ndim >= 1 and b.shape[-1] != b.size):
        return none
    if np.broadcast_shapes(y_shape, b.shape) != y_shape:
        return none  # the Add's output is not the MatMul's shape (a [1,1,N] bias adds a dimension)
    return add, np.broadcast_to(b.reshape(-1), (n,)).astype(dtype)


@register_pass("matmul-to-gemm")
class MatMulToGemmPass(QPass):
    """Turn MatMul (+ bias Add) with constant 2-D weights into Gemm (N-D inputs through Reshape)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if (node.op_type != "MatMul" or node.domain not in ("", "ai.onnx")
                    or node.metadata_props.keys() & RECURRENT_TAGS):
                continue  # an unrolled LSTM's or GRU's projections keep their form for the lowering
            x, w_val = node.inputs[0], node.inputs[1]
            w = const_value(w_val)
            if x is None or x.shape is None or len(x.shape) < 2 or w is None or w.ndim != 2:
                continue
            if not np.issubdtype(w.dtype, np.floating):
                continue
            if not all(isinstance(d, int) for d in x.shape):
                continue
            k, n = w.shape
            add, bias = _bias_add(node.outputs[0], (*(int(d) for d in x.shape[:-1]), n), w.dtype)
            last = add if add is not None else node
            out = last.outputs[0]
            name = (node.name or "gemm").replace("/", "_")
            ops: list[ir.Node] = []
            src = x
            if len(x.shape) != 2:
                shape_in = new_initializer(graph, name + "_rows", np.array([-1, k], dtype=np.int64))
                r = self.mark(ir.node("Reshape", [x, shape_in], name=name + "_flatten"))
                r.outputs[0].shape, r.outputs[0].type = ir.Shape([int(np.prod(x.shape)) // k, k]), x.type
                ops.append(r)
                src = r.outputs[0]
            b_val = new_initializer(graph, name + "_bias", bias)
            gemm = self.mark(ir.node("Gemm", [src, w_val, b_val], name=name + "_gemm"))
            gemm.outputs[0].shape = ir.Shape([src.shape[0], n])
            gemm.outputs[0].type = out.type
            ops.append(gemm)
            result = gemm.outputs[0]
            if len(x.shape) != 2:
                shape_out = new_initializer(graph, name + "_unflatten_shape",
                                            np.array([*x.shape[:-1], n], dtype=np.int64))
                r2 = self.mark(ir.node("Reshape", [result, shape_out], name=name + "_unflatten"))
                r2.outputs[0].shape, r2.outputs[0].type = out.shape, out.type
                ops.append(r2)
                result = r2.outputs[0]
            graph.insert_after(last, ops)
            was_output = out.is_graph_output()
            ir.convenience.replace_all_uses_with(out, result, replace_graph_outputs=True)
            if was_output:
                result.name, out.name = out.name, None
            if add is not None:
                graph.remove(add, safe=True)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
