"""Train the examples/har (Conv1D+BN+LSTM), examples/har_lstm (pure LSTM), examples/har_bilstm (stacked
bidirectional LSTM) and examples/gru (GRU into a bidirectional GRU) models on BasicMotions (seeded).

    python tools/extract_basicmotions.py          # once: writes examples/har/basicmotions.npz
    python tools/train_har.py                     # writes examples/har/, har_lstm/, har_bilstm/, gru/
    python tools/train_har.py --steps 10 --out build/har_t10   # variants on the first 10 time steps

Inputs are standardized per channel with the mean/std of the TRAIN set only (stored as ``mean``/``std`` in
calib.npz and test.npz, shape (6,): x_std = (x_raw - mean) / std). Each model folder gets <name>.h5 (legacy
HDF5), calib.npz (x: the 40 standardized training cases) and test.npz (x: the 40 standardized test cases,
y: labels, classes: label names). With --out DIR the models go to DIR/<model>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import basicmotions  # first: TensorFlow's settings for reproducible training
import numpy as np
from basicmotions import CHANNELS, ROOT

FULL_STEPS = 100
N_CLASSES = 4


def build_har(keras, steps: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((steps, CHANNELS), name="imu"),
        layers.Conv1D(16, 5, padding="same"),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling1D(2),
        layers.Dropout(0.2),
        layers.LSTM(32),
        layers.Dense(N_CLASSES, activation="softmax"),
    ], name="har")


def build_har_lstm(keras, steps: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((steps, CHANNELS), name="imu"),
        layers.LSTM(16, return_sequences=True),
        layers.TimeDistributed(layers.Dense(8, activation="relu")),
        layers.Flatten(),
        layers.Dense(N_CLASSES, activation="softmax"),
    ], name="har_lstm")


def build_har_bilstm(keras, steps: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((steps, CHANNELS), name="imu"),
        layers.Bidirectional(layers.LSTM(8, return_sequences=True), merge_mode="sum"),
        layers.LSTM(8),
        layers.Dense(N_CLASSES, activation="softmax"),
    ], name="har_bilstm")


def build_har_gru(keras, steps: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((steps, CHANNELS), name="imu"),
        layers.GRU(12, return_sequences=True),
        layers.Bidirectional(layers.GRU(8)),
        layers.Dense(N_CLASSES, activation="softmax"),
    ], name="har_gru")


def train(keras, model, x_tr, y_tr, *, lr: float, chunk: int, max_epochs: int, target: float) -> tuple[int, float]:
    """Fit in chunks of epochs until the (inference-mode) train accuracy reaches target, or max_epochs."""
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs, acc = 0, 0.0
    while epochs < max_epochs:
        model.fit(x_tr, y_tr, epochs=chunk, batch_size=8, verbose=0, shuffle=True)
        epochs += chunk
        _, acc = model.evaluate(x_tr, y_tr, verbose=0)
        if acc >= target:
            break
    return epochs, float(acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=basicmotions.DATA,
                    help="output of tools/extract_basicmotions.py")
    ap.add_argument("--out", type=Path, default=None,
                    help="root folder: writes OUT/<model>/ (default: examples/; required with --steps)")
    ap.add_argument("--steps", type=int, default=FULL_STEPS,
                    help=f"train on the first T time steps only (1..{FULL_STEPS}; default {FULL_STEPS})")
    ap.add_argument("--only", choices=["har", "har_lstm", "har_bilstm", "gru"], help="train just one of the models")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--target", type=float, default=1.0, help="stop once train accuracy reaches this")
    args = ap.parse_args()
    if not 1 <= args.steps <= FULL_STEPS:
        ap.error(f"--steps must be in 1..{FULL_STEPS}")
    if args.out is None:
        if args.steps != FULL_STEPS:
            ap.error("--steps other than 100 needs --out, so that the checked-in examples are not overwritten")
        args.out = ROOT / "examples"

    import keras
    import tensorflow as tf

    x_tr, y_tr, x_te, y_te, classes = basicmotions.load(args.data, args.steps)
    mean, std, (x_tr, x_te) = basicmotions.standardize(x_tr, x_te)

    builders = {"har": (build_har, 3e-3), "har_lstm": (build_har_lstm, 3e-3), "har_bilstm": (build_har_bilstm, 1e-2),
                "gru": (build_har_gru, 1e-2)}
    for name, (build, lr) in builders.items():
        if args.only and name != args.only:
            continue
        basicmotions.seed(keras, tf)
        model = build(keras, args.steps)
        epochs, train_acc = train(keras, model, x_tr, y_tr, lr=lr, chunk=25, max_epochs=args.max_epochs,
                                  target=args.target)
        _, test_acc = model.evaluate(x_te, y_te, verbose=0)
        print(f"{name}: T={args.steps} epochs {epochs} train accuracy {train_acc:.4f} "
              f"test accuracy {test_acc:.4f} on {len(x_te)} samples ({model.count_params()} parameters)")

        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / f"{name}.h5")
        np.savez_compressed(out / "calib.npz", x=x_tr, mean=mean, std=std)
        np.savez_compressed(out / "test.npz", x=x_te, y=y_te, mean=mean, std=std, classes=classes)


if __name__ == "__main__":
    main()
