"""div-to-mul: a Div by a float constant becomes a Mul by its reciprocal; other Divs stay."""

from __future__ import annotations

import numpy as np

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def test_division_by_constants(parse_onnx, check_pass, rng):
    # the classic exporter's GELU: x * 0.5 * (1 + Erf(x / sqrt 2)); a per-channel divisor; a division by a tensor
    model = parse_onnx(OPSET + """
        g (float[1,4] x) => (float[1,4] y) {
            d = Div(x, root2)
            e = Erf(d)
            xh = Mul(x, half)
            e1 = Add(e, one)
            h = Mul(xh, e1)
            k = Div(h, per_channel)
            ax = Abs(x)
            ax1 = Add(ax, one)
            y = Div(k, ax1)
        }""", root2=np.array(np.sqrt(2), np.float32), half=np.array(0.5, np.float32), one=np.array(1, np.float32),
        per_channel=np.array([1.5, -2, 3, 0.25], np.float32))
    res = check_pass("div-to-mul", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert res.after["Div"] == 1 and res.after["Mul"] == res.before["Mul"] + 2


def test_a_zero_divisor_stays(parse_onnx, check_pass, rng):
    model = parse_onnx(OPSET + """
        g (float[1,2] x) => (float[1,2] y) {
            y = Div(x, c)
        }""", c=np.array([2, 0], np.float32))
    check_pass("div-to-mul", model, rng.normal(size=(1, 2)).astype(np.float32), modified=False)


def test_a_graph_output_keeps_its_name(parse_onnx, check_pass, rng):
    model = parse_onnx(OPSET + """
        g (float[1,2] x) => (float[1,2] y) {
            y = Div(x, c)
        }""", c=np.array(4, np.float32))
    check_pass("div-to-mul", model, rng.normal(size=(1, 2)).astype(np.float32), modified=True)
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer().op_type == "Mul"
