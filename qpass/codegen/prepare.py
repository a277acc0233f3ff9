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
    hi = not pow2 and high_word(shift, acc_bound * int(mult.max()))
    return {"acc0": acc0.astype(np.int64 if wide else np.int32), "acc": "int64_t" if wide else "int32_t",
            "pow2": pow2, "hi": hi}


def high_word(shift: np.ndarray, product_bound: int) -> bool:
    """True when (p + 2^(s-1)) >> s can be taken from p's high word: ((p >> 32) + 2^(s-33)) >> (s-32), exact.

    The rounding term's low word is zero when s >= 33, so it adds to the high word alone; |p| < 2^62 keeps
    the high word and the sum inside int32. No variable 64-bit shift is left.
    """
    shift = np.asarray(shift)
    return bool(np.all(shift >= 33) and np.all(shift <= 62) and product_bound < 2**62)


def interior(l_in: int, l_out: int, k: int, s: int, d: int, pad: int) -> tuple[int, int]:
    """The outputs [o_lo, o_hi) along one axis whose taps o*s - pad + j*d (j < k) all fall inside [0, l_in)."""
    o_lo = min(l_out, -(-pad // s))
    o_hi = max(0, min(l_out, (l_in - 1 + pad - (k - 1) * d) // s + 1))
    return (o_lo, o_hi) if o_hi > o_lo else (0, 0)


def conv_interior(p: dict) -> dict:
    """Group sizes, x's strides, and the outputs [o_lo, o_hi) whose taps all fall inside x (no bounds test)."""
    o_lo, o_hi = interior(p["l_in"], p["l_out"], p["k"], p["stride"], p["dilation"], p["pad_left"])
    last = bool(p.get("channels_last"))
    cin_g = p["c_in"] // p["groups"]
    cs, ps = (1, p["c_in"]) if last else (p["l_in"], 1)  # element strides of a channel and of a position in x
    wc, wk = (1, cin_g) if last else (p["k"], 1)  # strides of c and k in the C's weight order (see conv_weight)
    return {"cin_g": cin_g, "cout_g": p["c_out"] // p["groups"], "o_lo": o_lo, "o_hi": o_hi, "cs": cs, "ps": ps,
            "gs": cin_g * cs, "wc": wc, "wk": wk, "layout": "[L, C] (channels last)" if last else "[C, L]"}


def conv_weight(p: dict) -> np.ndarray:
    """The conv weight in the order the C walks it: [M, C, K], or [M, K, C] when x is channels-last."""
    w = np.asarray(p["weight"])
    return np.ascontiguousarray(w.transpose(0, 2, 1)) if p.get("channels_last") else w


def _pow2(v: np.ndarray) -> np.ndarray | None:
    """log2 of every value when all are powers of two (>= 1), else None."""
    v = np.asarray(v).astype(np.int64)
    if np.any(v < 1) or np.any(v & (v - 1)):
        return None
    return np.array([int(e).bit_length() - 1 for e in v], dtype=np.int64)


def lstm_gates(program: Program, step: Step) -> dict:
    """The LSTM's folded gate accumulators and the gate rescale's form.

    ax = ax0[r] + Σ x·wx[r],  ax0 = bias·2^k − x_zp·Σ wx[r];   ah = ah0[r] + Σ h·wh[r],  ah0 = −h_zp·Σ wh[r].
    With power-of-two MX = 2^a, MH = 2^b and m = min(a, b) < s, the rescale is exactly
    (ax·2^(a−m) + ah·2^(b−m) + 2^(s−m−1)) >> (s−m), done in 32 bits when its proven bound allows.
    """
    p = step.params
    x = program.tensors[step.inputs[0]]
    h = program.tensors[step.outputs[0]]
    wx = np.asarray(p["weight"]).astype(np.int64)
    wh = np.asarray(p["weight_h"]).astype(np.int64)
    b = np.asarray(p["bias"]).astype(np.int64) << np.asarray(p["bias_shift"]).astype(np.int64)
    ax0 = b - int(p["x_zp"]) * wx.sum(axis=1)
    ah0 = -int(p["h_zp"]) * wh.sum(axis=1)
    x_max, h_max = max(-QMIN[x.dtype], QMAX[x.dtype]), max(-QMIN[h.dtype], QMAX[h.dtype])
    span_x = max(QMAX[x.dtype] - p["x_zp"], p["x_zp"] - QMIN[x.dtype])
    span_h = max(QMAX[h.dtype] - p["h_zp"], p["h_zp"] - QMIN[h.dtype])
    bound_x = np.abs(wx).sum(axis=1) * span_x + np.abs(b)  # the final |ax|, |ah| (as lower_lstm proves)
    bound_h = np.abs(wh).sum(axis=1) * span_h
    partial = max(int((np.abs(ax0) + np.abs(wx).sum(axis=1) * x_max).max()),
                  int((np.abs(ah0) + np.abs(wh).sum(axis=1) * h_max).max()), int(bound_x.max()), int(bound_h.max()))
    wide = partial >= INT32_LIMIT
    a, bb, s = _pow2(p["mx"]), _pow2(p["mh"]), np.asarray(p["shift"]).astype(np.int64)
    out = {"ax0": ax0.astype(np.int64 if wide else np.int32), "ah0": ah0.astype(np.int64 if wide else np.int32),
           "acc": "int64_t" if wide else "int32_t", "pow2": False, "form": "64-bit",
           "hi": high_word(s, int((bound_x * np.asarray(p["mx"]) + bound_h * np.asarray(p["mh"])).max()))}
    if out["hi"]:
        out["form"] = "64-bit product, high word"
    if a is not None and bb is not None and not wide:
        m = np.minimum(a, bb)
        s2 = s - m
        fx, fh = np.int64(1) << (a - m), np.int64(1) << (bb - m)
        fits = np.all(s2 >= 1) and np.all(s2 <= 30)
        if fits and int((bound_x * fx + bound_h * fh + (np.int64(1) << (s2 - 1))).max()) < INT32_LIMIT:
            out.update(pow2=True, hi=False, form="powers of two: 32-bit shifts", fx=fx.astype(np.int32),
                       fh=fh.astype(np.int32), sh=s2.astype(np.int32))
    return out


def add_form(program: Program, step: Step) -> dict:
    """The add's rescale in 32 bits when its multipliers are powers of two (a pow2 plan) and the bound allows.

    With |M_a| = 2^p, |M_b| = 2^q (or 0) and m = min of those exponents (m < s), the rescale is exactly
    ((a - a_zp)·F_a + (b - b_zp)·F_b + 2^(s-m-1)) >> (s-m) with F = M / 2^m: 32-bit when
    span_a·|F_a| + span_b·|F_b| + 2^(s-m-1) < 2^31. Else the 64-bit products (`narrow` False).
    """
    p = step.params
    spans = [max(QMAX[program.tensors[t].dtype] - zp, zp - QMIN[program.tensors[t].dtype])
             for t, zp in zip(step.inputs[:2], (p["a_zp"], p["b_zp"]), strict=True)]
    mults = [int(p["a_mult"]), int(p["b_mult"])]
    logs = [_pow2(np.array([abs(v)])) for v in mults if v]
    if any(e is None for e in logs):
        return {"narrow": False}
    m = min((int(e[0]) for e in logs), default=0)
    s2 = int(p["shift"]) - m
    fa, fb = (v // (1 << m) for v in mults)
    ok = 1 <= s2 <= 30 and spans[0] * abs(fa) + spans[1] * abs(fb) + (1 << (s2 - 1)) < INT32_LIMIT
    return {"narrow": bool(ok), "fa": fa, "fb": fb, "s2": s2}
