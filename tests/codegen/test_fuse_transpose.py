"""lower._fuse_input_transposes: a [1,L,C] -> [1,C,L] transpose feeding only a conv1d disappears, same integers."""

from __future__ import annotations

import copy

import numpy as np

from qpass.codegen.lower import _fuse_input_transposes
from qpass.runtime_ref import Program, QTensor, Step, run
from qpass.runtime_ref.intmath import quantize_multiplier


def _program(extra_reader: bool) -> Program:
    rng = np.random.default_rng(3)
    c_in, l_in, c_out, k = 3, 9, 4, 3
    t = {"x": QTensor("x", (1, l_in, c_in), "int8", 0.1, -5), "xt": QTensor("xt", (1, c_in, l_in), "int8", 0.1, -5),
         "y": QTensor("y", (1, c_out, l_in), "int8", 0.2, 7)}
    w = rng.integers(-127, 128, (c_out, c_in, k)).astype(np.int8)
    mult, shift = zip(*(quantize_multiplier(0.1 * 0.01 / 0.2) for _ in range(c_out)), strict=True)
    conv = dict(c_in=c_in, l_in=l_in, c_out=c_out, l_out=l_in, k=k, stride=1, dilation=1, pad_left=1, groups=1,
                weight=w, bias=rng.integers(-500, 500, c_out).astype(np.int32), bias_shift=np.zeros(c_out, np.int32),
                mult=np.array(mult, np.int32), shift=np.array(shift, np.int32), acc_bits=32, acc_bound=2**20,
                x_zp=-5, y_zp=7, lo=-128, hi=127)
    steps = [Step("transpose", ["x"], ["xt"], {"perm": [0, 2, 1], "in_dims": [1, l_in, c_in]}),
             Step("conv1d", ["xt"], ["y"], conv)]
    out = "y"
    if extra_reader:  # the transposed tensor is also read elsewhere: the transpose must stay
        t["z"] = QTensor("z", (1, c_in, l_in), "int8", 0.1, -5)
        steps.append(Step("copy", ["xt"], ["z"], {}))
        out = "z"
    return Program("p", t, steps, "x", out)


def test_transpose_into_conv_is_fused_and_exact() -> None:
    before = _program(extra_reader=False)
    after = copy.deepcopy(before)
    _fuse_input_transposes(after)
    assert [s.kernel for s in after.steps] == ["conv1d"] and after.steps[0].params["channels_last"] == 1
    x = np.random.default_rng(4).integers(-128, 128, (1, 9, 3)).astype(np.int8)
    np.testing.assert_array_equal(run(before, x), run(after, x))
    _fuse_input_transposes(after)  # a second run changes nothing
    assert [s.kernel for s in after.steps] == ["conv1d"]


def test_transpose_with_another_reader_stays() -> None:
    program = _program(extra_reader=True)
    _fuse_input_transposes(program)
    assert [s.kernel for s in program.steps] == ["transpose", "conv1d", "copy"]
