"""strip-dropout: remove Dropout and Identity, which compute nothing at inference.

    y = Dropout(x [, ratio, training_mode=False])      y = Identity(x)
    z = Relu(y)                                  →      z = Relu(x)

A Dropout whose `training_mode` input is a constant True is refused: it would not be an identity. So is
one whose mask output is read, by a node or as a graph output.
"""

from __future__ import annotations

import onnx_ir as ir

from qpass.errors import UnsupportedOpError
from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value


@register_pass("strip-dropout")
class StripDropoutPass(QPass):
    """Remove Dropout and Identity nodes (inference is the identity)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Dropout", "Identity"):
                continue
            if node.op_type == "Dropout":
                mask = node.outputs[1] if len(node.outputs) > 1 else None
                if mask is not None and (mask.consumers() or mask.is_graph_output()):
                    raise UnsupportedOpError(node.name or "", "Dropout", "its mask output is used")
                training = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
                if training is not None and bool(training):
                    raise UnsupportedOpError(node.name or "", "Dropout", "training_mode is True")
            before = len(model.graph)
            bypass(node, node.inputs[0])
            modified |= len(model.graph) != before
        return ir.passes.PassResult(model, modified)
