"""Generation-time constants for the per-layer C kernels (linear, conv1d): the C's view of a step.

runtime_ref computes `bias·2^k + Σ (x − x_zp)·w`; the C computes the same integer as

    acc0[n] = bias[n]·2^k[n] − x_zp·Σ_k w[n,k]          (folded here, once)
    acc     = acc0[n] + Σ_k x[k]·w[n,k]                  (a bare multiply-accumulate per MAC)

and an out-of-range conv tap adds x_zp·w (it stands for the zero point). The accumulator is int32 when
every partial sum provably fits (|acc0| + Σ|w|·max|x| < 2^31), else int64. A power-of-two rescale
(mult = 1 for every channel) whose rounding add cannot overflow is done in 32 bits with shifts only.
"""

from __future__ import annotations

import numpy as np

from qpass.runtime_ref.intmath import QMAX, QMIN
from qpass.runtime_ref.program import Program, Step

INT32_LIMIT = 2**31


def folded(program: Program, step: Step) -> dict:
    """acc0 (int32 or int64 array), the accumulator C type and the requantization form for one step."""
    p = step.params
    x = program.tensors[step.inputs[0]]
    w = np.asarray(p["weight"]).astype(np.int64)
    w = w.reshape(w.shape[0], -1)
    acc0 = (np.asarray(p["bias"]).astype(np.int64) << np.asarray(p["bias_shift"]).astype(np.int64))
    acc0 = acc0 - int(p["x_zp"]) * w.sum(axis=1)
    x_max = max(-QMIN[x.dtype], QMAX[x.dtype])
    bound = int((np.abs(acc0) + np.abs(w).sum(axis=1) * x_max).max())
    wide = p["acc_bits"] > 32 or bound >= INT32_LIMIT
    mult, shift = np.asarray(p["mult"]), np.asarray(p["shift"])
    top = int(shift.max())
    acc_bound = max(bound, int(p["acc_bound"]))
    pow2 = bool(np.all(mult == 1)) and not wide and top <= 30 and acc_bound + (1 << (top - 1)) < INT32_LIMIT
    return {"acc0": acc0.astype(np.int64 if wide else np.int32), "acc": "int64_t" if wide else "int32_t",
            "pow2": pow2}


def conv_interior(p: dict) -> dict:
    """Group sizes, x's strides, and the outputs [o_lo, o_hi) whose taps all fall inside x (no bounds test)."""
    s, d, pad, k, l_in, l_out = p["stride"], p["dilation"], p["pad_left"], p["k"], p["l_in"], p["l_out"]
    o_lo = min(l_out, -(-pad // s))
    o_hi = max(0, min(l_out, (l_in - 1 + pad - (k - 1) * d) // s + 1))
    if o_hi <= o_lo:
        o_lo = o_hi = 0
    last = bool(p.get("channels_last"))
    cin_g = p["c_in"] // p["groups"]
    cs, ps = (1, p["c_in"]) if last else (l_in, 1)  # element strides of a channel and of a position in x
    return {"cin_g": cin_g, "cout_g": p["c_out"] // p["groups"], "o_lo": o_lo, "o_hi": o_hi, "cs": cs, "ps": ps,
            "gs": cin_g * cs, "layout": "[L, C] (channels last)" if last else "[C, L]"}
