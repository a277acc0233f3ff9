"""numpy integer kernels: the reference every C template must equal bit for bit.

Each kernel is `fn(step, inputs, out) -> array`, registered by name in KERNELS. Accumulation is int64
in numpy; the solver proves every accumulator fits int32, which is what the C uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qpass.runtime_ref.intmath import SOFTMAX_ONE, requantize, saturate
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
    acc = x @ p["weight"].astype(np.int64).T + p["bias"].astype(np.int64)
    y = requantize(acc, p["mult"], p["shift"]) + p["y_zp"]
    return saturate(y, out.dtype, p["lo"], p["hi"])


@kernel("add")
def add(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """y = clamp(zp_y + ((a − zp_a)·M_a + (b − zp_b)·M_b + 2^(s−1)) >> s), shapes broadcast."""
    p = step.params
    a = inputs[0].astype(np.int64).reshape(-1) - p["a_zp"]
    b = inputs[1].astype(np.int64).reshape(-1) - p["b_zp"]
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
    """y = table[x − QMIN]: any element-wise function of an int8 tensor."""
    return step.params["table"][inputs[0].astype(np.int64) + 128]


@kernel("softmax")
def softmax(step: Step, inputs: list[np.ndarray], out: QTensor) -> np.ndarray:
    """Per row: e_i = E[max − x_i], y_i = clamp(round(e_i·256 / Σe) − 128). Output scale 1/256, zp −128."""
    p = step.params
    n = p["n"]
    x = inputs[0].astype(np.int64).reshape(-1, n)
    e = p["exp_table"].astype(np.int64)[x.max(axis=1, keepdims=True) - x]
    total = e.sum(axis=1, keepdims=True)
    assert int(total.max()) < 2**31 and SOFTMAX_ONE * 256 < 2**31
    y = (e * 256 + total // 2) // total - 128
    return saturate(y, out.dtype)
