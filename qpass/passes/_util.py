"""Small graph helpers shared by the passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_value(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array behind an initializer or Constant node output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def single_consumer(value: ir.Value) -> ir.Node | None:
    """The only node that reads `value`, if it has exactly one reader and is not a graph output."""
    users = value.consumers()
    if len(users) != 1 or value.is_graph_output():
        return None
    return users[0]


def new_initializer(graph: ir.Graph, name_hint: str, array: np.ndarray) -> ir.Value:
    """Add a constant to the graph under a fresh name and return its value (a dict lookup per try: linear
    in the number of constants a pass adds, not quadratic)."""
    name, i = name_hint, 0
    while name in graph.initializers:
        i += 1
        name = f"{name_hint}_{i}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(np.asarray(array), name=name))  # ir.tensor(): 0.3 ms of Protocol checks
    graph.register_initializer(value)
    return value


def fresh_name(taken: set[str], hint: str) -> str:
    """`hint`, or `hint_1`, `hint_2` ... whichever is not in `taken` yet; recorded in `taken`."""
    name, i = hint, 0
    while name in taken:
        i += 1
        name = f"{hint}_{i}"
    taken.add(name)
    return name


def bypass(node: ir.Node, keep: ir.Value) -> None:
    """Remove a single-output node, routing its readers (and a graph output) to `keep`."""
    out = node.outputs[0]
    graph = node.graph
    assert graph is not None
    if out.is_graph_output():
        if keep.is_graph_input() or keep.is_initializer() or keep.is_graph_output():
            return  # the node is the only thing separating an input from an output: leave it
        ir.convenience.replace_all_uses_with(out, keep, replace_graph_outputs=True)
        keep.name, out.name = out.name, None
    else:
        ir.convenience.replace_all_uses_with(out, keep)
    graph.remove(node, safe=True)


REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare")  # ReduceSum's axes became an input in opset 13 already


def raise_opset(model: ir.Model, version: int) -> None:
    """Raise the model's ONNX opset to at least `version`. From opset 18 the Reduce* `axes` attribute is an
    input: the main graph's Reduce nodes are rewritten (the other ops qpass meets read the same up to 21)."""
    old = model.opset_imports.get("", 0)
    if old >= version:
        return
    if old < 18 <= version:
        for node in model.graph:
            attr = node.attributes.get("axes")
            if node.op_type in REDUCE_OPS and attr is not None:
                axes = new_initializer(model.graph, f"{node.name or node.op_type}_axes",
                                       np.array(attr.as_ints(), np.int64))
                del node.attributes["axes"]
                node.resize_inputs(2)
                node.replace_input_with(1, axes)
    model.opset_imports[""] = version
