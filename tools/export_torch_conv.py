"""Export a small PyTorch streaming conv model (nn.Conv1d groups=C, padding, AvgPool1d, AdaptiveAvgPool1d,
AdaptiveMaxPool1d, LeakyReLU, Hardswish, ReLU6, SiLU) for tests/test_torch_conv.py (seeded; needs torch).

    python tools/export_torch_conv.py            # writes tests/data/torch/ds_conv.onnx and ds_conv_expected.npz

Classic TorchScript exporter (`dynamo=False`, opset 17), trained for a few steps on examples/har's data so
that the weights are not random; the expected float outputs on the test set are stored beside the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class DsConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv1d(6, 12, 5, padding=2)
            self.dw = nn.Conv1d(12, 12, 3, padding=2, dilation=2, groups=12, bias=False)
            self.bn = nn.BatchNorm1d(12)
            self.pw = nn.Conv1d(12, 8, 1)
            self.pool = nn.AvgPool1d(2)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, 6]
            h = nn.functional.leaky_relu(self.stem(x.transpose(1, 2)), 0.1)
            h = nn.functional.relu6(self.bn(self.dw(h)))
            h = nn.functional.hardswish(self.pool(self.pw(h)))
            feats = torch.cat([nn.functional.adaptive_avg_pool1d(h, 1), nn.functional.adaptive_max_pool1d(h, 1)], 1)
            return torch.softmax(self.head(nn.functional.silu(feats.flatten(1))), -1)

    har = ROOT / "examples" / "har"
    x_tr, y_tr = np.load(har / "calib.npz")["x"], None
    with np.load(ROOT / "examples" / "har" / "basicmotions.npz") as d:
        y_tr = d["y_train"].astype(np.int64)
    x_te = np.load(har / "test.npz")["x"]
    model = DsConv()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.nll_loss(torch.log(model(xt) + 1e-9), yt)
        loss.backward()
        opt.step()
    model.eval()
    out = ROOT / "tests" / "data" / "torch"
    torch.onnx.export(model, (torch.from_numpy(x_te[:1]),), str(out / "ds_conv.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    with torch.no_grad():
        expected = model(torch.from_numpy(x_te)).numpy()
    np.savez_compressed(out / "ds_conv_expected.npz", y=expected)
    print(f"ds_conv: loss {loss.item():.4f}, test accuracy "
          f"{float((expected.argmax(1) == np.load(har / 'test.npz')['y']).mean()):.3f}")


if __name__ == "__main__":
    main()
