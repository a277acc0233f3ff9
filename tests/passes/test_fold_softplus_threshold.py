"""fold-softplus-threshold: PyTorch's softplus threshold branch (dynamo export) goes; a low threshold stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qpass.converters import load_model

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
GRAPH = """
    g (float[1,64] x) => (float[1,64] y) {
        s = Softplus(x)
        c = Greater(x, t)
        y = Where(c, x, s)
    }"""


def test_threshold_20_folds(parse_onnx, check_pass):
    model = parse_onnx(OPSET + GRAPH, t=np.array(20, np.float32))
    x = np.linspace(-30, 30, 64, dtype=np.float32)[None]
    res = check_pass("fold-softplus-threshold", model, x, modified=True)
    assert res.after["Where"] == res.after["Greater"] == 0 and res.after["Softplus"] == 1


def test_a_low_threshold_stays(parse_onnx, check_pass):
    model = parse_onnx(OPSET + GRAPH, t=np.array(2, np.float32))
    check_pass("fold-softplus-threshold", model, np.linspace(-5, 5, 64, dtype=np.float32)[None], modified=False)


def test_the_dynamo_export_of_nn_softplus(check_pass):
    model = load_model(Path(__file__).resolve().parents[1] / "data" / "torch" / "activations.dynamo.onnx")
    x = np.load(Path(__file__).resolve().parents[2] / "examples" / "har" / "test.npz")["x"][:1]
    res = check_pass("fold-softplus-threshold", model, x, modified=True)
    assert res.before["Where"] == 1 and res.after["Where"] == 0
