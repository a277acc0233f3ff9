"""fuse-gelu, and Keras `gelu` end to end: tf2onnx's Erfc (through qpass's handler) → one Gelu table in C."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qpass.converters.keras import TF_OP_HANDLERS

# PyTorch's opset-17 GELU export: x·0.5·(1 + erf(x/√2)), behind a ReduceMean (whose axes move to an input
# when the opset is raised to 20 for Gelu)
TORCH_GELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 6] x) => (float[1, 6] y) {
    d = Div(x, sq2)
    e = Erf(d)
    a = Add(e, one)
    m = Mul(x, a)
    g = Mul(m, half)
    y = ReduceMean <axes = [1], keepdims = 0> (g)
}
"""


def _constants(half: float = 0.5) -> dict[str, np.ndarray]:
    return {"sq2": np.array(math.sqrt(2.0), np.float32), "one": np.array([1.0], np.float32),
            "half": np.array(half, np.float32)}


def test_erf_chain_becomes_one_gelu(parse_onnx, check_pass, rng) -> None:
    model = parse_onnx(TORCH_GELU, **_constants())
    result = check_pass("fuse-gelu", model, rng.normal(0, 2, (1, 4, 6)).astype(np.float32), modified=True)
    assert result.after == {"Gelu": 1, "ReduceMean": 1}, result.after
    assert model.opset_imports[""] == 20
    reduce = next(n for n in model.graph if n.op_type == "ReduceMean")
    assert "axes" not in reduce.attributes and len(reduce.inputs) == 2  # the opset-18 form


def test_near_gelu_is_left_alone(parse_onnx, check_pass, rng) -> None:
    model = parse_onnx(TORCH_GELU, **_constants(half=0.6))  # 0.6·x·(1 + erf(x/√2)) is not GELU
    check_pass("fuse-gelu", model, rng.normal(0, 2, (1, 4, 6)).astype(np.float32), modified=False)
    assert model.opset_imports[""] == 17


# ---------------------------------------------------------------------------------------------- Keras

keras = pytest.importorskip("keras")


@keras.saving.register_keras_serializable(package="qpass_test")
def gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


def _keras_gelu(tmp: Path, activation, suffix: str) -> Path:
    keras.utils.set_random_seed(3)
    L = keras.layers
    bias = "random_normal"
    model = keras.Sequential([keras.Input((12, 3)), L.Conv1D(8, 3, activation=activation, bias_initializer=bias),
                              L.Flatten(), L.Dense(16, activation=activation, bias_initializer=bias),
                              L.Dense(3, activation="softmax",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=1.5))])
    model.save(tmp / f"m{suffix}")
    x = np.random.default_rng(0).normal(0, 1, (96, 12, 3)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x[:64])
    np.savez(tmp / "test.npz", x=x[64:])
    (tmp / "pipeline.yaml").write_text(
        f"model: m{suffix}\ncalibration: {{path: calib.npz}}\n"
        "passes: [fold-constants, squeeze-conv2d, simplify-layout, fuse-gelu, simplify-layout, matmul-to-gemm]\n"
        "codegen: {name: m, output_dir: out}\ncompare: {path: test.npz}\n")
    return tmp / "pipeline.yaml"


@pytest.mark.parametrize(("activation", "suffix"), [("gelu", ".h5"), ("gelu", ".keras"), (gelu_tanh, ".h5"),
                                                    (gelu_tanh, ".keras")], ids=["erf-h5", "erf-keras",
                                                                                 "tanh-h5", "tanh-keras"])
def test_keras_gelu_through_the_pipeline(tmp_path: Path, activation, suffix: str) -> None:
    from qpass.config import load_pipeline
    from qpass.pipeline import run_pipeline

    report = run_pipeline(load_pipeline(_keras_gelu(tmp_path, activation, suffix)))
    fused = next(p for p in report["passes"] if p["name"] == "fuse-gelu")
    assert fused["modified"] and fused["op_counts"].get("Gelu") == 2, fused
    assert not {"Erf", "Tanh", "Pow", "Neg"} & set(fused["op_counts"]), fused
    assert fused["max_deviation"] <= 1e-5
    assert report["c_equals_runtime_ref"]
    c, q = report["comparisons"]["c_vs_float"], report["comparisons"]["qdq_vs_float"]
    assert c["max_abs_error"] <= 1.25 * q["max_abs_error"] + 0.01, (c, q)
    assert c["argmax_agreement"] >= 0.95, c


def test_erfc_converts_without_the_pass(tmp_path: Path, ort_run) -> None:
    """tf2onnx has no Erfc: qpass's handler writes 1 − Erf, and the ONNX model computes what Keras does."""
    from qpass.converters import load_model

    assert "Erfc" in TF_OP_HANDLERS
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="gelu",
                                                                    bias_initializer="random_normal")])
    model.save(tmp_path / "m.keras")
    onnx_model = load_model(tmp_path / "m.keras")
    assert {n.op_type for n in onnx_model.graph} >= {"Erf", "Sub"}
    x = np.random.default_rng(1).normal(0, 2, (1, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(onnx_model, x), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
