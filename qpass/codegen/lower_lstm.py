"""Re-rolling an unrolled LSTM: the per-timestep primitive ops `unroll-lstm` made → one `lstm` kernel.

`unroll-lstm` tags every node it creates with the LSTM's name, direction, step and role; the solver
ties each role's quantization parameters across time. So the integer constants can be read from any
one step, and the C runs a single loop body for all T steps (code size does not grow with T).
Supported here: one direction per kernel (forward or reverse; a bidirectional LSTM is two kernels and a
concat), batch 1 (so layout 0 and 1 hold the same bytes), default activations, no peepholes or clip, zero
initial states. Y, Y_h (and one step's h) are views of the kernel's h rows, Y_c of its cell state; the rows
kept are T in time order only when Y is read, else T in processing order when an earlier step's h is read,
else two taking turns. When only the first processing steps are read (the reverse half of a bidirectional
LSTM whose last time step is read), only those steps run. A gate bias too large for int32 at s_x·s_W is
stored at s_x·s_W·2^k per row and shifted back into the (int64) accumulator, as the linear kernels do.
"""

from __future__ import annotations

from collections.abc import Callable
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
    step_time,
)
from qpass.codegen.lower_recurrent import gather_steps as _gather
from qpass.errors import UnsupportedOpError
from qpass.passes.unroll_lstm import DIRECTION_KEY as DIR_KEY
from qpass.passes.unroll_lstm import LSTM_KEY, ROLE_KEY, STEP_KEY
from qpass.runtime_ref.intmath import (
    QMAX,
    QMIN,
    build_lut,
    build_lut16,
    lut16_shift,
    quantize,
    quantize_multiplier,
    shared_shift_multipliers,
)
from qpass.solver.plan import FIXED

if TYPE_CHECKING:
    from qpass.codegen.lower import Lowering

UNSUPPORTED_ROLES = {"clip_i", "clip_o", "clip_f", "clip_c", "peep_i", "peep_f", "peep_o", "peep_i_mul",
                     "peep_f_mul", "peep_o_mul", "h0", "c0"}
TAGS = Tags("LSTM", LSTM_KEY, DIR_KEY, STEP_KEY, ROLE_KEY, frozenset(UNSUPPORTED_ROLES),
            "peepholes, clip or initial states")


def group_key(node: ir.Node) -> tuple[str, str] | None:
    key = node.metadata_props.get(LSTM_KEY)
    return None if key is None else (key, node.metadata_props.get(DIR_KEY, "0"))


def tanh_q15(scale_c: float) -> Callable[[np.ndarray], np.ndarray]:
    """tanh of int16 cell codes of scale scale_c, in Q15 (the cell's tanh table values)."""
    return lambda q: np.clip(np.rint(np.tanh(q * scale_c) * 32768), -32768, 32767).astype(np.int16)


def tanh_table(scale_c: float, sh: int = 8) -> np.ndarray:
    """tanh at q = (k − 128)·2^sh for k = 0..256, in Q15, for an int16 input of scale scale_c (lut16's layout)."""
    return tanh_q15(scale_c)((np.arange(257, dtype=np.float64) - 128) * (1 << sh))


def gate_table(fn: Callable[[np.ndarray], np.ndarray], s_g: float, zp_g: int, g_dtype: str, out_scale: float,
               out_zp: int, a_dtype: str) -> tuple[np.ndarray, int]:
    """A recurrent gate's activation table and its window shift: 256 entries for an int8 pre-activation; for an
    int16 one 257 samples over the narrowest window outside which the quantized activation no longer changes."""
    if g_dtype == "int8":
        return build_lut(fn, s_g, zp_g, out_scale, out_zp, "int8", a_dtype), 8
    sh = lut16_shift(lambda q: quantize(fn(q * s_g), out_scale, out_zp, a_dtype))
    return build_lut16(fn, s_g, out_scale, out_zp, a_dtype, sh), sh


def gather_steps(nodes: list[ir.Node]) -> tuple[dict[int, dict[str, ir.Node]], int, bool]:
    """One LSTM direction's tagged nodes by step and role, its length T and whether it runs backwards
    (lower_recurrent.gather_steps with the LSTM's tags; float_c.py uses it too)."""
    return _gather(nodes, TAGS)


def check_group(nodes: list[ir.Node]) -> None:
    """Refuse, by name, a tagged LSTM group neither kernel runs (the early support check calls this)."""
    check_recurrent_group(nodes, TAGS, gather_steps)


def lower_lstm(lw: Lowering, nodes: list[ir.Node]) -> None:
    """Emit one `lstm` step for the tagged nodes of one LSTM direction, and map its visible outputs.

    The nodes that join a bidirectional LSTM's two directions (direction "-1": the Concats of Y, Y_h on the
    direction axis) run after both directions, as ordinary concat kernels."""
    group = open_group(lw, nodes, TAGS, gather_steps)
    if group is None:
        return
    name, steps, t_len, reverse = group
    first, later = steps[0], steps[min(1, t_len - 1)]
    states = [first["hr"].inputs[0]] if "hr" in first else []
    if "fc" in first and "f" in first:  # fc = Mul(f, c_prev): the input that is not f
        states += [v for v in first["fc"].inputs if not produced_by(v, first["f"])]
    check_zero_state(name, "LSTM", states, "initial_h/initial_c")

    x, x_steps = sequence_input(lw, first["x"], t_len, name, "LSTM")
    wx, sw = lw.weight(first["xw"], 1)  # [I, 4H], per-column scales
    n_in, four_h = wx.shape
    hid = four_h // 4
    if "hr" in later:
        wh, sr = lw.weight(later["hr"], 1)
    else:  # T = 1: the recurrent term never runs (a zero scale leaves MX all the bits of its shift)
        wh, sr = np.zeros((hid, four_h), dtype=np.int8), np.zeros(four_h)
    if "gates" in first:
        bias, bias_shift = gate_bias(name, "LSTM", lw, first["gates"], x.scale, sw)
    else:
        bias, bias_shift = np.zeros(four_h, np.int32), np.zeros(four_h, np.int64)

    h_q = q_after(first["h"], lw)
    c_q = q_after(first["c"], lw)
    if c_q[2] != "int16" or c_q[1] != 0:
        raise UnsupportedOpError(name, "LSTM", "the cell state must be int16 with zero point 0")
    gates = [q_after(first["split"], lw, i) for i in range(4)]  # i, o, f, c pre-activations
    g_dtype = gates[0][2]
    if any(g[2] != g_dtype for g in gates) or (g_dtype == "int16" and any(g[1] for g in gates)):
        raise UnsupportedOpError(name, "LSTM", "the four gates must share one type (int16 gates: zero point 0)")
    acts = {role: q_after(first[role], lw) for role in ("i", "o", "f", "g", "tc")}
    a_dtype = acts["i"][2]
    for role, (scale, zp, dtype) in acts.items():
        want = FIXED["Tanh" if role in ("g", "tc") else "Sigmoid"][dtype]
        if dtype != a_dtype or not np.isclose(scale, want[0]) or zp != want[1]:
            raise UnsupportedOpError(name, "LSTM", f"{role} must be {a_dtype} with scale {want[0]}, zp {want[1]}")

    # gate pre-activation: acc_x·MX + acc_h·MH >> s, with the accumulators' proven bounds
    span_x = max(QMAX[x.dtype] - x.zero_point, x.zero_point - QMIN[x.dtype])
    span_h = max(QMAX[h_q[2]] - h_q[1], h_q[1] - QMIN[h_q[2]])
    bound_x = np.abs(wx.astype(np.int64)).sum(axis=0) * span_x + (np.abs(bias.astype(np.int64)) << bias_shift)
    bound_h = np.abs(wh.astype(np.int64)).sum(axis=0) * span_h
    acc_bound = int(max(bound_x.max(), bound_h.max()))
    bits = 31 if acc_bound < 2**31 else min(31, 61 - acc_bound.bit_length())
    mx, mh, shifts = gate_multipliers([x.scale * float(v) for v in sw], [h_q[0] * float(v) for v in sr],
                                      [g[0] for g in gates], bits)
    if int((bound_x * np.array(mx) + bound_h * np.array(mh)).max()) >= 2**62:
        raise UnsupportedOpError(name, "LSTM", "the gate rescale may overflow int64")

    luts, gate_sh = [], []
    for k, (s_g, zp_g, _) in enumerate(gates):
        fn = np.tanh if k == 3 else (lambda v: 1.0 / (1.0 + np.exp(-v)))
        table, sh = gate_table(fn, s_g, zp_g, g_dtype, *FIXED["Tanh" if k == 3 else "Sigmoid"][a_dtype], a_dtype)
        luts.append(table)
        gate_sh.append(sh)
    tc_sh = lut16_shift(tanh_q15(c_q[0]))
    s_sig, s_tanh = FIXED["Sigmoid"][a_dtype][0], FIXED["Tanh"][a_dtype][0]
    fc_m, fc_s = quantize_multiplier(s_sig)  # a_f · c: c keeps its scale
    ig_m, ig_s = quantize_multiplier(s_sig * s_tanh / c_q[0])
    h_m, h_s = quantize_multiplier(s_sig * s_tanh / h_q[0])
    tc_shift = 8 if a_dtype == "int8" else 0

    # where h of processing step s (time t) goes: row t when Y is read (time order, mode 0); row s when the h of
    # an earlier step is read (mode 1); else two rows take turns, row s & 1 (mode 2)
    mode = row_mode(t_len, nodes, TAGS)
    rows = t_len if mode < 2 else min(t_len, 2)
    hseq = lw.new_tensor((rows, 1, hid), h_q[2], h_q[0], h_q[1],
                         f"{name} h" + ("" if rows == t_len else " (last two steps)"))
    cell = lw.new_tensor((hid,), "int16", c_q[0], 0, f"{name} c (scratch)")
    params = {"t": t_len, "n_in": n_in, "hidden": hid, "x_zp": x.zero_point, "h_zp": h_q[1], "reverse": int(reverse),
              "fc_mult": fc_m, "fc_shift": fc_s, "ig_mult": ig_m, "ig_shift": ig_s, "h_mult": h_m, "h_shift": h_s,
              "gate_zp": [g[1] for g in gates], "act_zp": [acts[r][1] for r in ("i", "o", "f", "g")],
              "tc_shift": tc_shift,
              "tc_sh": tc_sh, "gate_sh": gate_sh, "g_lo": QMIN[g_dtype], "g_hi": QMAX[g_dtype], "h_lo": QMIN[h_q[2]],
              "h_hi": QMAX[h_q[2]], "lut_n": luts[0].size, "tc_lo": QMIN[a_dtype], "tc_hi": QMAX[a_dtype]}
    dims = [params[k] for k in ("t", "n_in", "hidden", "x_zp", "h_zp", "reverse", "fc_mult", "fc_shift",
                                "ig_mult", "ig_shift", "h_mult", "h_shift")]
    dims += params["gate_zp"] + params["act_zp"] + [params[k] for k in (
        "tc_shift", "g_lo", "g_hi", "h_lo", "h_hi", "lut_n", "tc_lo", "tc_hi")] + [rows, x_steps, mode]
    params.update(rows=rows, x_steps=x_steps, row_mode=mode)
    step = lw.step("lstm", [x], hseq, nodes[0], **params, weight=np.ascontiguousarray(wx.T),
                   weight_h=np.ascontiguousarray(wh.T).astype(wx.dtype), bias=np.asarray(bias, dtype=np.int32),
                   bias_shift=bias_shift.astype(np.int32),
                   mx=np.array(mx, dtype=np.int64), mh=np.array(mh, dtype=np.int64),
                   shift=np.array(shifts, dtype=np.int32), gate_lut=np.concatenate(luts),
                   tanh_table=tanh_table(c_q[0], tc_sh), dims=np.array(dims, dtype=np.int32),
                   acc_bits=32 if acc_bound < 2**31 else 64, gate_bits=g_dtype, act_bits=a_dtype)
    step.outputs.append(cell.id)
    step.origin = f"LSTM {name}"
    map_outputs(lw, steps, hseq, hid, nodes, mode, TAGS, cell)


def gate_multipliers(x_scales: list[float], h_scales: list[float], gate_scales: list[float],
                     bits: int) -> tuple[list[int], list[int], list[int]]:
    """MX[r], MH[r] and the shift of every gate row r (gates of `len(x_scales) / len(gate_scales)` rows each): one
    shift for all rows of a gate (the C writes it in as a constant), so a row with a smaller rescale than its
    gate's largest keeps fewer bits of its multipliers (all < 2^bits, as the int64 bound needs)."""
    n = len(x_scales) // len(gate_scales)
    mx, mh, shifts = [], [], []
    for g, s_gate in enumerate(gate_scales):
        rows = range(g * n, (g + 1) * n)
        ms, sh = shared_shift_multipliers([x_scales[r] / s_gate for r in rows] + [h_scales[r] / s_gate for r in rows],
                                          bits)
        mx += ms[:n]
        mh += ms[n:]
        shifts += [sh] * n
    return mx, mh, shifts


__all__ = ["check_group", "gate_multipliers", "gate_table", "gather_steps", "group_key", "lower_lstm", "step_time",
           "tanh_table"]
