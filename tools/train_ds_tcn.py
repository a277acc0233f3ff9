"""Train examples/ds_tcn: a DS-TCN-style streaming gesture model on BasicMotions (seeded).

    python tools/train_ds_tcn.py                  # writes examples/ds_tcn/ds_tcn.h5, calib.npz, test.npz

Causal depthwise-separable Conv1D blocks (depthwise with growing dilation, pointwise 1x1, both bias-free
and followed by BatchNormalization and ReLU), global average pooling and a Dense softmax, as streaming
keyword-spotting models are built. Data: examples/har/basicmotions.npz (from the aeon wheel, see
tools/extract_basicmotions.py), standardized per channel with the TRAIN statistics only, as train_har.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import basicmotions  # first: TensorFlow's settings for reproducible training
import numpy as np
from basicmotions import CHANNELS, ROOT

N_CLASSES, STEPS = 4, 100


def build_ds_tcn(keras, filters: int = 16):
    layers = keras.layers

    def block(x, dilation: int):
        x = layers.ZeroPadding1D((2 * dilation, 0))(x)  # causal (DepthwiseConv1D has no padding="causal")
        x = layers.DepthwiseConv1D(3, dilation_rate=dilation, use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv1D(filters, 1, use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization()(x))

    inp = keras.Input((STEPS, CHANNELS), name="imu")
    x = layers.Conv1D(filters, 3, padding="causal")(inp)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for d in (1, 2, 4):
        x = block(x, d)
    x = layers.GlobalAveragePooling1D()(x)
    out = layers.Dense(N_CLASSES, activation="softmax")(x)
    return keras.Model(inp, out, name="ds_tcn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=basicmotions.DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "ds_tcn")
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    x_tr, y_tr, x_te, y_te, classes = basicmotions.load(args.data)
    mean, std, (x_tr, x_te) = basicmotions.standardize(x_tr, x_te)

    basicmotions.seed(keras, tf)
    model = build_ds_tcn(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=8, verbose=0, shuffle=True)
    _, train_acc = model.evaluate(x_tr, y_tr, verbose=0)
    _, test_acc = model.evaluate(x_te, y_te, verbose=0)
    print(f"ds_tcn: epochs {args.epochs} train accuracy {train_acc:.4f} test accuracy {test_acc:.4f} "
          f"on {len(x_te)} samples ({model.count_params()} parameters)")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "ds_tcn.h5")
    np.savez_compressed(args.out / "calib.npz", x=x_tr, mean=mean, std=std)
    np.savez_compressed(args.out / "test.npz", x=x_te, y=y_te, mean=mean, std=std, classes=classes)


if __name__ == "__main__":
    main()
