"""Warnings about a run whose result is meaningless or fragile, as one-line strings for report.json.

- a tensor whose calibrated range is zero (every calibration value was 0: its scale means nothing);
- calibration inputs of absurd magnitude (|x| ≥ 1e6: unscaled or corrupt data, not what a model trains on);
- compare data that saturates a tensor's integer range (observed values beyond what the calibrated
  scale can represent by more than one step, e.g. logits of 4.99 against a calibrated 3.23), for at
  least 0.1 % of a tensor's values, or any value of the network's output.
"""

from __future__ import annotations

import logging

import numpy as np

from qpass.runtime_ref.intmath import QMAX, QMIN

log = logging.getLogger(__name__)

HUGE = 1e6  # a calibrated magnitude above this is not a trained network's normal input
SATURATION_STEPS = 1.0  # values beyond the representable range by more than this many steps are worth a word
SATURATION_FRACTION = 1e-3  # ... when at least this share of a tensor's values saturate (any, on the output)


def calibration_warnings(ranges: dict, input_name: str, rows: list[dict]) -> list[str]:
    """Warnings from the calibrated ranges (name → object with lo, hi) and the per-layer rows."""
    out = []
    r = ranges.get(input_name)
    if r is not None and r.lo == r.hi:
        out.append(f"calibration: the network input {input_name!r} is {r.lo:g} in every calibration sample; every "
                   "scale is guesswork: calibrate with real, varied data")
    if r is not None and max(abs(r.lo), abs(r.hi)) >= HUGE:
        out.append(f"calibration: the network input {input_name!r} reaches {max(abs(r.lo), abs(r.hi)):.3g} "
                   f"(range [{r.lo:.3g}, {r.hi:.3g}]); a trained network does not see such magnitudes: check that "
                   "the calibration data is scaled as the training data was")
    for row in rows:
        cal = row.get("calibrated_range")
        if cal is None:
            continue
        where = f"kernel {row['index']} ({row['kernel']}, {row['tensor']!r})"
        if cal[0] == cal[1]:
            out.append(f"calibration: {where} has a calibrated range of zero ({cal[0]:g} on every sample); its scale "
                       "is arbitrary and any other value saturates")
        elif max(abs(cal[0]), abs(cal[1])) >= HUGE and r is not None and max(abs(r.lo), abs(r.hi)) < HUGE:
            out.append(f"calibration: {where} reaches {max(abs(cal[0]), abs(cal[1])):.3g}; int8/int16 steps that "
                       "coarse lose every small value")
    return out


def saturation_warnings(rows: list[dict]) -> list[str]:
    """One warning per kernel output whose compare data saturates its integer range noticeably."""
    out = []
    for row in rows:
        frac = row.get("saturated_fraction") or 0.0
        if frac <= 0 or row.get("overshoot_steps", 0.0) <= SATURATION_STEPS:
            continue
        if frac < SATURATION_FRACTION and row is not rows[-1]:
            continue
        obs, cal, rep = row["observed_range"], row["calibrated_range"], row["representable_range"]
        cal_txt = f"calibrated [{cal[0]:.4g}, {cal[1]:.4g}], " if cal else ""
        out.append(f"saturation: kernel {row['index']} ({row['kernel']}, {row['tensor']!r}): "
                   f"{frac * 100:.3g}% of the compare values ({row['saturated_values']}/{row['values']}) saturate "
                   f"{row['dtype']}: observed [{obs[0]:.4g}, {obs[1]:.4g}], {cal_txt}representable "
                   f"[{rep[0]:.4g}, {rep[1]:.4g}]; calibrate with data that covers the compare data")
    return out


def input_saturation_warnings(x: np.ndarray, scale: float, zero_point: int, dtype: str, name: str) -> list[str]:
    """A warning when the compare inputs fall outside what the quantized network input can hold."""
    from qpass.compare import _Stats

    if x.size == 0:
        return []
    s = _Stats()
    s.add(x, x, scale, zero_point, dtype)
    frac = s.saturated / s.count
    if frac < SATURATION_FRACTION or s.overshoot <= SATURATION_STEPS:
        return []
    lo, hi = scale * (QMIN[dtype] - zero_point), scale * (QMAX[dtype] - zero_point)
    return [f"saturation: the network input {name!r}: {frac * 100:.3g}% of the compare values ({s.saturated}/"
            f"{s.count}) lie outside what {dtype} holds at the calibrated scale: observed [{s.lo:.4g}, {s.hi:.4g}], "
            f"representable [{lo:.4g}, {hi:.4g}]; calibrate with data that covers the compare data (or set "
            "quantization.input_range)"]


IN_SUMMARY = {"qpass_in_summary": True}  # `extra` of a log record that the CLI's summary also shows


def in_summary(record: logging.LogRecord) -> bool:
    """Whether a log record says what `qpass run` / `qpass compare` print in their summary anyway."""
    return bool(getattr(record, "qpass_in_summary", False))


def log_warnings(warnings: list[str]) -> None:
    for w in warnings:
        log.warning("%s", w, extra=IN_SUMMARY)
