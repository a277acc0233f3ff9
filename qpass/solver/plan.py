"""The scale solver: a networkx constraint graph over quantized tensors → a QuantPlan.

Nodes are float activation tensors. Edges are `equal` contracts (the two tensors must share scale and
zero point so no rescale is needed between them): data-movement ops (Reshape, Flatten, Transpose,
Squeeze, Unsqueeze, MaxPool, Identity, Dropout) and ReLU or Clip folded into a clamp. Some nodes carry a `fixed`
contract (Softmax and Sigmoid outputs in [0, 1], Tanh in [−1, 1]). Each connected component is one
group whose parameters cover the union of its members' ranges; two different fixed ranges in one
group are a conflict, resolved by cutting the edge (lowering then inserts an explicit requantize).
Bias scale = input scale × weight scale is derived, not solved. The plan also proves that every
linear accumulator fits int32 and raises SolverError naming the node where it cannot.

The solver is an analysis: it reads the model and returns a plan; `apply_plan` writes the QDQ graph.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_ir as ir

from qpass.config import QuantSection
from qpass.passes._util import const_value
from qpass.passes.unroll_gru import GRU_DIRECTION_KEY, GRU_KEY, GRU_ROLE_KEY
from qpass.passes.unroll_lstm import DIRECTION_KEY as DIR_KEY
from qpass.passes.unroll_lstm import LSTM_KEY, ROLE_KEY
from qpass.passes.unroll_rnn import RNN_DIRECTION_KEY, RNN_KEY, RNN_ROLE_KEY
from qpass.runtime_ref.intmath import QMAX, QMIN
from qpass.solver.calibrate import Range, float_values

log = logging.getLogger(__name__)

MOVE_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity", "Gather", "Dropout",
            "GlobalMaxPool", "ReduceMax"}
CLAMP_OPS = {"Relu", "Clip"}  # folded into a clamp: the input takes the output's parameters
WIDE_ROLES = {"c", "fc", "ig", "c0", "peep_i_mul", "peep_f_mul", "peep_o_mul"}  # the cell state: int16
FIXED = {  # op → {dtype: (scale, zero point)} of its output: the known range of a LUT's function
    "Softmax": {"int8": (1.0 / 256.0, -128), "int16": (1.0 / 32768.0, 0)},
    "Sigmoid": {"int8": (1.0 / 256.0, -128), "int16": (1.0 / 32768.0, 0)},
    "Tanh": {"int8": (1.0 / 128.0, 0), "int16": (1.0 / 32768.0, 0)},
    "Softsign": {"int8": (1.0 / 128.0, 0), "int16": (1.0 / 32768.0, 0)},
    "HardSigmoid": {"int8": (1.0 / 256.0, -128), "int16": (1.0 / 32768.0, 0)},
}
WIDTH = {"int8": 8, "int16": 16}
WEIGHT_OPS = {"Gemm": 1, "MatMul": 1, "Conv": 1}  # op → input index of the weight


@dataclass
class TensorQuant:
    dtype: str
    scale: float
    zero_point: int
    range: Range
    group: int


@dataclass
class WeightQuant:
    q: np.ndarray
    scale: np.ndarray  # per channel (or one element)
    axis: int


@dataclass
class QuantPlan:
    activations: dict[str, TensorQuant] = field(default_factory=dict)
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    biases: dict[str, WeightQuant] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    rescales_removed: int = 0
    widened: list[str] = field(default_factory=list)

    def to_report(self) -> dict:
        return {
            "tensors": {n: {"dtype": t.dtype, "scale": t.scale, "zero_point": t.zero_point,
                            "range": [t.range.lo, t.range.hi], "group": t.group}
                        for n, t in self.activations.items()},
            "rescales_removed": self.rescales_removed,
            "conflicts": self.conflicts,
            "widened_accumulators": self.widened,
        }


def _f32(x: float) -> float:
    return float(np.float32(x))


_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32 scale


def asymmetric(r: Range, dtype: str = "int8") -> tuple[float, int]:
    """Scale and zero point covering r ∪ {0} on the full integer range."""
    lo, hi = min(r.lo, 0.0), max(r.hi, 0.0)
    qmin, qmax = QMIN[dtype], QMAX[dtype]
    scale = _f32((hi - lo) / (qmax - qmin))
    if not scale >= _TINY:  # a zero (or denormal: a dead layer's) range: any normal scale represents it
        return 1.0 / (qmax - qmin), int(np.clip(round(qmin - lo * (qmax - qmin)), qmin, qmax))
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zp


def symmetric(r: Range, dtype: str = "int16") -> float:
    """Scale for a zero-point-0 tensor covering r."""
    scale = _f32(max(abs(r.lo), abs(r.hi)) / QMAX[dtype])
    return scale if scale >= _TINY else 1.0 / QMAX[dtype]  # a zero or denormal range


def build_graph(model: ir.Model, ranges: dict[str, Range], quant: QuantSection | None = None) -> nx.Graph:
    quant = quant or QuantSection()
    g = nx.Graph()
    for v in float_values(model):
        if v.name in ranges:
            g.add_node(v.name, range=ranges[v.name], clamped=False, fixed=None, wide=False,
                       dtype=quant.activations, pinned=False)
    if quant.input_range is not None:  # pinned: the user's range replaces the calibrated one
        for v in model.graph.inputs:
            if v.name in g:
                g.nodes[v.name].update(range=Range(*quant.input_range), pinned=True)
    for node in model.graph:
        outs = [o.name for o in node.outputs if o.name in g]
        if not outs:
            continue
        for o in outs:
            g.nodes[o]["dtype"] = precision(node, quant)[0]
        if node.op_type in FIXED:
            g.nodes[outs[0]]["fixed"] = node.op_type
        x = node.inputs[0] if node.inputs else None
        if x is None or x.name not in g:
            continue
        if node.op_type in MOVE_OPS:
            g.add_edge(x.name, outs[0], contract="equal", op=node.op_type, node=node.name)
        elif node.op_type == "Concat":
            for other in node.inputs:
                if other is not None and other.name in g:
                    g.add_edge(other.name, outs[0], contract="equal", op="Concat", node=node.name)
        elif node.op_type in CLAMP_OPS and len(x.consumers()) == 1 and not x.is_graph_output():
            # ReLU folded into a clamp: the pre-activation keeps only the post-activation range
            g.nodes[x.name]["clamped"] = True
            g.add_edge(x.name, outs[0], contract="equal", op=node.op_type, node=node.name)
    _tie_timesteps(model, g)
    return g


def _tie_timesteps(model: ir.Model, g: nx.Graph) -> None:
    """Across time: every step of an unrolled LSTM, GRU or RNN shares the parameters of each role's tensors."""
    first: dict[tuple[str, str, str, str, int], str] = {}
    for node in model.graph:
        cell, (key, direction, role) = _recurrent_tags(node)
        if key is None or role is None:
            continue
        for idx, out in enumerate(node.outputs):
            if out.name not in g:
                continue
            g.nodes[out.name]["wide"] = cell == "LSTM" and role in WIDE_ROLES
            tag = (cell, key, direction or "0", role, idx)
            if tag in first:
                g.add_edge(first[tag], out.name, contract="equal", op="time", node=key)
            else:
                first[tag] = out.name


def _recurrent_tags(node: ir.Node) -> tuple[str, tuple[str | None, str | None, str | None]]:
    """("LSTM" | "GRU" | "RNN", (name, direction, role)) of a node unroll-lstm / -gru / -rnn made, else ("", Nones)."""
    meta = node.metadata_props
    for cell, keys in (("LSTM", (LSTM_KEY, DIR_KEY, ROLE_KEY)), ("GRU", (GRU_KEY, GRU_DIRECTION_KEY, GRU_ROLE_KEY)),
                       ("RNN", (RNN_KEY, RNN_DIRECTION_KEY, RNN_ROLE_KEY))):
        if keys[0] in meta:
            return cell, tuple(meta.get(k) for k in keys)
    return "", (None, None, None)


def _resolve_conflicts(g: nx.Graph, conflicts: list[str]) -> None:
    """A group may hold one fixed range. Where members are fixed to different ones, each of them is cut
    loose (its equal edges removed): the rest of the group takes its calibrated range, which covers
    them all, and the lowering puts an explicit requantize after every fixed member."""
    for comp in list(nx.connected_components(g)):
        fixed = sorted((n for n in comp if g.nodes[n]["fixed"] is not None), key=str)
        if len({g.nodes[n]["fixed"] for n in fixed}) <= 1:
            continue
        for n in fixed:
            for other in list(g.neighbors(n)):
                data = g.edges[n, other]
                g.remove_edge(n, other)
                conflicts.append(f"{data['op']} node {data['node']!r}: {n!r} ({g.nodes[n]['fixed']} output) "
                                 f"cannot share parameters with {other!r}, whose group also holds other fixed "
                                 "ranges; a requantize goes between them")


def precision(node: ir.Node, quant: QuantSection) -> tuple[str, str]:
    """(activation dtype, weight dtype) for a node: the first matching override, else the defaults."""
    cell, (key, _, _) = _recurrent_tags(node)
    names = [node.name or "", key or ""]
    ops = [node.op_type] + ([cell] if cell else [])
    for rule in quant.overrides:
        m = rule.match
        hit = (m.startswith("op:") and m[3:] in ops) or (m.startswith("re:") and any(
            re.search(m[3:], n) for n in names if n)) or m in names
        if hit:
            return rule.activations or quant.activations, rule.weights or quant.weights
    return quant.activations, quant.weights


def _pow2(scale: float) -> float:
    """The smallest power of two ≥ scale: every rescale becomes an exact shift."""
    return float(2.0 ** math.ceil(math.log2(scale)))


def solve(model: ir.Model, ranges: dict[str, Range], quant: QuantSection | None = None) -> QuantPlan:
    quant = quant or QuantSection()
    pow2 = quant.requant == "pow2"
    plan = QuantPlan()
    g = build_graph(model, ranges, quant)
    _resolve_conflicts(g, plan.conflicts)
    plan.rescales_removed = g.number_of_edges()
    for gid, comp in enumerate(sorted(nx.connected_components(g), key=lambda c: sorted(c)[0])):
        members = [g.nodes[n]["range"] for n in comp if g.nodes[n]["pinned"]] or [
            g.nodes[n]["range"] for n in comp if not g.nodes[n]["clamped"]] or [g.nodes[n]["range"] for n in comp]
        total = members[0]
        for r in members[1:]:
            total = total.union(r)
        wide = any(g.nodes[n]["wide"] for n in comp)
        dtype = max((g.nodes[n]["dtype"] for n in comp), key=WIDTH.__getitem__)
        fixed_op = next((g.nodes[n]["fixed"] for n in comp if g.nodes[n]["fixed"] is not None), None)
        if fixed_op:
            scale, zp = FIXED[fixed_op][dtype]
        elif wide or dtype == "int16":
            dtype = "int16"
            scale, zp = symmetric(total, dtype), 0
            scale = _pow2(scale) if pow2 else scale
        else:
            scale, zp = asymmetric(total, dtype)
            if pow2:
                scale = _pow2(scale)
                zp = int(np.clip(round(QMIN[dtype] - min(total.lo, 0.0) / scale), QMIN[dtype], QMAX[dtype]))
        for n in comp:
            plan.activations[n] = TensorQuant(dtype, _f32(scale), zp, g.nodes[n]["range"], gid)
    for node in model.graph:
        if node.op_type in WEIGHT_OPS:
            _plan_linear(node, plan, quant)
    for node in model.graph:
        if node.metadata_props.get(ROLE_KEY) == "gates":
            _plan_lstm_bias(node, plan)
        elif node.metadata_props.get(GRU_ROLE_KEY) in ("xb", "hb") or node.metadata_props.get(RNN_ROLE_KEY) == "xb":
            mm = node.inputs[0].producer() if node.inputs[0] is not None else None
            _plan_bias(node, mm, plan)
        elif node.op_type in ("Mul", "Add", "Sub") and not _recurrent_tags(node)[0]:
            _plan_elementwise_constant(node, plan, quant)
    return plan


def _plan_elementwise_constant(node: ir.Node, plan: QuantPlan, quant: QuantSection) -> None:
    """The constant of Mul(x, c) / Add(x, c) / Sub(x, c) (e.g. a BatchNorm with no linear op): symmetric, per channel
    along its one non-unit axis for Mul, per tensor for Add (it is added after a rescale)."""
    consts = [(i, const_value(v)) for i, v in enumerate(node.inputs) if v is not None]
    known = [(i, c) for i, c in consts if c is not None]
    acts = [v for v in node.inputs if v is not None and v.name in plan.activations]
    if len(known) != 1 or len(acts) != 1:
        return
    idx, c = known[0]
    c = c.astype(np.float32)
    value = node.inputs[idx]
    w_dtype = precision(node, quant)[1]
    qmax = QMAX[w_dtype]
    axes = [i for i, d in enumerate(c.shape) if d != 1]
    if node.op_type == "Mul" and len(axes) == 1:
        amax, axis = np.abs(c).reshape(-1), axes[0]
    else:
        amax, axis = np.full(1, np.abs(c).max()), 0
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    bshape = [1] * max(c.ndim, 1)
    if scale.size > 1:
        bshape[axis] = -1
    q = np.clip(np.rint(c / scale.reshape(bshape)), -qmax, qmax).astype(w_dtype)
    plan.weights[value.name] = WeightQuant(q, scale, axis)


def _plan_lstm_bias(node: ir.Node, plan: QuantPlan) -> None:
    """An unrolled LSTM's gate bias: int32 at scale s_x × s_W (the input projection's), or at s_x × s_W × 2^k
    per row when it does not fit int32 there (int16 × int16, a row with a tiny weight scale), as for linear."""
    xh = node.inputs[0].producer() if node.inputs[0] is not None else None
    _plan_bias(node, xh.inputs[0].producer() if xh is not None and xh.inputs[0] is not None else None, plan)


def _plan_bias(node: ir.Node, xw: ir.Node | None, plan: QuantPlan) -> None:
    """The constant input 1 of a recurrent bias Add after the MatMul `xw`: int32 at s_x·s_W(·2^k per row)."""
    b_val = node.inputs[1]
    bias = const_value(b_val)
    if xw is None or xw.op_type != "MatMul" or bias is None or b_val.name in plan.biases:
        return
    w = plan.weights.get(xw.inputs[1].name)
    x = xw.inputs[0]
    if w is None or x is None or x.name not in plan.activations:
        return
    b_scale = (np.float32(plan.activations[x.name].scale) * w.scale).astype(np.float32)
    exact = np.abs(bias.reshape(-1).astype(np.float64) / b_scale)
    k = np.maximum(0, np.ceil(np.log2(np.maximum(exact, 1) / (2**31 - 1)))).astype(np.int64)
    b_scale = (b_scale * np.exp2(k)).astype(np.float32)
    bq = np.rint(bias.reshape(-1).astype(np.float64) / b_scale)
    plan.biases[b_val.name] = WeightQuant(np.clip(bq, -(2**31 - 1), 2**31 - 1).astype(np.int32), b_scale, 0)


def _plan_linear(node: ir.Node, plan: QuantPlan, quant: QuantSection) -> None:
    w_val = node.inputs[WEIGHT_OPS[node.op_type]]
    w = const_value(w_val)
    x = node.inputs[0]
    if w is None or x is None or x.name not in plan.activations:
        return  # a MatMul of two activations has no weight to quantize
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
        axis = 0
    else:
        axis = w.ndim - 1
    w_dtype = precision(node, quant)[1]
    qmax = QMAX[w_dtype]
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce_axes) if quant.per_channel else np.full(w.shape[axis], np.abs(w).max())
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    if quant.requant == "pow2":
        scale = np.array([_pow2(float(s)) for s in scale], dtype=np.float32)
    bshape = [1] * w.ndim
    bshape[axis] = -1
    wq = np.clip(np.rint(w / scale.reshape(bshape)), -qmax, qmax).astype(w_dtype)
    plan.weights[w_val.name] = WeightQuant(wq, scale, axis)
    xq = plan.activations[x.name]
    b_scale = (np.float32(xq.scale) * scale).astype(np.float32)
    bias_val = node.inputs[2] if len(node.inputs) > 2 else None
    bias = const_value(bias_val) if bias_val is not None else None
    bq = np.zeros(len(scale), dtype=np.int64)
    if bias is not None:
        exact = np.abs(bias.reshape(-1).astype(np.float64) / b_scale)
        # A bias too large for int32 at s_x·s_w (int16 × int16) is stored at s_x·s_w·2^k, k ≥ 0 per channel;
        # the kernel shifts it back into its (then int64) accumulator. Ratios of 2^k are exact in float32.
        k = np.maximum(0, np.ceil(np.log2(np.maximum(exact, 1) / (2**31 - 1)))).astype(np.int64)
        if k.max() > 0:
            b_scale = (b_scale * np.exp2(k)).astype(np.float32)
        bq = np.rint(bias.reshape(-1).astype(np.float64) / b_scale).astype(np.int64)
        plan.biases[bias_val.name] = WeightQuant(bq.astype(np.int32), b_scale, 0)
        bq = bq << k
    # Overflow proof: |acc| ≤ |b| + Σ|w|·max|x − zp|; past int32 the lowering widens to int64
    x_span = max(QMAX[xq.dtype] - xq.zero_point, xq.zero_point - QMIN[xq.dtype])
    bound = int((np.abs(bq) + np.abs(wq.astype(np.int64)).sum(axis=reduce_axes) * x_span).max())
    if bound >= 2**31:
        plan.widened.append(f"{node.op_type} node {node.name!r}: accumulator bound {bound} > int32; int64")
