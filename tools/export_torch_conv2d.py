"""Export a small PyTorch 2-D conv model (nn.Conv2d, depthwise groups=C, 1x1, BatchNorm2d, MaxPool2d, AvgPool2d
with padding, AdaptiveAvgPool2d(1), ReLU, ReLU6, Linear) for tests/test_torch_conv2d.py (seeded; needs torch).

    python tools/export_torch_conv2d.py          # writes tests/data/torch/conv2d.onnx and conv2d_expected.npz

Data: examples/resnet8's (scikit-learn digits upsampled to 16x16, NHWC): the model takes [N, 16, 16, 1] and
permutes it to NCHW itself, so the export starts with a Transpose that qpass folds into the first conv. Trained on
the training split tools/train_resnet8.py uses; the expected float outputs on the example's test set are stored.
Classic TorchScript exporter (`dynamo=False`, opset 17).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    spec = importlib.util.spec_from_file_location("train_resnet8", ROOT / "tools" / "train_resnet8.py")
    train_resnet8 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_resnet8)
    torch.manual_seed(0)

    class Conv2dNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
            self.pw = nn.Conv2d(8, 16, 1)
            self.pool = nn.MaxPool2d(2)
            self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, H, W, 1]
            h = torch.relu(self.bn(self.stem(x.permute(0, 3, 1, 2))))
            h = nn.functional.relu6(self.dw(h))
            h = self.avg(self.pool(torch.relu(self.pw(h))))
            return torch.softmax(self.head(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)), -1)

    digits = load_digits()
    x = train_resnet8.upsample(digits.images, 16)
    x_tr, _, y_tr, _ = train_test_split(x, digits.target.astype(np.int64), test_size=0.3, random_state=0,
                                        stratify=digits.target)
    x_te = np.load(ROOT / "examples" / "resnet8" / "test.npz")["x"]
    model = Conv2dNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.nll_loss(torch.log(model(xt) + 1e-9), yt)
        loss.backward()
        opt.step()
    model.eval()
    out = ROOT / "tests" / "data" / "torch"
    torch.onnx.export(model, (torch.from_numpy(x_te[:1]),), str(out / "conv2d.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    with torch.no_grad():
        expected = model(torch.from_numpy(x_te)).numpy()
    np.savez_compressed(out / "conv2d_expected.npz", y=expected)
    y_te = np.load(ROOT / "examples" / "resnet8" / "test.npz")["y"]
    print(f"conv2d: loss {loss.item():.4f}, test accuracy {float((expected.argmax(1) == y_te).mean()):.3f}")


if __name__ == "__main__":
    main()
