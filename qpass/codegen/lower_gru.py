"""Re-rolling an unrolled GRU: the per-timestep primitive ops `unroll-gru` made → one `gru` kernel per direction.

As for the LSTM (lower_lstm.py): the solver ties each role's parameters across time, so the integer constants are
read from one step and the C runs one loop body for all T steps. Supported: one direction per kernel (a
bidirectional GRU is two kernels and a concat), batch 1, default activations, no clip, zero initial state, both
linear_before_reset values. Y, Y_h and one step's h are views of the kernel's h rows (T rows in time order when Y
is read, T in processing order when an earlier step's h is read, else two taking turns).

    x ──▶ [gru: z, r = σ-tables, n = tanh-table, h = n + z(h − n)] ──▶ h rows
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qpass.codegen.lower_lstm import gate_multipliers, gate_table
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
    state_value,
)
from qpass.codegen.lower_recurrent import gather_steps as _gather
from qpass.errors import UnsupportedOpError
from qpass.passes.unroll_gru import GRU_DIRECTION_KEY, GRU_KEY, GRU_ROLE_KEY, GRU_STEP_KEY
from qpass.runtime_ref.intmath import QMAX, QMIN, quantize_multiplier, shared_shift_multipliers
from qpass.solver.plan import FIXED

if TYPE_CHECKING:
    from qpass.codegen.lower import Lowering

UNSUPPORTED_ROLES = {"clip_z", "clip_r", "clip_n", "h0"}
TAGS = Tags("GRU", GRU_KEY, GRU_DIRECTION_KEY, GRU_STEP_KEY, GRU_ROLE_KEY, frozenset(UNSUPPORTED_ROLES),
            "clip or a non-zero initial state")


def gru_key(node: ir.Node) -> tuple[str, str, str] | None:
    """("GRU", name, direction) for a node unroll-gru made (three items: never equal to an LSTM's key)."""
    key = node.metadata_props.get(GRU_KEY)
    return None if key is None else ("GRU", key, node.metadata_props.get(GRU_DIRECTION_KEY, "0"))


def gather_steps(nodes: list[ir.Node]) -> tuple[dict[int, dict[str, ir.Node]], int, bool]:
    """One GRU direction's tagged nodes by step and role, its length T and whether it runs backwards
    (lower_recurrent.gather_steps with the GRU's tags; float_c.py uses it too)."""
    return _gather(nodes, TAGS)


def check_gru_group(nodes: list[ir.Node]) -> None:
    """Refuse, by name, a tagged GRU group the kernel does not run (the early support check calls this)."""
    check_recurrent_group(nodes, TAGS, gather_steps)


def lower_gru(lw: Lowering, nodes: list[ir.Node]) -> None:
    """Emit one `gru` step for the tagged nodes of one GRU direction, and map its visible outputs."""
    group = open_group(lw, nodes, TAGS, gather_steps)
    if group is None:
        return
    name, steps, t_len, reverse = group
    first = steps[0]
    lbr = "rn" in first
    check_zero_state(name, "GRU", [first["hd"].inputs[0]], "initial_h")  # hd = Sub(h_prev, n)

    x, x_steps = sequence_input(lw, first["x"], t_len, name, "GRU")
    wx, sw = lw.weight(first["xw"], 1)  # [I, 3H], per-column scales
    n_in, three_h = wx.shape
    hid = three_h // 3
    later = steps[min(1, t_len - 1)]  # step 0 reads a constant zero h: its recurrent weights are planned later
    if "hr" in later:
        wh, sr = lw.weight(later["hr"], 1)  # [H, 3H] (lbr = 1) or [H, 2H] (lbr = 0)
        sr = np.broadcast_to(sr, (wh.shape[1],))
    else:  # T = 1: h is zero, so R·h was folded away and never runs (a zero scale leaves MX its bits)
        wh = np.zeros((hid, 3 * hid if lbr else 2 * hid), wx.dtype)
        sr = np.zeros(wh.shape[1])
    if not lbr:
        wn, srn = lw.weight(later["hn"], 1)
        wh, sr = np.concatenate([wh, wn], axis=1), np.concatenate([sr, np.broadcast_to(srn, (hid,))])
    sw = np.broadcast_to(sw, (three_h,))
    bias_x, shift_x = gate_bias(name, "GRU", lw, first["xb"], x.scale, sw)

    h_q = q_after(first["h"], lw)
    gates = [q_after(first[role], lw) for role in ("zpre", "rpre", "npre")]
    g_dtype = gates[0][2]
    if any(g[2] != g_dtype for g in gates) or (g_dtype == "int16" and any(g[1] for g in gates)):
        raise UnsupportedOpError(name, "GRU", "the three gates must share one type (int16 gates: zero point 0)")
    acts = [q_after(first[role], lw) for role in ("z", "r", "n")]
    a_dtype = acts[0][2]
    for role, (scale, zp, dtype) in zip("zrn", acts, strict=True):
        want = FIXED["Tanh" if role == "n" else "Sigmoid"][dtype]
        if dtype != a_dtype or not np.isclose(scale, want[0]) or zp != want[1]:
            raise UnsupportedOpError(name, "GRU", f"{role} must be {a_dtype} with scale {want[0]}, zp {want[1]}")

    hn_fixed = None
    if lbr and "split_h" not in later:  # T = 1: hn = R·0 + Rbn, a float constant read by rn = Mul(r, hn)
        hn = next((state_value(v) for v in first["rn"].inputs if not produced_by(v, first["r"])), None)
        if hn is None or hn.size != hid:
            raise UnsupportedOpError(name, "GRU", f"one time step: the folded R-side n term must be {hid} constants")
        hn = hn.astype(np.float64).reshape(-1)
        top = float(np.abs(hn).max())
        mid_q = (top / QMAX[h_q[2]] if top > 0 else 1.0, 0, h_q[2])  # quantized here, symmetric, as h's type
        hn_fixed = np.clip(np.rint(hn / mid_q[0]), QMIN[h_q[2]], QMAX[h_q[2]]).astype(np.int64)
        bias_h, shift_h = hn_fixed.astype(np.int32), np.zeros(hid, np.int64)
    elif lbr:
        mid_q = q_after(later["split_h"], lw, 2)
        bias_h, shift_h = gate_bias(name, "GRU", lw, later["hb"], h_q[0], sr, rows=slice(2 * hid, 3 * hid))
    else:
        mid_q = q_after(later["rh"], lw)
        bias_h, shift_h = np.zeros(hid, np.int32), np.zeros(hid, np.int64)
    mode = row_mode(t_len, nodes, TAGS)
    rows = t_len if mode < 2 else min(t_len, 2)
    hseq = lw.new_tensor((rows, 1, hid), h_q[2], h_q[0], h_q[1],
                         f"{name} h" + ("" if rows == t_len else " (last two steps)"))
    params = gru_params(name, wx=wx, sw=sw, wh=wh, sr=sr, bias=(bias_x, shift_x, bias_h, shift_h),
                        x_q=(x.scale, x.zero_point, x.dtype), h_q=h_q, gates=gates, a_dtype=a_dtype, mid_q=mid_q,
                        lbr=lbr, t_len=t_len, reverse=reverse, rows=rows, x_steps=x_steps, mode=mode,
                        hn_fixed=hn_fixed is not None)
    step = lw.step("gru", [x], hseq, nodes[0], **params)
    if not lbr:  # a_z and the requantized r·h of every unit: the n rows read all of them
        step.outputs.append(lw.new_tensor((2 * hid,), "int16", 1.0, 0, f"{name} a_z, r h (scratch)").id)
    step.origin = f"GRU {name}"
    map_outputs(lw, steps, hseq, hid, nodes, mode, TAGS)


def gru_params(name: str, *, wx: np.ndarray, sw: np.ndarray, wh: np.ndarray, sr: np.ndarray,
               bias: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], x_q: tuple[float, int, str],
               h_q: tuple[float, int, str], gates: list[tuple[float, int, str]], a_dtype: str,
               mid_q: tuple[float, int, str], lbr: bool, t_len: int, reverse: bool, rows: int, x_steps: int,
               mode: int, hn_fixed: bool = False) -> dict:
    """The `gru` kernel's integer constants from its integer weights (wx [I, 3H], wh [H, 3H] with per-column
    scales sw, sr), biases (x side [3H], R side n rows [H], each with its per-row shift) and the quantization of
    x, h, the three gate pre-activations, and mid_q: hn (linear_before_reset = 1) or r·h (= 0)."""
    n_in, three_h = wx.shape
    hid = three_h // 3
    bias_x, shift_x, bias_h, shift_h = bias
    g_dtype = gates[0][2]
    s_sig, s_tanh = FIXED["Sigmoid"][a_dtype][0], FIXED["Tanh"][a_dtype][0]
    params: dict = {"lbr": int(lbr)}
    span_h = max(QMAX[h_q[2]] - h_q[1], h_q[1] - QMIN[h_q[2]])
    act_span = 1 << (8 if a_dtype == "int8" else 15)
    if lbr:  # hn = Rn·(h − zp_h) + bn requantized to the split's n output; the n row's h term is a_r·(hn − zp_hn)
        hn_q = mid_q
        params.update(hn_zp=hn_q[1], hn_lo=QMIN[hn_q[2]], hn_hi=QMAX[hn_q[2]])
        n_scales = [hn_q[0] * s_sig] * hid
        n_span = act_span * max(QMAX[hn_q[2]] - hn_q[1], hn_q[1] - QMIN[hn_q[2]])
        n_bound = np.full(hid, n_span, np.int64)
        bound_hn = np.abs(wh[:, 2 * hid:].astype(np.int64)).sum(axis=0) * span_h + (
            np.abs(bias_h.astype(np.int64)) << shift_h)
        extra_bound = int(bound_hn.max())
        if hn_fixed:  # T = 1: the R-side bias is hn − zp_hn itself, taken as it is (M = 2^30, s = 30)
            hn_mult, hn_shift = [1 << 30] * hid, 30
        else:
            hn_mult, hn_shift = shared_shift_multipliers([h_q[0] * float(s) / hn_q[0] for s in sr[2 * hid:]],
                                                         min(31, 61 - extra_bound.bit_length()))
        params.update(mult=np.array(hn_mult, np.int32), hn_shift=hn_shift)
        if int((bound_hn * np.array(hn_mult, np.int64)).max()) >= 2**62:
            raise UnsupportedOpError(name, "GRU", "the recurrent n rescale may overflow int64")
    else:  # rh = r ⊙ h requantized to the Mul's output; the n row's h term is Rn·(rh − zp_rh)
        rh_q = mid_q
        rh_m, rh_s = quantize_multiplier(s_sig * h_q[0] / rh_q[0])
        params.update(rh_mult=rh_m, rh_shift=rh_s, rh_zp=rh_q[1], rh_lo=QMIN[rh_q[2]], rh_hi=QMAX[rh_q[2]],
                      mult=np.zeros(1, np.int32))
        n_scales = [rh_q[0] * float(s) for s in sr[2 * hid:]]
        n_span = max(QMAX[rh_q[2]] - rh_q[1], rh_q[1] - QMIN[rh_q[2]])
        n_bound = np.abs(wh[:, 2 * hid:].astype(np.int64)).sum(axis=0) * n_span
        extra_bound = 0

    # gate rows: acc_x·MX + hterm·MH >> s with proven bounds (as the LSTM's)
    span_x = max(QMAX[x_q[2]] - x_q[1], x_q[1] - QMIN[x_q[2]])
    bound_x = np.abs(wx.astype(np.int64)).sum(axis=0) * span_x + (np.abs(bias_x.astype(np.int64)) << shift_x)
    bound_h = np.concatenate([np.abs(wh[:, :2 * hid].astype(np.int64)).sum(axis=0) * span_h, n_bound])
    acc_bound = int(max(bound_x.max(), bound_h.max(), extra_bound))
    bits = 31 if acc_bound < 2**31 else min(31, 61 - acc_bound.bit_length())
    h_scales = [h_q[0] * float(s) for s in sr[:2 * hid]] + list(n_scales)
    mx, mh, shifts = gate_multipliers([x_q[0] * float(v) for v in sw], h_scales, [g[0] for g in gates], bits)
    if int((bound_x * np.array(mx) + bound_h * np.array(mh)).max()) >= 2**62:
        raise UnsupportedOpError(name, "GRU", "the gate rescale may overflow int64")

    luts, gate_sh = [], []
    for k, (s_g, zp_g, _) in enumerate(gates):
        fn = np.tanh if k == 2 else (lambda v: 1.0 / (1.0 + np.exp(-v)))
        table, sh = gate_table(fn, s_g, zp_g, g_dtype, *FIXED["Tanh" if k == 2 else "Sigmoid"][a_dtype], a_dtype)
        luts.append(table)
        gate_sh.append(sh)
    # h = (1 − z)·n + z·h: (S − a_z)·a_n at s_sig·s_tanh, a_z·(h − zp_h) at s_sig·s_h, both to s_h
    (m1, m2), h_shift = shared_shift_multipliers([s_sig * s_tanh / h_q[0], s_sig], 30)
    act_zp = [FIXED["Tanh" if k == 2 else "Sigmoid"][a_dtype][1] for k in range(3)]
    params.update(t=t_len, n_in=n_in, hidden=hid, x_zp=x_q[1], h_zp=h_q[1], reverse=int(reverse),
                  gate_zp=[g[1] for g in gates], act_zp=act_zp, gate_sh=gate_sh, g_lo=QMIN[g_dtype], g_hi=QMAX[g_dtype],
                  h_lo=QMIN[h_q[2]], h_hi=QMAX[h_q[2]], lut_n=luts[0].size, one=round(1 / s_sig), m1=m1, m2=m2,
                  h_shift=h_shift, rows=rows, x_steps=x_steps, row_mode=mode)
    dims = [params[k] for k in ("t", "n_in", "hidden", "x_zp", "h_zp", "reverse", "lbr", "g_lo", "g_hi", "h_lo",
                                "h_hi", "lut_n", "one", "m1", "m2", "h_shift", "rows", "x_steps", "row_mode")]
    dims += params["gate_zp"] + params["act_zp"] + [params.get(k, 0) for k in (
        "hn_shift", "hn_zp", "hn_lo", "hn_hi", "rh_mult", "rh_shift", "rh_zp", "rh_lo", "rh_hi")]
    params.update(weight=np.ascontiguousarray(wx.T), weight_h=np.ascontiguousarray(wh.T).astype(wx.dtype),
                  bias=np.concatenate([bias_x, bias_h]).astype(np.int32),
                  bias_shift=np.concatenate([shift_x, shift_h]).astype(np.int32),
                  mx=np.array(mx, dtype=np.int64), mh=np.array(mh, dtype=np.int64),
                  shift=np.array(shifts, dtype=np.int32), gate_lut=np.concatenate(luts),
                  dims=np.array(dims, dtype=np.int32), acc_bits=32 if acc_bound < 2**31 else 64,
                  gate_bits=g_dtype, act_bits=a_dtype)
    return params
