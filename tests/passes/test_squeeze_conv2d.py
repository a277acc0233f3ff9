"""squeeze-conv2d on both one-axis forms: (1, k) over a height of 1 and (k, 1) over a width of 1."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import check_pass

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("x_shape, w_shape, pads, dil, y_shape", [
    ((1, 3, 1, 12), (4, 3, 1, 3), [0, 1, 0, 1], [1, 2], (1, 4, 1, 10)),
    ((1, 3, 12, 1), (4, 3, 3, 1), [2, 0, 0, 0], [2, 1], (1, 4, 10, 1)),
    ((1, 3, 12, 1), (3, 1, 3, 1), [1, 0, 1, 0], [1, 1], (1, 3, 12, 1)),
])
def test_one_axis_conv2d_becomes_1d(parse_onnx, x_shape, w_shape, pads, dil, y_shape) -> None:
    group = 3 if w_shape[1] == 1 else 1
    dims = ", ".join(map(str, x_shape))
    out = ", ".join(map(str, y_shape))
    model = parse_onnx(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[{dims}] x) => (float[{out}] y) {{
            y = Conv <pads = {pads}, dilations = {dil}, group = {group}> (x, w, b)
        }}""", w=RNG.normal(size=w_shape).astype(np.float32), b=RNG.normal(size=w_shape[0]).astype(np.float32))
    result = check_pass("squeeze-conv2d", model, RNG.normal(size=x_shape).astype(np.float32), modified=True)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert len(conv.inputs[0].shape) == 3 and len(conv.attributes["kernel_shape"].as_ints()) == 1
    assert result.after["Squeeze"] == 1 and result.after["Unsqueeze"] == 1


def test_a_true_2d_conv_is_left_alone(parse_onnx) -> None:
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 6, 6] x) => (float[1, 3, 4, 4] y) { y = Conv (x, w) }""",
                       w=RNG.normal(size=(3, 2, 3, 3)).astype(np.float32))
    check_pass("squeeze-conv2d", model, RNG.normal(size=(1, 2, 6, 6)).astype(np.float32), modified=False)
