"""Re-rolling an unrolled LSTM: the per-timestep primitive ops `unroll-lstm` made → one `lstm` kernel.

`unroll-lstm` tags every node it creates with the LSTM's name, direction, step and role; the solver
ties each role's quantization parameters across time. So the integer constants can be read from any
one step, and the C runs a single loop body for all T steps (code size does not grow with T).
Supported here: one direction per kernel (forward or reverse), batch 1, layout 0, default
activations, no peepholes or clip, zero initial states.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qpass.errors import UnsupportedOpError
from qpass.passes._util import const_value
from qpass.runtime_ref.intmath import QMAX, quantize_multiplier, shared_shift_multipliers

if TYPE_CHECKING:
    from qpass.codegen.lower import Lowering

LSTM_KEY, DIR_KEY, STEP_KEY, ROLE_KEY = "qpass.lstm", "qpass.lstm.direction", "qpass.lstm.step", "qpass.lstm.role"
UNSUPPORTED_ROLES = {"clip_i", "clip_o", "clip_f", "clip_c", "peep_i", "peep_f", "peep_o", "h0", "c0"}
SIGMOID, TANH = (1.0 / 256.0, -128), (1.0 / 128.0, 0)


def group_key(node: ir.Node) -> tuple[str, str] | None:
    key = node.metadata_props.get(LSTM_KEY)
    return None if key is None else (key, node.metadata_props.get(DIR_KEY, "0"))


def tanh_table(scale_c: float) -> np.ndarray:
    """tanh at q = k·256 − 32768 for k = 0..256, in Q15, for an int16 input of scale scale_c."""
    q = np.arange(257, dtype=np.float64) * 256 - 32768
    return np.clip(np.rint(np.tanh(q * scale_c) * 32768), -32768, 32767).astype(np.int16)


def lower_lstm(lw: Lowering, nodes: list[ir.Node]) -> None:
    """Emit one `lstm` step for the tagged nodes of one LSTM direction, and map its visible outputs."""
    name = nodes[0].metadata_props[LSTM_KEY]
    steps: dict[int, dict[str, ir.Node]] = defaultdict(dict)
    for node in nodes:
        role = node.metadata_props.get(ROLE_KEY, "")
        if role in UNSUPPORTED_ROLES:
            raise UnsupportedOpError(name, "LSTM", f"role {role!r} (peepholes, clip or initial states) is not "
                                     "supported in integer code yet")
        steps[int(node.metadata_props.get(STEP_KEY, "-1"))][role] = node
    t_len = max(steps) + 1
    reverse = t_len > 1 and _time(steps[0]["x"]) == t_len - 1
    first, later = steps[0], steps[min(1, t_len - 1)]

    x = lw.input_of(first["x"], 0)
    if len(x.shape) != 3 or x.shape[1] != 1 or x.shape[0] != t_len:
        raise UnsupportedOpError(name, "LSTM", f"input must be [T, 1, I] (layout 0, batch 1); got {x.shape}")
    wx, sw = lw.weight(first["xw"], 1)  # [I, 4H], per-column scales
    n_in, four_h = wx.shape
    hid = four_h // 4
    if "hr" in later:
        wh, sr = lw.weight(later["hr"], 1)
    else:  # T = 1: the recurrent term never runs
        wh, sr = np.zeros((hid, four_h), dtype=np.int8), np.ones(four_h)
    bias = lw.weight(first["gates"], 1)[0].reshape(-1) if "gates" in first else np.zeros(four_h, np.int32)

    h_q = _q_after(lw, first["h"])
    c_q = _q_after(lw, first["c"])
    if c_q[2] != "int16" or c_q[1] != 0:
        raise UnsupportedOpError(name, "LSTM", "the cell state must be int16 with zero point 0")
    gates = [_q_after(lw, first["split"], i) for i in range(4)]  # i, o, f, c pre-activations
    for role, want in (("i", SIGMOID), ("o", SIGMOID), ("f", SIGMOID), ("g", TANH), ("tc", TANH)):
        got = _q_after(lw, first[role])[:2]
        if not np.isclose(got[0], want[0]) or got[1] != want[1]:
            raise UnsupportedOpError(name, "LSTM", f"{role} must be quantized with scale {want[0]}, zp {want[1]}")

    mx, mh, shifts = [], [], []
    for r in range(four_h):
        s_gate = gates[r // hid][0]
        (a, b), sh = shared_shift_multipliers([x.scale * float(sw[r]) / s_gate, h_q[0] * float(sr[r]) / s_gate])
        mx.append(a), mh.append(b), shifts.append(sh)
    luts = []
    for k, (s_g, zp_g, _) in enumerate(gates):
        codes = (np.arange(-128, 128) - zp_g) * s_g
        fn = np.tanh(codes) if k == 3 else 1.0 / (1.0 + np.exp(-codes))
        scale, zp = TANH if k == 3 else SIGMOID
        luts.append(np.clip(np.rint(fn / scale) + zp, -128, 127))
    fc_m, fc_s = quantize_multiplier(SIGMOID[0])  # (f+128)/256 · c: c keeps its scale
    ig_m, ig_s = quantize_multiplier(SIGMOID[0] * TANH[0] / c_q[0])
    h_m, h_s = quantize_multiplier(SIGMOID[0] * TANH[0] / h_q[0])
    _check_accumulators(name, wx, wh, bias, mx, mh, x.zero_point, h_q[1])

    hseq = lw.new_tensor((t_len, 1, hid), "int8", h_q[0], h_q[1], f"{name} h")
    cell = lw.new_tensor((hid,), "int16", c_q[0], 0, f"{name} c (scratch)")
    dims = [t_len, n_in, hid, x.zero_point, h_q[1], int(reverse), fc_m, fc_s, ig_m, ig_s, h_m, h_s,
            *(g[1] for g in gates)]
    step = lw.step("lstm", [x], hseq, nodes[0], t=t_len, n_in=n_in, hidden=hid, x_zp=x.zero_point,
                   h_zp=h_q[1], reverse=int(reverse), weight=np.ascontiguousarray(wx.T, dtype=np.int8),
                   weight_h=np.ascontiguousarray(wh.T, dtype=np.int8), bias=np.asarray(bias, dtype=np.int32),
                   mx=np.array(mx, dtype=np.int64), mh=np.array(mh, dtype=np.int64),
                   shift=np.array(shifts, dtype=np.int32), gate_zp=[g[1] for g in gates],
                   gate_lut=np.concatenate(luts).astype(np.int8), tanh_table=tanh_table(c_q[0]),
                   fc_mult=fc_m, fc_shift=fc_s, ig_mult=ig_m, ig_shift=ig_s, h_mult=h_m, h_shift=h_s,
                   dims=np.array(dims, dtype=np.int32))
    step.outputs.append(cell.id)
    step.origin = f"LSTM {name}"
    _map_outputs(lw, steps, hseq, hid, nodes)


def _time(x_node: ir.Node) -> int:
    idx = const_value(x_node.inputs[1])
    return int(idx.reshape(())) if idx is not None else 0


def _q_after(lw: Lowering, node: ir.Node, index: int = 0) -> tuple[float, int, str]:
    users = [u for u in node.outputs[index].consumers() if u.op_type == "QuantizeLinear"]
    if not users:
        raise UnsupportedOpError(node.name or "", node.op_type, "LSTM tensor is not quantized")
    return lw.qparams(users[0])


def _check_accumulators(name: str, wx, wh, bias, mx, mh, x_zp: int, h_zp: int) -> None:
    """Prove the int64 gate sum cannot overflow: (|acc_x| + |b|)·MX + |acc_h|·MH < 2^63."""
    span_x, span_h = max(127 - x_zp, x_zp + 128), max(127 - h_zp, h_zp + 128)
    acc_x = np.abs(wx.astype(np.int64)).sum(axis=0) * span_x + np.abs(bias.astype(np.int64))
    acc_h = np.abs(wh.astype(np.int64)).sum(axis=0) * span_h
    if acc_x.max() >= 2**31 or acc_h.max() >= 2**31:
        raise UnsupportedOpError(name, "LSTM", "a gate accumulator may overflow int32")
    if int((acc_x * np.array(mx) + acc_h * np.array(mh)).max()) >= 2**62:
        raise UnsupportedOpError(name, "LSTM", "the gate rescale may overflow int64")


def _map_outputs(lw: Lowering, steps: dict[int, dict[str, ir.Node]], hseq, hid: int,
                 nodes: list[ir.Node]) -> None:
    """h_t, Y and Y_h become views of the kernel's h sequence; nothing else may leave the group."""
    members = {id(n) for n in nodes}
    last = steps[max(k for k in steps if k >= 0)]
    for node in nodes:
        role = node.metadata_props.get(ROLE_KEY, "")
        s = int(node.metadata_props.get(STEP_KEY, "-1"))
        for out in node.outputs:
            qs = [u for u in out.consumers() if u.op_type == "QuantizeLinear"]
            q_val = qs[0].outputs[0] if qs else None
            if role == "h":
                _alias(lw, q_val, hseq, _time(steps[s]["x"]) * hid)
            elif role == "y" and node.op_type == "Concat":
                _alias(lw, q_val, hseq, 0)
            elif role == "y_h":
                _alias(lw, q_val, hseq, _time(last["x"]) * hid)
            elif q_val is not None and _read_outside(q_val, members):
                raise UnsupportedOpError(node.name or "", node.op_type,
                                         f"LSTM {role!r} output is used outside the LSTM; only Y and Y_h are")


def _alias(lw: Lowering, q_val: ir.Value | None, hseq, offset: int) -> None:
    if q_val is None:
        return
    shape = q_val.shape if q_val.shape is not None else (1,)
    t = lw.new_tensor(shape, hseq.dtype, hseq.scale, hseq.zero_point, q_val.name or "", hseq.id)
    t.alias_offset = offset
    lw.by_value[id(q_val)] = t


def _read_outside(q_val: ir.Value, members: set[int]) -> bool:
    for dq in q_val.consumers():
        for user in dq.outputs[0].consumers() if dq.op_type == "DequantizeLinear" else [dq]:
            if id(user) not in members:
                return True
    return False


__all__ = ["QMAX", "group_key", "lower_lstm"]
