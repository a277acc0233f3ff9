"""Scales of degenerate ranges: a dead layer's all-zero or denormal range gets a usable scale, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from qpass.solver.calibrate import Range
from qpass.solver.plan import asymmetric, symmetric


@pytest.mark.parametrize("lo, hi", [(0.0, 0.0), (0.0, 1e-44), (-1e-44, 0.0), (-1e-40, 1e-40), (0.0, 1e-39)])
def test_degenerate_ranges_get_a_normal_scale(lo: float, hi: float) -> None:
    for dtype in ("int8", "int16"):
        scale, zp = asymmetric(Range(lo, hi), dtype)
        info = np.iinfo(dtype)
        assert scale >= np.finfo(np.float32).tiny and info.min <= zp <= info.max
        assert round(0.0 / scale) + zp == zp  # zero stays exactly representable
    assert symmetric(Range(lo, hi), "int16") >= np.finfo(np.float32).tiny


def test_ordinary_ranges_are_unchanged() -> None:
    scale, zp = asymmetric(Range(-1.0, 3.0), "int8")
    assert scale == pytest.approx(4.0 / 255) and zp == round(-128 + 1.0 / scale)
    assert symmetric(Range(-2.0, 1.0), "int16") == pytest.approx(2.0 / 32767)
