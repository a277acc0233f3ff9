"""Train the examples/digits model: a small Keras MLP on scikit-learn's 8x8 digits (seeded, reproducible).

    python tools/train_digits.py [--out examples/digits]

Writes digits.h5 (legacy HDF5), calib.npz (x: 200 training images) and test.npz (x, y: held-out set).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "digits")
    ap.add_argument("--epochs", type=int, default=80)
    args = ap.parse_args()

    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)

    model = keras.Sequential([
        keras.Input((64,), name="pixels"),
        keras.layers.Dense(64),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(32),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_te, y_te, verbose=0)
    print(f"test accuracy {acc:.4f} on {len(x_te)} samples")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "digits.h5")
    rng = np.random.default_rng(0)
    calib = x_tr[rng.choice(len(x_tr), 200, replace=False)]
    np.savez_compressed(args.out / "calib.npz", x=calib)
    np.savez_compressed(args.out / "test.npz", x=x_te, y=y_te)


if __name__ == "__main__":
    main()
