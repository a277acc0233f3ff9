"""examples/gru (a GRU into a bidirectional GRU, trained on BasicMotions, Keras .h5) end to end.

Acceptance: C equal to runtime_ref on every test case; argmax agreement with the float model >= 99 % at int8 and
>= 99.9 % at int16 (40 test cases: every one at int16); three gru kernel calls (first GRU, forward, reverse) and
no Loop, GRU or ReverseSequence left.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gru"


def _run(tmp: Path, activations: str, weights: str, model: str = "gru.h5") -> tuple[dict, Path]:
    work = tmp / "gru"
    shutil.copytree(EXAMPLE, work)
    if model == "gru.keras":  # the same trained model saved in the Keras 3 format
        import keras

        keras.saving.load_model(work / "gru.h5", compile=False).save(work / model)
    elif model == "gru.onnx":  # the tf2onnx export of it, as a user would hand it over
        import onnx_ir as ir

        from qpass.converters import load_model

        ir.save(load_model(work / "gru.h5"), work / model)
    yaml = work / "pipeline.yaml"
    text = re.sub(r"output_dir: .*", "output_dir: out", yaml.read_text()).replace("path: gru.h5", f"path: {model}")
    text = text.replace("activations: int8", f"activations: {activations}").replace("weights: int8",
                                                                                     f"weights: {weights}")
    yaml.write_text(text)
    return run_pipeline(load_pipeline(yaml)), work / "out"


@pytest.mark.parametrize(("activations", "weights", "agreement", "max_err"), [
    ("int8", "int8", 0.99, 0.06), pytest.param("int16", "int16", 0.999, 0.005, marks=pytest.mark.slow)])
def test_gru_example(tmp_path: Path, example_run, activations: str, weights: str, agreement: float,
                     max_err: float) -> None:
    shipped = (activations, weights) == ("int8", "int8")  # the session's run, shared with test_arena
    report, out = example_run("gru") if shipped else _run(tmp_path, activations, weights)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["samples"] == 40 and c["argmax_agreement"] >= agreement, c
    assert c["max_abs_error"] < max_err, c
    assert not {"Loop", "GRU", "ReverseSequence"} & set(report["op_counts"]["final"])
    source = (out / "har_gru.c").read_text()
    assert len(re.findall(r"^\s+qp_l\d+_gru\(", source, flags=re.M)) == 3


@pytest.mark.slow  # ~30 s each: the same model through the .keras and the .onnx routes
@pytest.mark.parametrize("model", ["gru.keras", "gru.onnx"])
def test_gru_example_other_formats(tmp_path: Path, model: str) -> None:
    report, out = _run(tmp_path, "int8", "int8", model)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["samples"] == 40 and c["argmax_agreement"] >= 0.99, c
    assert len(re.findall(r"^\s+qp_l\d+_gru\(", (out / "har_gru.c").read_text(), flags=re.M)) == 3
