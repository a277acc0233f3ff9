"""Every integer kernel: the generated C equals runtime_ref bit for bit on random integers.

Each case builds a tiny `Program` by hand with the params codegen/lower.py would give it, runs hundreds
of random samples (plus all-min / all-max / alternating extremes) through `runtime_ref.run` and through
the C from `codegen.emit.render`, compiled by `codegen.build.compile_and_run` with -Werror and all
warnings, one compile per case. The parametrization walks `runtime_ref.kernels.KERNELS`: a kernel that
is registered without a case here fails, so every new kernel gets one.
"""

from __future__ import annotations

import math
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qpass.codegen.arena import plan_arena
from qpass.codegen.build import WARN_FLAGS, compile_and_run
from qpass.codegen.emit import CTYPE, render, write
from qpass.codegen.lower import pool_multipliers
from qpass.runtime_ref import Program, QTensor, Step, run
from qpass.runtime_ref.intmath import (
    MAX_SHIFT,
    QMAX,
    QMIN,
    build_lut,
    build_lut16,
    lut16_shift,
    quantize_multiplier,
    shared_shift_multipliers,
    softmax_exp_table,
)
from qpass.runtime_ref.kernels import KERNELS

N_SAMPLES = 300
INT32_MAX = 2**31 - 1
SOFTMAX_OUT = {"int8": (256, -128), "int16": (32768, 0)}


# -- helpers --------------------------------------------------------------------------------------


def _t(tid: str, shape: tuple[int, ...], scale: float = 0.05, zp: int = 0, alias_of: str | None = None,
       dtype: str = "int8") -> QTensor:
    return QTensor(tid, shape, dtype, scale, zp, source=f"test/{tid}", alias_of=alias_of)


def _identity_linear(src: QTensor, dst: str) -> Step:
    """y = x exactly: w = I, bias 0, M = 2^30 with shift 30."""
    n = src.size
    return Step("linear", [src.id], [dst], dict(
        weight=np.eye(n, dtype=np.int8), bias=np.zeros(n, dtype=np.int32), bias_shift=np.zeros(n, dtype=np.int32),
        mult=np.full(n, 2**30, np.int32), shift=np.full(n, 30, np.int32), acc_bits=32, acc_bound=QMAX[src.dtype] + 1,
        x_zp=0, y_zp=0, lo=QMIN[src.dtype], hi=QMAX[src.dtype], in_features=n, out_features=n, rows=1),
        origin="test/identity")


def _program(name: str, tensors: list[QTensor], steps: list[Step], constants: dict[str, np.ndarray] | None = None,
             output: str | None = None) -> Program:
    """The program as given, plus a trailing identity `linear` when it has no arena tensor or no linear step.

    model.c.j2 does not compile a program without arena tensors or without a linear step (see
    test_program_without_arena_compiles and test_program_without_linear_compiles), so the kernel under test
    writes into the arena and the identity linear copies its result to the caller's output.
    """
    program = Program(name, {t.id: t for t in tensors}, steps, tensors[0].id, output or tensors[-1].id,
                      constants or {})
    if plan_arena(program).size == 0 or all(s.kernel != "linear" for s in program.steps):
        out = program.tensors[program.output]
        copy = QTensor("t_out", out.shape, out.dtype, out.scale, out.zero_point, source="test/out")
        program.tensors[copy.id] = copy
        program.steps.append(_identity_linear(out, copy.id))
        program.output = copy.id
        assert plan_arena(program).size > 0
    return program


def _samples(rng: np.random.Generator, size: int, dtype: str = "int8", n: int = N_SAMPLES) -> np.ndarray:
    lo, hi = QMIN[dtype], QMAX[dtype]
    x = rng.integers(lo, hi + 1, size=(n, size), dtype=np.int64)
    x[0] = lo
    x[1] = hi
    x[2] = np.where(np.arange(size) % 2 == 0, lo, hi)
    x[3] = 0
    x[4:20] = rng.choice(np.array([lo, lo + 1, -1, 0, 1, hi - 1, hi]), size=(16, size))  # extremes mixed
    if dtype == "int16":  # also small values, where int16 models actually live
        x[20:60] = rng.integers(-300, 300, size=(40, size))
    return x.astype(dtype)


def _check_c_equals_ref(program: Program, x: np.ndarray, out_dir: Path, cc: str = "gcc", min_distinct: int = 2
                        ) -> np.ndarray:
    ref = np.stack([np.asarray(run(program, s)).reshape(-1) for s in x])
    assert len(np.unique(ref)) >= min_distinct, "degenerate case: the reference output barely varies"
    gen = render(program, source=f"test {program.name}")
    c_file, h_file = write(gen, out_dir, program.name)
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    got = compile_and_run(c_file, h_file, program.name, CTYPE[tin.dtype], CTYPE[tout.dtype], x, tout.dtype,
                          tout.size, cc=cc)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    bad = np.argwhere(got != ref)
    if len(bad):
        i, j = bad[0]
        pytest.fail(f"{len(bad)} values differ ({len(np.unique(bad[:, 0]))} samples); first: sample {i} "
                    f"element {j}: C {got[i, j]} vs runtime_ref {ref[i, j]}; input {x[i].tolist()}")
    return ref


def _requant(rng, acc_std: np.ndarray, bound: int, y_dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Multipliers that spread a typical accumulator over the output range; the accumulator width and
    multiplier bits as lower._requant_params derives them from the proven bound."""
    acc_bits, bits = (32, 31) if bound < 2**31 else (64, min(31, 62 - bound.bit_length()))
    pairs = [quantize_multiplier(float(0.4 * QMAX[y_dtype] / max(s, 1.0) * rng.uniform(0.5, 2.0)), bits)
             for s in acc_std]
    return (np.array([m for m, _ in pairs], dtype=np.int32), np.array([s for _, s in pairs], dtype=np.int32),
            acc_bits)


def _bound(weight: np.ndarray, bias: np.ndarray, bias_shift: np.ndarray, x_dtype: str, x_zp: int) -> int:
    span = max(QMAX[x_dtype] - x_zp, x_zp - QMIN[x_dtype])
    n = weight.shape[0]
    b_abs = np.abs(bias.astype(np.int64)) << bias_shift.astype(np.int64)
    return int((b_abs + np.abs(weight.reshape(n, -1).astype(np.int64)).sum(axis=1) * span).max())


def _weights(rng, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    w = rng.integers(QMIN[dtype] + 1, QMAX[dtype] + 1, size=shape)
    w.reshape(shape[0], -1)[0] = QMAX[dtype]
    return w.astype(dtype)


# -- linear -----------------------------------------------------------------------------------------


def _linear_step(rng, src: QTensor, dst: QTensor, *, k: int, n: int, w_dtype: str = "int8", lo=None, hi=None,
                 weight=None, bias=None, bias_shift=None, mult=None, shift=None) -> Step:
    rows = src.size // k
    weight = _weights(rng, (n, k), w_dtype) if weight is None else np.asarray(weight).astype(w_dtype)
    bias = rng.integers(-40000, 40000, size=n) if bias is None else np.asarray(bias)
    bias_shift = np.zeros(n, dtype=np.int32) if bias_shift is None else np.asarray(bias_shift)
    bound = _bound(weight, bias, bias_shift, src.dtype, src.zero_point)
    if mult is None:
        xs = rng.integers(QMIN[src.dtype], QMAX[src.dtype] + 1, size=(64, k)) - src.zero_point
        acc = xs @ weight.astype(np.int64).T + (bias.astype(np.int64) << bias_shift)
        mult, shift, acc_bits = _requant(rng, acc.std(axis=0), bound, dst.dtype)
    else:
        assert bound < 2**31, "explicit multipliers are for int32 accumulators"
        acc_bits = 32
    return Step("linear", [src.id], [dst.id], dict(
        weight=weight, bias=np.asarray(bias, dtype=np.int32), bias_shift=np.asarray(bias_shift, dtype=np.int32),
        mult=np.asarray(mult, dtype=np.int32), shift=np.asarray(shift, dtype=np.int32), acc_bits=acc_bits,
        acc_bound=bound, x_zp=src.zero_point, y_zp=dst.zero_point,
        lo=QMIN[dst.dtype] if lo is None else lo, hi=QMAX[dst.dtype] if hi is None else hi,
        in_features=k, out_features=n, rows=rows), origin="test/Gemm")


def _linear_program(rng, name: str, *, rows=1, k=12, n=7, x_dtype="int8", w_dtype="int8", y_dtype="int8",
                    x_zp=None, y_zp=None, **kw) -> Program:
    x_zp = int(rng.integers(-20, 20)) if x_zp is None else x_zp
    y_zp = int(rng.integers(-30, 30)) if y_zp is None else y_zp
    x = _t("t0", (rows, k), zp=x_zp, dtype=x_dtype)
    y = _t("t1", (rows, n), zp=y_zp, dtype=y_dtype)
    return _program(name, [x, y], [_linear_step(rng, x, y, k=k, n=n, w_dtype=w_dtype, **kw)])


def linear_random(rng):
    return _linear_program(rng, "k_linear")


def linear_rows(rng):
    return _linear_program(rng, "k_linear_rows", rows=4, k=5, n=3, x_zp=-3, y_zp=9)


def linear_extremes(rng):
    """x_zp −128, y_zp 127, weights at ±127/−128, bias at the int32 edge, shifts 1..62, M up to 2^31−1."""
    k, n = 16, 10
    weight = rng.integers(-128, 128, size=(n, k))
    weight[0], weight[1], weight[2] = 127, -128, np.where(np.arange(k) % 2 == 0, -128, 127)
    edge = INT32_MAX - k * 255 * 128
    bias = rng.integers(-edge, edge + 1, size=n)
    bias[0], bias[1], bias[3] = edge, -edge, 0
    mult = np.array([INT32_MAX, 2**30, INT32_MAX, 2**30, INT32_MAX, 1, 0, 0, 0, 0])
    shift = np.array([1, 1, MAX_SHIFT, 31, 40, 1, 0, 0, 0, 0])
    for j in range(6, n):  # the rest land inside the int8 range: |bias| ~ 1e9 needs shifts around 55
        mult[j], shift[j] = quantize_multiplier(float(rng.uniform(20, 120)) / max(1, abs(int(bias[j]))))
    return _linear_program(rng, "k_linear_ext", k=k, n=n, x_zp=-128, y_zp=127, weight=weight, bias=bias,
                           mult=mult, shift=shift)


def linear_tiny_multiplier(rng):
    """quantize_multiplier of very small m: shift capped at 62 and a shrunken M."""
    k, n = 8, 4
    pairs = [quantize_multiplier(m) for m in (1e-12, 3e-11, 1e-9, 2e-6)]
    assert max(p[1] for p in pairs) == MAX_SHIFT
    edge = INT32_MAX - k * 255 * 128
    return _linear_program(rng, "k_linear_tiny", k=k, n=n, x_zp=5, y_zp=-7,
                           bias=np.array([edge, -edge, edge // 3, -(edge // 7)]),
                           mult=[p[0] for p in pairs], shift=[p[1] for p in pairs])


def linear_fused_clamp(rng):
    """A ReLU fused into the linear (as lower._fuse_clamps does): narrowed lo/hi, the clamp output a view."""
    k, n, y_zp = 10, 9, -40
    x, y = _t("t0", (1, k)), _t("t1", (1, n), zp=y_zp)
    step = _linear_step(rng, x, y, k=k, n=n, lo=y_zp, hi=90)
    return _program("k_linear_relu", [x, y, _t("t2", (1, n), zp=y_zp, alias_of="t1")], [step], output="t2")


def linear_x16(rng):
    return _linear_program(rng, "k_linear_x16", k=9, n=5, x_dtype="int16", x_zp=0, y_zp=3)


def linear_w16(rng):
    return _linear_program(rng, "k_linear_w16", k=11, n=6, w_dtype="int16", x_zp=-6)


def linear_x16_w16_acc64(rng):
    """int16 x int16: the bound passes 2^31, so an int64 accumulator, fewer multiplier bits, a bias shift."""
    n = 5
    return _linear_program(rng, "k_linear_16x16", k=7, n=n, x_dtype="int16", w_dtype="int16", y_dtype="int16",
                           x_zp=0, y_zp=0, bias=rng.integers(-(2**31), 2**31 - 1, size=n),
                           bias_shift=rng.integers(0, 8, size=n))


def linear_pow2(rng):  # every multiplier 1: the C rescales with 32-bit shifts only
    return _linear_program(rng, "k_lin_pow2", rows=3, k=10, n=5, x_zp=-9, y_zp=4, mult=np.ones(5, np.int32),
                           shift=np.array([9, 10, 11, 12, 13]))


def linear_out16(rng):
    return _linear_program(rng, "k_linear_y16", k=8, n=6, y_dtype="int16", y_zp=0)


# -- add --------------------------------------------------------------------------------------------


def _add_params(rng, *, n: int, b_n: int, a_zp: int, b_zp: int, y_zp: int, ratios=None, y_dtype="int8", lo=None,
                hi=None, mults=None, shift=None, inner=1) -> dict:
    if mults is None:
        ratios = ratios or [float(10.0 ** rng.uniform(-1, 0.4)), float(10.0 ** rng.uniform(-1, 0.4))]
        mults, shift = shared_shift_multipliers(ratios)
    return dict(a_zp=a_zp, b_zp=b_zp, a_mult=int(mults[0]), b_mult=int(mults[1]), shift=int(shift), y_zp=y_zp,
                n=n, b_n=b_n, inner=inner, lo=QMIN[y_dtype] if lo is None else lo,
                hi=QMAX[y_dtype] if hi is None else hi)


def add_per_channel(rng):
    """b holds one value per channel of a [1, C, L] tensor: element i reads b[(i / L) % C]."""
    shape, n, c = (1, 5, 7), 35, 5
    b = rng.integers(-128, 128, size=(c, 1)).astype(np.int8)
    p = _add_params(rng, n=n, b_n=c, a_zp=-2, b_zp=0, y_zp=9, inner=7)
    tensors = [_t("t0", shape), _t("t1", (c, 1)), _t("t2", shape)]
    return _program("k_add_chan", tensors, [Step("add", ["t0", "t1"], ["t2"], p)], constants={"t1": b}, output="t2")


# -- mul --------------------------------------------------------------------------------------------


def _mul_program(rng, name: str, shape: tuple[int, ...], channels: int, inner: int, x_dtype="int8", w_dtype="int8",
                 y_dtype="int8") -> Program:
    w = rng.integers(QMIN[w_dtype] + 1, QMAX[w_dtype] + 1, size=channels).astype(w_dtype)
    ms = [quantize_multiplier(float(10.0 ** rng.uniform(-4, -1.5))) for _ in range(channels)]
    n = int(np.prod(shape))
    p = dict(weight=w, mult=np.array([m for m, _ in ms], dtype=np.int32),
             shift=np.array([sh for _, sh in ms], dtype=np.int32), channels=channels, inner=inner, x_zp=3,
             y_zp=-4 if y_dtype == "int8" else 0, lo=QMIN[y_dtype], hi=QMAX[y_dtype])
    tensors = [_t("t0", shape, dtype=x_dtype), _t("t1", shape, dtype=y_dtype)]
    assert n % inner == 0
    return _program(name, tensors, [Step("mul", ["t0"], ["t1"], p)])


def mul_per_channel(rng):
    return _mul_program(rng, "k_mul_chan", (1, 6, 5), channels=6, inner=5)


def mul_channel_last(rng):
    return _mul_program(rng, "k_mul_last", (1, 4, 6), channels=6, inner=1)


def mul_int16(rng):
    return _mul_program(rng, "k_mul_16", (1, 3, 4), channels=3, inner=4, x_dtype="int16", w_dtype="int16",
                        y_dtype="int16")


def _concat_program(rng, name: str, shapes: list[tuple[int, ...]], axis: int, dtype: str = "int8") -> Program:
    """Two arena inputs (a permuting LUT of the input, and the input itself) joined along `axis`."""
    out_shape = list(shapes[0])
    out_shape[axis] = sum(sh[axis] for sh in shapes)
    n = int(np.prod(shapes[0]))
    tensors = [_t("t0", shapes[0], dtype=dtype), _t("t1", shapes[0], dtype=dtype),
               _t("t2", shapes[1], alias_of="t0", dtype=dtype), _t("t3", tuple(out_shape), dtype=dtype)]
    inner = int(np.prod(out_shape[axis + 1:]))
    chunks = [sh[axis] * inner for sh in shapes]
    steps = []
    if dtype == "int8":
        steps.append(_lut_step(rng, "t0", "t1", n))
    else:
        steps.append(Step("clamp", ["t0"], ["t1"], dict(lo=-1000, hi=2000, n=n)))
    steps.append(Step("concat", ["t1", "t2"], ["t3"], dict(axis=axis, outer=int(np.prod(out_shape[:axis])),
                                                           out_chunk=sum(chunks), chunks=chunks,
                                                           offsets=[0, chunks[0]])))
    return _program(name, tensors, steps, output="t3")


def concat_last_axis(rng):
    return _concat_program(rng, "k_concat_last", [(2, 5), (2, 5)], axis=1)


def concat_middle_axis(rng):
    return _concat_program(rng, "k_concat_mid", [(1, 3, 4), (1, 3, 4)], axis=1)


def concat_int16(rng):
    return _concat_program(rng, "k_concat_16", [(3, 4), (3, 4)], axis=0, dtype="int16")


def _lut_step(rng, src: str, dst: str, n: int) -> Step:
    """A random permutation table: gives add a second operand that varies per sample."""
    return Step("lut", [src], [dst], dict(table=(rng.permutation(256) - 128).astype(np.int8), n=n))


def add_const_full(rng):
    shape, n = (2, 12), 24
    b = rng.integers(-128, 128, size=shape).astype(np.int8)
    b.flat[:2] = [-128, 127]
    p = _add_params(rng, n=n, b_n=n, a_zp=3, b_zp=-11, y_zp=5)
    tensors = [_t("t0", shape), _t("t1", shape), _t("t2", shape)]
    return _program("k_add_full", tensors, [Step("add", ["t0", "t1"], ["t2"], p)], constants={"t1": b}, output="t2")


def add_broadcast_one(rng):
    shape, n = (30,), 30
    p = _add_params(rng, n=n, b_n=1, a_zp=-128, b_zp=127, y_zp=0)
    tensors = [_t("t0", shape), _t("t1", (1,)), _t("t2", shape)]
    return _program("k_add_bcast", tensors, [Step("add", ["t0", "t1"], ["t2"], p)],
                    constants={"t1": np.array([-128], dtype=np.int8)}, output="t2")


def add_pow2_negative(rng):
    """A pow2 plan's residual add: multipliers 2^29 and -2^27 on shift 30; the C rescales in 32 bits."""
    shape, n = (20,), 20
    p = {**_add_params(rng, n=n, b_n=n, a_zp=-128, b_zp=5, y_zp=-3), "a_mult": 2**29, "b_mult": -(2**27), "shift": 30}
    tensors = [_t("t0", shape), _t("t1", shape), _t("t2", shape)]
    return _program("k_add_pow2_neg", tensors, [_lut_step(rng, "t0", "t1", n), Step("add", ["t0", "t1"], ["t2"], p)])


def add_from_arena(rng):
    """b is an intermediate (a lut of the input) in the arena, so a and b both vary per sample."""
    shape, n = (20,), 20
    p = _add_params(rng, n=n, b_n=n, a_zp=-7, b_zp=2, y_zp=-3)
    tensors = [_t("t0", shape), _t("t1", shape), _t("t2", shape)]
    return _program("k_add_arena", tensors, [_lut_step(rng, "t0", "t1", n), Step("add", ["t0", "t1"], ["t2"], p)])


def add_pow2(rng):  # power-of-two scales (a8w8-pow2): M = 2^30, 2^29 on shift 31 reduce to 2, 1 on shift 2
    shape, n = (16,), 16
    p = _add_params(rng, n=n, b_n=n, a_zp=-5, b_zp=12, y_zp=-1, ratios=[0.5, 0.25])
    tensors = [_t("t0", shape), _t("t1", shape), _t("t2", shape)]
    return _program("k_add_pow2", tensors, [_lut_step(rng, "t0", "t1", n), Step("add", ["t0", "t1"], ["t2"], p)])


def add_same_input(rng):
    shape, n = (16,), 16
    p = _add_params(rng, n=n, b_n=n, a_zp=1, b_zp=-1, y_zp=0, ratios=[0.3, 0.9])
    return _program("k_add_same", [_t("t0", shape), _t("t1", shape)], [Step("add", ["t0", "t0"], ["t1"], p)])


def add_extremes(rng):
    """The largest multipliers (saturates both ways) and a fused clamp."""
    shape, n = (40,), 40
    p = _add_params(rng, n=n, b_n=n, a_zp=0, b_zp=0, y_zp=127, mults=[INT32_MAX, INT32_MAX], shift=31, lo=-100,
                    hi=120)
    tensors = [_t("t0", shape), _t("t1", shape), _t("t2", shape), _t("t3", shape, alias_of="t2")]
    return _program("k_add_ext", tensors, [_lut_step(rng, "t0", "t1", n), Step("add", ["t0", "t1"], ["t2"], p)],
                    output="t3")


def add_shift_one(rng):
    shape, n = (24,), 24
    p = _add_params(rng, n=n, b_n=1, a_zp=0, b_zp=0, y_zp=0, mults=[1, 1], shift=1)
    return _program("k_add_shift1", [_t("t0", shape), _t("t1", (1,)), _t("t2", shape)],
                    [Step("add", ["t0", "t1"], ["t2"], p)], constants={"t1": np.array([127], dtype=np.int8)},
                    output="t2")


def add_requantize(rng):
    """The explicit requantize lowering emits for a cut view: b_mult 0."""
    shape, n = (2, 9), 18
    (m,), shift = shared_shift_multipliers([3.7e-3 * 40])
    p = _add_params(rng, n=n, b_n=1, a_zp=9, b_zp=9, y_zp=-20, mults=[m, 0], shift=shift)
    tensors = [_t("t0", shape, zp=9), _t("t1", (1,), zp=9), _t("t2", (n,), zp=-20)]
    return _program("k_add_rq", tensors, [Step("add", ["t0", "t1"], ["t2"], p)],
                    constants={"t1": np.array([9], dtype=np.int8)}, output="t2")


def add_int16(rng):
    shape, n = (12,), 12
    b = rng.integers(-32768, 32768, size=shape).astype(np.int16)
    p = _add_params(rng, n=n, b_n=n, a_zp=0, b_zp=0, y_zp=0, y_dtype="int16")
    tensors = [_t("t0", shape, dtype="int16"), _t("t1", shape, dtype="int16"), _t("t2", shape, dtype="int16")]
    return _program("k_add16", tensors, [Step("add", ["t0", "t1"], ["t2"], p)], constants={"t1": b}, output="t2")


# -- clamp, lut, softmax, copy ----------------------------------------------------------------------


def _clamp_program(name: str, lo: int, hi: int, shape=(3, 10), dtype="int8"):
    return _program(name, [_t("t0", shape, dtype=dtype), _t("t1", shape, dtype=dtype)],
                    [Step("clamp", ["t0"], ["t1"], dict(lo=lo, hi=hi, n=math.prod(shape)), origin="test/Relu")])


def clamp_relu(rng):
    return _clamp_program("k_relu", int(rng.integers(-128, 0)), 127)


def clamp_random(rng):
    lo = int(rng.integers(-128, 100))
    return _clamp_program("k_clamp", lo, int(rng.integers(lo + 2, 128)))


def clamp_full_range(rng):
    return _clamp_program("k_clamp_id", -128, 127, shape=(50,))


def clamp_single_value(rng):
    return _clamp_program("k_clamp_pt", 5, 5, shape=(7,))


def clamp_int16(rng):
    return _clamp_program("k_clamp16", -1000, 32767, shape=(20,), dtype="int16")


def _lut_program(name: str, table: np.ndarray, shape=(40,), x_dtype="int8", y_dtype="int8"):
    return _program(name, [_t("t0", shape, dtype=x_dtype), _t("t1", shape, dtype=y_dtype)],
                    [Step("lut", ["t0"], ["t1"], dict(table=np.asarray(table).astype(y_dtype), n=math.prod(shape)))])


def lut_random(rng):
    table = rng.integers(-128, 128, size=256)
    table[0], table[255], table[128] = 127, -128, -128
    return _lut_program("k_lut", table)


def lut_sigmoid(rng):
    return _lut_program("k_sigmoid", build_lut(lambda v: 1 / (1 + np.exp(-v)), 0.06, -10, 1 / 256, -128),
                        shape=(4, 8))


def lut_tanh(rng):
    return _lut_program("k_tanh", build_lut(np.tanh, 0.03, 4, 1 / 128, 0), shape=(33,))


def lut_int8_to_int16(rng):
    table = build_lut(np.tanh, 0.03, 4, 1 / 32768, 0, "int8", "int16")
    return _lut_program("k_tanh_8to16", table, shape=(24,), y_dtype="int16")


def lut16_sigmoid(rng):
    """int16 input: 257 entries, interpolated."""
    table = build_lut16(lambda v: 1 / (1 + np.exp(-v)), 2.0**-11, 1 / 256, -128, "int8")
    return _lut_program("k_sigmoid16", table, shape=(30,), x_dtype="int16")


def lut16_random_int16(rng):
    table = rng.integers(-32768, 32768, size=257)
    table[0], table[256], table[1] = -32768, 32767, 32767
    return _lut_program("k_lut16", table, shape=(25,), x_dtype="int16", y_dtype="int16")


def _softmax_program(name: str, in_scale: float, rows: int, n: int, x_dtype="int8", y_dtype="int8"):
    one, zp = SOFTMAX_OUT[y_dtype]
    table, sh = softmax_exp_table(in_scale, x_dtype)
    tensors = [_t("t0", (rows, n), scale=in_scale, dtype=x_dtype), _t("t1", (rows, n), 1 / one, zp, dtype=y_dtype)]
    step = Step("softmax", ["t0"], ["t1"], dict(exp_table=table, sh=sh, one=one, y_zp=zp, lo=QMIN[y_dtype],
                                                hi=QMAX[y_dtype], n=n, rows=rows))
    return _program(name, tensors, [step])


def softmax_typical(rng):
    return _softmax_program("k_softmax", 0.1, 1, 10)


def softmax_rows(rng):
    return _softmax_program("k_softmax_rows", 0.03, 5, 7)


def softmax_steep(rng):
    return _softmax_program("k_softmax_steep", 1.0, 2, 6)  # most of the exp table is 0


def softmax_flat(rng):
    return _softmax_program("k_softmax_flat", 1e-3, 1, 64)


def softmax_single(rng):
    return _softmax_program("k_softmax_one", 0.2, 8, 1)  # every output is 1.0 → 127


def softmax_in16(rng):
    return _softmax_program("k_softmax_x16", 2.0**-9, 2, 9, x_dtype="int16")  # sh > 0: interpolated


def softmax_in16_out16(rng):
    return _softmax_program("k_softmax_16", 2.0**-12, 1, 12, x_dtype="int16", y_dtype="int16")


def softmax_out16(rng):
    return _softmax_program("k_softmax_y16", 0.05, 3, 5, y_dtype="int16")


def copy_reshape(rng):
    return _program("k_copy", [_t("t0", (4, 6)), _t("t1", (24,))], [Step("copy", ["t0"], ["t1"])])


# -- conv1d, maxpool1d, transpose (params as lower._conv_dims / lower._transpose fill them) --------------


def _conv_params(c_in: int, l_in: int, c_out: int, k: int, *, stride=1, dilation=1, pad_left=0, pad_right=0,
                 groups=1) -> dict:
    l_out = (l_in + pad_left + pad_right - dilation * (k - 1) - 1) // stride + 1
    p = dict(c_in=c_in, l_in=l_in, c_out=c_out, l_out=l_out, k=k, stride=stride, dilation=dilation,
             pad_left=pad_left, groups=groups)
    p["dims"] = np.array([c_in, l_in, c_out, l_out, k, stride, dilation, pad_left, groups], dtype=np.int32)
    return p


def _conv_program(rng, name: str, *, c_in: int, l_in: int, c_out: int, k: int, x_zp=0, y_zp=0, lo=None, hi=None,
                  mult=None, shift=None, bias=None, x_dtype="int8", w_dtype="int8", y_dtype="int8",
                  channels_last=False, **dims) -> Program:
    p = _conv_params(c_in, l_in, c_out, k, **dims)
    cin_g = c_in // p["groups"]
    weight = _weights(rng, (c_out, cin_g, k), w_dtype)
    bias = rng.integers(-30000, 30000, c_out) if bias is None else np.asarray(bias)
    bias_shift = np.zeros(c_out, dtype=np.int32)
    bound = _bound(weight, bias, bias_shift, x_dtype, x_zp)
    if mult is None:
        typical = np.sqrt(cin_g * k) * (QMAX[x_dtype] / 1.7) * np.abs(weight.reshape(c_out, -1)).mean(axis=1)
        mult, shift, acc_bits = _requant(rng, typical, bound, y_dtype)
    else:
        assert bound < 2**31
        acc_bits = 32
    p.update(weight=weight, bias=np.asarray(bias, dtype=np.int32), bias_shift=bias_shift,
             mult=np.asarray(mult, dtype=np.int32), shift=np.asarray(shift, dtype=np.int32), acc_bits=acc_bits,
             acc_bound=bound, x_zp=x_zp, y_zp=y_zp, lo=QMIN[y_dtype] if lo is None else lo,
             hi=QMAX[y_dtype] if hi is None else hi)
    if channels_last:
        p["channels_last"] = 1
    tensors = [_t("t0", (1, l_in, c_in) if channels_last else (1, c_in, l_in), zp=x_zp, dtype=x_dtype),
               _t("t1", (1, c_out, p["l_out"]), zp=y_zp, dtype=y_dtype)]
    return _program(name, tensors, [Step("conv1d", ["t0"], ["t1"], p, origin="test/Conv")])


def conv1d_same_pad(rng):
    return _conv_program(rng, "k_conv", c_in=3, l_in=12, c_out=5, k=3, pad_left=1, pad_right=1, x_zp=-4, y_zp=6)


def conv1d_strided_dilated(rng):
    return _conv_program(rng, "k_conv_sd", c_in=2, l_in=17, c_out=4, k=3, stride=2, dilation=2, pad_left=2,
                         pad_right=0, x_zp=11, y_zp=-9)


def conv1d_groups(rng):
    return _conv_program(rng, "k_conv_grp", c_in=4, l_in=9, c_out=8, k=2, groups=2, pad_left=1, pad_right=0)


def conv1d_depthwise(rng):
    return _conv_program(rng, "k_conv_dw", c_in=3, l_in=10, c_out=3, k=5, groups=3, pad_left=2, pad_right=2)


def conv1d_extremes_fused_clamp(rng):
    c_out = 6
    mult = np.array([INT32_MAX, 2**30, INT32_MAX, 0, 0, 0])
    shift = np.array([1, MAX_SHIFT, 31, 0, 0, 0])
    bias = rng.integers(-(10**9), 10**9, size=c_out)
    for j in range(3, c_out):
        mult[j], shift[j] = quantize_multiplier(float(rng.uniform(20, 120)) / abs(int(bias[j])))
    return _conv_program(rng, "k_conv_ext", c_in=4, l_in=8, c_out=c_out, k=3, x_zp=-128, y_zp=-128, lo=-128,
                         hi=100, mult=mult, shift=shift, bias=bias, pad_left=1, pad_right=1)


def conv1d_channels_last(rng):
    return _conv_program(rng, "k_conv_cl", c_in=4, l_in=11, c_out=6, k=3, groups=2, stride=2, dilation=2,
                         pad_left=2, pad_right=1, x_zp=-7, y_zp=3, channels_last=True)


def conv1d_pow2(rng):
    return _conv_program(rng, "k_conv_pow2", c_in=3, l_in=12, c_out=4, k=3, pad_left=1, pad_right=1, x_zp=5,
                         y_zp=-3, mult=np.ones(4, np.int32), shift=np.array([10, 11, 12, 13]))


def conv1d_int16(rng):
    return _conv_program(rng, "k_conv16", c_in=2, l_in=10, c_out=3, k=3, pad_left=1, pad_right=1, x_dtype="int16",
                         w_dtype="int16", y_dtype="int16")


def conv1d_window_last(rng):  # channels last, one group, dilation 1: the window is one run of 5 * 6 = 30 values
    return _conv_program(rng, "k_conv_win", c_in=6, l_in=20, c_out=6, k=5, pad_left=2, pad_right=2, x_zp=-9,
                         y_zp=2, channels_last=True)


def conv1d_valid_last(rng):  # no padding: every output interior, so the DSP build needs no int8 weights at all
    return _conv_program(rng, "k_conv_valid", c_in=5, l_in=15, c_out=3, k=3, stride=2, x_zp=-2, y_zp=1,
                         channels_last=True)


def conv1d_taps_last(rng):  # channels last, 2 groups of 5 channels, dilation 2: runs of 5 per tap
    return _conv_program(rng, "k_conv_tap", c_in=10, l_in=16, c_out=4, k=3, groups=2, dilation=2, pad_left=2,
                         pad_right=2, x_zp=4, y_zp=-1, channels_last=True)


def conv1d_x16(rng):  # int16 x, int8 w: runs of 5 taps per channel, pairs of 16-bit values
    return _conv_program(rng, "k_conv_x16", c_in=3, l_in=14, c_out=5, k=5, stride=2, pad_left=1, pad_right=1,
                         x_dtype="int16", y_dtype="int16")


def _maxpool_program(name: str, c: int, l_in: int, k: int, zp: int = 0, dtype="int8", **dims) -> Program:
    p = _conv_params(c, l_in, c, k, **dims)
    tensors = [_t("t0", (1, c, l_in), zp=zp, dtype=dtype), _t("t1", (1, c, p["l_out"]), zp=zp, dtype=dtype)]
    return _program(name, tensors, [Step("maxpool1d", ["t0"], ["t1"], p, origin="test/MaxPool")])


def maxpool1d_pairs(rng):
    return _maxpool_program("k_pool", 4, 12, 2, stride=2)


def maxpool1d_padded_dilated(rng):
    return _maxpool_program("k_pool_pd", 3, 11, 3, stride=1, dilation=2, pad_left=1, pad_right=1, zp=-5)


def maxpool1d_overlapping(rng):
    return _maxpool_program("k_pool_ov", 2, 15, 4, stride=3, pad_left=2, pad_right=1)


def maxpool1d_int16(rng):
    return _maxpool_program("k_pool16", 3, 8, 3, stride=2, pad_left=1, pad_right=1, dtype="int16")


def _mul2_program(name: str, shape: tuple[int, ...], b_shape: tuple[int, ...], inner: int, *, a_zp=-3, b_zp=-128,
                  y_zp=5, scales=(0.05, 1 / 256, 0.02), dtype="int8", b_dtype="int8") -> Program:
    sa, sb, sy = scales
    mult, shift = quantize_multiplier(sa * sb / sy, 31 if dtype == b_dtype == "int8" else 30)
    tensors = [_t("t0", shape, sa, a_zp, dtype=dtype), _t("t1", shape, sy, y_zp, dtype=dtype),
               _t("b", b_shape, sb, b_zp, dtype=b_dtype)]
    b_n = math.prod(b_shape)
    params = dict(a_zp=a_zp, b_zp=b_zp, mult=mult, shift=shift, y_zp=y_zp, n=math.prod(shape), b_n=b_n, inner=inner,
                  lo=QMIN[dtype], hi=QMAX[dtype])
    # b is produced by a LUT of the input (swish: x * sigmoid(x)) or read as a constant
    steps = [Step("mul2", ["t0", "b"], ["t1"], params, origin="test/Mul")]
    constants = {}
    if b_n == math.prod(shape):
        table = build_lut(lambda v: 1 / (1 + np.exp(-v)), sa, a_zp, sb, b_zp, dtype, b_dtype) if dtype == "int8" else \
            build_lut16(lambda v: 1 / (1 + np.exp(-v)), sa, sb, b_zp, b_dtype)
        steps.insert(0, Step("lut", ["t0"], ["b"], dict(table=table, n=b_n), origin="test/Sigmoid"))
    else:
        rng = np.random.default_rng(b_n)
        constants["b"] = rng.integers(QMIN[b_dtype], QMAX[b_dtype] + 1, b_shape).astype(b_dtype)
    return _program(name, tensors, steps, constants, output="t1")


def mul2_swish(rng):
    return _mul2_program("k_swish", (3, 8), (3, 8), 1)


def mul2_per_channel(rng):
    return _mul2_program("k_mul2_ch", (4, 6), (4, 1), 6, scales=(0.05, 0.03, 0.04), b_zp=7)


def mul2_int16(rng):
    return _mul2_program("k_mul2_16", (20,), (20,), 1, a_zp=0, b_zp=0, y_zp=0, scales=(2.0**-10, 2.0**-15, 2.0**-11),
                         dtype="int16", b_dtype="int16")


def _pool_program(name: str, shape: tuple[int, int, int], l_out: int, k: int, *, stride=1, dil=1, pad=0,
                  is_max=0, count_pad=0, x_scale=0.05, y_scale=0.04, x_zp=3, y_zp=-7, dtype="int8") -> Program:
    """x viewed as [outer, l_in, inner], params as lower._pool gives them (mult[n-1] for a mean over n taps)."""
    outer, l_in, inner = shape
    counts = [1] if is_max else [k] if count_pad else range(1, k + 1)
    mq = [quantize_multiplier(x_scale / (y_scale * n)) for n in counts]
    params = dict(dims=np.array([outer, l_in, inner, l_out, k, stride, dil, pad, is_max, count_pad], np.int32),
                  mult=np.array([m for m, _ in mq], np.int32),
                  shift=np.array([sh for _, sh in mq], np.int32), is_max=is_max, count_pad=count_pad,
                  x_zp=x_zp, y_zp=y_zp, lo=QMIN[dtype], hi=QMAX[dtype])
    tensors = [_t("t0", shape, x_scale, x_zp, dtype=dtype), _t("t1", (outer, l_out, inner), y_scale, y_zp, dtype=dtype)]
    return _program(name, tensors, [Step("pool", ["t0"], ["t1"], params, origin="test/Pool")])


def pool_avg_window(rng):
    return _pool_program("k_avg", (4, 11, 1), 6, 3, stride=2, pad=1)


def pool_avg_count_pad(rng):
    return _pool_program("k_avg_cp", (3, 10, 1), 10, 3, pad=1, count_pad=1, dil=1)


def pool_global_mean_channels_last(rng):
    return _pool_program("k_gap", (1, 12, 5), 1, 12, y_scale=0.01, count_pad=1)  # full window: one multiplier


def pool_max_rescaled(rng):
    return _pool_program("k_gmax", (2, 9, 3), 1, 9, is_max=1, y_scale=0.07)


def pool_int16(rng):
    return _pool_program("k_avg16", (3, 40, 2), 3, 16, stride=12, pad=2, x_scale=2.0**-10, y_scale=2.0**-12,
                         x_zp=0, y_zp=0, dtype="int16")


def pool_pow2(rng):  # s_x / (s_y * 4) = 2^-3: M = 1, a bare 32-bit shift
    return _pool_program("k_avg_pow2", (3, 12, 2), 3, 4, stride=4, count_pad=1, x_scale=0.05, y_scale=0.1,
                         x_zp=-20)


def pool_long_window(rng):  # 300 int8 taps: the sum passes 2^15, too wide for the split rescale: 64-bit
    return _pool_program("k_gap_long", (2, 300, 1), 1, 300, y_scale=0.003, x_zp=0, count_pad=1)


def _transpose_program(name: str, shape: tuple[int, ...], perm: list[int], dtype="int8") -> Program:
    rank = len(shape)
    in_strides = [math.prod(shape[i + 1:]) for i in range(rank)]
    dims = [shape[q] for q in perm] + [1] * (6 - rank)
    strides = [in_strides[q] for q in perm] + [0] * (6 - rank)
    step = Step("transpose", ["t0"], ["t1"], dict(in_dims=list(shape), perm=list(perm),
                                                   dims=np.array(dims, dtype=np.int32),
                                                   strides=np.array(strides, dtype=np.int32)))
    return _program(name, [_t("t0", shape, dtype=dtype), _t("t1", tuple(shape[q] for q in perm), dtype=dtype)],
                    [step])


def transpose_2d(rng):
    return _transpose_program("k_tr2", (3, 7), [1, 0])


def transpose_conv_layout(rng):
    return _transpose_program("k_tr3", (1, 6, 5), [0, 2, 1])


def transpose_rank6(rng):
    return _transpose_program("k_tr6", (2, 1, 3, 2, 2, 3), [int(v) for v in rng.permutation(6)])


def transpose_int16(rng):
    return _transpose_program("k_tr16", (4, 5), [1, 0], dtype="int16")


# -- lstm (params as codegen/lower_lstm.lower_lstm fills them) ----------------------------------------


def _lstm_program(rng, name: str, *, t_len: int, n_in: int, hid: int, reverse: bool, x_dtype="int8",
                  w_dtype="int8", g_dtype="int8", a_dtype="int8", h_dtype="int8", rows: int = 0,
                  x_steps: int = 0, pow2: bool = False, per_row: bool = False,
                  c_scale: float = 2.0**-10, g_scale: float = 1.0) -> Program:
    from qpass.codegen.lower_lstm import gate_multipliers, gate_table, tanh_q15, tanh_table
    from qpass.solver.plan import FIXED

    narrow = {"int8": 1.0, "int16": 1 / 256}
    x_scale, x_zp = 0.04 * narrow[x_dtype], int(rng.integers(-20, 20)) if x_dtype == "int8" else 0
    h_scale, h_zp = 1.01 / (QMAX[h_dtype] + 1), int(rng.integers(-4, 5)) if h_dtype == "int8" else 0
    four_h = 4 * hid
    wx = _weights(rng, (four_h, n_in), w_dtype)
    wh = _weights(rng, (four_h, hid), w_dtype)
    sw = rng.uniform(0.002, 0.01, four_h) * narrow[w_dtype]
    sr = rng.uniform(0.002, 0.01, four_h) * narrow[w_dtype]
    bias = rng.integers(-3000, 3000, size=four_h)
    bias_shift = np.zeros(four_h, np.int32)
    if w_dtype == "int16":  # a bias stored at s_x·s_w·2^k (too large for int32 at s_x·s_w)
        bias_shift[::3] = rng.integers(1, 4, size=bias_shift[::3].size)
        bias[::3] = rng.integers(-2**30, 2**30, size=bias[::3].size)
    gates = [(float(rng.uniform(0.03, 0.08)) * narrow[g_dtype] * g_scale, int(rng.integers(-10, 10))
              if g_dtype == "int8" else 0) for _ in range(4)]
    if pow2:  # every scale a power of two (an a8w8-pow2 plan): the multipliers are powers of two too
        x_scale, h_scale, sw, sr = (2.0 ** np.round(np.log2(v)) for v in (x_scale, h_scale, sw, sr))
        gates = [(2.0 ** round(float(np.log2(g))), zp) for g, zp in gates]
    # as lower_lstm.lower_lstm: the accumulators' proven bounds give the multiplier bits
    span_x = max(QMAX[x_dtype] - x_zp, x_zp - QMIN[x_dtype])
    span_h = max(QMAX[h_dtype] - h_zp, h_zp - QMIN[h_dtype])
    bound_x = np.abs(wx.astype(np.int64)).sum(axis=1) * span_x + (np.abs(bias) << bias_shift)
    bound_h = np.abs(wh.astype(np.int64)).sum(axis=1) * span_h
    acc_bound = int(max(bound_x.max(), bound_h.max()))
    bits = 31 if acc_bound < 2**31 else min(31, 61 - acc_bound.bit_length())
    if per_row:  # a shift per row (a QDQ plan from elsewhere): the C reads each row's shift from a table
        mx, mh, shifts = [], [], []
        for r in range(four_h):
            s_gate = gates[r // hid][0]
            (a, b), sh = shared_shift_multipliers([x_scale * sw[r] / s_gate, h_scale * sr[r] / s_gate], bits)
            mx.append(a), mh.append(b), shifts.append(sh)
    else:
        mx, mh, shifts = gate_multipliers(list(x_scale * sw), list(h_scale * sr), [g[0] for g in gates], bits)
    assert int((bound_x * np.array(mx) + bound_h * np.array(mh)).max()) < 2**62
    luts, gate_sh = [], []
    for k, (s_g, zp_g) in enumerate(gates):
        fn = np.tanh if k == 3 else (lambda v: 1.0 / (1.0 + np.exp(-v)))
        table, sh = gate_table(fn, s_g, zp_g, g_dtype, *FIXED["Tanh" if k == 3 else "Sigmoid"][a_dtype], a_dtype)
        luts.append(table)
        gate_sh.append(sh)
    tc_sh = lut16_shift(tanh_q15(c_scale))
    s_sig, s_tanh = FIXED["Sigmoid"][a_dtype][0], FIXED["Tanh"][a_dtype][0]
    fc_m, fc_s = quantize_multiplier(s_sig)
    ig_m, ig_s = quantize_multiplier(s_sig * s_tanh / c_scale)
    h_m, h_s = quantize_multiplier(s_sig * s_tanh / h_scale)
    act_zp = [FIXED["Tanh" if r == "g" else "Sigmoid"][a_dtype][1] for r in ("i", "o", "f", "g")]
    params = {"t": t_len, "n_in": n_in, "hidden": hid, "x_zp": x_zp, "h_zp": h_zp, "reverse": int(reverse),
              "fc_mult": fc_m, "fc_shift": fc_s, "ig_mult": ig_m, "ig_shift": ig_s, "h_mult": h_m, "h_shift": h_s,
              "gate_zp": [g[1] for g in gates], "act_zp": act_zp, "tc_shift": 8 if a_dtype == "int8" else 0,
              "tc_sh": tc_sh, "gate_sh": gate_sh,
              "g_lo": QMIN[g_dtype], "g_hi": QMAX[g_dtype], "h_lo": QMIN[h_dtype], "h_hi": QMAX[h_dtype],
              "lut_n": luts[0].size, "tc_lo": QMIN[a_dtype], "tc_hi": QMAX[a_dtype]}
    dims = [params[k] for k in ("t", "n_in", "hidden", "x_zp", "h_zp", "reverse", "fc_mult", "fc_shift",
                                "ig_mult", "ig_shift", "h_mult", "h_shift")]
    dims += params["gate_zp"] + params["act_zp"] + [params[k] for k in (
        "tc_shift", "g_lo", "g_hi", "h_lo", "h_hi", "lut_n", "tc_lo", "tc_hi")] + [
        rows or t_len, x_steps or t_len, 2 if rows else 0]
    params.update(rows=rows or t_len, x_steps=x_steps or t_len, row_mode=2 if rows else 0,
                  weight=np.ascontiguousarray(wx), weight_h=np.ascontiguousarray(wh),
                  bias=bias.astype(np.int32), bias_shift=bias_shift, mx=np.array(mx, dtype=np.int64),
                  mh=np.array(mh, dtype=np.int64),
                  shift=np.array(shifts, dtype=np.int32), gate_lut=np.concatenate(luts),
                  tanh_table=tanh_table(c_scale, tc_sh), dims=np.array(dims, dtype=np.int32),
                  acc_bits=32 if acc_bound < 2**31 else 64, gate_bits=g_dtype, act_bits=a_dtype)
    tensors = [_t("t0", (x_steps or t_len, 1, n_in), x_scale, x_zp, dtype=x_dtype),
               _t("t1", (rows or t_len, 1, hid), h_scale, h_zp, dtype=h_dtype),
               _t("t2", (hid,), c_scale, 0, dtype="int16")]
    step = Step("lstm", ["t0"], ["t1", "t2"], params, origin="test/LSTM")
    return _program(name, tensors, [step], output="t1")


# -- gru (params from codegen/lower_gru.gru_params, as the lowering computes them) --------------------


def _gru_program(rng, name: str, *, t_len: int, n_in: int, hid: int, reverse: bool, lbr: bool, x_dtype="int8",
                 w_dtype="int8", g_dtype="int8", a_dtype="int8", h_dtype="int8", rows: int = 0,
                 x_steps: int = 0, pow2: bool = False, h_scale: float = 0.0, mid_scale: float = 0.0,
                 zp16: int = 0, r_offset: int = 0, g_scale: float = 1.0) -> Program:
    """h_scale, mid_scale: h's and hn's (or r·h's) scales instead of the usual ones; zp16: their zero point when
    int16; r_offset: added to r's table (so |a_r| may pass 2^15), as a plan from elsewhere could have it; g_scale:
    wider gate pre-activations."""
    from qpass.codegen.lower_gru import gru_params

    narrow = {"int8": 1.0, "int16": 1 / 256}
    x_q = (0.04 * narrow[x_dtype], int(rng.integers(-20, 20)) if x_dtype == "int8" else 0, x_dtype)
    h_q = (h_scale or 1.01 / (QMAX[h_dtype] + 1), int(rng.integers(-4, 5)) if h_dtype == "int8" else zp16, h_dtype)
    mid_q = (mid_scale or float(rng.uniform(0.01, 0.03)) * narrow[h_dtype],
             int(rng.integers(-6, 6)) if h_dtype == "int8" else zp16, h_dtype)
    three_h = 3 * hid
    wx, wh = _weights(rng, (n_in, three_h), w_dtype), _weights(rng, (hid, three_h), w_dtype)
    sw = rng.uniform(0.002, 0.01, three_h) * narrow[w_dtype]
    sr = rng.uniform(0.002, 0.01, three_h) * narrow[w_dtype]
    bias = rng.integers(-3000, 3000, size=4 * hid)
    shifts = np.zeros(4 * hid, np.int64)
    if w_dtype == "int16":  # a bias stored at s·s_w·2^k (too large for int32 at s·s_w)
        shifts[::3] = rng.integers(1, 4, size=shifts[::3].size)
        bias[::3] = rng.integers(-2**30, 2**30, size=bias[::3].size)
    gates = [(float(rng.uniform(0.03, 0.08)) * narrow[g_dtype] * g_scale, int(rng.integers(-10, 10))
              if g_dtype == "int8" else 0, g_dtype) for _ in range(3)]
    if pow2:  # every scale a power of two (an a8w8-pow2 plan)
        p2 = lambda v: 2.0 ** np.round(np.log2(v))  # noqa: E731
        x_q, h_q, mid_q = ((float(p2(q[0])), *q[1:]) for q in (x_q, h_q, mid_q))
        sw, sr = p2(sw), p2(sr)
        gates = [(float(p2(g[0])), *g[1:]) for g in gates]
    params = gru_params(name, wx=wx, sw=sw, wh=wh, sr=sr,
                        bias=(bias[:three_h], shifts[:three_h], bias[three_h:], shifts[three_h:]), x_q=x_q, h_q=h_q,
                        gates=gates, a_dtype=a_dtype, mid_q=mid_q, lbr=lbr, t_len=t_len, reverse=reverse,
                        rows=rows or t_len, x_steps=x_steps or t_len, mode=2 if rows else 0)
    params["act_zp"][1] -= r_offset
    tensors = [_t("t0", (x_steps or t_len, 1, n_in), x_q[0], x_q[1], dtype=x_dtype),
               _t("t1", (rows or t_len, 1, hid), h_q[0], h_q[1], dtype=h_dtype),
               _t("t2", (three_h,), 1.0, 0, dtype="int16")]
    step = Step("gru", ["t0"], ["t1", "t2"], params, origin="test/GRU")
    return _program(name, tensors, [step], output="t1")


def gru_forward(rng):
    return _gru_program(rng, "k_gru", t_len=8, n_in=3, hid=5, reverse=False, lbr=True)


def gru_reset_before(rng):
    return _gru_program(rng, "k_gru_lbr0", t_len=7, n_in=4, hid=4, reverse=False, lbr=False)


def gru_reverse_two_rows(rng):
    return _gru_program(rng, "k_gru_rows", t_len=6, n_in=3, hid=4, reverse=True, lbr=True, rows=2, x_steps=8)


def gru_single_step(rng):
    return _gru_program(rng, "k_gru_t1", t_len=1, n_in=6, hid=4, reverse=False, lbr=False)


def gru_pow2(rng):  # power-of-two scales: 32-bit gate rescale by shifts
    return _gru_program(rng, "k_gru_pow2", t_len=5, n_in=5, hid=4, reverse=False, lbr=True, pow2=True)


def gru_pow2_reset_before(rng):
    return _gru_program(rng, "k_gru_pow2_lbr0", t_len=5, n_in=4, hid=5, reverse=True, lbr=False, pow2=True)


def gru_int16_gates(rng):
    return _gru_program(rng, "k_gru_g16", t_len=5, n_in=3, hid=4, reverse=True, lbr=False, g_dtype="int16",
                        a_dtype="int16")


def gru_int16_everything(rng):
    return _gru_program(rng, "k_gru_16", t_len=4, n_in=3, hid=3, reverse=False, lbr=True, x_dtype="int16",
                        w_dtype="int16", g_dtype="int16", a_dtype="int16", h_dtype="int16")


# the GRU's rarer C forms (test_gru_rare_forms_are_reached proves each case takes its form)
def gru_hn_64bit(rng):  # hn's scale near the R accumulator's unit: hn_shift < 33, a 64-bit hn rescale
    return _gru_program(rng, "k_gru_hn64", t_len=6, n_in=3, hid=4, reverse=False, lbr=True, mid_scale=4e-5)


def gru_h_64bit(rng):  # a small h scale: h_shift < 33, the h update's 64-bit rescale (no high word)
    return _gru_program(rng, "k_gru_h64", t_len=6, n_in=3, hid=4, reverse=False, lbr=True, h_scale=1.3e-4)


def gru_hterm_64bit(rng):  # |a_r| up to 2^15 + 1 times a full int16 hn span: the n row's h term needs int64
    return _gru_program(rng, "k_gru_ht64", t_len=5, n_in=3, hid=4, reverse=True, lbr=True, x_dtype="int16",
                        w_dtype="int16", g_dtype="int16", a_dtype="int16", h_dtype="int16", zp16=-32768,
                        r_offset=2, g_scale=40.0)


def gru_rh_wide(rng):  # |a_r| up to 2^15 + 1 times a full int16 h span: r·h's rescale is qp_requantize ("wide")
    return _gru_program(rng, "k_gru_rhw", t_len=5, n_in=3, hid=4, reverse=False, lbr=False, x_dtype="int16",
                        w_dtype="int16", g_dtype="int16", a_dtype="int16", h_dtype="int16", zp16=-32768,
                        r_offset=2, g_scale=40.0)


def lstm_forward(rng):
    return _lstm_program(rng, "k_lstm", t_len=8, n_in=3, hid=5, reverse=False)


def lstm_reverse(rng):
    return _lstm_program(rng, "k_lstm_rev", t_len=6, n_in=4, hid=3, reverse=True)


def lstm_row_shifts(rng):  # a shift per gate row, read from a table; a cell scale that is not a power of two
    return _lstm_program(rng, "k_lstm_rs", t_len=5, n_in=5, hid=4, reverse=False, per_row=True,
                         c_scale=0.0013)


def lstm_two_rows(rng):  # nobody reads the sequence: h of step s in row s & 1
    return _lstm_program(rng, "k_lstm_rows", t_len=7, n_in=3, hid=4, reverse=True, rows=2, x_steps=9)


def lstm_single_step(rng):
    return _lstm_program(rng, "k_lstm_t1", t_len=1, n_in=6, hid=4, reverse=False)


def lstm_pow2(rng):  # power-of-two multipliers: 32-bit gate rescale, c and h updates by shifts only
    return _lstm_program(rng, "k_lstm_pow2", t_len=6, n_in=3, hid=4, reverse=False, pow2=True)


def lstm_int16_gates(rng):
    return _lstm_program(rng, "k_lstm_g16", t_len=5, n_in=3, hid=4, reverse=False, g_dtype="int16",
                         a_dtype="int16", h_dtype="int16")


def lstm_int16_windows(rng):  # wide int16 gates and cell: each table spans only where its function moves (sh < 8)
    return _lstm_program(rng, "k_lstm_win", t_len=6, n_in=3, hid=4, reverse=False, g_dtype="int16",
                         a_dtype="int16", h_dtype="int16", g_scale=40.0, c_scale=2.0**-9)


def lstm_int16_everything(rng):
    return _lstm_program(rng, "k_lstm_16", t_len=4, n_in=3, hid=3, reverse=True, x_dtype="int16",
                         w_dtype="int16", g_dtype="int16", a_dtype="int16", h_dtype="int16")


# -- the table: every registered kernel needs at least one case -------------------------------------


@dataclass
class Case:
    build: Callable[[np.random.Generator], Program]
    min_distinct: int = 20


# -- conv2d, pool2d (params as lower._conv_2d / lower._pool_2d fill them; layout [C, H, W]) --------------------


def _out_size(n: int, k: int, stride: int, dil: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - dil * (k - 1) - 1) // stride + 1


def _conv2d_program(rng, name: str, *, c_in: int, hw: tuple[int, int], c_out: int, k: tuple[int, int],
                    stride=(1, 1), dil=(1, 1), pads=(0, 0, 0, 0), groups=1, x_zp=0, y_zp=0, lo=None, hi=None,
                    x_dtype="int8", w_dtype="int8", y_dtype="int8", hwc=(0, 0), pow2_shift=None) -> Program:
    h_out = _out_size(hw[0], k[0], stride[0], dil[0], pads[0], pads[2])
    w_out = _out_size(hw[1], k[1], stride[1], dil[1], pads[1], pads[3])
    cin_g = c_in // groups
    weight = _weights(rng, (c_out, cin_g, *k), w_dtype)
    bias = rng.integers(-30000, 30000, c_out)
    bias_shift = np.zeros(c_out, dtype=np.int32)
    bound = _bound(weight, bias, bias_shift, x_dtype, x_zp)
    typical = np.sqrt(cin_g * k[0] * k[1]) * (QMAX[x_dtype] / 1.7) * np.abs(weight.reshape(c_out, -1)).mean(axis=1)
    mult, shift, acc_bits = _requant(rng, typical, bound, y_dtype)
    if pow2_shift is not None:  # a pow2 plan: every multiplier 1, the C rescales with 32-bit shifts
        mult, shift = np.ones(c_out, np.int32), np.array(pow2_shift, np.int32)
    dims = [c_in, *hw, c_out, h_out, w_out, *k, *stride, *dil, pads[0], pads[1], groups, *hwc]
    p = dict(dims=np.array(dims, np.int32), groups=groups, weight=weight, bias=bias.astype(np.int32),
             bias_shift=bias_shift, mult=mult, shift=shift, acc_bits=acc_bits, acc_bound=bound, x_zp=x_zp, y_zp=y_zp,
             lo=QMIN[y_dtype] if lo is None else lo, hi=QMAX[y_dtype] if hi is None else hi)
    tensors = [_t("t0", (1, *hw, c_in) if hwc[0] else (1, c_in, *hw), zp=x_zp, dtype=x_dtype),
               _t("t1", (1, h_out, w_out, c_out) if hwc[1] else (1, c_out, h_out, w_out), zp=y_zp, dtype=y_dtype)]
    return _program(name, tensors, [Step("conv2d", ["t0"], ["t1"], p, origin="test/Conv")])


def conv2d_same_pad(rng):
    return _conv2d_program(rng, "k_c2", c_in=3, hw=(6, 5), c_out=4, k=(3, 3), pads=(1, 1, 1, 1), x_zp=-4, y_zp=6)


def conv2d_strided_dilated(rng):  # kws's first layer: a tall kernel, stride 2, uneven pads; plus dilation
    return _conv2d_program(rng, "k_c2_sd", c_in=2, hw=(11, 7), c_out=3, k=(4, 2), stride=(2, 2), dil=(2, 1),
                           pads=(1, 0, 2, 1), x_zp=11, y_zp=-9)


def conv2d_depthwise(rng):
    return _conv2d_program(rng, "k_c2_dw", c_in=4, hw=(5, 6), c_out=4, k=(3, 3), groups=4, pads=(1, 1, 1, 1),
                           lo=-128 + 20)


def conv2d_pointwise(rng):  # 1x1, stride 2 (a ResNet shortcut)
    return _conv2d_program(rng, "k_c2_pw", c_in=5, hw=(6, 6), c_out=7, k=(1, 1), stride=(2, 2), x_zp=-128)


def conv2d_int16(rng):
    return _conv2d_program(rng, "k_c2_16", c_in=2, hw=(5, 4), c_out=3, k=(3, 2), pads=(1, 0, 1, 1),
                           x_dtype="int16", w_dtype="int16", y_dtype="int16")


def conv2d_hwc_in(rng):  # a Keras NHWC input read channels-last (the input transpose folded)
    return _conv2d_program(rng, "k_c2_hwc", c_in=3, hw=(5, 4), c_out=4, k=(3, 3), stride=(2, 1), pads=(1, 1, 1, 1),
                           hwc=(1, 0), x_zp=5)


def conv2d_hwc_out_depthwise(rng):  # written channels-last (the output transpose folded)
    return _conv2d_program(rng, "k_c2_hwco", c_in=3, hw=(4, 5), c_out=3, k=(2, 2), groups=3, pads=(0, 1, 1, 0),
                           hwc=(1, 1))


def conv2d_tall_kernel(rng):  # kws's first layer: 10x4 over C = 1, stride 2, SAME pads; the taps loop over rows
    return _conv2d_program(rng, "k_c2_tall", c_in=1, hw=(13, 6), c_out=4, k=(10, 4), stride=(2, 2),
                           pads=(4, 1, 5, 2), x_zp=-3, y_zp=2)


def conv2d_pointwise_flat(rng):  # 1x1 stride 1: a matrix multiply over an odd count of pixels, ReLU clamp
    return _conv2d_program(rng, "k_c2_pwf", c_in=6, hw=(3, 5), c_out=6, k=(1, 1), x_zp=-128, y_zp=-128, lo=-128)


def conv2d_depthwise_pow2(rng):  # power-of-two rescale, odd output width (pairs of pixels plus one)
    return _conv2d_program(rng, "k_c2_dwp", c_in=3, hw=(6, 7), c_out=3, k=(3, 3), groups=3, pads=(1, 1, 1, 1),
                           x_zp=-128, y_zp=-5, pow2_shift=[12, 13, 14])


def conv2d_groups_odd(rng):  # three outputs per group (no channel pairs), channels-last output
    return _conv2d_program(rng, "k_c2_go", c_in=4, hw=(5, 5), c_out=6, k=(2, 3), groups=2, pads=(1, 1, 0, 1),
                           x_zp=7, hwc=(0, 1))


def _pool2d_program(name: str, c: int, hw: tuple[int, int], k: tuple[int, int], *, stride=(1, 1), dil=(1, 1),
                    pads=(0, 0, 0, 0), is_max=0, count_pad=0, x_scale=0.05, y_scale=0.04, x_zp=3, y_zp=-7,
                    dtype="int8", hwc=(0, 0), narrow=False) -> Program:
    h_out = _out_size(hw[0], k[0], stride[0], dil[0], pads[0], pads[2])
    w_out = _out_size(hw[1], k[1], stride[1], dil[1], pads[1], pads[3])
    taps = k[0] * k[1]
    counts = [1] if is_max else [taps] if count_pad else range(1, taps + 1)
    mq = [quantize_multiplier(x_scale / (y_scale * n)) for n in counts]
    if narrow:  # as lower._pool_2d: multipliers narrowed so the C rescales in 32 bits
        span = max(QMAX[dtype] - x_zp, x_zp - QMIN[dtype])
        mq = list(zip(*pool_multipliers(x_scale / y_scale, counts, span if is_max else taps * span), strict=True))
    dims = [c, *hw, h_out, w_out, *k, *stride, *dil, pads[0], pads[1], is_max, count_pad, *hwc]
    params = dict(dims=np.array(dims, np.int32), mult=np.array([m for m, _ in mq], np.int32),
                  shift=np.array([sh for _, sh in mq], np.int32), x_zp=x_zp, y_zp=y_zp, lo=QMIN[dtype], hi=QMAX[dtype])
    tensors = [_t("t0", (1, *hw, c) if hwc[0] else (1, c, *hw), x_scale, x_zp, dtype=dtype),
               _t("t1", (1, h_out, w_out, c) if hwc[1] else (1, c, h_out, w_out), y_scale, y_zp, dtype=dtype)]
    return _program(name, tensors, [Step("pool2d", ["t0"], ["t1"], params, origin="test/Pool2D")])


def pool2d_avg_padded(rng):
    return _pool2d_program("k_p2_avg", 3, (7, 6), (3, 3), stride=(2, 2), pads=(1, 1, 1, 1))


def pool2d_avg_count_pad(rng):
    return _pool2d_program("k_p2_cp", 2, (5, 5), (2, 3), pads=(1, 1, 0, 1), count_pad=1)


def pool2d_avg_global(rng):  # kws's AveragePooling2D: one full window, one multiplier
    return _pool2d_program("k_p2_gap", 4, (6, 3), (6, 3), count_pad=1, y_scale=0.01)


def pool2d_avg_narrow(rng):  # padded windows of 1..9 taps, each with a narrowed multiplier: 32-bit rescale
    return _pool2d_program("k_p2_nar", 3, (7, 6), (3, 3), stride=(2, 1), pads=(1, 1, 1, 1), x_zp=-128, narrow=True)


def pool2d_max(rng):
    return _pool2d_program("k_p2_max", 3, (8, 7), (2, 2), stride=(2, 2), dil=(1, 2), pads=(0, 1, 0, 0), is_max=1,
                           y_scale=0.05, y_zp=3)


def pool2d_hwc(rng):
    return _pool2d_program("k_p2_hwc", 3, (6, 5), (2, 2), stride=(2, 2), pads=(0, 0, 0, 1), hwc=(1, 1))


def pool2d_int16(rng):
    return _pool2d_program("k_p2_16", 2, (6, 5), (3, 2), stride=(1, 2), pads=(1, 0, 1, 1), dtype="int16", x_zp=0,
                           y_zp=0)


# -- rnn (params from codegen/lower_rnn.rnn_params, as the lowering computes them) --------------------


def _rnn_program(rng, name: str, *, t_len: int, n_in: int, hid: int, reverse: bool, act: str = "Tanh",
                 x_dtype="int8", w_dtype="int8", a_dtype="int8", rows: int = 0, x_steps: int = 0) -> Program:
    from qpass.codegen.lower_rnn import rnn_params

    narrow = {"int8": 1.0, "int16": 1 / 256}
    x_q = (0.04 * narrow[x_dtype], int(rng.integers(-20, 20)) if x_dtype == "int8" else 0, x_dtype)
    pre_q = (float(rng.uniform(0.02, 0.05)) * narrow[a_dtype], int(rng.integers(-10, 10)) if a_dtype == "int8"
             else 0, a_dtype)
    # tanh: h has the tanh output's fixed parameters; relu: h shares the pre-activation's (one clamped group)
    h_q = (1.0 / (QMAX[a_dtype] + 1), 0, a_dtype) if act == "Tanh" else pre_q
    wx, wh = _weights(rng, (n_in, hid), w_dtype), _weights(rng, (hid, hid), w_dtype)
    sw = rng.uniform(0.002, 0.01, hid) * narrow[w_dtype]
    sr = rng.uniform(0.002, 0.01, hid) * narrow[w_dtype]
    bias = rng.integers(-3000, 3000, size=hid)
    shifts = np.zeros(hid, np.int64)
    if w_dtype == "int16":  # a bias stored at s·s_w·2^k (too large for int32 at s·s_w)
        shifts[::2] = rng.integers(1, 4, size=shifts[::2].size)
        bias[::2] = rng.integers(-2**30, 2**30, size=bias[::2].size)
    params = rnn_params(name, wx=wx, sw=sw, wh=wh, sr=sr, bias=(bias, shifts), x_q=x_q, h_q=h_q, pre_q=pre_q, act=act,
                        t_len=t_len, reverse=reverse, rows=rows or t_len, x_steps=x_steps or t_len,
                        mode=2 if rows else 0)
    tensors = [_t("t0", (x_steps or t_len, 1, n_in), x_q[0], x_q[1], dtype=x_dtype),
               _t("t1", (rows or t_len, 1, hid), h_q[0], h_q[1], dtype=a_dtype)]
    return _program(name, tensors, [Step("rnn", ["t0"], ["t1"], params, origin="test/RNN")], output="t1")


def rnn_forward(rng):
    return _rnn_program(rng, "k_rnn", t_len=8, n_in=3, hid=5, reverse=False)


def rnn_relu_reverse_two_rows(rng):
    return _rnn_program(rng, "k_rnn_relu", t_len=6, n_in=4, hid=4, reverse=True, act="Relu", rows=2, x_steps=8)


def rnn_single_step(rng):
    return _rnn_program(rng, "k_rnn_t1", t_len=1, n_in=6, hid=4, reverse=False)


def rnn_int16(rng):
    return _rnn_program(rng, "k_rnn_16", t_len=5, n_in=3, hid=4, reverse=True, x_dtype="int16", a_dtype="int16")


def rnn_int16_w16_acc64(rng):
    return _rnn_program(rng, "k_rnn_w16", t_len=4, n_in=3, hid=3, reverse=False, act="Relu", x_dtype="int16",
                        w_dtype="int16", a_dtype="int16")


CASES: dict[str, dict[str, Case]] = {
    "linear": {"random": Case(linear_random), "rows": Case(linear_rows, 5), "extremes": Case(linear_extremes, 3),
               "tiny-multiplier": Case(linear_tiny_multiplier, 3), "fused-clamp": Case(linear_fused_clamp),
               "x16": Case(linear_x16), "w16": Case(linear_w16), "x16-w16-acc64": Case(linear_x16_w16_acc64),
               "y16": Case(linear_out16), "pow2": Case(linear_pow2)},
    "concat": {"last-axis": Case(concat_last_axis), "middle-axis": Case(concat_middle_axis),
               "int16": Case(concat_int16)},
    "mul": {"per-channel": Case(mul_per_channel), "channel-last": Case(mul_channel_last), "int16": Case(mul_int16)},
    "add": {"const-full": Case(add_const_full), "broadcast-b_n=1": Case(add_broadcast_one),
            "per-channel": Case(add_per_channel), "pow2": Case(add_pow2), "pow2-negative": Case(add_pow2_negative),
            "b-in-arena": Case(add_from_arena), "same-input": Case(add_same_input),
            "extremes-fused-clamp": Case(add_extremes, 3), "shift-1": Case(add_shift_one),
            "requantize": Case(add_requantize), "int16": Case(add_int16)},
    "clamp": {"relu": Case(clamp_relu), "random": Case(clamp_random), "full-range": Case(clamp_full_range, 256),
              "single-value": Case(clamp_single_value, 1), "int16": Case(clamp_int16)},
    "lut": {"random-table": Case(lut_random), "sigmoid": Case(lut_sigmoid), "tanh": Case(lut_tanh),
            "int8-to-int16": Case(lut_int8_to_int16), "int16-sigmoid": Case(lut16_sigmoid),
            "int16-random": Case(lut16_random_int16)},
    "softmax": {"typical": Case(softmax_typical), "rows": Case(softmax_rows), "steep": Case(softmax_steep, 3),
                "flat": Case(softmax_flat, 3), "n=1": Case(softmax_single, 1), "x16": Case(softmax_in16),
                "x16-y16": Case(softmax_in16_out16), "y16": Case(softmax_out16)},
    "copy": {"reshape": Case(copy_reshape, 256)},
    "conv1d": {"same-pad": Case(conv1d_same_pad), "strided-dilated": Case(conv1d_strided_dilated),
               "groups": Case(conv1d_groups), "depthwise": Case(conv1d_depthwise),
               "extremes-fused-clamp": Case(conv1d_extremes_fused_clamp, 3), "int16": Case(conv1d_int16),
               "channels-last": Case(conv1d_channels_last), "pow2": Case(conv1d_pow2),
               "window-last": Case(conv1d_window_last), "taps-last": Case(conv1d_taps_last),
               "valid-last": Case(conv1d_valid_last),
               "x16": Case(conv1d_x16)},
    "conv2d": {"same-pad": Case(conv2d_same_pad), "strided-dilated": Case(conv2d_strided_dilated),
               "depthwise": Case(conv2d_depthwise), "pointwise": Case(conv2d_pointwise), "int16": Case(conv2d_int16),
               "hwc-in": Case(conv2d_hwc_in), "hwc-in-out-depthwise": Case(conv2d_hwc_out_depthwise),
               "tall-kernel": Case(conv2d_tall_kernel), "pointwise-flat": Case(conv2d_pointwise_flat),
               "depthwise-pow2": Case(conv2d_depthwise_pow2), "groups-odd": Case(conv2d_groups_odd)},
    "pool2d": {"avg-padded": Case(pool2d_avg_padded), "avg-count-pad": Case(pool2d_avg_count_pad),
               "avg-narrow": Case(pool2d_avg_narrow),
               "avg-global": Case(pool2d_avg_global), "max": Case(pool2d_max), "int16": Case(pool2d_int16),
               "hwc": Case(pool2d_hwc)},
    "maxpool1d": {"pairs": Case(maxpool1d_pairs), "padded-dilated": Case(maxpool1d_padded_dilated),
                  "overlapping": Case(maxpool1d_overlapping), "int16": Case(maxpool1d_int16)},
    "mul2": {"swish": Case(mul2_swish), "per-channel-const": Case(mul2_per_channel), "int16": Case(mul2_int16)},
    "pool": {"avg-window": Case(pool_avg_window), "avg-count-pad": Case(pool_avg_count_pad),
             "global-mean-inner": Case(pool_global_mean_channels_last), "max-rescaled": Case(pool_max_rescaled),
             "int16": Case(pool_int16), "pow2": Case(pool_pow2), "long-window": Case(pool_long_window)},
    "transpose": {"2d": Case(transpose_2d), "conv-layout": Case(transpose_conv_layout),
                  "rank-6": Case(transpose_rank6), "int16": Case(transpose_int16)},
    "lstm": {"forward": Case(lstm_forward), "reverse": Case(lstm_reverse),
             "row-shifts": Case(lstm_row_shifts),
             "two-rows": Case(lstm_two_rows), "one-step": Case(lstm_single_step, 5),
             "int16-gates": Case(lstm_int16_gates), "int16": Case(lstm_int16_everything), "pow2": Case(lstm_pow2),
             "int16-windows": Case(lstm_int16_windows)},
    "gru": {"forward": Case(gru_forward), "reset-before": Case(gru_reset_before),
            "reverse-two-rows": Case(gru_reverse_two_rows), "one-step": Case(gru_single_step, 5),
            "pow2": Case(gru_pow2), "pow2-reset-before": Case(gru_pow2_reset_before),
            "int16-gates": Case(gru_int16_gates), "int16": Case(gru_int16_everything),
            "hn-64bit": Case(gru_hn_64bit), "h-64bit": Case(gru_h_64bit), "hterm-64bit": Case(gru_hterm_64bit),
            "rh-wide": Case(gru_rh_wide)},
    "rnn": {"forward": Case(rnn_forward), "relu-reverse-two-rows": Case(rnn_relu_reverse_two_rows),
            "one-step": Case(rnn_single_step, 5), "int16": Case(rnn_int16),
            "relu-w16-acc64": Case(rnn_int16_w16_acc64)},
}

KNOWN_BUGS: dict = {}


def _params():
    for kernel in sorted(KERNELS):
        cases = CASES.get(kernel)
        if not cases:
            yield pytest.param(kernel, None, id=f"{kernel}-has-no-case")
            continue
        for name in cases:
            marks = [KNOWN_BUGS[kernel]] if kernel in KNOWN_BUGS else []
            yield pytest.param(kernel, name, id=f"{kernel}-{name}", marks=marks)


@pytest.mark.parametrize(("kernel", "case"), list(_params()))
def test_kernel_c_equals_runtime_ref(kernel, case, tmp_path):
    if case is None:
        pytest.fail(f"kernel {kernel!r} is registered in runtime_ref.kernels.KERNELS but has no C-vs-runtime_ref "
                    "case in tests/codegen/test_kernels_c.py; add one to CASES")
    rng = np.random.default_rng(zlib.crc32(f"{kernel}/{case}".encode()))
    spec = CASES[kernel][case]
    program = spec.build(rng)
    assert kernel in {s.kernel for s in program.steps}
    tin = program.tensors[program.input]
    x = _samples(rng, tin.size, tin.dtype)
    _check_c_equals_ref(program, x, tmp_path, min_distinct=spec.min_distinct)


@pytest.mark.parametrize(("case", "form"), [("hn-64bit", {"hn_hi": False, "hn_shift32": None}),
                                            ("h-64bit", {"h_hi": False, "upd32": None}),
                                            ("hterm-64bit", {"hterm": "int64_t"}), ("rh-wide", {"rh": "wide"})])
def test_gru_rare_forms_are_reached(case, form):
    """Each of the GRU's rarer C forms has a C == runtime_ref case above that takes it (prepare.gru_gates decides)."""
    from qpass.codegen.prepare import gru_gates

    program = CASES["gru"][case].build(np.random.default_rng(zlib.crc32(f"gru/{case}".encode())))
    g = gru_gates(program, program.steps[0])
    got = {k: (g[k]["kind"] if k == "rh" else g[k]) for k in form}
    assert got == form, got


def test_every_case_names_a_registered_kernel():
    assert set(CASES) <= set(KERNELS), sorted(set(CASES) - set(KERNELS))


def test_compile_flags_are_strict():
    for flag in ("-std=c99", "-Wall", "-Wextra", "-Werror"):
        assert flag in WARN_FLAGS


def test_program_without_arena_compiles(tmp_path):
    x, y = _t("t0", (8,)), _t("t1", (8,))
    program = Program("k_bare", {"t0": x, "t1": y}, [_identity_linear(x, "t1")], "t0", "t1")
    assert plan_arena(program).size == 0
    _check_c_equals_ref(program, _samples(np.random.default_rng(3), 8), tmp_path)


def test_program_without_linear_compiles(tmp_path):
    table = np.arange(-128, 128)[::-1].astype(np.int8)
    program = Program("k_two_luts", {"t0": _t("t0", (8,)), "t1": _t("t1", (8,)), "t2": _t("t2", (8,))},
                      [Step("lut", ["t0"], ["t1"], dict(table=table, n=8)),
                       Step("lut", ["t1"], ["t2"], dict(table=table, n=8))], "t0", "t2")
    assert plan_arena(program).size > 0
    _check_c_equals_ref(program, _samples(np.random.default_rng(4), 8), tmp_path)


def _chain(rng) -> Program:
    """linear int8→int16 (+fused ReLU) → clamp int16 → lut int16→int8 → linear (+fused clamp) → softmax."""
    k, h, o = 16, 12, 6
    tensors = [_t("t0", (1, k), zp=-2), _t("t1", (1, h), scale=2.0**-11, dtype="int16"),
               _t("t2", (1, h), scale=2.0**-11, alias_of="t1", dtype="int16"),
               _t("t3", (1, h), scale=2.0**-11, dtype="int16"), _t("t4", (1, h), scale=1 / 128),
               _t("t5", (1, o), zp=3), _t("t6", (1, o), zp=3, alias_of="t5"), _t("t7", (1, o), 1 / 256, -128)]
    ts = {t.id: t for t in tensors}
    table, sh = softmax_exp_table(0.08)
    steps = [
        _linear_step(rng, ts["t0"], ts["t1"], k=k, n=h, lo=0, hi=32767),
        Step("clamp", ["t2"], ["t3"], dict(lo=0, hi=20000, n=h)),
        Step("lut", ["t3"], ["t4"], dict(table=build_lut16(np.tanh, 2.0**-11, 1 / 128, 0, "int8"), n=h)),
        _linear_step(rng, ts["t4"], ts["t5"], k=h, n=o, lo=-90, hi=110),
        Step("softmax", ["t6"], ["t7"], dict(exp_table=table, sh=sh, one=256, y_zp=-128, lo=-128, hi=127, n=o,
                                             rows=1)),
    ]
    return _program("k_chain", tensors, steps)


@pytest.mark.parametrize("cc", ["gcc", pytest.param("clang", marks=pytest.mark.skipif(
    shutil.which("clang") is None, reason="clang is not installed on this machine"))])
def test_chain_of_kernels_on_each_compiler(cc, tmp_path):
    rng = np.random.default_rng(7)
    program = _chain(rng)
    assert plan_arena(program).size > 0
    x = _samples(rng, program.tensors[program.input].size)
    _check_c_equals_ref(program, x, tmp_path, cc=cc, min_distinct=10)


def test_per_layer_kernels_see_their_shapes():
    """linear and conv1d are per-layer functions: sizes and zero points are literals, the multiply-accumulate is
    bare (x_zp folded into acc0), every kernel is kept out of line."""
    program = conv1d_channels_last(np.random.default_rng(8))
    c = render(program, source="test").c
    heads = re.findall(r"^static (?:QP_NOINLINE )?void (\w+)\(([^)]*)\)", c, flags=re.M)
    assert {name for name, _ in heads} == {"qp_l0_conv1d", "qp_l1_linear"}
    assert all(args.count(",") == 1 for _, args in heads)  # (x, y): nothing else arrives at run time
    assert c.count("static QP_NOINLINE void") == len(heads)
    macs = re.findall(r"acc\d \+= (.*);", c)  # the portable loops, and the DSP path's tail (x, weight word)
    assert macs and all(re.fullmatch(r"xk \* w\d\[[^]]*\]|\(int32_t\)xs\[\d+\] \* d\d\[\d+\]", m) for m in macs), macs
    code = re.sub(r"/\*.*?\*/", "", c, flags=re.S)
    assert "dims[" not in code and "x_zp" not in code


@pytest.mark.parametrize(("build", "form"), [(pool_pow2, "32-bit"), (pool_avg_window, "split"),
                                             (pool_max_rescaled, "split"), (pool_long_window, "64-bit"),
                                             (pool_int16, "64-bit")])
def test_pool_rescale_form(build, form):
    """The pool rescales in 32 bits (no 64-bit multiply: no __aeabi_lmul on a Cortex-M0) whenever its bound allows;
    the C above proves each form equal to runtime_ref."""
    c = render(build(np.random.default_rng(10)), source="test").c
    kernel = c[c.index("/* layer 0, pool"):c.index("/* layer 1, linear")]
    assert f"Rescale: {form}" in kernel
    assert ("qp_requantize(" in kernel) == (form == "64-bit")


@pytest.mark.parametrize(("build", "acc"), [(add_pow2, "int32_t"), (add_pow2_negative, "int32_t"),
                                            (add_shift_one, "int32_t"), (add_const_full, "int64_t")])
def test_add_accumulator_width(build, acc):
    """A power-of-two add sums in 32 bits once the multipliers' common power of two is taken out (no 64-bit
    multiply: no __aeabi_lmul on a Cortex-M0); 31-bit multipliers need 64 bits."""
    c = render(build(np.random.default_rng(11)), source="test").c
    kernel = re.search(r"/\* layer \d+, add .*?\n}\n", c, flags=re.S).group(0)
    assert f"const {acc} acc" in kernel and ("int64_t" in kernel) == (acc == "int64_t")


@pytest.mark.parametrize("cc", ["gcc", pytest.param("clang", marks=pytest.mark.skipif(
    shutil.which("clang") is None, reason="clang is not installed on this machine"))])
def test_per_layer_kernels_on_each_compiler(cc, tmp_path):
    rng = np.random.default_rng(9)
    program = conv1d_channels_last(rng)
    x = _samples(rng, program.tensors[program.input].size)
    _check_c_equals_ref(program, x, tmp_path, cc=cc, min_distinct=3)
