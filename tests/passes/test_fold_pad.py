"""fold-pad: a zero Pad before a Conv (through one Transpose) becomes the Conv's pads; anything else stays."""

from __future__ import annotations

import numpy as np

from tests.conftest import check_pass

W = np.random.default_rng(1).normal(size=(4, 3, 3)).astype(np.float32)
X = np.random.default_rng(2).normal(size=(1, 10, 3)).astype(np.float32)


def _model(parse_onnx, pads: list[int], value: float = 0.0):
    return parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 10, 3] x) => (float[1, 4, 10] y) {
            p = Pad (x, pads, v)
            t = Transpose <perm = [0, 2, 1]> (p)
            y = Conv <pads = [0, 0]> (t, w)
        }""", w=W, pads=np.array(pads, np.int64), v=np.array(value, np.float32))


def test_causal_pad_folds_into_the_conv(parse_onnx) -> None:
    model = _model(parse_onnx, [0, 2, 0, 0, 0, 0])
    result = check_pass("fold-pad", model, X, modified=True)
    assert "Pad" not in result.after
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert list(conv.attributes["pads"].as_ints()) == [2, 0]


def test_nonzero_pad_value_is_left_alone(parse_onnx) -> None:
    check_pass("fold-pad", _model(parse_onnx, [0, 2, 0, 0, 0, 0], value=1.0), X, modified=False)


def test_channel_pad_is_left_alone(parse_onnx) -> None:
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 10, 2] x) => (float[1, 4, 8] y) {
            p = Pad (x, pads)
            t = Transpose <perm = [0, 2, 1]> (p)
            y = Conv (t, w)
        }""", w=W, pads=np.array([0, 0, 0, 0, 0, 1], np.int64))
    check_pass("fold-pad", model, X[:, :, :2], modified=False)
