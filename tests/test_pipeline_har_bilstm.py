"""examples/har_bilstm (a stacked bidirectional LSTM trained on BasicMotions) end to end at int8 and int16.

Acceptance: C equal to runtime_ref on every test case; argmax agreement with the float model >= 99 % at int8
and >= 99.9 % at int16 (40 test cases: every one at int16); three lstm kernel calls (forward, reverse, top).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "har_bilstm"


def _run(tmp: Path, precision: str) -> tuple[dict, Path]:
    work = tmp / "har_bilstm"
    shutil.copytree(EXAMPLE, work)
    yaml = work / "pipeline.yaml"
    text = re.sub(r"output_dir: .*", "output_dir: out", yaml.read_text())
    yaml.write_text(text.replace("activations: int8", f"activations: {precision}"))
    return run_pipeline(load_pipeline(yaml)), work / "out"


@pytest.mark.parametrize(("precision", "agreement"), [
    ("int8", 0.99), pytest.param("int16", 0.999, marks=pytest.mark.slow)])  # int16: ~1 min more
def test_har_bilstm_example(tmp_path: Path, example_run, precision: str, agreement: float) -> None:
    report, out = example_run("har_bilstm") if precision == "int8" else _run(tmp_path, precision)  # int8: shared
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["samples"] == 40 and c["argmax_agreement"] >= agreement, c
    assert c["max_abs_error"] < (0.05 if precision == "int8" else 0.01), c
    assert not {"Loop", "LSTM", "ReverseSequence", "Slice"} & set(report["op_counts"]["final"])
    source = (out / "har_bilstm.c").read_text()
    assert len(re.findall(r"^\s+qp_l\d+_lstm\(", source, flags=re.M)) == 3
