"""fuse-gelu: an element-wise chain that computes GELU of one tensor becomes one ONNX Gelu node.

    a = Mul(x, 0.5)                      (tf2onnx's Keras `gelu`: 0.5·x·erfc(−x/√2), erfc = 1 − erf)
    c = Sub(1, Erf(Mul(Neg(x), 0.7071)))
    y = Mul(a, c)                   →    y = Gelu(x)                          (approximate="none")

    y = Mul(Mul(x, 0.5), Add(1, Tanh(Mul(Add(x, Mul(Pow(x, 3), 0.044715)), 0.7979))))
                                    →    y = Gelu(x, approximate="tanh")

The chain is recognised by what it computes, not by its op order: a node whose inputs are single constants
and values computed element-wise from one tensor x (ops in ELEMENTWISE, through an Erf or Tanh) is a scalar
function y = f(x); f is evaluated on a grid over [-8, 8] and compared with both GELU forms (1e-5 relative).
The lowering then builds one table for the whole chain instead of quantizing every intermediate (and the
tanh form's Pow, which has no kernel, goes). Transposes inside the chain (tf2onnx moves them there) are
followed: when the chain ends in another layout than x, the Gelu is followed by that one Transpose. Gelu is an
opset-20 op: a model below opset 20 is raised to it. Only the main graph is rewritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value, fresh_name, raise_opset

ELEMENTWISE = ("Mul", "Add", "Sub", "Div", "Pow", "Neg", "Erf", "Tanh", "Sqrt", "Reciprocal")
CORES = ("Erf", "Tanh")
MIN_NODES, MAX_NODES = 4, 16  # GELU takes 4 to ~10 element-wise ops; other chains are not evaluated
GELU_OPSET = 20
GRID = 161  # points over [-8, 8] at least


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@dataclass
class Chain:
    """Nodes computing, element-wise, f(x) laid out as Transpose(x, perm) (tf2onnx moves Transposes into
    activation chains), in graph order, the chain's last node last."""

    x: ir.Value
    perm: tuple[int, ...]
    nodes: list[ir.Node]


def _chains(graph: ir.Graph) -> dict[ir.Node, Chain]:
    """The chain each element-wise node or Transpose ends, when its varying inputs all come from one tensor x
    in one layout and its other inputs are single constants."""
    chains: dict[ir.Node, Chain] = {}
    index = {n: i for i, n in enumerate(graph)}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1 or node.op_type not in (*ELEMENTWISE,
                                                                                                "Transpose"):
            continue
        sources, nodes = set(), []
        for v in node.inputs:
            c = const_value(v)
            if v is None or (c is not None and c.size == 1):
                continue
            if c is not None or v.shape is None or v.dtype != ir.DataType.FLOAT:
                break
            chain = chains.get(v.producer())
            if chain is not None:
                sources.add((chain.x, chain.perm))
                nodes += [n for n in chain.nodes if n not in nodes]
            else:
                sources.add((v, tuple(range(len(v.shape)))))
        else:
            if len(sources) != 1 or len(nodes) >= MAX_NODES:
                continue
            x, perm = sources.pop()
            if node.op_type == "Transpose":
                order = node.attributes.get_ints("perm", list(range(len(perm)))[::-1])
                perm = tuple(perm[i] for i in order)
            chains[node] = Chain(x, perm, sorted(nodes, key=index.__getitem__) + [node])
    return chains


def _match(chain: Chain, opset: int) -> str | None:
    """The GELU form ("none" or "tanh") the chain computes, evaluated by onnx's reference evaluator on a grid
    over [-8, 8] in float32 (as the model computes), else None."""
    if len(chain.nodes) < MIN_NODES or not any(n.op_type in CORES for n in chain.nodes):
        return None
    x, nodes = chain.x, chain.nodes
    shape = tuple(x.shape.numpy())
    size = math.prod(shape)
    grid = np.linspace(-8.0, 8.0, size * -(-GRID // size)).reshape(-1, *shape)
    consts = {v.name: const_value(v) for n in nodes for v in n.inputs if v is not None and const_value(v) is not None}
    out = nodes[-1].outputs[0].name
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in (x.name, out)]
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes], "chain", vi[:1], vi[1:],
        [onnx.numpy_helper.from_array(np.asarray(c), name) for name, c in consts.items()]),
        opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        ref = onnx.reference.ReferenceEvaluator(model)
        y = np.stack([ref.run(None, {x.name: g.astype(np.float32)})[0] for g in grid]).astype(np.float64)
    except Exception:  # noqa: BLE001 - a chain the reference evaluator cannot run is simply not GELU
        return None
    expected_x = np.stack([g.transpose(chain.perm) for g in grid])
    if y.shape != expected_x.shape:
        return None
    for approximate in ("none", "tanh"):
        if np.all(np.abs(y - _gelu(expected_x, approximate)) <= 1e-5 * (1.0 + np.abs(expected_x))):
            return approximate
    return None


@register_pass("fuse-gelu")
class FuseGeluPass(QPass):
    """Fuse an element-wise chain computing GELU (erf or tanh form) into one Gelu node."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = max(model.opset_imports.get("", 17), 13)
        chains = _chains(graph)
        done: set[ir.Node] = set()
        found = []
        for node in reversed(list(graph)):  # the longest chain first: it ends last
            if node in chains and node not in done:
                approximate = _match(chains[node], opset)
                if approximate is not None:
                    found.append((chains[node], approximate))
                    done.update(chains[node].nodes)
        if not found:
            return ir.passes.PassResult(model, False)
        raise_opset(model, GELU_OPSET)
        taken = {n.name for n in graph if n.name}
        for chain, approximate in found:
            self._replace(graph, chain, approximate, taken)
        return ir.passes.PassResult(model, True)

    def _replace(self, graph: ir.Graph, chain: Chain, approximate: str, taken: set[str]) -> None:
        last = chain.nodes[-1]
        name = last.name or "chain"
        attrs = {"approximate": approximate} if approximate != "none" else None
        new = [self.mark(ir.node("Gelu", [chain.x], attributes=attrs, name=fresh_name(taken, f"{name}_gelu")))]
        new[0].outputs[0].shape, new[0].outputs[0].type = chain.x.shape, chain.x.type
        if chain.perm != tuple(range(len(chain.perm))):  # the chain ended in another layout: keep it
            new.append(self.mark(ir.node("Transpose", [new[0].outputs[0]], attributes={"perm": list(chain.perm)},
                                         name=fresh_name(taken, f"{name}_gelu_transpose"))))
        old, result = last.outputs[0], new[-1].outputs[0]
        result.shape, result.type = old.shape, old.type
        graph.insert_after(last, new)
        for node in new:
            node.outputs[0].name = f"{node.name}_out"
        if old.is_graph_output():
            ir.convenience.replace_all_uses_with(old, result, replace_graph_outputs=True)
            old.name, result.name = f"{old.name}_fused", old.name
        else:
            ir.convenience.replace_all_uses_with(old, result)
        for node in reversed(chain.nodes):  # a step another node still reads stays
            if not any(o.uses() or o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)
