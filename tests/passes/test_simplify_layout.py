"""simplify-layout: the nodes it writes get names no other node has (even for unnamed chains); its reads of
whole Concat inputs (Slice, Split, Gather; through a Reshape, as the graph output), one-input Concats and its
permuting constant Gathers, on tiny graphs and on the h_n of a real PyTorch export; the function does not change
and a second run does nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from qpass.converters import load_model
from qpass.passes.runner import run_passes

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
DATA = Path(__file__).resolve().parents[1] / "data" / "torch"


def test_slice_split_and_gather_of_concat_read_its_inputs(parse_onnx, check_pass, rng):
    model = parse_onnx(OPSET + """
        g (float[1,3] x) => (float[1,15] y) {
            a = Relu(x)
            b = Sigmoid(x)
            c = Tanh(x)
            ua = Unsqueeze(a, zero)
            ub = Unsqueeze(b, zero)
            uc = Unsqueeze(c, zero)
            s = Concat<axis=0>(ua, ub, uc)
            last2 = Slice(s, minus2, big, zero)
            p, q = Split<axis=0>(last2, ones)
            first = Gather<axis=0>(s, idx)
            pq = Concat<axis=2>(p, q)
            fp = Unsqueeze(first, zero)
            last2_flat = Reshape(last2, shape3)
            all = Concat<axis=2>(fp, pq, last2_flat)
            y = Reshape(all, shape2)
        }""", zero=np.array([0], np.int64), minus2=np.array([-2], np.int64), big=np.array([2**62], np.int64),
        ones=np.array([1, 1], np.int64), idx=np.array(0, np.int64), shape3=np.array([1, 1, 6], np.int64),
        shape2=np.array([1, 15], np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 3)).astype(np.float32), modified=True)
    assert res.after["Slice"] == res.after["Split"] == res.after["Gather"] == 0, res.after


def test_a_slice_of_the_whole_axis_goes(parse_onnx, check_pass, rng):
    # torch.cat(list(h_n[-1:])) of a one-layer RNN: Y_h is [1, B, H], the Slice and the Split keep all of it
    model = parse_onnx(OPSET + """
        g (float[1,1,4] x) => (float[1,4] y) {
            a = Relu(x)
            s = Slice(a, minus1, big, zero)
            p = Split<axis=0>(s, one)
            y = Squeeze(p, zero)
        }""", minus1=np.array([-1], np.int64), big=np.array([2**62], np.int64), zero=np.array([0], np.int64),
        one=np.array([1], np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 1, 4)).astype(np.float32), modified=True)
    assert res.after["Slice"] == res.after["Split"] == 0


def test_a_slice_across_inputs_or_part_of_one_stays(parse_onnx, check_pass, rng):
    model = parse_onnx(OPSET + """
        g (float[1,4] x) => (float[1,3] y, float[2,4] z) {
            a = Relu(x)
            b = Sigmoid(x)
            c = Concat<axis=1>(a, b)
            y = Slice(c, three, six, one)
            z = Concat<axis=0>(a, b)
        }""", three=np.array([3], np.int64), six=np.array([6], np.int64), one=np.array([1], np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 4)).astype(np.float32), modified=False)
    assert res.after["Slice"] == 1


def test_a_permuting_constant_gather_is_layout(parse_onnx, check_pass, rng):
    # PyTorch's dynamo exporter after a mean: Reshape to [-1], Gather of every index, Reshape; here the indices
    # transpose the last two axes, and the chain becomes that Transpose
    model = parse_onnx(OPSET + """
        g (float[1,2,4] x) => (float[1,4,2] y) {
            a = Relu(x)
            f = Reshape(a, flat)
            s = Gather<axis=0>(f, perm)
            y = Reshape(s, shape)
        }""", flat=np.array([-1], np.int64), perm=np.arange(8).reshape(2, 4).T.reshape(8, 1),
        shape=np.array([1, 4, 2], np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 2, 4)).astype(np.float32), modified=True)
    assert res.after["Gather"] == 0 and res.after["Transpose"] == 1, res.after


def test_a_gather_that_drops_elements_stays(parse_onnx, check_pass, rng):
    model = parse_onnx(OPSET + """
        g (float[1,8] x) => (float[1,3] y) {
            a = Relu(x)
            y = Gather<axis=1>(a, idx)
        }""", idx=np.array([0, 1, 2], np.int64))
    check_pass("simplify-layout", model, rng.normal(size=(1, 8)).astype(np.float32), modified=False)


def test_torch_h_n_of_a_stacked_bidirectional_lstm_reads_the_last_layer(check_pass):
    # h_n[-2:] over Concat(Y_h of layer 1, Y_h of layer 2): the second LSTM's Y_h itself (the unbind of its two
    # directions that follows goes once unroll-lstm has made Y_h a Concat; tests/test_torch.py runs the whole)
    x = np.load(Path(__file__).resolve().parents[2] / "examples" / "har" / "test.npz")["x"][:1]
    for exporter in ("classic", "dynamo"):
        model = load_model(DATA / f"lstm_hn.{exporter}.onnx")
        run_passes(model, [("fold-constants", {})], base_dir=DATA)
        res = check_pass("simplify-layout", model, x, modified=True)
        assert res.after["Slice"] == res.before["Slice"] - 1, (exporter, res.before, res.after)
        lstms = [n for n in model.graph if n.op_type == "LSTM"]
        assert any(u.op_type in ("Slice", "Split") for u in lstms[1].outputs[1].consumers())


TWO_UNNAMED_CHAINS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 6, 4] x) => (float[1, 24] z) {
    a = Unsqueeze(x, one)
    y1 = Flatten(a)
    r = Relu(x)
    b = Unsqueeze(r, one)
    y2 = Flatten(b)
    z = Add(y1, y2)
}
"""


def test_new_nodes_have_unique_names(parse_onnx, check_pass, rng) -> None:
    model = parse_onnx(TWO_UNNAMED_CHAINS, one=np.array([1], np.int64))
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.name = "layout_reshape"  # the name an unnamed chain's Reshape would take
    check = check_pass("simplify-layout", model, rng.normal(size=(1, 6, 4)).astype(np.float32), modified=True)
    assert check.after == {"Reshape": 2, "Relu": 1, "Add": 1}, check.after
    assert all(n.name for n in model.graph if n.op_type == "Reshape")
    names = Counter(n.name for n in model.graph if n.name)  # the parsed Add has none
    assert all(count == 1 for count in names.values()), names


def test_a_gather_through_a_reshape_of_concat_as_the_graph_output(parse_onnx, check_pass, rng):
    # out[:, -1] of unrolled steps, the model's output itself: Concat(steps) → Reshape [T,1,1,H]→[1,T,H] → Gather
    model = parse_onnx(OPSET + """
        g (float[1,4] x) => (float[1,4] out) {
            a = Relu(x)
            b = Tanh(x)
            ua = Unsqueeze(a, axes)
            ub = Unsqueeze(b, axes)
            c = Concat<axis=0>(ua, ub)
            r = Reshape(c, shape)
            out = Gather<axis=1>(r, last)
        }""", axes=np.array([0, 1], np.int64), shape=np.array([1, 2, 4], np.int64), last=np.array(-1, np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert res.after["Gather"] == 0, res.after  # the Concat, unread now, goes in the runner's cleanup
    out = model.graph.outputs[0]
    assert out.name == "out" and out.producer().op_type == "Tanh"  # the step itself (same shape: no Reshape left)


def test_a_one_input_concat_goes(parse_onnx, check_pass, rng):
    # the classic exporter's torch.cat(list(h_n[-1:])) of a one-layer RNN
    model = parse_onnx(OPSET + """
        g (float[1,4] x) => (float[1,4] y) {
            a = Relu(x)
            c = Concat<axis=1>(a)
            y = Tanh(c)
        }""")
    res = check_pass("simplify-layout", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert res.after == {"Relu": 1, "Tanh": 1}, res.after


def test_a_gather_of_part_of_a_reshaped_concat_input_stays(parse_onnx, check_pass, rng):
    # each input holds two steps ([2,1,4]): one step of them is no whole input
    model = parse_onnx(OPSET + """
        g (float[2,1,4] x) => (float[1,4] out) {
            a = Relu(x)
            b = Tanh(x)
            c = Concat<axis=0>(a, b)
            r = Reshape(c, shape)
            out = Gather<axis=1>(r, last)
        }""", shape=np.array([1, 4, 4], np.int64), last=np.array(-1, np.int64))
    res = check_pass("simplify-layout", model, rng.normal(size=(2, 1, 4)).astype(np.float32), modified=False)
    assert res.after["Gather"] == 1
