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
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WINDOW, CHANNELS = 25, 6
NORMAL = ("Standing", "Walking")


def windows(x: np.ndarray, stride: int) -> np.ndarray:
    """[cases, T, C] → [cases * n, WINDOW, C], case by case."""
    starts = range(0, x.shape[1] - WINDOW + 1, stride)
    return np.stack([case[s:s + WINDOW] for case in x for s in starts]).astype(np.float32)


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
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "har" / "basicmotions.npz")
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "autoencoder")
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    with np.load(args.data, allow_pickle=False) as d:
        classes = d["classes"]
        normal_ids = [int(np.flatnonzero(classes == c)[0]) for c in NORMAL]
        x_tr = windows(d["x_train"][np.isin(d["y_train"], normal_ids)], stride=5)
        y_te_case = d["y_test"].astype(np.int64)
        x_te = windows(d["x_test"], stride=WINDOW)
    n_per_case = len(x_te) // len(y_te_case)
    y_te = np.repeat(y_te_case, n_per_case)
    anomaly = (~np.isin(y_te, normal_ids)).astype(np.int64)
    mean = x_tr.reshape(-1, CHANNELS).mean(axis=0).astype(np.float32)
    std = x_tr.reshape(-1, CHANNELS).std(axis=0).astype(np.float32)
    std = np.where(std > 1e-8, std, np.float32(1.0)).astype(np.float32)
    x_tr = ((x_tr - mean) / std).astype(np.float32)
    x_te = ((x_te - mean) / std).astype(np.float32)

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
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
