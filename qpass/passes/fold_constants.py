"""fold-constants: evaluate every node whose inputs are all known, and lift Constant nodes.

    s = Shape(x: float[1,64])        c = Constant(value=[1,64])
    r = Reshape(y, Concat(s, ...))   →   r = Reshape(y, c')      (c' an initializer)

Also folds `Shape` of a tensor whose shape is fully static (with opset 15's start/end), and a Cast to the type a
tensor already has. Nodes are evaluated with onnx's reference implementation, one at a time, in graph order, so a
chain of constant nodes folds in a single round. A node that produces a graph output is left as it is.
A DequantizeLinear of a constant (int8 weights stored behind a dequantize, as TFLite "dynamic range" models
and weight-only quantized ONNX files have them) folds into a float constant when the graph has no
QuantizeLinear, i.e. is a float model with quantized weight storage; qpass's own quantization then re-quantizes
those weights (symmetric, as the file's were). In a QDQ model (with QuantizeLinear) every Q/DQ stays.
So is the Gather that `unroll-lstm` makes of a constant initial state (role "h0"/"c0"): folded, the
initial state would become an anonymous constant that the LSTM lowering could not tell from zero.

A folded Reshape/Unsqueeze target can make shapes further down static, which lets more `Shape` nodes
fold: after a round that folded something, ONNX shape inference runs and another round follows, at
most `MAX_ROUNDS` rounds in all. Whatever is still foldable after that stays for a later run.

A Loop's state keeps the shape of its initial value when the body gives it back in that shape (a recurrent
cell's h). ONNX shape inference does not assume so (it clears the state shapes it passes into the body), so an
exporter's symbolic batch, pinned since, stays symbolic inside the body (tf2onnx's Loop for a Keras GRU or
SimpleRNN converted with a batch of None):

    Loop(..., h0: [1,H]) { body(h: [unk,H]) ... }   →   Loop(..., h0: [1,H]) { body(h: [1,H]) ... }

The body input takes the initial value's static shape; if shape inference then gives some body's state output
another shape (a state that grows), every pin is undone and the Loops' shapes are restored as they were.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnx_ir.passes.common

from qpass.passes import QPass, register_pass
from qpass.passes._util import bypass, const_value, new_initializer
from qpass.passes.unroll_lstm import ROLE_KEY

MAX_ROUNDS = 4
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear"}
_WEIGHT_STORAGE = {"DequantizeLinear"}  # folded when the graph has no QuantizeLinear (a float model)
_KEEP_LSTM_ROLES = {"h0", "c0"}  # an unrolled LSTM's initial state stays visible to the lowering


def _static_shape(value: ir.Value) -> list[int] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return [int(d) for d in value.shape]


def _pin_loop_states(model: ir.Model, infer: ir.passes.PassBase) -> bool:
    """Give Loop bodies' state inputs their initial values' static shapes where the body's are symbolic, keeping
    only the pins the body's state output agrees with after shape inference (module docstring)."""
    pinned: list[tuple[ir.Node, ir.Value, ir.Value, list[int]]] = []  # Loop, body input, body output, shape
    for node in model.graph.all_nodes():
        if node.op_type != "Loop" or node.domain not in ("", "ai.onnx") or "body" not in node.attributes:
            continue
        body = node.attributes["body"].as_graph()
        for k, (outer, inner) in enumerate(zip(node.inputs[2:], body.inputs[2:], strict=False)):
            shape = _static_shape(outer) if outer is not None else None
            if shape is None or inner.shape is None or len(inner.shape) != len(shape) or _static_shape(inner):
                continue
            pinned.append((node, inner, body.outputs[1 + k], shape))
    if not pinned:
        return False
    loops = {id(node): node for node, *_ in pinned}.values()
    values = [v for loop in loops for n in [loop, *loop.attributes["body"].as_graph().all_nodes()] for v in n.outputs]
    values += [inner for _, inner, _, _ in pinned]
    saved = [(v, v.shape) for v in values]  # restored when a pin does not hold
    for _, inner, _, shape in pinned:
        inner.shape = ir.Shape(shape)
    infer(model)
    if all(out.shape == inner.shape for _, inner, out, _ in pinned):
        return True
    for value, shape in saved:
        value.shape = shape
    return False


@register_pass("fold-constants")
class FoldConstantsPass(QPass):
    """Evaluate nodes whose inputs are all constant; fold Shape of static tensors and no-op Casts."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        lifted = ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        modified = lifted(model).modified
        infer = ir.passes.common.ShapeInferencePass()
        float_model = not any(n.op_type == "QuantizeLinear" for n in model.graph.all_nodes())
        if _pin_loop_states(model, infer):
            modified = True
        for _ in range(MAX_ROUNDS):
            if not self._fold_round(model.graph, float_model):
                break
            modified = True
            if not infer(model).modified:
                break  # no shape became known: another round would find nothing new
        unused = ir.passes.common.RemoveUnusedNodesPass()(model).modified
        return ir.passes.PassResult(model, modified or unused)

    def _fold_round(self, graph: ir.Graph, float_model: bool) -> bool:
        """One sweep in graph order; True if a node was folded or removed."""
        changed = False
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in _NEVER_FOLD and not (float_model and node.op_type in _WEIGHT_STORAGE):
                continue
            if node.metadata_props.get(ROLE_KEY) in _KEEP_LSTM_ROLES:
                continue
            if any(out.is_graph_output() for out in node.outputs):
                continue  # its output must stay a node output: folding it would change nothing
            src = node.inputs[0] if node.inputs else None
            if node.op_type == "Cast" and src is not None and src.dtype is not None:
                if node.attributes.get_int("to", -1) == src.dtype.value:
                    bypass(node, src)
                    changed = True
                    continue
            arrays = self._fold(node)
            if arrays is None:
                continue
            for out, array in zip(node.outputs, arrays, strict=True):
                hint = (out.name or "folded").replace(":", "_")
                ir.convenience.replace_all_uses_with(out, new_initializer(graph, hint + "_folded", np.asarray(array)))
            graph.remove(node, safe=True)
            changed = True
        return changed

    def _fold(self, node: ir.Node) -> list[np.ndarray] | None:
        if node.op_type == "Shape" and node.inputs[0] is not None:
            shape = _static_shape(node.inputs[0])
            if shape is None:
                return None
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(shape))
            return [np.array(shape[slice(start, end)], dtype=np.int64)]  # opset 15's start/end: Python's slice
        values = [const_value(v) if v is not None else None for v in node.inputs]
        if any(v is None and inp is not None for v, inp in zip(values, node.inputs, strict=True)) or not node.inputs:
            return None
        proto = ir.serde.serialize_node(node)
        feeds = {inp.name: v for inp, v in zip(node.inputs, values, strict=True) if inp is not None}
        try:
            return list(onnx.reference.ReferenceEvaluator(proto).run(None, feeds))
        except Exception:  # noqa: BLE001 - an op the reference cannot run stays in the graph
            return None
