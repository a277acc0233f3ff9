"""examples/ds_tcn (a DS-TCN-style streaming gesture model on real BasicMotions data) end to end: int8 and
int16 from the .h5, and int8 from the tf2onnx .onnx of the same model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx_ir as ir
import pytest

from qpass.config import load_pipeline
from qpass.converters import load_model
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
AGREEMENT = {"int8": 0.99, "int16": 0.999}


@pytest.fixture(scope="module", params=[("int8", "h5"), ("int16", "h5"), ("int8", "onnx")])
def ds_tcn(request, tmp_path_factory, example_run) -> tuple[str, dict]:
    """The example as shipped (.h5), at int8 and int16, and from the tf2onnx .onnx of the same Keras model."""
    acts, route = request.param
    if (acts, route) == ("int8", "h5"):
        return acts, example_run("ds_tcn")[0]  # the session's run, shared with test_arena
    work = tmp_path_factory.mktemp(f"ds_tcn_{acts}_{route}")
    shutil.copytree(ROOT / "examples" / "ds_tcn", work / "ds_tcn")
    yaml = work / "ds_tcn" / "pipeline.yaml"
    text = re.sub(r"output_dir: .*", "output_dir: out", yaml.read_text())
    if route == "onnx":
        proto = ir.serde.serialize_model(load_model(work / "ds_tcn" / "ds_tcn.h5"))
        (work / "ds_tcn" / "ds_tcn.onnx").write_bytes(proto.SerializeToString())
        text = text.replace("path: ds_tcn.h5", "path: ds_tcn.onnx")
    yaml.write_text(re.sub(r"activations: int8", f"activations: {acts}", text))
    return acts, run_pipeline(load_pipeline(yaml))


def test_ds_tcn_c_is_bit_exact_and_agrees_with_float(ds_tcn) -> None:
    acts, report = ds_tcn
    assert report["precision"]["activations"] == acts
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["samples"] == 40
    assert c["argmax_agreement"] >= AGREEMENT[acts], c
    assert c["max_abs_error"] < (0.03 if acts == "int8" else 0.003), c
    assert report["accuracy"]["c"] >= report["accuracy"]["float"] - 0.025


def test_ds_tcn_folds_pads_and_batchnorms_into_the_convs(ds_tcn) -> None:
    _, report = ds_tcn
    final = report["op_counts"]["final"]
    assert not {"Pad", "Mul", "Add", "BatchNormalization"} & set(final), final
    assert report["kernels"].count("conv1d") == 7 and report["kernels"].count("pool") == 1
