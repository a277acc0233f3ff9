"""Issue 13 preparation: the 2-D examples (examples/kws, examples/resnet8) are complete and consistent.

Fast: each example's files fit its pipeline.yaml (`qpass check` exits 0), the Keras model has the 2-D layers the
example claims, and it still reaches its float accuracy on the shipped test set (so model and data belong together).
Slow: tools/bench_tflm.py converts resnet8 to int8 .tflite and runs it in the tflite-micro interpreter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from qpass.cli import main
from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
# example -> (input shape, Keras layer classes it must contain, float test accuracy it must keep)
EXAMPLES = {
    "kws": ((49, 10, 1), {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "AveragePooling2D", "Dense"},
            0.97),
    "resnet8": ((16, 16, 1), {"Conv2D", "Add", "BatchNormalization", "ReLU", "GlobalAveragePooling2D", "Dense"},
                0.95),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_qpass_check_accepts_example(name):
    path = ROOT / "examples" / name / "pipeline.yaml"
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    shape = ", ".join(str(d) for d in EXAMPLES[name][0])
    assert f"(N, {shape})" in result.output


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_model_is_2d_and_fits_its_data(name):
    import keras

    folder = ROOT / "examples" / name
    cfg = yaml.safe_load((folder / "pipeline.yaml").read_text())
    shape, layers, min_acc = EXAMPLES[name]
    model = keras.models.load_model(folder / cfg["model"]["path"], compile=False)
    assert tuple(model.input_shape[1:]) == shape
    kinds = {type(layer).__name__ for layer in model.layers}
    assert layers <= kinds, f"{name} lacks {layers - kinds}"
    convs = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    assert all(min(layer.kernel_size) > 1 or layer.kernel_size == (1, 1) for layer in convs)
    assert any(min(layer.kernel_size) > 1 for layer in convs), "no true 2-D kernel"
    with np.load(folder / cfg["calibration"]["path"]) as calib:
        assert calib[cfg["calibration"]["key"]].shape[1:] == shape
    with np.load(folder / cfg["compare"]["path"]) as test:
        x, y = test[cfg["compare"]["key"]].astype(np.float32), test[cfg["compare"]["labels_key"]]
    acc = float(np.mean(model.predict(x, verbose=0, batch_size=128).argmax(axis=1) == y))
    assert acc >= min_acc, f"{name}: float test accuracy {acc:.4f}"


@pytest.mark.slow
def test_bench_tflm_resnet8(capsys):
    pytest.importorskip("tflite_micro")
    bench = load_tool("bench_tflm")
    (row,) = bench.main([str(ROOT / "examples" / "resnet8"), "--limit", "100"])
    assert row.n_test == 100 and row.agreement >= 0.95 and row.int8_acc >= 0.9
    assert row.arena_total == row.arena_head + row.arena_tail
    # no planner beats the live-tensor bound; the bound holds at least the input and the first conv's output
    assert row.arena_head >= row.lower_bound >= 16 * 16 * 1 + 16 * 16 * 8
    assert "resnet8" in capsys.readouterr().out
