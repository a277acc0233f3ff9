"""numpy integer kernels: the reference every C template must equal bit for bit.

Each kernel is `fn(step, inputs, out) -> array`, registered by name in KERNELS. Accumulation is int64
in numpy; the solver proves every accumulator fits int32, which is what the C uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qpass.runtime_ref.intmath import lut16, requantize, saturate
from qpass.runtime_ref.program import QTensor, Step

Kernel = Callable[[Step, list[np.ndarray], QTensor], np.ndarray]
KERNELS: dict[str, Kernel] = {}


def kernel(name: str) -> Callable[[Kernel], Kernel]:
    def wrap(fn: Kernel) -> Kernel:
        KERNELS[name] = fn
        return fn

    return wrap


@kernel("linear")
def linear(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y[m,n] = clamp(zp_y + rq(bias[n] + Σ_k (x[m,k] − zp_x)·w[n,k]), lo, hi)."""
    p = step.params
    x = inputs[0].astype(np.int64).reshape(-1, p["in_features"]) - p["x_zp"]
    acc = x @ p["weight"].astype(np.int64).T + (p["bias"].astype(np.int64) << p["bias_shift"])
    y = requantize(acc, p["mult"], p["shift"]) + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


def channel_index(n: int, b_n: int, inner: int) -> np.ndarray:
    """Which of b_n values element i of an n-element tensor reads: all (b_n = n), one, or per channel."""
    i = np.arange(n)
    if b_n == n:
        return i
    if b_n == 1:
        return np.zeros(n, dtype=np.int64)
    return (i // inner) % b_n


@kernel("mul")
def mul(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = clamp(zp_y + rq_c((x − zp_x)·w[c])): a constant per-channel scale (a BatchNorm with no linear op)."""
    p = step.params
    ch = channel_index(out.size, p["weight"].size, p["inner"])
    acc = (inputs[0].astype(np.int64).reshape(-1) - p["x_zp"]) * p["weight"].astype(np.int64).reshape(-1)[ch]
    y = requantize(acc, p["mult"][ch], p["shift"][ch]) + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


@kernel("add")
def add(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = clamp(zp_y + ((a − zp_a)·M_a + (b − zp_b)·M_b + 2^(s−1)) >> s); b: one, all, or one per channel."""
    p = step.params
    a = inputs[0].astype(np.int64).reshape(-1) - p["a_zp"]
    b = inputs[1].astype(np.int64).reshape(-1)[channel_index(out.size, p["b_n"], p.get("inner", 1))] - p["b_zp"]
    acc = a * p["a_mult"] + b * p["b_mult"] + (np.int64(1) << (p["shift"] - 1))
    y = (acc >> p["shift"]) + p["y_zp"]
    return saturate(np.broadcast_to(y, (out.size,)), out.dtype, p["lo"], p["hi"])


@kernel("clamp")
def clamp(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = clamp(x, lo, hi): ReLU (and ReLU6) on a tensor that keeps its scale and zero point."""
    return saturate(inputs[0], out.dtype, step.params["lo"], step.params["hi"])


@kernel("copy")
def copy(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """A reshape that could not be a view: the same bytes in a new buffer."""
    return inputs[0].reshape(out.shape).copy()


@kernel("lut")
def lut(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """int8: y = table[x + 128]. int16: 257-entry table at x = k·256 − 32768, interpolated linearly."""
    table = step.params["table"].astype(np.int64)
    x = inputs[0].astype(np.int64)
    if table.size == 256:
        return table[x + 128]
    return lut16(x, table)


def softmax_exp(d: np.ndarray, table: np.ndarray, sh: int) -> np.ndarray:
    """E at d / 2^sh, linearly interpolated; E[256] beyond the table."""
    table = table.astype(np.int64)
    k, frac = d >> sh, d & ((1 << sh) - 1)
    inside = k < 256
    kk = np.minimum(k, 255)
    e = table[kk] + (((table[kk + 1] - table[kk]) * frac) >> sh)
    return np.where(inside, e, table[256])


@kernel("softmax")
def softmax(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """Per row: e_i = E(max − x_i), y_i = clamp(round(e_i·one / Σe) + y_zp) (one 256 for int8, 32768 for int16)."""
    p = step.params
    x = inputs[0].astype(np.int64).reshape(-1, p["n"])
    e = softmax_exp(x.max(axis=1, keepdims=True) - x, p["exp_table"], p["sh"])
    total = e.sum(axis=1, keepdims=True)
    y = (e * p["one"] + total // 2) // total + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


def _taps(p: dict) -> np.ndarray:
    """Input positions read by output position o and tap k: o·stride − pad_left + k·dilation, [L_out, K]."""
    o = np.arange(p["l_out"])[:, None]
    k = np.arange(p["k"])[None, :]
    return o * p["stride"] - p["pad_left"] + k * p["dilation"]


@kernel("conv1d")
def conv1d(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y[m,o] = clamp(zp_y + rq_m(bias[m] + Σ_{c,k} (x[c, o·s − p + k·d] − zp_x)·w[m,c,k])); padding adds 0.

    x is [C, L], or [L, C] with `channels_last` (a fused input transpose)."""
    p = step.params
    x = inputs[0].astype(np.int64) - p["x_zp"]
    x = x.reshape(p["l_in"], p["c_in"]).T if p.get("channels_last") else x.reshape(p["c_in"], p["l_in"])
    pos = _taps(p)
    valid = (pos >= 0) & (pos < p["l_in"])
    patches = np.where(valid[None], x[:, np.clip(pos, 0, p["l_in"] - 1)], 0)  # [C_in, L_out, K]
    w = p["weight"].astype(np.int64).reshape(p["c_out"], p["c_in"] // p["groups"], p["k"])
    cin_g, cout_g = p["c_in"] // p["groups"], p["c_out"] // p["groups"]
    acc = np.zeros((p["c_out"], p["l_out"]), dtype=np.int64)
    for g in range(p["groups"]):
        xs = patches[g * cin_g:(g + 1) * cin_g]
        ws = w[g * cout_g:(g + 1) * cout_g]
        acc[g * cout_g:(g + 1) * cout_g] = np.einsum("mck,cok->mo", ws, xs)
    acc += (p["bias"].astype(np.int64) << p["bias_shift"])[:, None]
    y = requantize(acc, p["mult"][:, None], p["shift"][:, None]) + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


@kernel("maxpool1d")
def maxpool1d(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y[c,o] = max over valid taps k of x[c, o·stride − pad_left + k·dilation] (same scale in and out)."""
    p = step.params
    x = inputs[0].reshape(p["c_in"], p["l_in"]).astype(np.int64)
    pos = _taps(p)
    valid = (pos >= 0) & (pos < p["l_in"])
    vals = np.where(valid[None], x[:, np.clip(pos, 0, p["l_in"] - 1)], np.iinfo(np.int64).min)
    return vals.max(axis=2)


@kernel("transpose")
def transpose(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = transpose(x, perm); the C walks the output in order with permuted input strides."""
    p = step.params
    return np.transpose(inputs[0].reshape(tuple(p["in_dims"])), tuple(p["perm"]))


def tanh16(c: np.ndarray, table: np.ndarray, sh: int, out_shift: int, lo: int, hi: int) -> np.ndarray:
    """tanh of the int16 cell state: 257-entry Q15 table over the window of sh (lut16), then >> out_shift (8 → int8
    /128)."""
    v = lut16(c, table, sh)
    if out_shift:
        v = (v + (1 << (out_shift - 1))) >> out_shift
    return np.clip(v, lo, hi)


def _gate_act(q: np.ndarray, table: np.ndarray, sh: int = 8) -> np.ndarray:
    """A gate's activation: 256-entry table for int8 pre-activations, 257 interpolated (lut16) for int16."""
    if table.size == 256:
        return table.astype(np.int64)[q + 128]
    return lut16(q, table, sh)


@kernel("lstm")
def lstm(step: Step, inputs: list[np.ndarray], out: QTensor) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM direction over all T steps (gate order i, o, f, c as in ONNX); writes h_t for every t and
    leaves the last c in its cell state.

    gate_q[r] = clamp(zp_r + ((Σ W(x − zp_x) + b)·MX[r] + Σ R(h − zp_h)·MH[r] + 2^(s_r−1)) >> s_r)
    a_i, a_o, a_f = σ-table[gate] − zp    a_g = tanh-table[gate]      (fixed scales 1/256 | 1/32768, 1/128)
    c = clamp16(rq(a_f·c, fc) + rq(a_i·a_g, ig))                       (int16 cell state, zero point 0)
    h = clamp(zp_h + rq(a_o·tanh16(c), h))
    """
    p = step.params
    t_len, n_in, hid = p["t"], p["n_in"], p["hidden"]
    x = inputs[0].astype(np.int64).reshape(-1, n_in) - p["x_zp"]
    wx, wh = p["weight"].astype(np.int64), p["weight_h"].astype(np.int64)
    lut_n = p["lut_n"]
    luts = p["gate_lut"].reshape(4, lut_n)
    gate_zp = np.repeat(np.array(p["gate_zp"], dtype=np.int64), hid)
    act_zp = np.array(p["act_zp"], dtype=np.int64)[:, None]
    shift = p["shift"].astype(np.int64)
    # row of the h of processing step s at time t: t (mode 0, Y is read), s (mode 1) or s & 1 (mode 2: two rows)
    mode, x_steps = p["row_mode"], p["x_steps"]  # x_steps > t: later steps were never read
    hseq = np.zeros((p["rows"], hid), dtype=np.int64)
    h = np.full(hid, p["h_zp"], dtype=np.int64)
    c = np.zeros(hid, dtype=np.int64)
    order = [x_steps - 1 - s if p["reverse"] else s for s in range(t_len)]
    for s, t in enumerate(order):
        acc_x = wx @ x[t] + (p["bias"].astype(np.int64) << p["bias_shift"])
        acc_h = wh @ (h - p["h_zp"])
        pre = (acc_x * p["mx"] + acc_h * p["mh"] + (np.int64(1) << (shift - 1))) >> shift
        g = np.clip(pre + gate_zp, p["g_lo"], p["g_hi"]).reshape(4, hid)
        act = np.stack([_gate_act(g[k], luts[k], p["gate_sh"][k]) for k in range(4)]) - act_zp
        ai, ao, af, ag = act
        c = np.clip(requantize(af * c, p["fc_mult"], p["fc_shift"])
                    + requantize(ai * ag, p["ig_mult"], p["ig_shift"]), -32768, 32767)
        tc = tanh16(c, p["tanh_table"], p["tc_sh"], p["tc_shift"], p["tc_lo"], p["tc_hi"])
        h = np.clip(requantize(ao * tc, p["h_mult"], p["h_shift"]) + p["h_zp"], p["h_lo"], p["h_hi"])
        hseq[(t, s, s & 1)[mode]] = h
    return hseq, c  # c: the cell state after the last step (Y_c)


@kernel("gru")
def gru(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """One GRU direction over all T steps (gate order z, r, n as in ONNX); writes h_t for every kept row.

    gate_q[r] = clamp(zp_r + ((Σ W(x − zp_x) + b)·MX[r] + hterm_r·MH[r] + 2^(s_r−1)) >> s_r), a = table[gate] − zp
    z, r rows:  hterm = Σ R(h − zp_h)
    n rows, linear_before_reset = 1:  hn = clamp(zp_hn + rq(Σ Rn(h − zp_h) + bn, M_hn[j], s_hn)),
                                      hterm = a_r·(hn − zp_hn)
    n rows, linear_before_reset = 0:  rh = clamp(zp_rh + rq(a_r·(h − zp_h), M_rh)),  hterm = Σ Rn(rh − zp_rh)
    h = clamp(zp_h + ((S − a_z)·a_n·M1 + a_z·(h − zp_h)·M2 + 2^(s−1)) >> s)   (S = 1 / sigmoid scale: 1 − z)
    """
    p = step.params
    t_len, n_in, hid = p["t"], p["n_in"], p["hidden"]
    x = inputs[0].astype(np.int64).reshape(-1, n_in) - p["x_zp"]
    wx, wh = p["weight"].astype(np.int64), p["weight_h"].astype(np.int64)
    bias = p["bias"].astype(np.int64) << p["bias_shift"].astype(np.int64)  # [4H]: x side z, r, n, then R side n
    luts = p["gate_lut"].reshape(3, p["lut_n"])
    gate_zp = np.repeat(np.array(p["gate_zp"], dtype=np.int64), hid)
    act_zp = p["act_zp"]
    mx, mh, shift = p["mx"].astype(np.int64), p["mh"].astype(np.int64), p["shift"].astype(np.int64)
    rnd = np.int64(1) << (shift - 1)
    mode, x_steps = p["row_mode"], p["x_steps"]
    hseq = np.zeros((p["rows"], hid), dtype=np.int64)
    h = np.full(hid, p["h_zp"], dtype=np.int64)
    order = [x_steps - 1 - s if p["reverse"] else s for s in range(t_len)]
    for s, t in enumerate(order):
        hc = h - p["h_zp"]
        acc_x = wx @ x[t] + bias[:3 * hid]
        pre = (acc_x[:2 * hid] * mx[:2 * hid] + (wh[:2 * hid] @ hc) * mh[:2 * hid] + rnd[:2 * hid]) >> shift[:2 * hid]
        g = np.clip(pre + gate_zp[:2 * hid], p["g_lo"], p["g_hi"])
        a_z = _gate_act(g[:hid], luts[0], p["gate_sh"][0]) - act_zp[0]
        a_r = _gate_act(g[hid:], luts[1], p["gate_sh"][1]) - act_zp[1]
        if p["lbr"]:
            hn = np.clip(requantize(wh[2 * hid:] @ hc + bias[3 * hid:], p["mult"], p["hn_shift"]) + p["hn_zp"],
                         p["hn_lo"], p["hn_hi"])
            hterm = a_r * (hn - p["hn_zp"])
        else:
            rh = np.clip(requantize(a_r * hc, p["rh_mult"], p["rh_shift"]) + p["rh_zp"], p["rh_lo"], p["rh_hi"])
            hterm = wh[2 * hid:] @ (rh - p["rh_zp"])
        pre_n = (acc_x[2 * hid:] * mx[2 * hid:] + hterm * mh[2 * hid:] + rnd[2 * hid:]) >> shift[2 * hid:]
        a_n = _gate_act(np.clip(pre_n + gate_zp[2 * hid:], p["g_lo"], p["g_hi"]), luts[2], p["gate_sh"][2]) - act_zp[2]
        acc = (p["one"] - a_z) * a_n * p["m1"] + a_z * hc * p["m2"] + (np.int64(1) << (p["h_shift"] - 1))
        h = np.clip((acc >> p["h_shift"]) + p["h_zp"], p["h_lo"], p["h_hi"])
        hseq[(t, s, s & 1)[mode]] = h
    return hseq


@kernel("rnn")
def rnn(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """One RNN direction over all T steps; writes h_t for every kept row (rows as for the LSTM).

    pre_q[j] = clamp(zp_g + ((Σ W(x − zp_x) + b·2^k)·MX[j] + Σ R(h − zp_h)·MH[j] + 2^(s_j−1)) >> s_j)
    h[j] = table[pre_q[j]]   (tanh or relu from the pre-activation's parameters to h's: 256 entries for int8,
                              257 interpolated for int16, as the LSTM's gates)
    """
    p = step.params
    n_in, hid = p["n_in"], p["hidden"]
    x = inputs[0].astype(np.int64).reshape(-1, n_in) - p["x_zp"]
    wx, wh = p["weight"].astype(np.int64), p["weight_h"].astype(np.int64)
    bias = p["bias"].astype(np.int64) << p["bias_shift"].astype(np.int64)
    mx, mh, shift = p["mx"].astype(np.int64), p["mh"].astype(np.int64), p["shift"].astype(np.int64)
    mode, x_steps = p["row_mode"], p["x_steps"]
    hseq = np.zeros((p["rows"], hid), dtype=np.int64)
    h = np.full(hid, p["h_zp"], dtype=np.int64)
    for s in range(p["t"]):
        t = x_steps - 1 - s if p["reverse"] else s
        pre = ((wx @ x[t] + bias) * mx + (wh @ (h - p["h_zp"])) * mh + (np.int64(1) << (shift - 1))) >> shift
        h = _gate_act(np.clip(pre + p["g_zp"], p["g_lo"], p["g_hi"]), p["gate_lut"])
        hseq[(t, s, s & 1)[mode]] = h
    return hseq


@kernel("concat")
def concat(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = the inputs one after another along `axis` (all with the output's scale and zero point)."""
    return np.concatenate(inputs, axis=step.params["axis"])


@kernel("pool")
def pool(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """Average or max over a window of one axis of x viewed as [outer, L_in, inner] (global: one window).

    Taps: pos = o·stride − pad + k·dil inside [0, L_in). mean: acc = Σ (x − zp_x) over the n valid taps,
    y = clamp(zp_y + rq(acc, M[n − 1], s[n − 1])) with M[n−1]·2^−s[n−1] ≈ s_x / (s_y · n): the integer mean
    rounds half up (intmath.requantize) after the exact integer sum. With count_pad (also set when every
    window is full) n = K for all windows and the one multiplier is M[0]. max: acc = max (x − zp_x) over
    the valid taps, y = clamp(zp_y + rq(acc, M[0], s[0])).
    """
    p = step.params
    outer, l_in, inner, l_out, k = (int(v) for v in p["dims"][:5])
    x = inputs[0].astype(np.int64).reshape(outer, l_in, inner) - p["x_zp"]
    pos = _taps({"l_out": l_out, "k": k, "stride": p["dims"][5], "dilation": p["dims"][6], "pad_left": p["dims"][7]})
    valid = (pos >= 0) & (pos < l_in)  # [L_out, K]
    taps = x[:, np.clip(pos, 0, l_in - 1), :]  # [outer, L_out, K, inner]
    if p["is_max"]:
        acc = np.where(valid[None, :, :, None], taps, np.iinfo(np.int64).min).max(axis=2)
        acc = np.where(valid.any(axis=1)[None, :, None], acc, 0)
    else:
        acc = np.where(valid[None, :, :, None], taps, 0).sum(axis=2)
    fixed = p["is_max"] or p["count_pad"]
    idx = np.zeros(l_out, dtype=np.int64) if fixed else np.maximum(valid.sum(axis=1), 1) - 1
    y = requantize(acc, p["mult"][idx][None, :, None], p["shift"][idx][None, :, None]) + p["y_zp"]
    return saturate(y.reshape(-1), out.dtype, p["lo"], p["hi"])


@kernel("mul2")
def mul2(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = clamp(zp_y + rq((a − zp_a)·(b − zp_b), M, s)): the product of two activations (swish's x·σ(x),
    gating); b has n elements, one, or one per channel. M·2^−s ≈ s_a·s_b / s_y; the int64 product times M
    stays below 2^63 (M has 30 bits for int16 operands)."""
    p = step.params
    a = inputs[0].astype(np.int64).reshape(-1) - p["a_zp"]
    b = inputs[1].astype(np.int64).reshape(-1)[channel_index(out.size, p["b_n"], p["inner"])] - p["b_zp"]
    y = requantize(a * b, p["mult"], p["shift"]) + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


from qpass.runtime_ref import kernels2d  # noqa: E402, F401  (registers the 2-D kernels in KERNELS)
