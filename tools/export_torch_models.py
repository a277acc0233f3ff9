"""Export small PyTorch models with the shapes of examples/har to ONNX, for tests/test_torch_onnx.py (seeded).

Needs PyTorch (not a qpass dependency; only this script uses it):

    pip install torch
    python tools/export_torch_models.py            # writes tests/data/torch/*.onnx and expected.npz
    python tools/export_torch_models.py --only lstm_stacked   # one model; the others' files stay

The exporter is torch's classic TorchScript one (`torch.onnx.export(..., dynamo=False)`, opset 17; the
dynamo exporter, torch's default, needs onnxscript). What it writes differs from tf2onnx: the LSTM in
layout 0 behind a Transpose of the batch-first input; initial_h / initial_c always given, as zeros
expanded to a shape computed from Shape(X) (Expand, or ConstantOfShape with a dynamic batch); Y read
through Squeeze(axis 1) → Transpose back to batch-first → Gather(-1) for the last step; a per-step
Linear as one MatMul + Add on [1, T, F]. In eval() mode tracing drops Dropout, and the exporter's own
constant folding fuses BatchNorm into the Conv and reorders the LSTM gates (PyTorch i, f, g, o → ONNX
i, o, f, c) into initializers. conv_lstm is exported with do_constant_folding=False so that the
BatchNormalization node stays and W/R/B arrive as Slice/Concat chains over the PyTorch weights.

Models (input [1, 100, 6]: BasicMotions, 100 steps, 6 IMU channels; 4 classes):

    conv_lstm        Conv1d(6→8, k=5, pad 2) → BatchNorm1d (set running stats) → ReLU → MaxPool1d(2)
                     → Dropout → LSTM(8→16, batch_first) → last step → Linear(16→4) → Softmax
    lstm_seq         LSTM(6→12, batch_first) all steps → Linear(12→4) per step → flatten → Linear(400→4)
                     → Softmax
    lstm_zero_state  LSTM(6→16, batch_first) with h0 = c0 = torch.zeros(...) made in forward → last step
                     → Linear(16→4) → Softmax; exported with a dynamic batch axis (qpass pins it to 1)
    lstm_stacked     LSTM(6→12, batch_first, num_layers=2): two ONNX LSTMs → last step → Linear(12→4) → Softmax
    lstm_bidirectional  LSTM(6→8, batch_first, bidirectional=True): one bidirectional ONNX LSTM → last step of
                     both directions → Linear(16→4) → Softmax

Each is trained briefly (full batch Adam, a fixed number of epochs, one thread) on the 40 standardized
training cases of examples/har/calib.npz with their labels from examples/har/basicmotions.npz, then put
in eval() mode; weights are only there to make the outputs non-trivial. The test reads the calibration
and test inputs from examples/har directly. expected.npz holds torch's own outputs on the first 8 test
cases (key = model name), so the test can check the export without torch.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "torch"
HAR = ROOT / "examples" / "har"
OPSET = 17
STEPS, CHANNELS, CLASSES = 100, 6, 4
SEED = 0
EXPECTED_SAMPLES = 8


class ConvLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, 8, kernel_size=5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.pool = nn.MaxPool1d(2)
        self.drop = nn.Dropout(0.2)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, C]
        y = self.drop(self.pool(torch.relu(self.bn(self.conv(x.transpose(1, 2))))))
        out, _ = self.lstm(y.transpose(1, 2))
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


class LstmSeq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 12, batch_first=True, num_layers=1)
        self.step = nn.Linear(12, 4)  # applied to every step, like Keras TimeDistributed(Dense)
        self.fc = nn.Linear(STEPS * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.softmax(self.fc(torch.flatten(self.step(out), 1)), dim=-1)


class LstmZeroState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 16, batch_first=True, bidirectional=False)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = torch.zeros(1, x.size(0), 16)
        c0 = torch.zeros(1, x.size(0), 16)
        out, _ = self.lstm(x, (h0, c0))
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


class LstmStacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 12, batch_first=True, num_layers=2)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


class LstmBidirectional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 8, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


MODELS = {  # name: (class, dynamic batch axis, the exporter's do_constant_folding)
    "conv_lstm": (ConvLstm, False, False),
    "lstm_seq": (LstmSeq, False, True),
    "lstm_zero_state": (LstmZeroState, True, True),
    "lstm_stacked": (LstmStacked, False, True),
    "lstm_bidirectional": (LstmBidirectional, False, True),
}


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        # the models end in softmax: train on its log
        loss = nn.functional.nll_loss(torch.log(model(x) + 1e-7), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _set_running_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm non-trivial running statistics: the conv output's real ones, shifted and spread."""
    if not isinstance(model, ConvLstm):
        return
    with torch.no_grad():
        z = model.conv(x.transpose(1, 2))
        model.bn.running_mean.copy_(z.mean(dim=(0, 2)) + 0.3)
        model.bn.running_var.copy_(z.var(dim=(0, 2)) * 1.7 + 0.05)
        g = torch.Generator().manual_seed(SEED)
        model.bn.weight.mul_(1.0 + 0.5 * torch.rand(8, generator=g))
        model.bn.bias.add_(0.2 * torch.randn(8, generator=g))


def export(name: str, epochs: int) -> np.ndarray:
    cls, dynamic, fold = MODELS[name]
    torch.manual_seed(SEED)
    model = cls()
    calib = np.load(HAR / "calib.npz")["x"]
    labels = np.load(HAR / "basicmotions.npz")["y_train"]  # calib.npz x is x_train standardized, in order
    x, y = torch.from_numpy(calib), torch.from_numpy(labels)
    acc = _train(model, x, y, epochs)
    _set_running_stats(model, x)  # after training: eval() uses these, not the batch statistics
    model.eval()
    sample = torch.zeros(1, STEPS, CHANNELS)
    path = OUT / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation and batch_first notes
        torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                          output_names=["prob"], do_constant_folding=fold,
                          dynamic_axes={"x": {0: "batch"}, "prob": {0: "batch"}} if dynamic else None)
    test = np.load(HAR / "test.npz")
    with torch.no_grad():
        prob = model(torch.from_numpy(test["x"])).numpy()
    print(f"{name}: {path.relative_to(ROOT)} {path.stat().st_size} bytes, train acc {acc:.3f}, "
          f"test acc {float((prob.argmax(-1) == test['y']).mean()):.3f}")
    return prob[:EXPECTED_SAMPLES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--only", nargs="+", choices=sorted(MODELS), help="export these; keep the others' files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    old = OUT / "expected.npz"
    expected = dict(np.load(old)) if args.only and old.exists() else {}
    expected |= {name: export(name, args.epochs) for name in (args.only or MODELS)}
    np.savez(OUT / "expected.npz", **expected)


if __name__ == "__main__":
    main()
