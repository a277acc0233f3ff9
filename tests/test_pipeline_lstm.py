"""ONNX LSTM models (as PyTorch and other exporters write them) through the whole integer pipeline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

H, I_IN, CLASSES = 8, 6, 4


def _lstm_model(path: Path, t_len: int, direction: str, seed: int = 0, quant: str = "{}", head: str = "dense",
                n_in: int = I_IN) -> None:
    """x [1, T, I] → LSTM → head: "dense" (Y_h → Gemm → Softmax), "y_h" (Y_h is the graph output) or "y"
    (the whole sequence Y, flattened, is the graph output)."""
    rng = np.random.default_rng(seed)

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    dirs = 2 if direction == "bidirectional" else 1
    w = rng.normal(0, 0.4, (dirs, 4 * H, n_in))
    if n_in == 1:  # one gate row whose weight (so its per-row scale) is tiny next to its bias
        w[0, H, 0] = 1e-5
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time_major"),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, direction=direction),
    ]
    if head == "dense":
        nodes += [helper.make_node("Reshape", ["Y_h", "shape"], ["h"]), helper.make_node("Gemm", ["h", "Wd", "bd"],
                  ["logits"]), helper.make_node("Softmax", ["logits"], ["prob"])]
        out_shape = [1, CLASSES]
    else:
        out_shape = [1, dirs * H * (t_len if head == "y" else 1)]
        nodes.append(helper.make_node("Reshape", ["Y" if head == "y" else "Y_h", "out_shape"], ["prob"], name="flat"))
    graph = helper.make_graph(
        nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t_len, n_in])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, out_shape)],
        [init("W", w), init("R", rng.normal(0, 0.4, (dirs, 4 * H, H))),
         init("B", rng.normal(0, 0.2, (dirs, 8 * H))), init("Wd", rng.normal(0, 0.8, (dirs * H, CLASSES))),
         init("bd", rng.normal(0, 0.1, CLASSES)), numpy_helper.from_array(np.array([1, dirs * H], np.int64), "shape"),
         numpy_helper.from_array(np.array(out_shape, np.int64), "out_shape")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.cumsum(rng.normal(0, 0.3, (160, t_len, n_in)), axis=1).astype(np.float32)  # random walks
    np.savez(path.parent / "calib.npz", x=x[:80])
    np.savez(path.parent / "test.npz", x=x[80:])
    (path.parent / "pipeline.yaml").write_text(
        "model: lstm.onnx\ncalibration: {path: calib.npz, key: x}\n"
        "passes: [unroll-lstm, fold-constants, simplify-layout, matmul-to-gemm]\n"
        "codegen: {name: seq, output_dir: out}\ncompare: {path: test.npz, key: x}\n"
        f"quantization: {quant}\n")


def _run(tmp: Path, t_len: int, direction: str, quant: str = "{}", head: str = "dense",
         n_in: int = I_IN) -> tuple[dict, Path]:
    tmp.mkdir(parents=True)
    _lstm_model(tmp / "lstm.onnx", t_len, direction, quant=quant, head=head, n_in=n_in)
    report = run_pipeline(load_pipeline(tmp / "pipeline.yaml"))
    return report, tmp / "out"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lstm_is_bit_exact_and_one_loop(tmp_path: Path, direction: str) -> None:
    report, out = _run(tmp_path / direction, 20, direction)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.95
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.05
    assert report["kernels"].count("lstm") == 1
    assert report["op_counts"]["converted"]["LSTM"] == 1 and "LSTM" not in report["op_counts"]["final"]
    source = (out / "seq.c").read_text()
    calls = re.findall(r"^\s+qp_l\d+_lstm\(", source, flags=re.M)
    assert len(calls) == 1, calls  # one call of one loop body for every step
    plan = json.loads((out / "report.json").read_text())["plan"]["tensors"]
    assert any(t["dtype"] == "int16" for t in plan.values()), "the cell state is int16"


@pytest.mark.parametrize(("t_len", "direction", "head"), [
    (3, "reverse", "y_h"), (3, "forward", "y_h"), (3, "reverse", "y"), (1, "reverse", "y"), (1, "forward", "y_h"),
    (1, "forward", "dense"), (3, "bidirectional", "dense"), (3, "bidirectional", "y"), (1, "bidirectional", "y_h")])
def test_lstm_state_or_sequence_as_graph_output(tmp_path: Path, t_len: int, direction: str, head: str) -> None:
    """Y_h (one step of the kernel's h sequence) or the whole Y as the graph output, T = 3 and T = 1: C equals
    runtime_ref on every sample and stays close to onnxruntime float."""
    report, out = _run(tmp_path / "m", t_len, direction, head=head)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["mean_abs_error"] < 0.02
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.25
    assert report["kernels"].count("lstm") == (2 if direction == "bidirectional" else 1)


def _flash(c_file: Path, tmp: Path) -> int:
    obj = tmp / "m.o"
    subprocess.run(["gcc", "-std=c99", "-Os", "-c", str(c_file), "-o", str(obj)], check=True)
    out = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()
               if line.startswith((".text", ".rodata")))


@pytest.mark.skipif(shutil.which("size") is None, reason="binutils `size` not installed")
def test_code_size_does_not_grow_with_sequence_length(tmp_path: Path) -> None:
    sizes = {}
    for t_len in (10, 100):
        report, out = _run(tmp_path / f"t{t_len}", t_len, "forward")
        assert report["c_equals_runtime_ref"]
        sizes[t_len] = _flash(out / "seq.c", tmp_path / f"t{t_len}")
    # only immediates differ (T is a loop bound the compiler may fold in); nothing is repeated per step
    assert abs(sizes[100] - sizes[10]) <= 64, sizes


@pytest.mark.parametrize(("quant", "want"), [
    ("{activations: int16}", {"int16"}),
    ("{activations: int16, weights: int16}", {"int16"}),
    ("{activations: int8, overrides: [{match: 'op:LSTM', activations: int16}]}", {"int8", "int16"}),
    ("{activations: int8, requant: pow2}", {"int8", "int16"}),
])
def test_lstm_precisions_are_bit_exact(tmp_path: Path, quant: str, want: set[str]) -> None:
    report, out = _run(tmp_path / "q", 20, "forward", quant)
    assert report["c_equals_runtime_ref"], quant
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.95
    dtypes = {t["dtype"] for t in report["plan"]["tensors"].values()}
    assert dtypes == want
    if "int16}" in quant and "int8" not in quant:
        assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.01
    if "pow2" in quant:
        scales = [t["scale"] for t in report["plan"]["tensors"].values()]
        assert all(float(np.log2(sc)).is_integer() for sc in scales)


def test_unread_sequence_keeps_two_rows_of_h(tmp_path: Path) -> None:
    """Only Y_h is read: the arena holds two rows of h (int8) and the int16 cell, not T rows, whatever T."""
    report, out = _run(tmp_path / "m", 40, "reverse")
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    memory = report["memory"]
    assert memory["arena_bytes"] <= 2 * H + 2 * H + 8 < 40 * H, memory  # h rows + cell + the logits
    assert memory["arena_lower_bound"] <= memory["arena_bytes"]


def test_int16_lstm_with_a_tiny_weight_row_stores_its_bias_shifted(tmp_path: Path) -> None:
    """a16w16 over a 1-channel input: one gate row's bias does not fit int32 at s_x·s_w; it is stored at
    s_x·s_w·2^k (as the linear kernels do) instead of refusing a model that runs at int8."""
    report, out = _run(tmp_path / "m", 12, "forward", "{activations: int16, weights: int16}", n_in=1)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.01
    assert re.search(r"qp_l\d+_lstm\(", (out / "seq.c").read_text())
    assert "int64_t ax0 = " in (out / "seq.c").read_text()  # the proven bound needs 64-bit gate accumulators


def test_non_zero_initial_state_is_refused_by_name(tmp_path: Path) -> None:
    from qpass.errors import UnsupportedOpError

    _lstm_model(tmp_path / "lstm.onnx", 5, "forward")
    model = onnx.load(tmp_path / "lstm.onnx")
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.input.extend(["", "h0"])  # sequence_lens absent, initial_h a non-zero constant
    model.graph.initializer.append(numpy_helper.from_array(np.full((1, 1, H), 0.5, np.float32), "h0"))
    onnx.save(model, tmp_path / "lstm.onnx")
    with pytest.raises(UnsupportedOpError, match="initial"):
        run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
