"""Calibration: run onnxruntime over representative data and choose every float tensor's range.

Three methods; each returns one `Range` per float tensor name, so the solver does not care which ran:

- `minmax`: the observed minimum and maximum.
- `percentile` p: cut (100 − p)/2 % of the values from each tail (the p-th central interval), and never
  cut 0 out of the range: lo ≤ 0 ≤ hi.
- `mse`: the clip range [a, b] (a ≤ 0 ≤ b) that minimizes the expected squared error of an asymmetric
  grid of 2^bits levels on it, values outside clipped to its ends:

      E(a, b) = N_in · Δ² / 12  +  Σ_{x < a} (x − a)²  +  Σ_{x > b} (x − b)²,      Δ = (b − a) / (2^bits − 1)

  (uniform rounding noise inside, clipping error outside), searched over candidate thresholds on the
  histogram: a coarse grid of (a, b) pairs, then a finer grid around the best pair.

Memory stays bounded whatever the data size: samples stream through in batches; minmax keeps a running
min/max per tensor, percentile and mse a fixed-size `Histogram` per tensor that widens by merging
adjacent bins (exactly, never re-reading the data) when a value falls outside it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TextIO

import networkx as nx
import numpy as np
import onnx
import onnx_ir as ir

from qpass.ort import session

if TYPE_CHECKING:
    from qpass.config import QuantSection

log = logging.getLogger(__name__)

Method = Literal["minmax", "percentile", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
BINS = 2048
_COARSE, _FINE = 128, 64  # mse: candidate thresholds per side, first over the whole range, then near the best


@dataclass
class Range:
    lo: float
    hi: float

    def union(self, other: Range) -> Range:
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))


def float_values(model: ir.Model) -> list[ir.Value]:
    """Graph inputs and node outputs that are float tensors (the ones that get quantized)."""
    out = [v for v in model.graph.inputs if v.dtype == ir.DataType.FLOAT]
    out += [v for node in model.graph for v in node.outputs if v.dtype == ir.DataType.FLOAT]
    return out


def activation_bits(model: ir.Model, quant: QuantSection | None = None) -> dict[str, int]:
    """Bits of the integer type the solver will give each float tensor (16 for a tensor in an int16
    group: int16 activations, a precision override, an LSTM cell state). mse sizes its rounding error
    with these; the groups are the solver's own (`build_graph`), so the two cannot disagree."""
    from qpass.solver.plan import build_graph  # plan imports this module

    g = build_graph(model, {v.name: Range(0.0, 0.0) for v in float_values(model)}, quant)
    bits: dict[str, int] = {}
    for comp in nx.connected_components(g):
        wide = any(g.nodes[n]["wide"] or g.nodes[n]["dtype"] == "int16" for n in comp)
        bits.update(dict.fromkeys(comp, 16 if wide else 8))
    return bits


class Histogram:
    """Counts of a tensor's values in `bins` equal bins on [lo, lo + bins·width); the bins always cover
    0 and every value seen. A value outside makes the bins f times wider (f the smallest integer that
    covers it) with edges kept on old edges, so the merge of old bins is exact. Until a nonzero value
    arrives there are no bins, only a count of zeros. The exact min and max are kept too."""

    def __init__(self, bins: int = BINS) -> None:
        if bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, not {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, np.float64)
        self.lo = 0.0
        self.width = 0.0  # 0: no bins yet (every value so far was 0)
        self.zeros = 0
        self.min, self.max = math.inf, -math.inf

    @property
    def total(self) -> float:
        return float(self.counts.sum()) + self.zeros

    @property
    def nbytes(self) -> int:
        """Size of the state: fixed by `bins`, independent of how many values went in."""
        return self.counts.nbytes + 6 * 8

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if self.width == 0.0:
            if hi == lo:
                self.zeros += x.size
                return
            self.lo, self.width = lo, (hi - lo) / self.bins
        elif lo < self.lo or hi > self.lo + self.bins * self.width:
            self._widen(lo, hi)
        if self.zeros:
            self.counts[self._index(np.zeros(1))] += self.zeros
            self.zeros = 0
        self.counts += np.bincount(self._index(x), minlength=self.bins)

    def _index(self, x: np.ndarray) -> np.ndarray:
        idx = np.floor((x - self.lo) / self.width)
        return np.clip(idx, 0, self.bins - 1).astype(np.intp)

    def _widen(self, lo: float, hi: float) -> None:
        """Re-bin to cover [lo, hi] and the occupied old bins, f old bins per new bin, on old edges.

        Only occupied bins need covering, so the width stays under twice the span of the data."""
        n, w = self.bins, self.width
        used = np.flatnonzero(self.counts)
        first = min(int(used[0]), math.floor((lo - self.lo) / w))  # in old bins, from the old lo
        end = max(int(used[-1]) + 1, math.ceil((hi - self.lo) / w))
        f = max(1, math.ceil((end - first) / n))
        new_lo = self.lo + first * w
        if f <= n:  # old bin i lands whole in new bin (i − first) // f
            idx = (used - first) // f
        else:  # old bins narrower than a new bin by more than n: each goes where its centre falls
            idx = np.floor((self.lo + (used + 0.5) * w - new_lo) / (f * w)).astype(np.intp)
        counts = np.zeros(n, np.float64)
        np.add.at(counts, np.clip(idx, 0, n - 1), self.counts[used])
        self.counts, self.lo, self.width = counts, new_lo, f * w

    def centres_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width, self.counts

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the values lie (linear inside a bin), within [min, max]."""
        if self.width == 0.0:
            return 0.0
        cdf = np.cumsum(self.counts)
        target = q * cdf[-1]
        i = min(int(np.searchsorted(cdf, target)), self.bins - 1)
        before = cdf[i - 1] if i else 0.0
        frac = (target - before) / self.counts[i] if self.counts[i] else 0.0
        return float(np.clip(self.lo + (i + frac) * self.width, self.min, self.max))


def percentile_range(h: Histogram, percentile: float) -> Range:
    """The central `percentile` % of the values: (100 − p)/2 % cut from each tail; lo ≤ 0 ≤ hi."""
    if percentile >= 100.0 or h.width == 0.0:
        lo, hi = h.min, h.max
    else:
        tail = (100.0 - percentile) / 200.0
        lo, hi = h.quantile(tail), h.quantile(1.0 - tail)
    return Range(min(lo, 0.0), max(hi, 0.0))


def mse_range(h: Histogram, bits: int = 8) -> Range:
    """The clip range [a, b] ∋ 0 minimizing rounding + clipping squared error on a 2^bits-level grid.

    Each bin's values are taken as spread evenly over the bin (cut to the exact [min, max]), so the
    clipping error is right to within a bin even when a threshold falls inside one, as int16 needs.
    """
    if h.width == 0.0:
        return Range(0.0, 0.0)
    edges = h.lo + np.arange(h.bins + 1) * h.width
    lo_s, hi_s = np.clip(edges[:-1], h.min, h.max), np.clip(edges[1:], h.min, h.max)
    n, total = h.counts, h.total
    levels = float(2**bits - 1)
    lo_end, hi_end = min(h.min, 0.0), max(h.max, 0.0)

    def best(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        na, ea = _clipped_below(lo_s, hi_s, n, a)
        nb, eb = _clipped_below(-hi_s[::-1], -lo_s[::-1], n[::-1], -b)  # above b = below −b, mirrored
        step = (b[None, :] - a[:, None]) / levels
        inside = np.maximum(total - na[:, None] - nb[None, :], 0.0)
        err = inside * step * step / 12.0 + ea[:, None] + eb[None, :]
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        return float(a[i]), float(b[j])

    a, b = best(np.linspace(lo_end, 0.0, _COARSE + 1), np.linspace(0.0, hi_end, _COARSE + 1))
    da, db = -lo_end / _COARSE, hi_end / _COARSE
    a, b = best(np.linspace(max(lo_end, a - da), min(0.0, a + da), _FINE + 1),
                np.linspace(max(0.0, b - db), min(hi_end, b + db), _FINE + 1))
    return Range(a, b)


def _clipped_below(lo_s: np.ndarray, hi_s: np.ndarray, n: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold in `a`: how many values lie under it and Σ (x − a)² over them, bin j's n[j]
    values spread evenly over [lo_s[j], hi_s[j]] (ascending, non-overlapping; a zero-width bin is a point)."""
    width = hi_s - lo_s
    mean = (lo_s + hi_s) / 2
    c0 = np.concatenate([[0.0], np.cumsum(n)])
    c1 = np.concatenate([[0.0], np.cumsum(n * mean)])
    c2 = np.concatenate([[0.0], np.cumsum(n * (mean * mean + width * width / 12))])
    k = np.searchsorted(hi_s, a, side="right")  # bins j < k lie wholly under a
    count = c0[k]
    err = np.maximum(c2[k] - 2 * a * c1[k] + a * a * c0[k], 0.0)
    kk = np.minimum(k, len(n) - 1)  # bin k straddles a (if k < bins): the part under a is [lo, a]
    nk = np.where(k < len(n), n[kk], 0.0)
    under = np.maximum(a - lo_s[kk], 0.0)
    point = width[kk] <= 0
    density = nk / np.where(point, 1.0, width[kk])
    count = count + np.where(point, np.where(under > 0, nk, 0.0), density * under)
    err = err + np.where(point, np.where(under > 0, nk * under * under, 0.0), density * under**3 / 3)
    return count, err


class Calibrator:
    """The streaming state of one calibration method over many tensors; `ranges()` gives the result."""

    def __init__(self, method: Method = "minmax", *, percentile: float = 99.99,
                 bits: int | Mapping[str, int] = 8, bins: int = BINS) -> None:
        if method not in METHODS:
            raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile {percentile}: expected 50 < p <= 100")
        self.method, self.percentile, self.bits, self.bins = method, percentile, bits, bins
        self.minmax: dict[str, Range] = {}
        self.histograms: dict[str, Histogram] = {}
        self.samples = 0

    @property
    def state_bytes(self) -> int:
        """Memory held between batches: constant in the number of samples."""
        return 16 * len(self.minmax) + sum(h.nbytes for h in self.histograms.values())

    def observe(self, name: str, arrays: list[np.ndarray]) -> None:
        """Fold one batch worth of a tensor's values into its state."""
        if self.method == "minmax":
            r = Range(float(min(a.min() for a in arrays)), float(max(a.max() for a in arrays)))
            self.minmax[name] = self.minmax[name].union(r) if name in self.minmax else r
        else:
            self.histograms.setdefault(name, Histogram(self.bins)).add(
                np.concatenate([a.reshape(-1) for a in arrays]))

    def ranges(self) -> dict[str, Range]:
        if self.method == "minmax":
            return dict(self.minmax)
        if self.method == "percentile":
            return {n: percentile_range(h, self.percentile) for n, h in self.histograms.items()}
        bits = self.bits
        return {n: mse_range(h, bits.get(n, 8) if isinstance(bits, Mapping) else bits)
                for n, h in self.histograms.items()}

    def feed(self, model: ir.Model, batches: Iterable[np.ndarray], *, total: int | None = None,
             progress: bool | None = None) -> None:
        """Run `model` on every sample of `batches` and observe every float tensor, one batch at a time.

        The graph's batch is fixed, so samples run in groups of that size (a remainder that does not
        fill one is dropped). `total` (samples, when known) sizes the progress bar; `progress` None
        shows it only when stderr is a terminal.
        """
        values = float_values(model)
        outputs = {v.name for v in model.graph.outputs}
        extra = [onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None)
                 for v in values if v.name not in outputs and not v.is_graph_input()]
        sess = session(model, extra)
        in_name = model.graph.inputs[0].name
        in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)
        names = [o.name for o in sess.get_outputs()]
        bar = Progress(total, f"calibrating ({self.method})", enabled=progress)
        try:
            for batch in batches:
                samples = batch.reshape((-1, *in_shape[1:]))
                seen: dict[str, list[np.ndarray]] = {n: [] for n in [in_name, *names]}
                for start in range(0, len(samples) - in_shape[0] + 1, in_shape[0]):
                    x = samples[start:start + in_shape[0]].astype(np.float32)
                    seen[in_name].append(x)
                    for n, arr in zip(names, sess.run(names, {in_name: x}), strict=True):
                        seen[n].append(arr)
                if seen[in_name]:
                    for n, arrays in seen.items():
                        self.observe(n, arrays)
                    self.samples += len(seen[in_name]) * in_shape[0]
                bar.update(len(samples))
        finally:
            bar.close()
        log.info("calibration (%s): %d samples, %d tensors", self.method, self.samples,
                 len(self.minmax) + len(self.histograms))


def calibrate(model: ir.Model, batches: Iterable[np.ndarray], *, method: Method = "minmax",
              percentile: float = 99.99, bits: int | Mapping[str, int] = 8, bins: int = BINS,
              total: int | None = None, progress: bool | None = None) -> dict[str, Range]:
    """The range of every float tensor of `model` over the samples in `batches`, by `method`.

    `bits` (one width, or per tensor name with 8 for the others) is the integer width mse optimizes
    for; `bins` the histogram size of percentile and mse.
    """
    cal = Calibrator(method, percentile=percentile, bits=bits, bins=bins)
    cal.feed(model, batches, total=total, progress=progress)
    return cal.ranges()


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal so CI logs stay clean."""

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.total, self.label, self.done = total, label, 0
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            self._draw(now)

    def close(self) -> None:
        if self.enabled and (self.drawn or self.done):
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            text = f"{self.label} [{'#' * int(frac * 30):<30}] {self.done}/{self.total} samples"
        else:
            text = f"{self.label} {self.done} samples"
        self.stream.write(f"\r{text}  {rate:.0f}/s ")
        self.stream.flush()
        self.drawn = True
