"""The real pipeline on examples/digits (Keras MLP → integer C), run once per module with --dump.

Checks the report against the README, that the compiled C equals runtime_ref bit for bit and agrees
with the float model, that the C has no float outside its optional helpers, that every dumped stage is
valid ONNX, and that a failing run leaves nothing behind (and leaves a previous output alone).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"
OUT = "build/digits"


def _project(root: Path, **codegen) -> Path:
    """A copy of examples/digits whose output goes to root/build/digits; returns its pipeline.yaml."""
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("build"))
    path = root / "pipeline.yaml"
    data = yaml.safe_load(path.read_text())
    data["codegen"].update({"output_dir": OUT, **codegen})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path.resolve()


def _staging(out_dir: Path) -> list[str]:
    return [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")] \
        if out_dir.parent.exists() else []


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """`qpass run --dump` on a copy of the example, once: (CliRunner result, output dir)."""
    path = _project(tmp_path_factory.mktemp("digits") / "proj")
    result = run_cli("run", "--dump", str(path))
    return result, path.parent / OUT


@pytest.fixture(scope="module")
def report(digits) -> dict:
    result, out_dir = digits
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads((out_dir / "report.json").read_text())


def _readme_report_keys() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("`report.json`, with these keys"):]
    keys: set[str] = set()
    for line in section.splitlines()[1:]:
        if line.startswith("| ") and not line.startswith(("| key", "| ---")):
            keys |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
        elif keys and not line.startswith("|"):
            break
    return keys


def test_run_prints_the_summary(digits, report):
    result, out_dir = digits
    assert f"qpass: digits -> {out_dir}" in result.stdout
    assert f"C == runtime_ref bit for bit: yes ({report['samples']}/{report['samples']} samples)" in result.stdout
    assert _staging(out_dir) == []


def test_report_has_the_documented_keys(report):
    documented = _readme_report_keys()
    assert {"qpass_version", "samples", "comparisons", "plan", "files"} <= documented  # the parse worked
    assert set(report) == documented  # top level: exactly the README's table; below: at least these
    assert set(report["precision"]) >= {"activations", "weights", "per_channel"}
    assert set(report["comparisons"]) >= {"qdq_vs_float", "runtime_ref_vs_float", "c_vs_float"}
    for m in report["comparisons"].values():
        assert set(m) >= {"argmax_agreement", "max_abs_error", "mean_abs_error", "samples"}
        assert 0.0 <= m["argmax_agreement"] <= 1.0 and m["samples"] == report["samples"]
    assert set(report["accuracy"]) >= {"float", "qdq", "runtime_ref", "c"}
    assert set(report["op_counts"]) >= {"converted", "final"}
    assert [p["name"] for p in report["passes"]] == ["strip-dropout", "fold-constants", "fold-batchnorm",
                                                     "matmul-to-gemm"]
    for p in report["passes"]:
        assert set(p) >= {"name", "modified", "seconds", "op_counts"}
    assert set(report["memory"]) >= {"arena_bytes", "const_bytes"}
    assert set(report["plan"]) >= {"tensors", "rescales_removed", "conflicts"}
    for t in report["plan"]["tensors"].values():
        assert set(t) >= {"dtype", "scale", "zero_point", "range", "group"}


def test_c_is_bit_exact_with_runtime_ref_and_close_to_float(report):
    assert report["samples"] == len(np.load(EXAMPLE / "test.npz")["x"]) == 540
    assert report["c_equals_runtime_ref"] is True
    assert report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.99
    assert report["comparisons"]["runtime_ref_vs_float"] == report["comparisons"]["c_vs_float"]
    assert report["accuracy"]["c"] >= report["accuracy"]["float"] - 0.01


def test_final_float_graph_is_gemm_relu_softmax(report):
    final = report["op_counts"]["final"]
    assert set(final) <= {"Gemm", "Relu", "Softmax"}, final
    assert final.get("Gemm") == 3 and final.get("Softmax") == 1
    assert set(report["op_counts"]["converted"]) - set(final)  # the passes removed something (BN, Dropout)
    assert set(report["kernels"]) <= {"linear", "softmax", "clamp"} and report["kernels"][-1] == "softmax"


def test_output_files(digits, report):
    _, out_dir = digits
    for name in ("digits.c", "digits.h", "digits.qdq.onnx", "report.json"):
        assert (out_dir / name).is_file(), name
    assert sorted(report["files"]) == sorted(p.name for p in out_dir.iterdir() if p.is_file())
    h = (out_dir / "digits.h").read_text()
    assert "void digits_run(const int8_t *input, int8_t *output);" in h
    assert re.search(r"#define DIGITS_INPUT_SIZE 64\b", h) and re.search(r"#define DIGITS_OUTPUT_SIZE 10\b", h)
    assert re.search(rf"#define DIGITS_ARENA_BYTES {report['memory']['arena_bytes']}\b", h)


def _strip_block(text: str, macro: str) -> tuple[str, int]:
    """text without the `#ifdef macro ... #endif` blocks (nesting respected); and how many were removed."""
    kept, depth, removed = [], 0, 0
    for line in text.splitlines():
        directive = line.strip()
        if depth == 0 and directive == f"#ifdef {macro}":
            depth, removed = 1, removed + 1
            continue
        if depth:
            if directive.startswith("#if"):
                depth += 1
            elif directive.startswith("#endif"):
                depth -= 1
            continue
        kept.append(line)
    assert depth == 0, f"unterminated #ifdef {macro}"
    return "\n".join(kept), removed


def test_c_has_no_float_outside_the_helpers(digits):
    _, out_dir = digits
    c = (out_dir / "digits.c").read_text()
    integer_part, blocks = _strip_block(c, "DIGITS_FLOAT_HELPERS")
    assert blocks == 1
    assert re.search(r"\bfloat\b", c)  # the helpers exist, so the strip above matters
    found = [line for line in integer_part.splitlines() if re.search(r"\b(?:float|double)\b", line)]
    assert not found, found
    assert "#include <math.h>" not in c and "malloc" not in c


def test_c_compiles_with_and_without_float_helpers(digits, tmp_path):
    _, out_dir = digits
    flags = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror", "-c"]
    for extra in ([], ["-DDIGITS_FLOAT_HELPERS"]):
        proc = subprocess.run(["gcc", *flags, *extra, "-I", str(out_dir), str(out_dir / "digits.c"), "-o",
                               str(tmp_path / "digits.o")], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (extra, proc.stderr)


def test_dump_writes_numbered_valid_onnx_stages(digits, report):
    _, out_dir = digits
    stages = sorted((out_dir / "stages").glob("*.onnx"))
    names = [p.name for p in stages]
    assert len(stages) == len(report["passes"]) + 3, names  # converted, one per pass, float final, QDQ
    numbers = [int(re.match(r"(\d{2})_[\w.-]+\.onnx$", n).group(1)) for n in names]
    assert numbers == list(range(len(stages))), names
    assert names[0] == "00_converted.onnx" and names[-1].endswith("_qdq.onnx")
    for p in stages:
        onnx.checker.check_model(onnx.load(str(p)), full_check=True)
    qdq_ops = {n.op_type for n in onnx.load(str(stages[-1])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qdq_ops


def test_failing_run_leaves_no_output_and_no_staging(tmp_path):
    path = _project(tmp_path / "proj", cc="false-cc-does-not-exist")
    result = run_cli("run", str(path))
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qpass: error: ") and "false-cc-does-not-exist" in lines[0]
    assert "Traceback" not in result.stderr
    out_dir = path.parent / OUT
    assert not out_dir.exists()
    assert _staging(out_dir) == []


def test_failing_run_keeps_the_previous_output(digits, tmp_path):
    _, previous = digits
    path = _project(tmp_path / "proj", cc="false-cc-does-not-exist")
    out_dir = path.parent / OUT
    shutil.copytree(previous, out_dir)
    before = {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    result = run_cli("run", str(path))
    assert result.exit_code == 2, (result.output, result.exception)
    after = {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in out_dir.parent.iterdir()] == ["digits"]  # no staging, no .old
