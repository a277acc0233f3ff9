"""What a run tells its user: per-layer rows, warnings, quality gates, `qpass compare`, report.json's schema
and report.html opened in a real headless chromium. examples/har runs once (CLI, in-process); the
calibration warnings run examples/digits through the Python API on broken calibration data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import qpass
from qpass.cli import format_report, main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAR_PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-batchnorm", "keras-lstm",
              "unroll-lstm", "matmul-to-gemm", "simplify-layout"]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def har(tmp_path_factory) -> tuple[object, Path, dict]:
    """examples/har through `qpass run`, with one gate it passes and one it cannot (max |err| 1e-6)."""
    work = tmp_path_factory.mktemp("har_report")
    for f in ("har.h5", "calib.npz", "test.npz"):
        shutil.copy(ROOT / "examples" / "har" / f, work / f)
    (work / "pipeline.yaml").write_text(yaml.safe_dump({
        "model": {"path": "har.h5"}, "calibration": {"path": "calib.npz", "key": "x"}, "passes": HAR_PASSES,
        "codegen": {"name": "har", "output_dir": "out"},
        "compare": {"path": "test.npz", "key": "x", "labels_key": "y"},
        "gates": {"min_argmax_agreement": 0.9, "max_abs_error": 1e-6}}))
    result = _runner().invoke(main, ["run", str(work / "pipeline.yaml"), "-q"])
    out = work / "out"
    return result, out, json.loads((out / "report.json").read_text())


def test_a_missed_gate_exits_1_and_says_which(har) -> None:
    result, _, report = har
    assert result.exit_code == 1, result.output
    assert report["gates"]["min_argmax_agreement"]["passed"] is True
    assert report["gates"]["max_abs_error"] == {"limit": 1e-6, "value": report["comparisons"]["c_vs_float"][
        "max_abs_error"], "passed": False}
    assert "quality gates: FAILED" in result.stdout and "max_abs_error FAILED" in result.stdout


def test_the_table_explains_itself(har) -> None:
    result, out, _ = har
    assert "QDQ sim = onnxruntime on the quantize/dequantize graph" in result.stdout
    assert "errors in softmax probability units" in result.stdout
    assert "> 30 dB good" in result.stdout
    assert str(out / "report.html") in result.stdout


def test_every_kernel_has_a_row_over_all_samples(har) -> None:
    _, _, report = har
    rows = report["layers"]
    assert [r["kernel"] for r in rows] == report["kernels"] and rows[-1]["kernel"] == "softmax"
    for r in rows:
        assert r["tensor"] is not None and r["samples"] == report["samples"] == 40
        lo, hi = r["representable_range"]
        assert lo <= r["calibrated_range"][0] + r["scale"] and r["calibrated_range"][1] - r["scale"] <= hi
        assert r["observed_range"][0] <= r["observed_range"][1] and 0.0 <= r["saturated_fraction"] <= 1.0
        assert r["sqnr_db"] is None or r["sqnr_db"] > 15.0, r
    assert rows[-1]["sqnr_db"] > 30.0 and rows[-1]["calibrated_range"][1] <= 1.0


def test_report_json_matches_its_published_schema(har) -> None:
    _, out, report = har
    schema = json.loads(files("qpass").joinpath("report.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(json.loads((out / "report.json").read_text()))
    broken = dict(report, warnings="none")
    del broken["layers"]
    assert {e.validator for e in validator.iter_errors(broken)} >= {"required", "type"}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tools/setup-debian.sh installs it)")
def test_report_html_loads_in_headless_chromium(har, tmp_path) -> None:
    _, out, report = har
    page = out / "report.html"
    html = page.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", html)  # nothing loads from a network
    assert not re.search(r"built-in method|bound method| at 0x[0-9a-f]+", html)  # no Python object leaked in
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("summary", "warnings", "pipeline", "layers", "comparison", "c-code"):
        assert f'<section id="{section}">' in dom.stdout, section
    assert dom.stdout.count("<svg") >= 5  # SQNR bars, error histogram, 2 confusion matrices, memory plan
    for name in ("strip-dropout", "unroll-lstm", "QDQ simulation vs float", "Memory plan", "softmax"):
        assert name in dom.stdout
    assert f"{report['memory']['arena_bytes']} B" in dom.stdout
    assert not re.search(r"Uncaught|Failed to load resource|ERR_FILE_NOT_FOUND|:CONSOLE\(\d+\)\] .*[Ee]rror",
                         dom.stderr), dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    proc = subprocess.run([*base, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 50_000, proc.stderr[-2000:]


def test_compare_reruns_an_existing_build_on_new_data(har, tmp_path) -> None:
    _, out, report = har
    test = ROOT / "examples" / "har" / "test.npz"
    same = _runner().invoke(main, ["compare", str(out), "--data", str(test), "--key", "x", "--labels-key", "y"])
    assert same.exit_code == 1, same.output  # the build's gates hold on the new figures too: max |err| fails
    c = report["comparisons"]["c_vs_float"]
    assert re.search(rf"C vs float\s+{c['argmax_agreement'] * 100:.2f}%\s+{c['max_abs_error']:.5f}\s+"
                     rf"{c['mean_abs_error']:.6f}\s+40", same.stdout), same.stdout
    assert "C == runtime_ref bit for bit: yes (40/40 samples)" in same.stdout

    lenient = tmp_path / "build"
    shutil.copytree(out, lenient)
    rep = json.loads((lenient / "report.json").read_text())
    rep["gates"]["max_abs_error"]["limit"] = 0.5
    (lenient / "report.json").write_text(json.dumps(rep))
    data = np.load(test)
    np.save(tmp_path / "shifted.npy", data["x"][:12] * 1.5)
    before = sorted(p.name for p in lenient.iterdir())
    shifted = _runner().invoke(main, ["compare", str(lenient), "--data", str(tmp_path / "shifted.npy")])
    assert shifted.exit_code == 0, shifted.output
    assert "C == runtime_ref bit for bit: yes (12/12 samples)" in shifted.stdout
    assert sorted(p.name for p in lenient.iterdir()) == before  # writes nothing

    bad = _runner().invoke(main, ["compare", str(tmp_path), "--data", str(test)])
    assert bad.exit_code == 2 and "not a qpass output folder" in bad.stderr


@pytest.mark.parametrize("data, expected", [
    (lambda x: np.zeros_like(x), r"the network input 'pixels' is 0 in every calibration sample"),
    (lambda x: x * np.float32(1e30), r"the network input 'pixels' reaches 1e\+30"),
], ids=["all-zero", "1e30"])
def test_calibration_that_gives_a_useless_model_is_warned(tmp_path, data, expected, caplog) -> None:
    for f in ("digits.h5", "test.npz"):
        shutil.copy(ROOT / "examples" / "digits" / f, tmp_path / f)
    calib = np.load(ROOT / "examples" / "digits" / "calib.npz")["x"][:64]
    np.save(tmp_path / "calib.npy", data(calib))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({
        "model": {"path": "digits.h5"}, "calibration": {"path": "calib.npy"},
        "passes": ["strip-dropout", "fold-constants", "fold-batchnorm", "matmul-to-gemm"],
        "codegen": {"name": "digits", "output_dir": "out"},
        "compare": {"path": "test.npz", "key": "x", "labels_key": "y", "limit": 60, "layer_samples": 20}}))
    pipe = qpass.Pipeline.from_yaml(tmp_path / "pipeline.yaml")
    report = qpass.run(pipe)
    assert any(re.search(expected, w) for w in report["warnings"]), report["warnings"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["warnings"] == report["warnings"]
    assert all("\n" not in w for w in report["warnings"])
    assert {r.getMessage() for r in caplog.records if r.levelname == "WARNING"} >= set(report["warnings"])
    assert all(r["samples"] == 20 for r in report["layers"])
    if "is 0 in every" in expected:  # zero calibration: the compare data saturates the hidden layer
        assert any(w.startswith("saturation: kernel") for w in report["warnings"])
        assert max(r["saturated_fraction"] for r in report["layers"]) > 0.01
    printed = format_report(report, tmp_path / "out")
    assert f"warnings ({len(report['warnings'])}):" in printed


def test_version_verbosity_and_help_examples() -> None:
    runner = _runner()
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"qpass {qpass.__version__}"
    for command in ("run", "compare", "passes", "init"):
        helped = runner.invoke(main, [command, "--help"])
        assert helped.exit_code == 0 and "Example:" in helped.stdout and "-q, --quiet" in helped.stdout, command
        assert "1 a quality gate" in helped.stdout or command == "passes"
    assert runner.invoke(main, ["passes", "-v"]).exit_code == 0
    assert runner.invoke(main, ["-q", "passes"]).exit_code == 0


def test_names_from_the_model_are_escaped_in_report_html(har) -> None:
    import onnx_ir as ir

    from qpass.codegen.lower import lower
    from qpass.compare import Outputs
    from qpass.report_html import render_html

    _, out, report = har
    program = lower(ir.load(str(out / "har.qdq.onnx")), "har")
    evil = '</td><script>alert("x")</script><img src=http://evil.invalid/x.png>'
    program.steps[0].origin = evil
    report = json.loads(json.dumps(report))
    report["layers"][0]["node"] = report["passes"][0]["name"] = evil
    report["warnings"] = [f"calibration: {evil}"]
    y = np.random.default_rng(0).dirichlet(np.ones(4), size=10)
    html = render_html(report, Outputs(y, None, y, y, 0), program, None)
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
