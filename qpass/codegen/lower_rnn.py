"""Re-rolling an unrolled RNN: the per-timestep primitive ops `unroll-rnn` made → one `rnn` kernel per direction.

As for the LSTM and GRU (lower_lstm.py, lower_gru.py): the solver ties each role's parameters across time, so the
integer constants are read from one step and the C runs one loop body for all T steps. Supported: one direction per
kernel (a bidirectional RNN is two kernels and a concat), batch 1, Tanh or Relu, no clip, zero initial state, any
T >= 1. The activation is a table from the pre-activation's parameters to h's (tanh: the table the LSTM and GRU
gates use; relu: the same table, exact). Y, Y_h and one step's h are views of the kernel's h rows, as for the GRU.

    x ──▶ [rnn: h = table[clamp(zp + ((W·(x − zp_x) + b)·MX + R·(h − zp_h)·MH) >> s)]] ──▶ h rows
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qpass.codegen.lower_recurrent import (
    Tags,
    check_recurrent_group,
    check_zero_state,
    gate_bias,
    map_outputs,
    open_group,
    produced_by,
    q_after,
    row_mode,
    sequence_input,
)
from qpass.codegen.lower_recurrent import gather_steps as _gather
from qpass.errors import UnsupportedOpError
from qpass.passes.unroll_rnn import RNN_DIRECTION_KEY, RNN_KEY, RNN_ROLE_KEY, RNN_STEP_KEY
from qpass.runtime_ref.intmath import QMAX, QMIN, build_lut, build_lut16, shared_shift_multipliers

if TYPE_CHECKING:
    from qpass.codegen.lower import Lowering

TAGS = Tags("RNN", RNN_KEY, RNN_DIRECTION_KEY, RNN_STEP_KEY, RNN_ROLE_KEY, frozenset({"clip", "h0"}),
            "clip or a non-zero initial state")
FUNCTIONS = {"Tanh": np.tanh, "Relu": lambda v: np.maximum(v, 0.0)}


def rnn_key(node: ir.Node) -> tuple[str, str, str] | None:
    """("RNN", name, direction) for a node unroll-rnn made (never equal to an LSTM's or a GRU's key)."""
    key = node.metadata_props.get(RNN_KEY)
    return None if key is None else ("RNN", key, node.metadata_props.get(RNN_DIRECTION_KEY, "0"))


def gather_rnn_steps(nodes: list[ir.Node]) -> tuple[dict[int, dict[str, ir.Node]], int, bool]:
    """One RNN direction's tagged nodes by step and role, its length T and whether it runs backwards; refuses,
    by name, what neither the integer nor the float kernel runs (shared by both lowerings)."""
    name = nodes[0].metadata_props[RNN_KEY]
    steps, t_len, reverse = _gather(nodes, TAGS)
    if any("h" not in steps[s] for s in range(t_len)):
        raise UnsupportedOpError(name, "RNN", "the unrolled steps are incomplete")
    if any(steps[s]["h"].op_type not in FUNCTIONS for s in range(t_len)):
        raise UnsupportedOpError(name, "RNN", f"the activation must be one of {sorted(FUNCTIONS)}")
    return steps, t_len, reverse


def check_rnn_group(nodes: list[ir.Node]) -> None:
    """Refuse, by name, a tagged RNN group the kernel does not run (the early support check calls this)."""
    check_recurrent_group(nodes, TAGS, gather_rnn_steps)


def lower_rnn(lw: Lowering, nodes: list[ir.Node]) -> None:
    """Emit one `rnn` step for the tagged nodes of one RNN direction, and map its visible outputs."""
    group = open_group(lw, nodes, TAGS, gather_rnn_steps)
    if group is None:
        return
    name, steps, t_len, reverse = group
    first, later = steps[0], steps[min(1, t_len - 1)]
    _check_zero_initial_state(name, first)

    x, x_steps = sequence_input(lw, first["x"], t_len, name, "RNN")
    wx, sw = lw.weight(first["xw"], 1)  # [I, H], per-column scales
    n_in, hid = wx.shape
    sw = np.broadcast_to(sw, (hid,))
    if "hr" in later:  # step 0 reads a constant zero h: its recurrent product may have been folded
        wh, sr = lw.weight(later["hr"], 1)
        sr = np.broadcast_to(sr, (hid,))
    else:  # T = 1: the recurrent term never runs
        wh, sr = np.zeros((hid, hid), dtype=wx.dtype), np.ones(hid)
    bias, bias_shift = gate_bias(name, "RNN", lw, first["xb"], x.scale, sw)
    pre_q, h_q = q_after(first["pre"], lw), q_after(first["h"], lw)
    act = first["h"].op_type
    if pre_q[2] == "int16" and pre_q[1] != 0:
        raise UnsupportedOpError(name, "RNN", "an int16 pre-activation must have zero point 0")

    mode = row_mode(t_len, nodes, TAGS)
    rows = t_len if mode < 2 else min(t_len, 2)
    hseq = lw.new_tensor((rows, 1, hid), h_q[2], h_q[0], h_q[1],
                         f"{name} h" + ("" if rows == t_len else " (last two steps)"))
    params = rnn_params(name, wx=wx, sw=sw, wh=wh, sr=sr, bias=(bias, bias_shift), x_q=(x.scale, x.zero_point, x.dtype),
                        h_q=h_q, pre_q=pre_q, act=act, t_len=t_len, reverse=reverse, rows=rows, x_steps=x_steps,
                        mode=mode)
    step = lw.step("rnn", [x], hseq, nodes[0], **params)
    step.origin = f"RNN {name} ({act.lower()})"
    map_outputs(lw, steps, hseq, hid, nodes, mode, TAGS)


def rnn_params(name: str, *, wx: np.ndarray, sw: np.ndarray, wh: np.ndarray, sr: np.ndarray,
               bias: tuple[np.ndarray, np.ndarray], x_q: tuple[float, int, str], h_q: tuple[float, int, str],
               pre_q: tuple[float, int, str], act: str, t_len: int, reverse: bool, rows: int, x_steps: int,
               mode: int) -> dict:
    """The `rnn` kernel's integer constants from its integer weights (wx [I, H], wh [H, H] with per-column scales
    sw, sr), its bias [H] with per-row shifts, and the quantization of x, h and the pre-activation."""
    n_in, hid = wx.shape
    b, b_shift = bias
    # pre-activation: acc_x·MX + acc_h·MH >> s, with the accumulators' proven bounds
    span_x = max(QMAX[x_q[2]] - x_q[1], x_q[1] - QMIN[x_q[2]])
    span_h = max(QMAX[h_q[2]] - h_q[1], h_q[1] - QMIN[h_q[2]])
    bound_x = np.abs(wx.astype(np.int64)).sum(axis=0) * span_x + (np.abs(b.astype(np.int64)) << b_shift)
    bound_h = np.abs(wh.astype(np.int64)).sum(axis=0) * span_h
    acc_bound = int(max(bound_x.max(), bound_h.max()))
    bits = 31 if acc_bound < 2**31 else min(31, 61 - acc_bound.bit_length())
    mx, mh, shifts = [], [], []
    for r in range(hid):
        (a, m), sh = shared_shift_multipliers([x_q[0] * float(sw[r]) / pre_q[0], h_q[0] * float(sr[r]) / pre_q[0]],
                                              bits)
        mx.append(a), mh.append(m), shifts.append(sh)
    if int((bound_x * np.array(mx) + bound_h * np.array(mh)).max()) >= 2**62:
        raise UnsupportedOpError(name, "RNN", "the pre-activation rescale may overflow int64")
    fn = FUNCTIONS[act]
    table = (build_lut(fn, pre_q[0], pre_q[1], h_q[0], h_q[1], "int8", h_q[2]) if pre_q[2] == "int8"
             else build_lut16(fn, pre_q[0], h_q[0], h_q[1], h_q[2]))
    params = {"t": t_len, "n_in": n_in, "hidden": hid, "x_zp": x_q[1], "h_zp": h_q[1], "reverse": int(reverse),
              "g_zp": pre_q[1], "g_lo": QMIN[pre_q[2]], "g_hi": QMAX[pre_q[2]], "x_steps": x_steps, "row_mode": mode,
              "rows": rows}
    dims = [params[k] for k in ("t", "n_in", "hidden", "x_zp", "h_zp", "reverse", "g_zp", "g_lo", "g_hi", "x_steps",
                                "row_mode")]
    params.update(weight=np.ascontiguousarray(wx.T), weight_h=np.ascontiguousarray(wh.T).astype(wx.dtype),
                  bias=b.astype(np.int32), bias_shift=b_shift.astype(np.int32), mx=np.array(mx, np.int64),
                  mh=np.array(mh, np.int64), shift=np.array(shifts, np.int32), gate_lut=table,
                  dims=np.array(dims, np.int32), acc_bits=32 if acc_bound < 2**31 else 64, gate_bits=pre_q[2],
                  act_bits=h_q[2])
    return params


def _check_zero_initial_state(name: str, first: dict[str, ir.Node]) -> None:
    """The kernel starts from h = 0: step 0's recurrent product must read (or have been folded from) zeros."""
    if "hr" in first:
        values = [first["hr"].inputs[0]]
    else:  # folded: pre = Add(xb, constant)
        values = [v for v in first["pre"].inputs if not produced_by(v, first["xb"])]
    check_zero_state(name, "RNN", values, "initial_h")
