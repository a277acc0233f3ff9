"""What the LSTM, GRU and RNN lowerings share (lower_lstm.py, lower_gru.py, lower_rnn.py).

`unroll-lstm` / `unroll-gru` tag every node they create with the layer's name, direction, step and role
(`Tags` names the metadata keys). Re-rolling one direction reads those tags:

    tagged nodes ──gather_steps──▶ {step: {role: node}}, T, reverse
                 ──check_zero_state──▶ refuses a non-zero initial state, by name
                 ──row_mode──▶ which rows of h the kernel keeps (0: Y in time order, 1: by step, 2: two rows)
                 ──map_outputs──▶ Y, Y_h, one step's h (and the LSTM's Y_c) as views of the kernel's outputs
    bias Add ──gate_bias──▶ int32 bias and its per-row shift k (scale s_in·s_W·2^k)
    group ──open_group──▶ (check_recurrent_group, then lower_join or gather_steps): one pass over the group
          ──lower_join──▶ the Concats joining two directions (direction "-1")
    step 0's Gather ──sequence_input──▶ the [T, 1, I] / [1, T, I] input and its time-axis length
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qpass.errors import UnsupportedOpError
from qpass.passes._util import const_value

if TYPE_CHECKING:
    from qpass.codegen.lower import Lowering
    from qpass.runtime_ref.program import QTensor


@dataclass(frozen=True)
class Tags:
    """The metadata keys an unroll pass writes, the op's name in errors, and the roles no kernel runs."""

    op: str  # "LSTM" | "GRU"
    name: str
    direction: str
    step: str
    role: str
    unsupported: frozenset[str]
    unsupported_why: str


def gather_steps(nodes: list[ir.Node], tags: Tags) -> tuple[dict[int, dict[str, ir.Node]], int, bool]:
    """One direction's tagged nodes by step and role, its length T and whether it runs backwards.

    Shared by the integer and the float lowering; refuses, by name, what neither kernel runs."""
    name = nodes[0].metadata_props[tags.name]
    steps: dict[int, dict[str, ir.Node]] = defaultdict(dict)
    for node in nodes:
        role = node.metadata_props.get(tags.role, "")
        if role in tags.unsupported:
            raise UnsupportedOpError(name, tags.op, f"role {role!r} ({tags.unsupported_why}) is not supported in "
                                     "generated C yet")
        steps[int(node.metadata_props.get(tags.step, "-1"))][role] = node
    t_len = max(steps) + 1
    if t_len < 1 or any(s not in steps or "x" not in steps[s] for s in range(t_len)):
        raise UnsupportedOpError(name, tags.op, "the unrolled steps are incomplete")
    t0 = step_time(steps[0]["x"])  # a reverse layer starts at the last time step (T = 1: forward either way)
    return steps, t_len, t0 != 0 or (t_len > 1 and step_time(steps[1]["x"]) < t0)


def joins_directions(nodes: list[ir.Node], tags: Tags) -> bool:
    """Is this group the nodes that join a bidirectional layer's two directions (direction "-1")?"""
    return nodes[0].metadata_props.get(tags.direction, "0") == "-1"


def check_recurrent_group(nodes: list[ir.Node], tags: Tags, gather: Callable[[list[ir.Node]], object]) -> None:
    """Refuse, by name, a tagged group the kernel does not run (the early support check calls this): the nodes
    joining two directions must be Concats; one direction's steps must pass `gather` (its gather_steps)."""
    if not joins_directions(nodes, tags):
        gather(nodes)
        return
    for node in nodes:
        if node.op_type != "Concat":
            raise UnsupportedOpError(node.name or nodes[0].metadata_props[tags.name], node.op_type,
                                     f"unexpected node joining {tags.op} directions")


def lower_join(lw: Lowering, nodes: list[ir.Node], tags: Tags) -> bool:
    """Emit the Concats that join both directions (they run after both), when this group is them; else False."""
    if not joins_directions(nodes, tags):
        return False
    from qpass.codegen.lower import EMITTERS

    for node in nodes:
        EMITTERS["Concat"](lw, node)
    return True


def open_group(lw: Lowering, nodes: list[ir.Node], tags: Tags,
               gather: Callable[[list[ir.Node]], tuple[dict[int, dict[str, ir.Node]], int, bool]]
               ) -> tuple[str, dict[int, dict[str, ir.Node]], int, bool] | None:
    """Start lowering one tagged group: None when it is the Concats joining two directions (emitted here, after
    the check that they are only Concats); else the layer's name and `gather`'s steps, T and reverse flag (which
    refuses, by name, what the kernel does not run)."""
    if joins_directions(nodes, tags):
        check_recurrent_group(nodes, tags, gather)
        lower_join(lw, nodes, tags)
        return None
    return (nodes[0].metadata_props[tags.name], *gather(nodes))


def sequence_input(lw: Lowering, x_node: ir.Node, t_len: int, name: str, op: str) -> tuple[QTensor, int]:
    """The quantized input X read by step 0's Gather, batch 1, and its length along the time axis (more than
    t_len when the later steps were never read); UnsupportedOpError otherwise."""
    x = lw.input_of(x_node, 0)
    layout = x_node.attributes.get_int("axis", 0)  # the time axis: 0 = [T, B, I], 1 = [B, T, I]
    x_steps = x.shape[layout] if len(x.shape) == 3 else 0
    if len(x.shape) != 3 or x.shape[1 - layout] != 1 or x_steps < t_len:
        raise UnsupportedOpError(name, op, f"input must be [T, 1, I] (layout 0) or [1, T, I] (layout 1): "
                                 f"batch 1; got {x.shape}")
    return x, x_steps


def step_time(x_node: ir.Node) -> int:
    idx = const_value(x_node.inputs[1])
    return int(idx.reshape(())) if idx is not None else 0


def state_value(v: ir.Value | None) -> np.ndarray | None:
    """The constant behind v, through QuantizeLinear / DequantizeLinear (a dequantized constant as q − zp, which is
    zero exactly where the real value is), else None."""
    while v is not None and v.producer() is not None and v.producer().op_type in ("QuantizeLinear",
                                                                                   "DequantizeLinear"):
        node = v.producer()
        q = const_value(node.inputs[0])
        if node.op_type == "DequantizeLinear" and q is not None:
            zp = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else 0
            return q.astype(np.int64) - np.asarray(zp, dtype=np.int64)
        v = node.inputs[0]
    return const_value(v)


def produced_by(v: ir.Value | None, node: ir.Node) -> bool:
    """v is node's output, directly or through its QuantizeLinear → DequantizeLinear pair."""
    while v is not None and v.producer() is not None and v.producer().op_type in ("QuantizeLinear",
                                                                                   "DequantizeLinear"):
        v = v.producer().inputs[0]
    return v is not None and v.producer() is node


def check_zero_state(name: str, op: str, states: list[ir.Value | None], what: str) -> None:
    """The kernels start from zero states: each value step 0 reads as a previous state must be constant zeros."""
    for v in states:
        c = state_value(v)
        if c is None or np.any(c != 0):
            raise UnsupportedOpError(name, op, "a non-zero initial state is not supported in integer code; "
                                     f"export the {op} without {what} (or with zeros)")


def gate_bias(name: str, op: str, lw: Lowering, add: ir.Node, in_scale: float, sw: np.ndarray,
              rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias of a bias Add (rows of it) and its per-row left shift k: scale = s_in · s_W · 2^k (k > 0 only
    where the bias is too large for int32 at s_in · s_W; a zero bias says nothing about its scale)."""
    bias, b_scale = lw.weight(add, 1)
    bias = bias.reshape(-1)
    b_scale = np.broadcast_to(b_scale, bias.shape)
    sw = np.broadcast_to(sw, bias.shape)
    if rows is not None:
        bias, b_scale, sw = bias[rows], b_scale[rows], sw[rows]
    ratio = np.where(bias != 0, b_scale / (np.float32(in_scale) * sw.astype(np.float32)), 1.0)
    k = np.rint(np.log2(ratio)).astype(np.int64)
    if np.any(k < 0) or np.any(k > 30) or not np.allclose(ratio, np.exp2(k), rtol=1e-5):
        raise UnsupportedOpError(name, op, "bias scale must be input scale x weight scale (times 2^k)")
    return bias.astype(np.int32), k


def q_after(node: ir.Node, lw: Lowering, index: int = 0) -> tuple[float, int, str]:
    """(scale, zero point, dtype) of the QuantizeLinear reading output `index` of node."""
    users = [u for u in node.outputs[index].consumers() if u.op_type == "QuantizeLinear"]
    if not users:
        raise UnsupportedOpError(node.name or "", node.op_type, "recurrent tensor is not quantized")
    return lw.qparams(users[0])


def row_mode(t_len: int, nodes: list[ir.Node], tags: Tags) -> int:
    """0 if anything outside the group reads Y, 1 if it reads the h of a processing step before the last, else 2."""
    members = {id(n) for n in nodes}
    mode = 2
    for node in nodes:
        role = node.metadata_props.get(tags.role, "")
        s = int(node.metadata_props.get(tags.step, "-1"))
        if role == "y" or (role == "h" and s < t_len - 1):
            for out in node.outputs:
                if out.is_graph_output() or any(read_outside(u.outputs[0], members) for u in out.consumers()
                                                 if u.op_type == "QuantizeLinear"):
                    mode = 0 if role == "y" else min(mode, 1)
    return mode


def map_outputs(lw: Lowering, steps: dict[int, dict[str, ir.Node]], hseq, hid: int, nodes: list[ir.Node],
                mode: int, tags: Tags, cell=None) -> None:
    """h_t, Y and Y_h become views of the kernel's h rows, Y_c (LSTM) of its cell state (the last c when the kernel
    ends); nothing else may leave the group."""
    members = {id(n) for n in nodes}
    last = steps[max(k for k in steps if k >= 0)]
    for node in nodes:
        role = node.metadata_props.get(tags.role, "")
        s = int(node.metadata_props.get(tags.step, "-1"))
        for out in node.outputs:
            qs = [u for u in out.consumers() if u.op_type == "QuantizeLinear"]
            q_val = qs[0].outputs[0] if qs else None
            if role == "h":
                alias(lw, q_val, hseq, (step_time(steps[s]["x"]), s, s & 1)[mode] * hid)
            elif role == "y" and (node.op_type == "Concat" or len(steps) == 2):  # T = 1: Y is one Unsqueeze
                alias(lw, q_val, hseq, 0)
            elif role == "y_h":
                alias(lw, q_val, hseq, (step_time(last["x"]), max(steps), max(steps) & 1)[mode] * hid)
            elif role == "y_c" and cell is not None and q_val is not None:
                q = lw.qparams(qs[0])
                if (q[2], q[1]) != (cell.dtype, 0) or not np.isclose(q[0], cell.scale, rtol=1e-6):
                    raise UnsupportedOpError(node.name or "", node.op_type, "Y_c must keep the cell state's "
                                             f"parameters (int16, scale {cell.scale}), got {q}")
                alias(lw, q_val, cell, 0)
            elif q_val is not None and read_outside(q_val, members):
                raise UnsupportedOpError(node.name or "", node.op_type, f"{tags.op} {role!r} output is used outside "
                                         f"the {tags.op}; only Y and Y_h are")


def alias(lw: Lowering, q_val: ir.Value | None, hseq, offset: int) -> None:
    if q_val is None:
        return
    shape = q_val.shape if q_val.shape is not None else (1,)
    t = lw.new_tensor(shape, hseq.dtype, hseq.scale, hseq.zero_point, q_val.name or "", hseq.id)
    t.alias_offset = offset
    lw.by_value[id(q_val)] = t


def read_outside(q_val: ir.Value, members: set[int]) -> bool:
    for dq in q_val.consumers():
        for user in dq.outputs[0].consumers() if dq.op_type == "DequantizeLinear" else [dq]:
            if id(user) not in members:
                return True
    return False
