"""Write a QuantPlan into the graph as standard ONNX QDQ.

    y = Gemm(x, W, b)                   xq = QuantizeLinear(x, s_x, z_x);  xd = DequantizeLinear(xq, s_x, z_x)
                                   →    Wd = DequantizeLinear(W_q:int8, s_w, 0, axis)
                                        bd = DequantizeLinear(b_q:int32, s_x·s_w, 0)
                                        y  = Gemm(xd, Wd, bd);  then Q/DQ on y

Every planned activation gets a QuantizeLinear → DequantizeLinear pair right after its producer (or
at the graph input); weights and biases become integer initializers behind a DequantizeLinear.
onnxruntime runs the result: the fake-quant simulation of the plan. Graph outputs stay float.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes._util import new_initializer, raise_opset
from qpass.solver.plan import QuantPlan

PROVENANCE = {"qpass.pass": "quantize"}
QDQ_OPSET = 21  # int16 QuantizeLinear/DequantizeLinear


def _node(op: str, inputs: list[ir.Value], name: str, **attrs) -> ir.Node:
    node = ir.node(op, inputs, attributes=attrs or None, name=name)
    node.metadata_props.update(PROVENANCE)
    return node


def apply_plan(model: ir.Model, plan: QuantPlan) -> ir.Model:
    """A new model (the float one is left as it is) with the plan written as Q/DQ pairs."""
    qdq = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    raise_opset(qdq, QDQ_OPSET)
    graph = qdq.graph
    by_name = {v.name: v for v in graph.inputs}
    by_name.update({v.name: v for n in graph for v in n.outputs})
    for name, tq in plan.activations.items():
        value = by_name[name]
        scale = new_initializer(graph, f"{name}_scale", np.array(tq.scale, dtype=np.float32))
        zp = new_initializer(graph, f"{name}_zero_point", np.array(tq.zero_point, dtype=np.dtype(tq.dtype)))
        q = _node("QuantizeLinear", [value, scale, zp], f"{name}_Q")
        dq = _node("DequantizeLinear", [q.outputs[0], scale, zp], f"{name}_DQ")
        q.outputs[0].name, dq.outputs[0].name = f"{name}_quantized", f"{name}_dequantized"
        q.outputs[0].shape, q.outputs[0].type = value.shape, ir.TensorType(ir.DataType.from_numpy(np.dtype(tq.dtype)))
        dq.outputs[0].shape, dq.outputs[0].type = value.shape, value.type
        producer = value.producer()
        if producer is None:
            graph.insert_before(graph[0], [q, dq])
        else:
            graph.insert_after(producer, [q, dq])
        for use in list(value.uses()):
            if use.node is not q:
                use.node.replace_input_with(use.idx, dq.outputs[0])
        if value.is_graph_output():
            idx = [i for i, o in enumerate(graph.outputs) if o is value][0]
            graph.outputs[idx] = dq.outputs[0]
            value.name, dq.outputs[0].name = f"{name}_float", name
    for table in (plan.weights, plan.biases):
        for name, wq in table.items():
            _dequantized_constant(graph, graph.initializers[name], wq)
    return qdq


def _dequantize_constant_node(graph: ir.Graph, value: ir.Value, q: ir.Value, scale: ir.Value,
                              zp: ir.Value, axis: int) -> None:
    dq = _node("DequantizeLinear", [q, scale, zp], f"{value.name}_DQ", axis=axis)
    dq.outputs[0].name = f"{value.name}_dequantized"
    dq.outputs[0].shape, dq.outputs[0].type = value.shape, value.type
    graph.insert_before(graph[0], [dq])
    for use in list(value.uses()):
        use.node.replace_input_with(use.idx, dq.outputs[0])


def _dequantized_constant(graph: ir.Graph, value: ir.Value, wq) -> None:
    q = new_initializer(graph, f"{value.name}_quantized", wq.q)
    per_channel = wq.scale.size > 1
    scale_arr = wq.scale.astype(np.float32) if per_channel else np.array(wq.scale.reshape(-1)[0], np.float32)
    scale = new_initializer(graph, f"{value.name}_scale", scale_arr)
    zp = new_initializer(graph, f"{value.name}_zero_point", np.zeros_like(scale_arr, dtype=wq.q.dtype))
    _dequantize_constant_node(graph, value, q, scale, zp, wq.axis if per_channel else 1)
