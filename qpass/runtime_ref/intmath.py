"""Integer semantics, written once: rounding, requantization, saturation, lookup tables.

runtime_ref's kernels and codegen's constants both come from here; the C templates mirror it and a
test per kernel proves them bit-for-bit equal.

Requantization by a real multiplier m > 0 is `M · 2^-shift` with M a 31-bit integer in [2^30, 2^31):

    requantize(acc) = (acc · M + 2^(shift−1)) >> shift        (int64 product, arithmetic shift)

i.e. round half up. Saturation clamps to the target type's range and is always explicit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from qpass.errors import SolverError

QMIN = {"int8": -128, "int16": -32768, "int32": -(2**31)}
QMAX = {"int8": 127, "int16": 32767, "int32": 2**31 - 1}
MAX_SHIFT = 62


def quantize_multiplier(m: float, bits: int = 31) -> tuple[int, int]:
    """m ≈ M · 2^-shift with 2^(bits−1) ≤ M < 2^bits and 1 ≤ shift ≤ 62 (M shrinks for tiny m).

    Fewer `bits` keep acc · M inside int64 when the accumulator itself is wider than 32 bits.
    """
    if not (m > 0 and math.isfinite(m)):
        raise SolverError(f"requantization multiplier {m!r} must be positive and finite")
    frac, exp = math.frexp(m)  # m = frac · 2^exp, frac in [0.5, 1)
    mult = round(frac * (1 << bits))
    if mult == 1 << bits:
        mult //= 2
        exp += 1
    shift = bits - exp
    if shift < 1:
        raise SolverError(f"requantization multiplier {m:g} is too large (>= 2^30)")
    if shift > MAX_SHIFT:
        mult = (mult + (1 << (shift - MAX_SHIFT - 1))) >> (shift - MAX_SHIFT)
        shift = MAX_SHIFT
    lg = int(mult).bit_length() - 1
    if mult == 1 << lg and shift - lg >= 1:  # an exact power of two: the same value as a pure shift
        return 1, int(shift - lg)
    return int(mult), int(shift)


def shared_shift_multipliers(ms: list[float], bits: int = 31) -> tuple[list[int], int]:
    """Several multipliers on one shift (for Add, LSTM gates): each M_i = round(m_i · 2^shift) < 2^bits."""
    top = max(ms)
    _, exp = math.frexp(top)
    shift = min(MAX_SHIFT, bits - exp)
    if shift >= 1 and round(top * (1 << shift)) >= 1 << bits:  # top rounds up to 2^bits: one bit less
        shift -= 1
    if shift < 1:
        raise SolverError(f"rescale factor {top:g} is too large")
    return [round(m * (1 << shift)) for m in ms], shift


def requantize(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """(acc · M + 2^(shift−1)) >> shift, elementwise, in int64 (|acc| < 2^31 is proven by the solver)."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (acc * mult + (np.int64(1) << (shift - 1))) >> shift


def saturate(x: np.ndarray, dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    lo = QMIN[dtype] if lo is None else lo
    hi = QMAX[dtype] if hi is None else hi
    return np.clip(x, lo, hi).astype(dtype)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float → integer, round half to even (as onnx QuantizeLinear), saturated."""
    q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return saturate(q, dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)


def build_lut(fn: Callable[[np.ndarray], np.ndarray], in_scale: float, in_zp: int, out_scale: float,
              out_zp: int, in_dtype: str = "int8", out_dtype: str = "int8") -> np.ndarray:
    """Table of fn over every int8 input code, indexed by q − QMIN (so 0..255)."""
    codes = np.arange(QMIN[in_dtype], QMAX[in_dtype] + 1, dtype=np.int64)
    real = fn((codes - in_zp) * in_scale)
    return quantize(real, out_scale, out_zp, out_dtype)


SOFTMAX_ONE = 1 << 15  # exp(0) in the softmax exp table (Q15)
SOFTMAX_RANGE = 10.4  # exp(-10.4) < 2^-15: beyond it the Q15 table is 0


def softmax_exp_table(in_scale: float, in_dtype: str = "int8") -> tuple[np.ndarray, int]:
    """E[k] = round(exp(−k·2^sh·s_in) · 2^15), k = 0..256, and sh: 257 entries span max − x up to ~10.4."""
    sh = 0
    if in_dtype != "int8":
        while (255 << sh) * in_scale < SOFTMAX_RANGE and sh < 15:
            sh += 1
    d = np.arange(257, dtype=np.float64) * (1 << sh)
    return np.rint(np.exp(-d * in_scale) * SOFTMAX_ONE).astype(np.int32), sh


def build_lut16(fn: Callable[[np.ndarray], np.ndarray], in_scale: float, out_scale: float, out_zp: int,
                out_dtype: str, sh: int = 8) -> np.ndarray:
    """257 samples of fn at x = (k − 128)·2^sh (int16 input, zero point 0), interpolated by the kernel (lut16).

    sh = 8 spans the whole int16 range; a smaller sh (lut16_shift) spans only the codes where fn still moves."""
    codes = (np.arange(257, dtype=np.float64) - 128) * (1 << sh)
    return quantize(fn(codes * in_scale), out_scale, out_zp, out_dtype)


def lut16_shift(table_of: Callable[[np.ndarray], np.ndarray]) -> int:
    """The least sh (0..8) for a 257-entry int16 table whose window [−128·2^sh, 128·2^sh] holds every change of the
    function: `table_of(codes)` gives the exact table value of each int16 code, and outside the window it must be
    the value at the window's edge (a saturated sigmoid or tanh). The step between samples is then 2^sh codes, not
    256: the interpolation error shrinks by (256 / 2^sh)^2."""
    codes = np.arange(-32768, 32768, dtype=np.int64)
    v = np.asarray(table_of(codes))
    for sh in range(8):
        lo, hi = -(128 << sh), 128 << sh
        if np.all(v[: lo + 32768] == v[lo + 32768]) and np.all(v[hi + 32768:] == v[hi + 32768]):
            return sh
    return 8


def lut16(q: np.ndarray, table: np.ndarray, sh: int = 8) -> np.ndarray:
    """Interpolated lookup of int16 codes q in a 257-entry table sampled every 2^sh codes (build_lut16): q is
    clamped to the window, u = q + 128·2^sh, k = u >> sh, and a + ((b − a)·frac + 2^(sh−1)) >> sh (round half up)."""
    table = np.asarray(table).astype(np.int64)
    u = np.clip(np.asarray(q, dtype=np.int64), -(128 << sh), 128 << sh) + (128 << sh)
    k, frac = u >> sh, u & ((1 << sh) - 1)
    a, b = table[k], table[np.minimum(k + 1, 256)]
    return a + (((b - a) * frac + ((1 << sh) >> 1)) >> sh)
