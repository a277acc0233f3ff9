"""Calibration: minmax, percentile and mse ranges in bounded memory; data from files and callables.

On the digits example (the real float graph after its passes) and on synthetic data with outliers and
heavy tails, where the reconstruction error of the int8 grid each range gives is measured directly.
"""

from __future__ import annotations

import io
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import yaml
from click.testing import CliRunner

from qpass.cli import main
from qpass.config import CalibrationSection, load_pipeline
from qpass.converters import load_model
from qpass.data import batches, calibration_batches
from qpass.errors import ConfigError
from qpass.ort import session
from qpass.passes.runner import run_passes
from qpass.pipeline import run_pipeline
from qpass.solver.calibrate import Calibrator, Histogram, Range, calibrate, float_values, mse_range
from qpass.solver.plan import asymmetric

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
METHODS = ["minmax", "percentile", "mse"]
SMALL = """<ir_version: 8, opset_import: ["" : 17]>
small (float[1,16] x) => (float[1,8] y) {
    h = Gemm(x, W, b)
    y = Relu(h)
}"""


def recon_mse(x: np.ndarray, r: Range, bits: int = 8) -> float:
    """Mean squared error of x through the asymmetric grid the solver builds on r (clipped outside)."""
    scale, zp = asymmetric(r, f"int{bits}")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return float(np.mean((scale * (q - zp) - x) ** 2))


@pytest.fixture
def small(parse_onnx) -> ir.Model:
    rng = np.random.default_rng(7)
    return parse_onnx(SMALL, W=rng.normal(0, 0.5, (16, 8)).astype(np.float32),
                      b=rng.normal(0, 0.1, 8).astype(np.float32))


def _save(model: ir.Model, path: Path) -> Path:
    onnx.save(ir.serde.serialize_model(model), path)
    return path


# ---------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_float() -> bytes:
    """The digits float graph after the example's passes, as pipeline.py makes it (converted once)."""
    pipe = load_pipeline(DIGITS / "pipeline.yaml")
    model = load_model(pipe.resolve(pipe.model.path), batch_size=pipe.model.batch_size,
                       safe_mode=pipe.model.safe_mode, opset=pipe.model.opset)
    run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent)
    return ir.serde.serialize_model(model).SerializeToString()


def _digits_model(digits_float: bytes) -> ir.Model:
    return ir.serde.deserialize_model(onnx.ModelProto.FromString(digits_float))


@pytest.mark.parametrize("method", METHODS)
def test_digits_each_method(digits_float: bytes, method: str) -> None:
    model = _digits_model(digits_float)
    x = np.load(DIGITS / "calib.npz")["x"]
    ranges = calibrate(model, batches(x, 64), method=method)
    minmax = calibrate(model, batches(x, 64)) if method != "minmax" else ranges
    assert set(ranges) == {v.name for v in float_values(model)}
    in_name, out_name = model.graph.inputs[0].name, model.graph.outputs[0].name
    if method == "minmax":  # exactly what onnxruntime computes
        y = np.concatenate([session(model).run(None, {in_name: s[None]})[0] for s in x])
        assert ranges[in_name] == Range(float(x.min()), float(x.max()))
        assert ranges[out_name] == Range(float(y.min()), float(y.max()))
        return
    for name, r in ranges.items():
        assert r.lo <= 0.0 <= r.hi, (name, r)
        mm = minmax[name]
        assert min(mm.lo, 0.0) <= r.lo and r.hi <= max(mm.hi, 0.0), (name, r, mm)
        assert r.hi > 0.9 * mm.hi or mm.hi <= 0, (name, r, mm)  # digits has no outliers to cut


def _digits_yaml(tmp: Path, **calibration) -> Path:
    cfg = yaml.safe_load((DIGITS / "pipeline.yaml").read_text())
    cfg["model"]["path"] = str(DIGITS / "digits.h5")
    cfg["calibration"] = {"path": str(DIGITS / "calib.npz"), "key": "x", **calibration}
    cfg["compare"]["path"] = str(DIGITS / "test.npz")
    cfg["codegen"]["output_dir"] = str(tmp / "out")
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_digits_pipeline_percentile(tmp_path: Path) -> None:
    report = run_pipeline(load_pipeline(_digits_yaml(tmp_path, method="percentile", percentile=99.9)))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.99


def test_digits_pipeline_mse_from_callable(tmp_path: Path) -> None:
    """method: mse, with the calibration data from a `file.py:function` next to the YAML."""
    (tmp_path / "digits_data.py").write_text(
        "import numpy as np\n\n"
        f"def batches():\n    x = np.load({str(DIGITS / 'calib.npz')!r})['x']\n"
        "    for i in range(0, len(x), 50):\n        yield x[i:i + 50]\n")
    path = _digits_yaml(tmp_path, method="mse")
    cfg = yaml.safe_load(path.read_text())
    cfg["calibration"] = {"path": "digits_data.py:batches", "method": "mse"}
    path.write_text(yaml.safe_dump(cfg))
    report = run_pipeline(load_pipeline(path))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.99


# ---------------------------------------------------------------------------------------------- synthetic


def test_outlier_is_clipped_by_percentile_and_mse(parse_onnx) -> None:
    """One value at 25σ among 1.5 M: minmax keeps it and spreads 255 levels over it; percentile and mse
    cut it. (mse cuts one outlier only when its clipping error, (25 − b)², costs less than the rounding it
    saves on every other value, N·(Δ_minmax² − Δ²)/12: with int8 that needs N above ~800 000.)"""
    model = parse_onnx('<ir_version: 8, opset_import: ["" : 17]>\n'
                       "wide (float[1,512] x) => (float[1,512] y) { y = Relu(x) }")
    x = np.random.default_rng(0).normal(0, 1, (3000, 512)).astype(np.float32)
    x[1234, 5] = 25.0
    got = {m: calibrate(model, batches(x, 256), method=m)["x"] for m in METHODS}
    assert got["minmax"].hi == 25.0
    for m in ("percentile", "mse"):
        assert got[m].lo < -3.0 and 3.0 < got[m].hi < 6.0, (m, got[m])
    assert recon_mse(x, got["mse"]) < 0.5 * recon_mse(x, got["minmax"])


def test_mse_beats_minmax_on_heavy_tails() -> None:
    rng = np.random.default_rng(1)
    for x in (rng.standard_t(3, 200_000), rng.laplace(0, 1, 200_000), np.maximum(rng.standard_t(2, 200_000), 0)):
        h = Histogram()
        for chunk in np.array_split(x, 40):
            h.add(chunk)
        minmax = Range(float(x.min()), float(x.max()))
        r8, r16 = mse_range(h, 8), mse_range(h, 16)
        assert recon_mse(x, r8) < 0.95 * recon_mse(x, minmax)
        assert r8.lo <= 0.0 <= r8.hi
        # 16 bits: rounding is 65 536 times finer, so clipping barely pays; never much worse than minmax
        assert r16.hi >= r8.hi and r16.lo <= r8.lo
        assert recon_mse(x, r16, 16) < 1.01 * recon_mse(x, minmax, 16)


def test_percentile_cuts_each_tail_and_keeps_zero() -> None:
    x = np.random.default_rng(2).uniform(1.0, 2.0, 100_000)  # all positive: 0 stays in the range
    h = Histogram()
    h.add(x)
    c = Calibrator("percentile", percentile=90.0)
    c.histograms["t"] = h
    r = c.ranges()["t"]
    assert r.lo == 0.0 and r.hi == pytest.approx(np.quantile(x, 0.95), abs=2 * h.width)
    c.percentile = 100.0
    assert c.ranges()["t"] == Range(0.0, float(x.max()))
    y = np.random.default_rng(3).normal(1.0, 1.0, 100_000)  # both signs: (100 − p)/2 % off each tail
    h = Histogram()
    h.add(y)
    c.histograms["t"], c.percentile = h, 98.0
    r = c.ranges()["t"]
    assert r.lo == pytest.approx(np.quantile(y, 0.01), abs=h.width)
    assert r.hi == pytest.approx(np.quantile(y, 0.99), abs=h.width)


def test_histogram_widens_exactly() -> None:
    """Streamed chunks of growing spread (both sides): counts are the direct histogram on the final bins,
    quantiles match numpy to a bin, and the bins span less than twice the data."""
    rng = np.random.default_rng(3)
    chunks = [rng.normal(0.3 * k, 1.2**k, 5000) for k in range(25)]
    h = Histogram(256)
    h.add(np.zeros(10))  # zeros first: no bins yet
    for c in chunks:
        h.add(c)
    x = np.concatenate([np.zeros(10), *chunks])
    assert h.total == x.size and (h.min, h.max) == (x.min(), x.max())
    span = max(x.max(), 0) - min(x.min(), 0)
    assert h.bins * h.width < 2 * span
    direct = np.bincount(np.clip(np.floor((x - h.lo) / h.width), 0, h.bins - 1).astype(int), minlength=h.bins)
    assert np.abs(h.counts - direct).sum() <= 4  # only values within rounding of an edge may differ
    for q in (0.001, 0.1, 0.5, 0.9, 0.999):
        assert h.quantile(q) == pytest.approx(np.quantile(x, q), abs=h.width)


def test_memory_is_bounded(small: ir.Model, tmp_path: Path) -> None:
    """20 000 samples from a callable generator: the state is the same size as after 2 000."""
    (tmp_path / "stream.py").write_text(
        "import numpy as np\n\n"
        "def samples(n):\n    rng = np.random.default_rng(5)\n"
        "    for i in range(0, n, 1000):\n        yield rng.standard_t(3, (1000, 16)).astype(np.float32)\n\n"
        "def small():\n    return samples(2000)\n\ndef large():\n    return samples(20000)\n")
    state, peak = {}, {}
    for fn in ("small", "large"):
        section = CalibrationSection(path=f"stream.py:{fn}", batch_size=128)
        data = calibration_batches(section, (16,), base_dir=tmp_path, yaml_file="test.yaml")
        cal = Calibrator("mse")
        tracemalloc.start()
        cal.feed(small, data)
        peak[fn] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        state[fn] = cal.state_bytes
        assert cal.samples == {"small": 2000, "large": 20000}[fn]
        assert all(h.total == cal.samples * n for h, n in zip(cal.histograms.values(), (16, 8, 8), strict=True))
    assert state["small"] == state["large"] == 3 * Histogram().nbytes
    assert peak["large"] < 1.5 * peak["small"]


# ---------------------------------------------------------------------------------------------- data and config


def _project(tmp_path: Path, small: ir.Model, calibration: dict, compare: bool = True) -> Path:
    _save(small, tmp_path / "small.onnx")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "test.npz", x=rng.normal(0, 1, (40, 16)).astype(np.float32))
    (tmp_path / "gen.py").write_text(
        "import numpy as np\n\n"
        "def batches():\n    rng = np.random.default_rng(0)\n"
        "    for _ in range(5):\n        yield rng.normal(0, 1, (100, 16)).astype(np.float32)\n\n"
        "def wrong_shape():\n    yield np.zeros((10, 15), np.float32)\n\n"
        "def broken():\n    yield np.zeros((10, 16), np.float32)\n    raise RuntimeError('disk gone')\n\n"
        "NOT_CALLABLE = 3\n")
    cfg = {"model": "small.onnx", "calibration": calibration, "codegen": {"name": "small", "output_dir": "out"}}
    if compare:
        cfg["compare"] = {"path": "test.npz", "key": "x"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_callable_from_file_through_load_pipeline(small: ir.Model, tmp_path: Path) -> None:
    pipe = load_pipeline(_project(tmp_path, small, {"path": "gen.py:batches", "method": "mse", "limit": 450,
                                                    "batch_size": 64}))
    assert pipe.calibration.method == "mse" and pipe.calibration.function is not None
    data = calibration_batches(pipe.calibration, (16,), base_dir=pipe.source.parent, yaml_file=str(pipe.source))
    got = list(data)
    assert data.total is None and sum(len(b) for b in got) == 450
    assert max(len(b) for b in got) == 64 and all(b.dtype == np.float32 and b.shape[1:] == (16,) for b in got)
    ranges = calibrate(small, calibration_batches(pipe.calibration, (16,), base_dir=pipe.source.parent,
                                                  yaml_file=str(pipe.source)), method="mse")
    assert set(ranges) == {"x", "h", "y"}


def test_npy_file_batches(tmp_path: Path) -> None:
    x = np.arange(70 * 3, dtype=np.float64).reshape(70, 3)
    np.save(tmp_path / "d.npy", x)
    data = calibration_batches(CalibrationSection(path="d.npy", batch_size=32, limit=65), (3,), base_dir=tmp_path,
                               yaml_file="p.yaml")
    got = list(data)
    assert data.total == 65 and [len(b) for b in got] == [32, 32, 1]
    np.testing.assert_array_equal(np.concatenate(got), x[:65].astype(np.float32))


@pytest.mark.parametrize(("spec", "fragment"), [
    ("gen.py:wrong_shape", r"shape \(10, 15\)"),
    ("gen.py:broken", "RuntimeError"),
])
def test_bad_batches_name_calibration_path(small: ir.Model, tmp_path: Path, spec: str, fragment: str) -> None:
    pipe = load_pipeline(_project(tmp_path, small, {"path": spec}))
    data = calibration_batches(pipe.calibration, (16,), base_dir=tmp_path, yaml_file=str(pipe.source))
    with pytest.raises(ConfigError, match=fragment) as err:
        calibrate(small, data)
    assert err.value.key == "calibration.path"


@pytest.mark.parametrize(("calibration", "key", "fragment"), [
    ({"path": "calib.npz", "method": "kl"}, "calibration.method", "minmax"),
    ({"path": "gen.py:batches", "method": "percentile", "percentile": 50}, "calibration.percentile", "50"),
    ({"path": "gen.py:batches", "percentile": 99.0}, "calibration.percentile", "method: percentile"),
    ({"path": "gen.py:nothing"}, "calibration.path", "no attribute 'nothing'"),
    ({"path": "gen.py:NOT_CALLABLE"}, "calibration.path", "not a function"),
    ({"path": "missing.py:batches"}, "calibration.path", "does not exist"),
    ({"path": "no_such_module_qpass:batches"}, "calibration.path", "cannot import"),
    ({"path": "gen.py:batches", "key": "x"}, "calibration.key", "callable"),
])
def test_config_errors(small: ir.Model, tmp_path: Path, calibration: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        load_pipeline(_project(tmp_path, small, calibration))
    assert err.value.key == key


def test_callable_needs_compare_data(small: ir.Model, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="required") as err:
        load_pipeline(_project(tmp_path, small, {"path": "gen.py:batches"}, compare=False))
    assert err.value.key == "compare"


def test_bad_method_exits_2_through_the_cli(small: ir.Model, tmp_path: Path) -> None:
    path = _project(tmp_path, small, {"path": "gen.py:batches", "method": "entropy"})
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "calibration.method" in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- progress


def test_progress_is_silent_without_a_terminal(small: ir.Model, capfd) -> None:
    x = np.random.default_rng(0).normal(0, 1, (300, 16)).astype(np.float32)
    calibrate(small, batches(x, 64), method="percentile", total=len(x))
    assert capfd.readouterr().err == ""


def test_progress_draws_on_a_terminal(small: ir.Model, monkeypatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    x = np.random.default_rng(0).normal(0, 1, (300, 16)).astype(np.float32)
    calibrate(small, batches(x, 64), total=len(x))
    out = tty.getvalue()
    assert "calibrating (minmax)" in out and "300/300 samples" in out and out.endswith("\n")
