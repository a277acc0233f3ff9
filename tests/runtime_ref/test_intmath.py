"""runtime_ref.intmath: the integer semantics every kernel (numpy and C) is built on."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from qpass.errors import SolverError
from qpass.runtime_ref.intmath import (
    MAX_SHIFT,
    QMAX,
    QMIN,
    SOFTMAX_ONE,
    build_lut,
    build_lut16,
    lut16,
    lut16_shift,
    quantize,
    quantize_multiplier,
    requantize,
    shared_shift_multipliers,
    softmax_exp_table,
)


def _value(mult: int, shift: int) -> Fraction:
    return Fraction(mult, 2**shift)


# -- quantize_multiplier ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [31, 24, 16])
def test_quantize_multiplier_random_range_shift_and_error(bits):
    rng = np.random.default_rng(bits)
    ms = 10.0 ** rng.uniform(-9, 3, size=4000)  # log-uniform in [1e-9, 1e3)
    for m in [*ms.tolist(), 1e-9, 999.999999, 0.75, 1 - 2**-40, 3.0, 1.1]:
        mult, shift = quantize_multiplier(m, bits) if bits != 31 else quantize_multiplier(m)
        assert isinstance(mult, int) and isinstance(shift, int)
        assert 1 <= shift <= MAX_SHIFT, (m, shift)
        assert 2 ** (bits - 1) <= mult < 2**bits, (m, mult)
        rel = abs(_value(mult, shift) - Fraction(m)) / Fraction(m)
        assert rel < Fraction(1, 2 ** (bits - 1)), (m, mult, shift, float(rel))
        if bits == 31:
            assert rel < Fraction(1, 2**30)


@pytest.mark.parametrize(("m", "expected"), [
    (0.75, (3 * 2**29, 31)),
    (1.0, (2**30, 30)),  # a shift of 0 is not allowed, so 1.0 keeps a multiplier
    (1 - 2**-40, (2**30, 30)),  # frac rounds up to 2^31: renormalized, not an int32 overflow
    (2.0**30 - 1, (2**31 - 2, 1)),  # the largest multiplier that still has a shift of 1
    (0.5, (1, 1)),  # powers of two below 1 are a pure shift (mult 1)
    (2.0**-7, (1, 7)),
    (2.0**-40, (1, 40)),
])
def test_quantize_multiplier_exact_values(m, expected):
    assert quantize_multiplier(m) == expected
    assert _value(*expected) == Fraction(m) or m == 1 - 2**-40


def test_quantize_multiplier_tiny_caps_shift_and_shrinks_multiplier():
    m = 1e-12
    mult, shift = quantize_multiplier(m)
    assert shift == MAX_SHIFT
    assert 0 < mult < 2**30
    assert abs(_value(mult, shift) - Fraction(m)) <= Fraction(1, 2**shift)  # within one unit of the last place


@pytest.mark.parametrize("m", [0.0, -1.0, -1e-9, math.nan, math.inf, 2.0**30, 1e12])
def test_quantize_multiplier_rejects(m):
    with pytest.raises(SolverError):
        quantize_multiplier(m)


# -- requantize ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("acc", "expected"), [
    (1, 1), (3, 2), (5, 3),  # +0.5 → 1, +1.5 → 2, +2.5 → 3: half up, not half even
    (-1, 0), (-3, -1), (-5, -2),  # −0.5 → 0, −1.5 → −1, −2.5 → −2: half up (towards +inf)
    (2, 1), (-2, -1), (0, 0),
    (4, 2), (-4, -2), (7, 4), (-7, -3),
])
def test_requantize_rounds_half_up(acc, expected):
    # multiplier 0.5 written both ways: M = 2^30 with shift 31, and the pure shift M = 1, shift 1
    assert int(requantize(np.array([acc]), 2**30, 31)[0]) == expected
    assert int(requantize(np.array([acc]), 1, 1)[0]) == expected


def test_requantize_matches_exact_rational_rounding():
    rng = np.random.default_rng(1)
    n = 20000
    acc = rng.integers(-(2**31) + 1, 2**31, size=n, dtype=np.int64)
    acc[:6] = [-(2**31) + 1, 2**31 - 1, -1, 1, 0, -(2**30)]
    mult = rng.integers(0, 2**31, size=n, dtype=np.int64)
    mult[:6] = 2**31 - 1
    shift = rng.integers(1, MAX_SHIFT + 1, size=n, dtype=np.int64)
    shift[:3] = [1, MAX_SHIFT, 31]
    got = requantize(acc, mult, shift)
    assert got.dtype == np.int64
    for a, m, s, g in zip(acc.tolist(), mult.tolist(), shift.tolist(), got.tolist(), strict=True):
        assert g == math.floor(Fraction(a * m, 2**s) + Fraction(1, 2)), (a, m, s, g)


def test_requantize_broadcasts_per_channel_parameters():
    acc = np.arange(-12, 12, dtype=np.int64).reshape(4, 6)
    mult = np.array([2**30, 2**30, 3 * 2**29, 2**31 - 1, 2**30, 1], dtype=np.int32)
    shift = np.array([31, 30, 31, 31, 1, 2], dtype=np.int32)
    got = requantize(acc, mult, shift)
    for j in range(6):
        assert np.array_equal(got[:, j], requantize(acc[:, j], int(mult[j]), int(shift[j])))
    assert np.array_equal(got[:, 1], acc[:, 1])  # M = 2^30 with shift 30 is exactly 1
    assert np.array_equal(got[:, 4], acc[:, 4] * 2**29)


# -- shared_shift_multipliers ----------------------------------------------------------------------


def test_shared_shift_multipliers_random():
    rng = np.random.default_rng(2)
    for _ in range(3000):
        k = int(rng.integers(1, 4))
        ms = (10.0 ** rng.uniform(-6, 3, size=k)).tolist()
        mults, shift = shared_shift_multipliers(ms)
        assert len(mults) == k and all(isinstance(v, int) for v in mults)
        assert 1 <= shift <= MAX_SHIFT
        assert all(0 <= v < 2**31 for v in mults), (ms, mults, shift)
        assert 2**30 <= max(mults)  # the largest multiplier uses the full 31 bits
        for m, v in zip(ms, mults, strict=True):
            assert abs(_value(v, shift) - Fraction(m)) <= Fraction(1, 2 ** (shift + 1))


def test_shared_shift_multipliers_known_values():
    assert shared_shift_multipliers([1.0, 0.5]) == ([2**30, 2**29], 30)
    assert shared_shift_multipliers([0.25, 0.0]) == ([2**30, 0], 32)
    assert shared_shift_multipliers([1.0, 0.5], 16) == ([2**15, 2**14], 15)


def test_shared_shift_multipliers_never_reach_2_pow_bits():
    for ms in ([1 - 2**-40], [0.75, 1 - 2**-35], [2.0**-10 * (1 - 2**-33)]):
        mults, shift = shared_shift_multipliers(ms)
        assert all(v < 2**31 for v in mults), (ms, mults, shift)


@pytest.mark.parametrize("ms", [[2.0**30], [1.0, 2.0**31], [1e12]])
def test_shared_shift_multipliers_rejects_too_large(ms):
    with pytest.raises(SolverError):
        shared_shift_multipliers(ms)


# -- build_lut / build_lut16 -----------------------------------------------------------------------


def test_build_lut_identity_is_indexed_by_q_minus_qmin():
    table = build_lut(lambda x: x, 0.05, 7, 0.05, 7)
    assert table.shape == (256,) and table.dtype == np.int8
    assert np.array_equal(table, np.arange(-128, 128))


def test_build_lut_rounds_half_to_even_and_saturates():
    table = build_lut(lambda x: x, 1.0, 0, 2.0, 0)  # out = q / 2 exactly: a tie for every odd q
    q = np.arange(-128, 128)
    assert table[1 + 128] == 0 and table[3 + 128] == 2 and table[5 + 128] == 2
    assert table[-1 + 128] == 0 and table[-3 + 128] == -2 and table[-5 + 128] == -2
    assert np.array_equal(table, np.rint(q / 2).astype(np.int8))
    steep = build_lut(lambda x: 1000.0 * x, 1.0, 0, 1.0, 3)  # saturates at both ends instead of wrapping
    assert steep[0] == QMIN["int8"] and steep[255] == QMAX["int8"] and steep[128] == 3
    assert np.all(np.diff(steep.astype(np.int32)) >= 0)


@pytest.mark.parametrize(("fn", "out_scale", "out_zp", "out_dtype"), [
    (lambda x: 1.0 / (1.0 + np.exp(-x)), 1 / 256, -128, "int8"),
    (np.tanh, 1 / 128, 0, "int8"),
    (np.tanh, 1 / 32768, 0, "int16"),
])
def test_build_lut_matches_formula(fn, out_scale, out_zp, out_dtype):
    in_scale, in_zp = 0.0625, -5
    table = build_lut(fn, in_scale, in_zp, out_scale, out_zp, "int8", out_dtype)
    assert table.shape == (256,) and table.dtype == np.dtype(out_dtype)
    q = np.arange(-128, 128)
    expected = np.clip(np.rint(fn((q - in_zp) * in_scale) / out_scale) + out_zp, QMIN[out_dtype], QMAX[out_dtype])
    assert np.array_equal(table.astype(np.int64), expected.astype(np.int64))
    assert np.all(np.diff(table.astype(np.int32)) >= 0)  # all three are monotone


@pytest.mark.parametrize("out_dtype", ["int8", "int16"])
def test_build_lut16_samples_every_256th_code(out_dtype):
    in_scale, out_scale = 2.0**-11, 1 / (QMAX[out_dtype] + 1)
    table = build_lut16(np.tanh, in_scale, out_scale, 0, out_dtype)
    assert table.shape == (257,) and table.dtype == np.dtype(out_dtype)
    x = (np.arange(257) * 256 - 32768) * in_scale
    expected = np.clip(np.rint(np.tanh(x) / out_scale), QMIN[out_dtype], QMAX[out_dtype])
    assert np.array_equal(table.astype(np.int64), expected.astype(np.int64))
    assert table[128] == 0 and table[0] == QMIN[out_dtype] and table[256] == QMAX[out_dtype]  # saturated ends


@pytest.mark.parametrize(("fn", "in_scale", "sh"), [(np.tanh, 2.0**-9, 5), (np.tanh, 2.0**-12, 8),
                                                    (lambda v: 1 / (1 + np.exp(-v)), 2.0**-8, 5),
                                                    (lambda v: 1 / (1 + np.exp(-v)), 0.01, 4)])
def test_lut16_window_holds_every_change_and_interpolates_closer(fn, in_scale, sh):
    """lut16_shift picks the least window outside which the quantized function is flat (a wide input scale: a
    narrow window); lut16 over that window is exact beyond it and closer to the function inside than the table
    over the whole int16 range (sh = 8), which it equals when the window is the whole range."""
    out_scale = 2.0**-15
    exact = lambda q: quantize(fn(q * in_scale), out_scale, 0, "int16")  # noqa: E731
    assert lut16_shift(exact) == sh
    codes = np.arange(-32768, 32768)
    want = exact(codes).astype(np.int64)
    windowed = lut16(codes, build_lut16(fn, in_scale, out_scale, 0, "int16", sh), sh)
    full = lut16(codes, build_lut16(fn, in_scale, out_scale, 0, "int16"))
    outside = np.abs(codes) > (128 << sh)
    assert np.array_equal(windowed[outside], want[outside])
    err_w, err_f = np.abs(windowed - want).max(), np.abs(full - want).max()
    assert np.array_equal(windowed, full) if sh == 8 else err_w * 8 < err_f, (err_w, err_f)


# -- softmax_exp_table -----------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1e-4, 0.01, 0.1, 0.5, 1.0, 16.0])
def test_softmax_exp_table_int8(s):
    e, sh = softmax_exp_table(s)
    assert sh == 0
    assert e.shape == (257,) and e.dtype == np.int32
    assert int(e[0]) == SOFTMAX_ONE == 2**15
    assert np.all(np.diff(e) <= 0) and np.all(e >= 0)
    assert e.tolist() == [round(math.exp(-d * s) * 2**15) for d in range(257)]
    assert int(e.max()) * 256 < 2**31 and int(e.max()) * 65535 < 2**31  # the kernel's worst case fits int32


@pytest.mark.parametrize("s", [2.0**-15, 2.0**-12, 1e-3, 0.01, 0.5])
def test_softmax_exp_table_int16_spans_the_useful_range(s):
    e, sh = softmax_exp_table(s, "int16")
    assert e.shape == (257,) and int(e[0]) == SOFTMAX_ONE
    assert 0 <= sh <= 15
    # the smallest step that lets 255 entries reach exp(-10.4) (beyond which Q15 is 0), or the cap
    assert sh == 15 or (255 << sh) * s >= 10.4
    assert sh == 0 or (255 << (sh - 1)) * s < 10.4
    assert e.tolist() == [round(math.exp(-d * (1 << sh) * s) * 2**15) for d in range(257)]
