"""Generation-time constants for the per-layer C kernels (linear, conv1d, pool, add, lstm, gru): the C's view of a
step.

runtime_ref computes `bias·2^k + Σ (x − x_zp)·w`; the C computes the same integer as

    acc0[n] = bias[n]·2^k[n] − x_zp·Σ_k w[n,k]          (folded here, once)
    acc     = acc0[n] + Σ_k x[k]·w[n,k]                  (a bare multiply-accumulate per MAC)

and an out-of-range conv tap adds x_zp·w (it stands for the zero point). The accumulator is int32 when
every partial sum provably fits (|acc0| + Σ|w|·max|x| < 2^31), else int64. A power-of-two rescale
(mult = 1 for every channel) whose rounding add cannot overflow is done in 32 bits with shifts only.
"""

from __future__ import annotations

import numpy as np

from qpass.runtime_ref.intmath import QMAX, QMIN, requantize
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


SPLIT = 16  # pool_rescale's "split" form: M = (M >> 16)·2^16 + (M & 0xffff), two 32-bit products


def pool_rescale(program: Program, step: Step) -> dict:
    """The pool's rescale (acc·M + 2^(s−1)) >> s in the cheapest exact form its proven bound allows.

    Every (M, s) may be rewritten as (M·2^j, s + j): the same integer for any acc. With |acc| ≤ B
    (the window's sum, or one value for max):

        32-bit   each M made odd (a power of two becomes M = 1: a bare shift) and B·M + 2^(s−1) < 2^31
        split    every s ≥ 17 (raised if needed), B < 2^15: acc·M = acc·(M >> 16)·2^16 + acc·(M & 0xffff), so
                 the result is (acc·(M >> 16) + ((acc·(M & 0xffff)) >> 16) + 2^(s−17)) >> (s − 16), exact
                 (the dropped low 16 bits are below 2^16 and cannot carry into a multiple of 2^(s−16))
        64-bit   qp_requantize, otherwise

    Neither 32-bit form multiplies in 64 bits: no __aeabi_lmul call on a Cortex-M0.
    """
    p = step.params
    x = program.tensors[step.inputs[0]]
    span = max(QMAX[x.dtype] - int(p["x_zp"]), int(p["x_zp"]) - QMIN[x.dtype])
    bound = span * (1 if p["is_max"] else int(p["dims"][4]))
    mult, shift = np.asarray(p["mult"]).astype(np.int64), np.asarray(p["shift"]).astype(np.int64)
    odd = np.array([(int(m) & -int(m)).bit_length() - 1 for m in mult], dtype=np.int64)
    odd = np.minimum(odd, shift - 1)  # keep s >= 1
    m32, s32 = mult >> odd, shift - odd
    if np.all(s32 <= 31) and int((bound * m32 + (np.int64(1) << (s32 - 1))).max()) < INT32_LIMIT:
        return {"f": {"mult": m32, "shift": s32}, "form": "32-bit", **pool_window(p)}
    up = np.maximum(0, SPLIT + 1 - shift)
    ms, ss = mult << up, shift + up
    hi = ms >> SPLIT  # bound < 2^15 keeps acc·(M & 0xffff) below 2^31 too
    if (bound < 1 << (31 - SPLIT) and np.all(ms < INT32_LIMIT) and np.all(ss - SPLIT - 1 <= 30)
            and int((bound * hi + bound + (np.int64(1) << (ss - SPLIT - 1))).max()) < INT32_LIMIT):
        return {"f": {"mult": ms, "shift": ss}, "form": "split", **pool_window(p)}
    return {"f": {}, "form": "64-bit", **pool_window(p)}


def add_rescale(program: Program, step: Step) -> dict:
    """The add's multipliers and shift with their common power of two taken out (the same integers), and its
    accumulator: int32 when span_a·|M_a| + span_b·|M_b| + 2^(s−1) < 2^31, as a power-of-two (pow2) add always
    is after the reduction, so no 64-bit multiply (no __aeabi_lmul on a Cortex-M0); int64 otherwise."""
    p = step.params
    ma, mb, sh = int(p["a_mult"]), int(p["b_mult"]), int(p["shift"])
    zeros = [(abs(m) & -abs(m)).bit_length() - 1 for m in (ma, mb) if m]
    j = min([*zeros, sh - 1])
    ma, mb, sh = ma >> j, mb >> j, sh - j
    a, b = (program.tensors[t] for t in step.inputs[:2])
    span = [max(QMAX[t.dtype] - zp, zp - QMIN[t.dtype]) for t, zp in ((a, p["a_zp"]), (b, p["b_zp"]))]
    narrow = sh <= 31 and span[0] * abs(ma) + span[1] * abs(mb) + (1 << (sh - 1)) < INT32_LIMIT
    return {"ma": ma, "mb": mb, "sh": sh, "acc": "int32_t" if narrow else "int64_t"}


def pool_window(p: dict) -> dict:
    """The pool's sizes by name (x as [outer, l_in, inner]) and whether every window lies inside x (no tests)."""
    names = ("outer", "l_in", "inner", "l_out", "k", "stride", "dilation", "pad")
    d = dict(zip(names, (int(v) for v in p["dims"][:8]), strict=True))
    last = (d["l_out"] - 1) * d["stride"] - d["pad"] + (d["k"] - 1) * d["dilation"]
    return {"d": d, "full": d["pad"] <= 0 and last < d["l_in"]}


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


def dsp_words(w: np.ndarray, seg: int, x_dtype: str) -> np.ndarray:
    """Weights [N, L] (each row: L // seg segments, each read from contiguous x) as the int32 words SMLAD takes.

    Per segment, int8 x (4 bytes loaded, split by qp_sx02 / qp_sx13 into (x0, x2) and (x1, x3)): each group of
    4 weights as the words (w0 | w2 << 16), (w1 | w3 << 16); int16 x (a loaded word is (x0, x1)): each pair as
    (w0 | w1 << 16). The seg % 4 (seg % 2) weights left at the segment's end: one word each, plain.
    """
    g = 4 if x_dtype == "int8" else 2
    n, length = w.shape
    w = np.asarray(w).astype(np.int64).reshape(n, length // seg, seg)
    body = w[:, :, : seg // g * g].reshape(n, length // seg, seg // g, g)
    lo, hi = (body[..., [0, 1]], body[..., [2, 3]]) if g == 4 else (body[..., [0]], body[..., [1]])
    words = ((lo & 0xFFFF) | (hi << 16)).reshape(n, length // seg, -1)
    words = np.concatenate([words, w[:, :, seg // g * g:]], axis=2).reshape(n, -1)
    return ((words + 2**31) % 2**32 - 2**31).astype(np.int32)


def dsp_plan(w: np.ndarray, seg: int, seg_stride: int, x_dtype: str, acc: str) -> dict:
    """The DSP path of a dot product over rows of w in segments of `seg` contiguous x values, `seg_stride` x values
    apart: {"dsp": sizes for the template, "f": {"weight_dsp": words}}, or {"dsp": None} when SMLAD cannot
    serve it (a 64-bit accumulator, or no segment as long as one SIMD group)."""
    g = 4 if x_dtype == "int8" else 2
    if acc != "int32_t" or seg < g or x_dtype not in ("int8", "int16"):
        return {"dsp": None}
    words = dsp_words(w.reshape(w.shape[0], -1), seg, x_dtype)
    nseg = w.size // w.shape[0] // seg
    return {"dsp": {"g": g, "seg": seg, "nseg": nseg, "stride": seg_stride, "sw": words.shape[1] // nseg,
                    "row": words.shape[1]}, "f": {"weight_dsp": words}}


def conv_dsp(p: dict, x_dtype: str, acc: str) -> dict:
    """conv1d's DSP plan for the interior: contiguous x runs are a channel's taps ([C, L], dilation 1), a tap's
    channels ([L, C]), or the whole window ([L, C], one group, dilation 1)."""
    w = conv_weight(p)
    cin_g, k = p["c_in"] // p["groups"], p["k"]
    if not p.get("channels_last"):
        return dsp_plan(w, k, p["l_in"], x_dtype, acc) if p["dilation"] == 1 else {"dsp": None}
    if p["groups"] == 1 and p["dilation"] == 1:
        return dsp_plan(w, k * cin_g, 0, x_dtype, acc)
    return dsp_plan(w, cin_g, p["dilation"] * p["c_in"], x_dtype, acc)


def _pow2(v: np.ndarray) -> np.ndarray | None:
    """log2 of every value when all are powers of two (>= 1), else None."""
    v = np.asarray(v).astype(np.int64)
    if np.any(v < 1) or np.any(v & (v - 1)):
        return None
    return np.array([int(e).bit_length() - 1 for e in v], dtype=np.int64)


def rescale32(bound: int, mult: int, shift: int) -> dict:
    """The cheapest exact C form of (v·M + 2^(s−1)) >> s for |v| <= bound, as runtime_ref.intmath.requantize.

    "shift" (M = 1): (v + 2^(s−1)) >> s in 32 bits. "hi": with v' = v·2^k (|v'| < 2^31) and S = s + k >= 33, the
    result is ((hi32(v'·M) + 2^(S−33)) >> (S−32)): the same integer, since (v·M·2^k + 2^(S−1)) >> S equals
    (v·M + 2^(s−1)) >> s and the rounding term's low word is zero (see high_word). "wide": qp_requantize.
    """
    if mult == 1 and shift <= 30 and bound + (1 << (shift - 1)) < INT32_LIMIT:
        return {"kind": "shift", "rnd": 1 << (shift - 1), "s": shift, "bound": (bound >> shift) + 1}
    for k in range(max(0, 33 - shift), 31):
        if (bound << k) >= INT32_LIMIT or shift + k > 62:
            break
        return {"kind": "hi", "k": 1 << k, "m": mult, "rnd": 1 << (shift + k - 33), "s": shift + k - 32,
                "bound": ((bound * mult) >> shift) + 1}
    return {"kind": "wide", "m": mult, "s": shift, "bound": ((bound * mult) >> shift) + 1}


def act_table(lut: np.ndarray, zp: int) -> np.ndarray:
    """A gate's activation table with its zero point already subtracted, in the narrowest type that holds it."""
    v = np.asarray(lut).astype(np.int64) - zp
    for dtype in ("int8", "uint8", "int16"):
        if v.min() >= np.iinfo(dtype).min and v.max() <= np.iinfo(dtype).max:
            return v.astype(dtype)
    return v.astype(np.int32)


def gate_form(p: dict, bound_x: np.ndarray, bound_h: np.ndarray, wide: bool) -> dict:
    """How the C rescales a recurrent kernel's gate rows: pre = (ax·MX[r] + ah·MH[r] + 2^(s−1)) >> s, then + zp.

    With power-of-two MX = 2^a, MH = 2^b and m = min(a, b) < s, the rescale is exactly
    (ax·2^(a−m) + ah·2^(b−m) + 2^(s−m−1)) >> (s−m), done in 32 bits when its proven bound allows. In the
    high-word form (high_word) with one shift S per gate, the gate's zero point joins the rounding term:
    zp + ((hi + 2^(S−33)) >> (S−32)) = (hi + 2^(S−33) + zp·2^(S−32)) >> (S−32) (`gate_rz`, when it fits 32 bits).
    bound_x, bound_h: the proven |ax|, |ah| per row; rows are grouped by gate (len(p["gate_zp"]) gates).
    """
    a, bb, s = _pow2(p["mx"]), _pow2(p["mh"]), np.asarray(p["shift"]).astype(np.int64)
    product = int((bound_x * np.asarray(p["mx"]) + bound_h * np.asarray(p["mh"])).max())
    out = {"pow2": False, "form": "64-bit", "hi": high_word(s, product), "gate_shift": None}
    if out["hi"]:
        out["form"] = "64-bit product, high word"
        per_gate = s.reshape(len(p["gate_zp"]), -1)
        if np.all(per_gate == per_gate[:, :1]):  # one shift per gate: constants, zero point in the rounding
            sg = [int(v) for v in per_gate[:, 0]]
            rz = [(1 << (v - 33)) + (zp << (v - 32)) for v, zp in zip(sg, p["gate_zp"], strict=True)]
            if max(abs(r) for r in rz) + (product >> 32) + 1 < INT32_LIMIT:
                out.update(gate_shift=[v - 32 for v in sg], gate_rz=rz)
    if a is not None and bb is not None and not wide:
        m = np.minimum(a, bb)
        s2 = s - m
        fx, fh = np.int64(1) << (a - m), np.int64(1) << (bb - m)
        fits = np.all(s2 >= 1) and np.all(s2 <= 30)
        if fits and int((bound_x * fx + bound_h * fh + (np.int64(1) << (s2 - 1))).max()) < INT32_LIMIT:
            out.update(pow2=True, hi=False, gate_shift=None, form="powers of two: 32-bit shifts",
                       fx=fx.astype(np.int32), fh=fh.astype(np.int32), sh=s2.astype(np.int32))
    return out


def gate_tables(p: dict, roles: str) -> tuple[dict, list[int]]:
    """act_<role>: each gate's table with its zero point subtracted (act_table), and each table's largest |value|."""
    luts = np.asarray(p["gate_lut"]).reshape(len(roles), p["lut_n"])
    acts = [act_table(luts[g], p["act_zp"][g]) for g in range(len(roles))]
    return ({f"act_{role}": t for role, t in zip(roles, acts, strict=True)},
            [int(np.abs(t.astype(np.int64)).max()) for t in acts])


def lstm_gates(program: Program, step: Step) -> dict:
    """The LSTM's folded gate accumulators, the gate rescale's form (gate_form) and the cell update's forms.

    ax = ax0[r] + Σ x·wx[r],  ax0 = bias·2^k − x_zp·Σ wx[r];   ah = ah0[r] + Σ h·wh[r],  ah0 = −h_zp·Σ wh[r].
    The activation tables arrive with their zero points subtracted (gate_tables), and the c and h updates take
    their rescale forms from rescale32 with the tables' proven ranges.
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
    out = {"ax0": ax0.astype(np.int64 if wide else np.int32), "ah0": ah0.astype(np.int64 if wide else np.int32),
           "acc": "int64_t" if wide else "int32_t", **gate_form(p, bound_x, bound_h, wide)}
    tables, amax = gate_tables(p, "iofg")  # |a_i|, |a_o|, |a_f|, |a_g|
    out.update(tables)
    tc_max = max(-int(p["tc_lo"]), int(p["tc_hi"]))
    fc = rescale32(amax[2] * 32768, p["fc_mult"], p["fc_shift"])
    ig = rescale32(amax[0] * amax[3], p["ig_mult"], p["ig_shift"])
    hq = rescale32(amax[1] * tc_max, p["h_mult"], p["h_shift"])
    narrow = fc["bound"] + ig["bound"] < INT32_LIMIT and hq["bound"] + abs(p["h_zp"]) < INT32_LIMIT
    out.update(fc=fc, ig=ig, hq=hq, cell32=narrow)
    return out


def gru_gates(program: Program, step: Step) -> dict:
    """The GRU's folded gate accumulators (rows z, r, n), the gate rescale's form and the other rescales' forms.

    ax = ax0[r] + Σ x·wx[r],  ax0 = bias_x·2^k − x_zp·Σ wx[r].  z, r rows: ah = ah0 + Σ h·wh[r], ah0 = −h_zp·Σ wh[r].
    n rows, linear_before_reset = 1: hn = clamp(zp_hn + rq(ahn)), ahn = ah0 + Σ h·wh[r], ah0 = bias_h·2^k − h_zp·Σ wh[r]
    (hn0: its value at step 0, where h = h_zp); the gate's h term is a_r·(hn − zp_hn). linear_before_reset = 0:
    the h term is ah0 + Σ rh·wh[r], ah0 = −rh_zp·Σ wh[r], over the requantized r·h of every unit (scratch).
    """
    p = step.params
    x = program.tensors[step.inputs[0]]
    h = program.tensors[step.outputs[0]]
    hid, lbr = p["hidden"], bool(p["lbr"])
    wx = np.asarray(p["weight"]).astype(np.int64)
    wh = np.asarray(p["weight_h"]).astype(np.int64)
    b = np.asarray(p["bias"]).astype(np.int64) << np.asarray(p["bias_shift"]).astype(np.int64)
    bx, bh = b[:3 * hid], b[3 * hid:]
    x_max, h_max = max(-QMIN[x.dtype], QMAX[x.dtype]), max(-QMIN[h.dtype], QMAX[h.dtype])
    span_x = max(QMAX[x.dtype] - p["x_zp"], p["x_zp"] - QMIN[x.dtype])
    span_h = max(QMAX[h.dtype] - p["h_zp"], p["h_zp"] - QMIN[h.dtype])
    tables, amax = gate_tables(p, "zrn")  # |a_z|, |a_r|, |a_n|
    ax0 = bx - int(p["x_zp"]) * wx.sum(axis=1)
    sum_h = np.abs(wh).sum(axis=1)
    ah0 = -int(p["h_zp"]) * wh.sum(axis=1)
    out: dict = {"hn_shift32": None, "upd32": None}
    if lbr:
        ah0[2 * hid:] += bh
        span_hn = max(p["hn_hi"] - p["hn_zp"], p["hn_zp"] - p["hn_lo"])
        hterm = np.full(hid, amax[1] * span_hn, np.int64)
        bound_hn = sum_h[2 * hid:] * span_h + np.abs(bh)
        partial_n = int((np.abs(ah0[2 * hid:]) + sum_h[2 * hid:] * h_max).max())
        mult = np.asarray(p["mult"]).astype(np.int64)
        out["hn_hi"] = high_word(np.array([p["hn_shift"]]), int((bound_hn * mult).max()))
        a = _pow2(mult)
        if a is not None and int(a.min()) < p["hn_shift"]:  # M_hn = 2^a per row: a 32-bit factor and shift
            f, sh = np.int64(1) << (a - a.min()), int(p["hn_shift"] - a.min())
            if sh <= 30 and int((bound_hn * f).max()) + (1 << (sh - 1)) < INT32_LIMIT:
                out["hn_shift32"] = {"rnd": 1 << (sh - 1), "s": sh, "uniform": bool(np.all(f == 1))}
                out["hn_f"] = f.astype(np.int32)
        hn0 = np.clip(requantize(bh, mult, p["hn_shift"]) + p["hn_zp"], p["hn_lo"], p["hn_hi"])
        out["hn0"] = hn0.astype(np.int16 if h.dtype == "int8" else np.int32)
    else:
        span_rh = max(p["rh_hi"] - p["rh_zp"], p["rh_zp"] - p["rh_lo"])
        ah0[2 * hid:] = -int(p["rh_zp"]) * wh[2 * hid:].sum(axis=1)
        hterm = sum_h[2 * hid:] * span_rh
        bound_hn = hterm
        partial_n = int((np.abs(ah0[2 * hid:]) + sum_h[2 * hid:] * max(-p["rh_lo"], p["rh_hi"])).max())
        out["rh"] = rescale32(amax[1] * span_h, p["rh_mult"], p["rh_shift"])
    bound_x = np.abs(wx).sum(axis=1) * span_x + np.abs(bx)
    bound_h = np.concatenate([sum_h[:2 * hid] * span_h, hterm])
    partial = max(int((np.abs(ax0) + np.abs(wx).sum(axis=1) * x_max).max()),
                  int((np.abs(ah0[:2 * hid]) + sum_h[:2 * hid] * h_max).max()), partial_n, int(bound_x.max()),
                  int(bound_h.max()), int(bound_hn.max()))
    wide = partial >= INT32_LIMIT
    upd = (p["one"] + amax[0]) * amax[2] * p["m1"] + amax[0] * span_h * p["m2"]
    m12 = _pow2([p["m1"], p["m2"]])
    if m12 is not None and int(m12.min()) < p["h_shift"]:  # M1 = 2^a, M2 = 2^b: shifts only, when 32 bits hold it
        lo = int(m12.min())
        f1, f2, sh = 1 << (int(m12[0]) - lo), 1 << (int(m12[1]) - lo), int(p["h_shift"]) - lo
        bound = (p["one"] + amax[0]) * amax[2] * f1 + amax[0] * span_h * f2 + (1 << (sh - 1))
        if sh <= 30 and bound < INT32_LIMIT:
            out["upd32"] = {"f1": f1, "f2": f2, "rnd": 1 << (sh - 1), "s": sh}
    out.update(tables, ax0=ax0.astype(np.int64 if wide else np.int32), ah0=ah0.astype(np.int64 if wide else np.int32),
               acc="int64_t" if wide else "int32_t", hterm="int32_t" if hterm.max() < INT32_LIMIT else "int64_t",
               h_hi=high_word(np.array([p["h_shift"]]), int(upd)), **gate_form(p, bound_x, bound_h, wide))
    return out
