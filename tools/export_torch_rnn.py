"""Export small PyTorch nn.RNN models (BasicMotions every 4th step) to ONNX, for tests/test_torch_rnn.py (seeded).

Needs PyTorch (not a qpass dependency; only this script uses it), and onnxscript for the dynamo exporter:

    python tools/export_torch_rnn.py        # writes tests/data/torch/rnn_*.onnx and rnn_expected.npz

Models (input [1, 25, 6]: BasicMotions' 100 steps taken every 4th, 6 IMU channels; 4 classes), each trained briefly
with export_torch_models.py's full-batch loop on examples/har/calib.npz:

    rnn_stacked        nn.RNN(6→12, tanh, num_layers=2) → last step → Linear(12→4) → Softmax
                       classic exporter (`dynamo=False`, opset 17): two ONNX RNN nodes, zero states from Expand
    rnn_bidirectional  nn.RNN(6→8, relu, bidirectional=True) → last step of both directions → Linear(16→4)
                       → Softmax; classic exporter: one bidirectional ONNX RNN with activations [Relu, Relu]
    rnn_dynamo         nn.RNN(6→12, tanh) → last step → Linear(12→4) → Softmax; the dynamo exporter
                       (`dynamo=True`, opset 18), which writes no RNN node: the recurrence comes unrolled, one
                       MatMul/Add/Tanh per step (T = 25) behind one input projection for all steps (roll-rnn
                       rolls it back into an RNN)
    rnn_dynamo_bidirectional  nn.RNN(6→8, relu, bidirectional=True), dynamo exporter: the backward half runs
                       forward over a time-flipped projection, and its outputs are flipped back

rnn_expected.npz holds torch's own outputs on the first 8 test cases (key = model name).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from export_torch_models import _train  # the same seeded full-batch training as the LSTM exports
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "torch"
HAR = ROOT / "examples" / "har"
STRIDE, CHANNELS, CLASSES, SEED, EXPECTED_SAMPLES = 4, 6, 4, 0, 8


class RnnClassifier(nn.Module):
    def __init__(self, hidden: int, **rnn) -> None:
        super().__init__()
        self.rnn = nn.RNN(CHANNELS, hidden, batch_first=True, **rnn)
        self.fc = nn.Linear(hidden * (2 if rnn.get("bidirectional") else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


MODELS = {  # name: (hidden, nn.RNN options, dynamo exporter)
    "rnn_stacked": (12, {"num_layers": 2}, False),
    "rnn_bidirectional": (8, {"bidirectional": True, "nonlinearity": "relu"}, False),
    "rnn_dynamo": (12, {}, True),
    "rnn_dynamo_bidirectional": (8, {"bidirectional": True, "nonlinearity": "relu"}, True),
}


def export(name: str, epochs: int = 150) -> np.ndarray:
    hidden, options, dynamo = MODELS[name]
    torch.manual_seed(SEED)
    model = RnnClassifier(hidden, **options)
    x = torch.from_numpy(np.ascontiguousarray(np.load(HAR / "calib.npz")["x"][:, ::STRIDE]))
    acc = _train(model, x, torch.from_numpy(np.load(HAR / "basicmotions.npz")["y_train"]), epochs)
    path = OUT / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, x.shape[1], CHANNELS),), str(path), dynamo=dynamo,
                          opset_version=18 if dynamo else 17, input_names=["x"], output_names=["prob"])
    if dynamo:  # weights in a side file and a stack trace per node: one self-contained .onnx, without the traces
        proto = onnx.load(str(path))
        for node in proto.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        onnx.save(proto, str(path))
        path.with_name(path.name + ".data").unlink()
    test = np.load(HAR / "test.npz")
    with torch.no_grad():
        prob = model(torch.from_numpy(np.ascontiguousarray(test["x"][:, ::STRIDE]))).numpy()
    print(f"{name}: {path.relative_to(ROOT)} {path.stat().st_size} bytes, train acc {acc:.3f}, "
          f"test acc {float((prob.argmax(-1) == test['y']).mean()):.3f}")
    return prob[:EXPECTED_SAMPLES]


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "rnn_expected.npz", **{name: export(name) for name in MODELS})


if __name__ == "__main__":
    main()
