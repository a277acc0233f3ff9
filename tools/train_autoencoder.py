"""Train the examples/autoencoder model: a dense autoencoder for anomaly detection on BasicMotions (seeded).

    python tools/train_autoencoder.py             # writes examples/autoencoder/

Windows of 25 time steps x 6 channels (accelerometer + gyroscope) are cut from BasicMotions
(examples/har/basicmotions.npz, from tools/extract_basicmotions.py). The autoencoder learns to reconstruct the
"normal" activities (Standing, Walking) only; Running and Badminton are the anomalies. The anomaly score of a
window is its mean squared reconstruction error. Training windows: the normal training cases, stride 5;
test windows: every test case (all four activities), stride 25. Inputs are standardized per channel with the
normal training windows' mean/std (stored as mean/std). Writes autoencoder.h5 (legacy HDF5), calib.npz (x: 96
normal training windows) and test.npz (x: the test windows, anomaly: 1 for Running/Badminton, y: activity,
classes, mean, std), and prints the score's ROC AUC on the test windows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import basicmotions  # first: TensorFlow's settings for reproducible training
import numpy as np
from basicmotions import CHANNELS, ROOT

WINDOW = 25
NORMAL = ("Standing", "Walking")


def windows(x: np.ndarray, stride: int) -> np.ndarray:
    """[cases, T, C] → [cases * n, WINDOW, C], case by case."""
    starts = range(0, x.shape[1] - WINDOW + 1, stride)
    return np.stack([case[s:s + WINDOW] for case in x for s in starts]).astype(np.float32)


def windowed(path: Path) -> tuple[np.ndarray, ...]:
    """(x_train, x_test, y_test, anomaly, classes, mean, std): standardized windows of the normal training cases
    (stride 5) and of every test case (stride WINDOW), each test window's label and whether it is anomalous."""
    x_cases, y_cases, x_test_cases, y_te_case, classes = basicmotions.load(path)
    normal_ids = [int(np.flatnonzero(classes == c)[0]) for c in NORMAL]
    x_tr = windows(x_cases[np.isin(y_cases, normal_ids)], stride=5)
    x_te = windows(x_test_cases, stride=WINDOW)
    y_te = np.repeat(y_te_case, len(x_te) // len(y_te_case))
    anomaly = (~np.isin(y_te, normal_ids)).astype(np.int64)
    mean, std, (x_tr, x_te) = basicmotions.standardize(x_tr, x_te)
    return x_tr, x_te, y_te, anomaly, classes, mean, std


def build(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((WINDOW, CHANNELS), name="window"),
        layers.Flatten(),
        layers.Dense(32, activation="relu"),
        layers.Dense(8, activation="relu"),
        layers.Dense(32, activation="relu"),
        layers.Dense(WINDOW * CHANNELS),
        layers.Reshape((WINDOW, CHANNELS)),
    ], name="autoencoder")


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = score[positive == 1], score[positive == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=basicmotions.DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "autoencoder")
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    x_tr, x_te, y_te, anomaly, classes, mean, std = windowed(args.data)
    basicmotions.seed(keras, tf)
    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(x_tr, x_tr, epochs=args.epochs, batch_size=32, verbose=0, shuffle=True)
    score_tr = np.mean((model.predict(x_tr, verbose=0) - x_tr) ** 2, axis=(1, 2))
    score_te = np.mean((model.predict(x_te, verbose=0) - x_te) ** 2, axis=(1, 2))
    print(f"autoencoder: {model.count_params()} parameters, {len(x_tr)} training windows, {args.epochs} epochs; "
          f"mean score train {score_tr.mean():.3f}, test normal {score_te[anomaly == 0].mean():.3f}, "
          f"test anomalous {score_te[anomaly == 1].mean():.3f}; ROC AUC {roc_auc(score_te, anomaly):.3f} "
          f"on {len(x_te)} test windows")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "autoencoder.h5")
    pick = np.random.default_rng(0).permutation(len(x_tr))[:96]
    np.savez_compressed(args.out / "calib.npz", x=x_tr[np.sort(pick)], mean=mean, std=std)
    np.savez_compressed(args.out / "test.npz", x=x_te, anomaly=anomaly, y=y_te, classes=classes, mean=mean, std=std)


if __name__ == "__main__":
    main()
