"""fold-reverse-sequence: ReverseSequence → LSTM/GRU → reshapes → ReverseSequence becomes one reverse recurrence.

Hand-built graphs in tf2onnx's form (the lengths computed from a Shape at run time, as tf2onnx writes them),
checked against onnxruntime (1e-5), for structure, and for a second run changing nothing; near misses stay.
"""

from __future__ import annotations

import numpy as np
import pytest

T, I_IN, H = 5, 3, 4


def _text(op: str, lens: str, y_reader: str, direction: str = "forward") -> str:
    gates = {"LSTM": 4, "GRU": 3}[op]
    return f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[{T}, 1, {I_IN}] x) => (float[{T}, 1, {H}] s, float[1, 1, {H}] y_h) {{
        shp = Shape(x)
        t = Gather<axis = 0>(shp, zero)
        lens_ = Expand(t, one)
        lens = Cast<to = 7>(lens_)
        xr = ReverseSequence<time_axis = 0, batch_axis = 1>(x, {lens})
        y, y_h = {op}<hidden_size = {H}, direction = "{direction}">(xr, W, R, B)
        y3 = Squeeze(y, axis1)
        s = {y_reader}
    }}
    """, {"W": np.random.default_rng(0).normal(0, 0.5, (1, gates * H, I_IN)).astype(np.float32),
          "R": np.random.default_rng(1).normal(0, 0.5, (1, gates * H, H)).astype(np.float32),
          "B": np.random.default_rng(2).normal(0, 0.5, (1, 2 * gates * H)).astype(np.float32),
          "zero": np.array(0, np.int64), "one": np.array([1], np.int64), "axis1": np.array([1], np.int64),
          "short": np.array([T - 1], np.int64)}


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_reversals_become_reverse_direction(op, parse_onnx, check_pass, rng):
    text, consts = _text(op, "lens", "ReverseSequence<time_axis = 0, batch_axis = 1>(y3, lens)")
    model = parse_onnx(text, **consts)
    result = check_pass("fold-reverse-sequence", model, rng.normal(0, 1, (T, 1, I_IN)).astype(np.float32),
                        modified=True)
    assert result.after["ReverseSequence"] == 0
    node = next(n for n in model.graph if n.op_type == op)
    assert node.attributes.get_string("direction") == "reverse"
    assert node.inputs[0] is model.graph.inputs[0]
    assert node.metadata_props["qpass.pass"] == "fold-reverse-sequence"


def test_only_the_input_reversal_when_the_sequence_is_not_read(parse_onnx, check_pass, rng):
    text, consts = _text("LSTM", "lens", "Identity(y3)")
    text = text.replace("float[5, 1, 4] s, ", "").replace("y3 = Squeeze(y, axis1)\n        s = Identity(y3)", "")
    text = text.replace("y, y_h = LSTM", "unused, y_h = LSTM")
    model = parse_onnx(text, **consts)
    result = check_pass("fold-reverse-sequence", model, rng.normal(0, 1, (T, 1, I_IN)).astype(np.float32),
                        modified=True)
    assert result.after["ReverseSequence"] == 0


@pytest.mark.parametrize(("lens", "reader", "why"), [
    ("short", "ReverseSequence<time_axis = 0, batch_axis = 1>(y3, lens)", "input reversal is partial"),
    ("lens", "ReverseSequence<time_axis = 0, batch_axis = 1>(y3, short)", "output reversal is partial"),
    ("lens", "Relu(y3)", "the sequence is read in reversed order"),
])
def test_near_misses_are_left_alone(lens, reader, why, parse_onnx, check_pass, rng):
    text, consts = _text("LSTM", lens, reader)
    model = parse_onnx(text, **consts)
    result = check_pass("fold-reverse-sequence", model, rng.normal(0, 1, (T, 1, I_IN)).astype(np.float32),
                        modified=False)
    assert result.after["ReverseSequence"] >= 1, why


@pytest.mark.parametrize(("perm", "folds"), [([1, 0, 2], True), ([2, 1, 0], False)])
def test_the_output_reversal_is_read_through_transposes_of_unit_dims(perm, folds, parse_onnx, check_pass, rng):
    # tf2onnx's [T,1,H] → [1,T,H] → [T,1,H] pair (a GRU/SimpleRNN Loop's output); [2,1,0] reorders memory
    back = "Transpose<perm = [1, 0, 2]>(t1)" if folds else "Reshape(t1, tshape)"
    text, consts = _text("GRU", "lens", "ReverseSequence<time_axis = 0, batch_axis = 1>(t2, lens)")
    text = text.replace("y3 = Squeeze(y, axis1)", f"""y3 = Squeeze(y, axis1)
        t1 = Transpose<perm = {perm}>(y3)
        t2 = {back}""")
    model = parse_onnx(text, **consts, tshape=np.array([T, 1, H], np.int64))
    result = check_pass("fold-reverse-sequence", model, rng.normal(0, 1, (T, 1, I_IN)).astype(np.float32),
                        modified=folds)
    assert result.after["ReverseSequence"] == (0 if folds else 2)
