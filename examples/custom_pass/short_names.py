"""A user pass kept next to the pipeline that uses it: `passes: [..., short_names.py:ShortNamesPass]`.

It renames tf2onnx's long node names after the Keras layer they came from, so the C comments, the
per-layer table and report.html read `dense_1` instead of `digits_1/dense_1/MatMul_Gemm__6`.
"""

from __future__ import annotations

import re
from collections import Counter

import onnx_ir as ir
from pydantic import BaseModel, ConfigDict, Field

from qpass.passes import QPass


class ShortNamesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the YAML is an error naming the key

    prefix: str = Field("", description="put in front of every new name")


class ShortNamesPass(QPass):
    """Rename each node after its Keras layer (`model/layer/op` -> `layer`, `layer_op` when repeated).

    before: Gemm "digits_1/dense_1/MatMul_Gemm__6"   Softmax "digits_1/dense_2_1/Softmax"
    after:  Gemm "dense_1"                            Softmax "dense_2_1_softmax"

    Only node names change (values, and so the computation, are untouched); a node already named
    without a `/` keeps its name, so a second run changes nothing.
    """

    name = "short-names"
    Options = ShortNamesOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layer = {node: node.name.split("/")[1] for node in model.graph if node.name and node.name.count("/") >= 2}
        repeats = Counter(layer.values())
        taken = {node.name for node in model.graph if node not in layer}
        modified = False
        for node, base in layer.items():
            new = self.options.prefix + base
            if repeats[base] > 1 and node.op_type not in ("Gemm", "Conv", "MatMul"):
                new += "_" + node.op_type.lower()
            new = re.sub(r"[^A-Za-z0-9_]", "_", new)
            while new in taken:
                new += "_"
            taken.add(new)
            node.name = new
            self.mark(node)  # codegen quotes the pass that made or changed a node
            modified = True
        return ir.passes.PassResult(model, modified=modified)
