"""numpy integer kernels over two spatial axes (Conv2D, DepthwiseConv2D, 2-D pooling), layout [C, H, W] or [H, W, C].

Registered in the same KERNELS table as the 1-D kernels (runtime_ref/kernels.py imports this module). The
tap rule of one spatial axis is the 1-D one, applied to rows and to columns:
pos = o·stride − pad + k·dilation, in [0, size); an out-of-range tap adds nothing (zero padding).
The last two dims say whether x and y are channels-last [H, W, C] (1) or channels-first [C, H, W] (0): a
Transpose next to the kernel folds into it (codegen/layout_2d.py), so a Keras NHWC model keeps no transposes.
"""

from __future__ import annotations

import numpy as np

from qpass.runtime_ref.intmath import requantize, saturate
from qpass.runtime_ref.kernels import kernel
from qpass.runtime_ref.program import QTensor, Step

# dims of a conv2d step: c_in, h_in, w_in, c_out, h_out, w_out, kh, kw, sh, sw, dh, dw, pad_top, pad_left, groups,
# x_hwc, y_hwc
CONV2D_DIMS = ("c_in", "h_in", "w_in", "c_out", "h_out", "w_out", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl",
               "groups", "x_hwc", "y_hwc")
# dims of a pool2d step: c, h_in, w_in, h_out, w_out, kh, kw, sh, sw, dh, dw, pad_top, pad_left, is_max, count_pad,
# x_hwc, y_hwc
POOL2D_DIMS = ("c", "h_in", "w_in", "h_out", "w_out", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "is_max",
               "count_pad", "x_hwc", "y_hwc")


def _chw(x: np.ndarray, c: int, h: int, w: int, hwc: int) -> np.ndarray:
    """x as [C, H, W] from its stored layout."""
    return x.reshape(h, w, c).transpose(2, 0, 1) if hwc else x.reshape(c, h, w)


def _stored(y: np.ndarray, hwc: int) -> np.ndarray:
    """y [C, H, W] in its stored layout."""
    return y.transpose(1, 2, 0) if hwc else y


def taps(n_out: int, k: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    """Input positions read by output position o and tap k along one axis: [n_out, k]."""
    return np.arange(n_out)[:, None] * stride - pad + np.arange(k)[None, :] * dilation


def _windows(x: np.ndarray, d: dict, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """x [C, H, W] → its windows [C, H_out, W_out, KH, KW] (out-of-range taps = fill) and their validity."""
    rows = taps(d["h_out"], d["kh"], d["sh"], d["pt"], d["dh"])  # [H_out, KH]
    cols = taps(d["w_out"], d["kw"], d["sw"], d["pl"], d["dw"])  # [W_out, KW]
    h_in, w_in = x.shape[1], x.shape[2]
    r = np.clip(rows, 0, h_in - 1)[:, None, :, None]
    c = np.clip(cols, 0, w_in - 1)[None, :, None, :]
    valid = ((rows >= 0) & (rows < h_in))[:, None, :, None] & ((cols >= 0) & (cols < w_in))[None, :, None, :]
    return np.where(valid[None], x[:, r, c], fill), valid


@kernel("conv2d")
def conv2d(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y[m,oy,ox] = clamp(zp_y + rq_m(bias[m] + Σ_{c,ky,kx} (x[c, oy·sh − pt + ky·dh, ox·sw − pl + kx·dw] − zp_x)
    · w[m,c,ky,kx])); groups split C_in and C_out (depthwise: groups = C_in = C_out)."""
    p = step.params
    d = dict(zip(CONV2D_DIMS, (int(v) for v in p["dims"]), strict=True))
    x = _chw(inputs[0].astype(np.int64), d["c_in"], d["h_in"], d["w_in"], d["x_hwc"]) - p["x_zp"]
    win, _ = _windows(x, d, 0)  # [C_in, H_out, W_out, KH, KW]
    g = d["groups"]
    cin_g, cout_g = d["c_in"] // g, d["c_out"] // g
    w = p["weight"].astype(np.int64).reshape(d["c_out"], cin_g, d["kh"], d["kw"])
    acc = np.zeros((d["c_out"], d["h_out"], d["w_out"]), dtype=np.int64)
    for i in range(g):
        acc[i * cout_g:(i + 1) * cout_g] = np.einsum("mcij,cabij->mab", w[i * cout_g:(i + 1) * cout_g],
                                                     win[i * cin_g:(i + 1) * cin_g])
    acc += (p["bias"].astype(np.int64) << p["bias_shift"])[:, None, None]
    y = requantize(acc, p["mult"][:, None, None], p["shift"][:, None, None]) + p["y_zp"]
    return saturate(_stored(y, d["y_hwc"]), out.dtype, p["lo"], p["hi"])


@kernel("pool2d")
def pool2d(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """Average or max over a KH x KW window of each channel of x [C, H, W].

    mean: acc = Σ (x − zp_x) over the n valid taps, y = clamp(zp_y + rq(acc, M[n − 1], s[n − 1])) with
    M[n−1]·2^−s[n−1] ≈ s_x / (s_y · n); with count_pad (also set when every window is full) n = KH·KW and the
    one multiplier is M[0]. max: acc = max (x − zp_x) over the valid taps, y = clamp(zp_y + rq(acc, M[0], s[0])).
    """
    p = step.params
    d = dict(zip(POOL2D_DIMS, (int(v) for v in p["dims"]), strict=True))
    x = _chw(inputs[0].astype(np.int64), d["c"], d["h_in"], d["w_in"], d["x_hwc"]) - p["x_zp"]
    low = np.iinfo(np.int64).min
    win, valid = _windows(x, d, low if d["is_max"] else 0)
    n = valid.sum(axis=(2, 3))  # [H_out, W_out]
    if d["is_max"]:
        acc = np.where(n[None] > 0, win.max(axis=(3, 4)), 0)
    else:
        acc = win.sum(axis=(3, 4))
    fixed = d["is_max"] or d["count_pad"]
    idx = np.zeros_like(n) if fixed else np.maximum(n, 1) - 1
    y = requantize(acc, p["mult"][idx][None], p["shift"][idx][None]) + p["y_zp"]
    return saturate(_stored(y, d["y_hwc"]), out.dtype, p["lo"], p["hi"])
