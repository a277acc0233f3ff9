"""fold-softplus-threshold: PyTorch's thresholded softplus (dynamo export) becomes the plain Softplus.

    s = Softplus(x)
    c = Greater(x, t)                 →      y = s
    y = Where(c, x, s)

`torch.nn.functional.softplus(x, beta=1, threshold=20)` returns x itself where x > threshold; the dynamo exporter
writes that branch as above. For x > t, softplus(x) − x = log(1 + e^−x) < e^−t, so with t >= 14 the two
branches differ by less than 1e-6 (below float32's resolution of x there): the Where and the Greater go, and the
Softplus is one element-wise table in the integer C. A smaller t, or any other operand, is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value

MIN_THRESHOLD = 14.0  # e^-14 < 1e-6


def _folds(where: ir.Node) -> ir.Value | None:
    """The Softplus output that `where` equals, or None when it is not the thresholded softplus."""
    if len(where.inputs) != 3 or any(v is None for v in where.inputs):
        return None
    cond, x, soft = where.inputs[0].producer(), where.inputs[1], where.inputs[2]
    soft_node = soft.producer()
    if cond is None or cond.op_type != "Greater" or soft_node is None or soft_node.op_type != "Softplus":
        return None
    t = const_value(cond.inputs[1])
    if cond.inputs[0] is not x or soft_node.inputs[0] is not x or t is None or t.size != 1:
        return None
    return soft if float(np.asarray(t).reshape(-1)[0]) >= MIN_THRESHOLD and soft.shape == where.outputs[0].shape \
        else None


@register_pass("fold-softplus-threshold")
class FoldSoftplusThresholdPass(QPass):
    """Where(Greater(x, t >= 14), x, Softplus(x)) → Softplus(x) (PyTorch's softplus threshold)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Where" or node.domain not in ("", "ai.onnx"):
                continue
            soft = _folds(node)
            if soft is not None:
                before, cond = len(model.graph), node.inputs[0].producer()
                bypass(node, soft)
                if not cond.outputs[0].uses() and not cond.outputs[0].is_graph_output():
                    model.graph.remove(cond, safe=True)
                modified |= len(model.graph) != before
        return ir.passes.PassResult(model, modified)
