"""Generation-time constants and shapes of the per-layer conv2d and pool2d C kernels (the C's view of a step).

conv2d, with the input zero point folded into the bias as for conv1d (prepare.folded):

    interior pixel (every tap inside x):  acc = acc0[m] + sum_{c,ky,kx} x[...] * w[m,c,ky,kx]
    border pixel, taps written out:       acc = acc0[m] + sum_{c,ky,kx} (tap inside x ? x[...] : x_zp) * w[m,c,ky,kx]
    border pixel, taps in loops:          acc = accb[m] + sum_{valid taps} (x[...] - x_zp) * w[m,c,ky,kx]

with acc0 = bias*2^k - x_zp * sum(w) and accb = bias*2^k (a pad tap adds nothing), the same integer as runtime_ref.
The interior walks its taps as at most three nested loops (channel, kernel row, kernel column; the innermost ones
whose product is at most UNROLL are written out with literal offsets, splitting a long axis such as the 32 input
channels of a 1x1 conv into 8 passes of 4), computing two output channels (when a group
has an even count) times two neighbouring output pixels per pass: each x load serves two channels and each weight
load two pixels. A 1x1 stride-1 conv without pads is a matrix multiply: its pixels are walked as one flat row.
"""

from __future__ import annotations

import numpy as np

from qpass.codegen.prepare import folded, interior
from qpass.runtime_ref.intmath import QMAX, QMIN
from qpass.runtime_ref.kernels2d import CONV2D_DIMS, POOL2D_DIMS
from qpass.runtime_ref.program import Program, Step

UNROLL = 16  # taps written out per innermost pass
SPLIT = 4  # taps written out per pass of an axis too long to write out whole (code size)


def _dims(step: Step, names: tuple[str, ...]) -> dict[str, int]:
    return dict(zip(names, (int(v) for v in step.params["dims"]), strict=True))


def _layout(d: dict, c: int) -> dict:
    """Element strides of a channel (cs) and of a pixel (ps) in x, and of y (ycs, yps)."""
    hw_in, hw_out = d["h_in"] * d["w_in"], d["h_out"] * d["w_out"]
    cs, ps = (1, c) if d["x_hwc"] else (hw_in, 1)
    ycs, yps = (1, d["c_out"] if "c_out" in d else c) if d["y_hwc"] else (hw_out, 1)
    return {"cs": cs, "ps": ps, "ycs": ycs, "yps": yps}


def _flat(d: dict) -> dict:
    """A 1x1, stride-1, unpadded window reads pixel p for output pixel p: view H x W as one row of H*W pixels."""
    if (d["kh"], d["kw"], d["sh"], d["sw"], d["pt"], d["pl"]) == (1, 1, 1, 1, 0, 0) and d["h_in"] == d["h_out"]:
        return {**d, "h_in": 1, "h_out": 1, "w_in": d["h_in"] * d["w_in"], "w_out": d["h_out"] * d["w_out"]}
    return d


def conv2d_layer(program: Program, step: Step) -> dict:
    """Folded biases, the weight in walk order, interior ranges and the tap walk of one conv2d step."""
    d = _flat(_dims(step, CONV2D_DIMS))
    g = d["groups"]
    cin_g, cout_g = d["c_in"] // g, d["c_out"] // g
    lay = _layout(d, d["c_in"])
    w = np.asarray(step.params["weight"]).reshape(d["c_out"], cin_g, d["kh"], d["kw"])
    f = folded(program, step)
    # axes, outer to inner: (count, x stride, w stride, kernel row step, kernel column step)
    if d["x_hwc"]:  # walk ky, kx, then c (contiguous in x); the weight follows: [M, KH, KW, C]
        w = w.transpose(0, 2, 3, 1)
        axes = [(d["kh"], d["dh"] * d["w_in"] * lay["ps"], d["kw"] * cin_g, 1, 0),
                (d["kw"], d["dw"] * lay["ps"], cin_g, 0, 1), (cin_g, 1, 1, 0, 0)]
        wc, wky, wkx = 1, d["kw"] * cin_g, cin_g
    else:  # walk c, ky, kx; weight [M, C, KH, KW] as given
        axes = [(cin_g, lay["cs"], d["kh"] * d["kw"], 0, 0), (d["kh"], d["dh"] * d["w_in"], d["kw"], 1, 0),
                (d["kw"], d["dw"], 1, 0, 1)]
        wc, wky, wkx = d["kh"] * d["kw"], d["kw"], 1
    taps, loops = [(0, 0, 0, 0)], [a for a in axes if a[0] > 1]
    while loops:  # write out the innermost axes, the last one in part when it does not fit whole
        n, xs, ws, dy, dx = loops.pop()
        fits = [j for j in range(1, n + 1) if n % j == 0 and len(taps) * j <= UNROLL]
        part = fits[-1] if fits[-1] == n else max((j for j in fits if len(taps) * j <= SPLIT), default=1)
        taps = [(i * xs + t[0], i * ws + t[1], i * dy + t[2], i * dx + t[3]) for i in range(part) for t in taps]
        if part < n:
            loops.append((n // part, xs * part, ws * part, 0, 0))
            break
    dsp = (program.tensors[step.inputs[0]].dtype == "int8" and w.dtype == np.int8 and f["acc"] == "int32_t")
    oy = interior(d["h_in"], d["h_out"], d["kh"], d["sh"], d["dh"], d["pt"])
    ox = interior(d["w_in"], d["w_out"], d["kw"], d["sw"], d["dw"], d["pl"])
    border = oy != (0, d["h_out"]) or ox != (0, d["w_out"])
    bias = np.asarray(step.params["bias"]).astype(np.int64) << np.asarray(step.params["bias_shift"]).astype(np.int64)
    f = {**f, "weight": np.ascontiguousarray(w)}
    if border and loops:  # the looped border's start: bias*2^k, the pad taps add nothing
        f["accb"] = bias.astype(f["acc0"].dtype)
    return {"d": d, "f": f, **lay, "cin_g": cin_g, "cout_g": cout_g, "nm": 2 if cout_g % 2 == 0 else 1,
            "k": cin_g * d["kh"] * d["kw"], "wc": wc, "wky": wky, "wkx": wkx, "gs": cin_g * lay["cs"],
            "loops": [{"n": n, "xs": xs, "ws": ws} for n, xs, ws, _, _ in loops],
            "taps": _quads([t[:2] for t in taps], dsp),
            "taps1": [{"x": xo, "w": wo, "ky": ky, "kx": kx} for xo, wo, ky, kx in taps],
            "oy_lo": oy[0], "oy_hi": oy[1], "ox_lo": ox[0], "ox_hi": ox[1], "border": border,
            "all_interior": not border, "px": d["sw"] * lay["ps"],
            "layout": f"{'[H, W, C]' if d['x_hwc'] else '[C, H, W]'} -> {'[H, W, C]' if d['y_hwc'] else '[C, H, W]'}"}


def pool2d_layer(program: Program, step: Step) -> dict:
    """Strides of one pool2d step, and whether its rescale fits 32-bit arithmetic (`narrow`): for every window
    count n, |acc| * mult[n] + 2^(shift[n]-1) < 2^31 with |acc| <= n * span (mean) or span (max)."""
    d = _dims(step, POOL2D_DIMS)
    x = program.tensors[step.inputs[0]]
    span = max(QMAX[x.dtype] - int(step.params["x_zp"]), int(step.params["x_zp"]) - QMIN[x.dtype])
    fixed = bool(d["is_max"] or d["count_pad"])
    mult, shift = (np.asarray(step.params[k]).astype(np.int64) for k in ("mult", "shift"))
    counts = np.full(mult.size, d["kh"] * d["kw"]) if d["count_pad"] else np.arange(1, mult.size + 1)
    bound = span if d["is_max"] else counts * span
    narrow = bool(np.all(shift <= 30) and np.all(bound * mult + (np.int64(1) << (shift - 1)) < 2**31))
    return {"d": d, **_layout(d, d["c"]), "fixed": fixed, "narrow": narrow,
            "layout": f"{'[H, W, C]' if d['x_hwc'] else '[C, H, W]'} -> {'[H, W, C]' if d['y_hwc'] else '[C, H, W]'}"}


def _quads(taps: list[tuple[int, int]], dsp: bool) -> list[dict]:
    """Taps, with each run of four whose weight offsets are consecutive and whose x offsets step evenly marked as a
    group for the Cortex-M4 (the portable C does the four taps):

    - x step 1 (`quad`, a kernel row): one word of x and of w, two SMLADs (bytes 0,2 and 1,3) per output;
    - x step S (`cquad`, four input channels of [C, H, W]), for two neighbouring pixels: the halfwords of channels c
      and c+2 make one word whose bytes 0,2 are pixel p and bytes 1,3 pixel p+1 (likewise c+1, c+3), two SMLADs
      per output.
    """
    out, i = [], 0
    while i < len(taps):
        run = taps[i:i + 4] if dsp else []
        step = run[1][0] - run[0][0] if len(run) == 4 else 0
        if step and all(run[j] == (run[0][0] + j * step, run[0][1] + j) for j in range(4)):
            out.append({"x": run[0][0], "w": run[0][1], "quad": step == 1, "cquad": step != 1, "xs": step})
            i += 4
        else:
            out.append({"x": taps[i][0], "w": taps[i][1], "quad": False, "cquad": False, "xs": 0})
            i += 1
    return out
