"""Train the examples/resnet8 model: a ResNet-8-shaped Keras CNN on scikit-learn's 8x8 digits upsampled (seeded).

    python tools/train_resnet8.py [--out examples/resnet8] [--size 16]

The 8x8 digits (pixel values 0..16) are upsampled bilinearly to SIZE x SIZE, scaled to [0, 1] and kept as one
channel (N, SIZE, SIZE, 1). The model follows MLPerf Tiny's ResNet-8 with fewer filters: a 3x3 Conv2D stem, three
residual stacks (two 3x3 Conv2D with BatchNormalization and ReLU; the 2nd and 3rd stacks downsample by stride 2
and carry the shortcut through a 1x1 Conv2D), residual Adds, GlobalAveragePooling2D and a Dense softmax.
Writes resnet8.h5 (legacy HDF5), calib.npz (x: 200 training images) and test.npz (x, y: the held-out 30 %).
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
FILTERS = (8, 16, 32)


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 8, 8) pixel values 0..16 -> (N, size, size, 1) float32 in [0, 1], bilinear (scipy.ndimage.zoom)."""
    from scipy.ndimage import zoom

    out = zoom(images.astype(np.float32) / 16.0, (1, size / 8, size / 8), order=1, mode="nearest", grid_mode=True)
    return np.clip(out, 0.0, 1.0)[..., None].astype(np.float32)


def residual_stack(keras, x, filters: int, stride: int):
    layers = keras.layers
    y = layers.Conv2D(filters, 3, strides=stride, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same")(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, padding="same")(x)
    return layers.ReLU()(layers.Add()([x, y]))


def build_resnet8(keras, size: int, classes: int = 10):
    layers = keras.layers
    inp = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(FILTERS[0], 3, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = residual_stack(keras, x, FILTERS[0], 1)
    x = residual_stack(keras, x, FILTERS[1], 2)
    x = residual_stack(keras, x, FILTERS[2], 2)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out, name="resnet8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "resnet8")
    ap.add_argument("--size", type=int, default=16, help="side of the upsampled square image (default 16)")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()

    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = upsample(digits.images, args.size)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)

    model = build_resnet8(keras, args.size)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_te, y_te, verbose=0)
    print(f"resnet8: {model.count_params()} parameters, float test accuracy {acc:.4f} on {len(x_te)} images")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "resnet8.h5", include_optimizer=False)
    rng = np.random.default_rng(0)
    calib = x_tr[rng.choice(len(x_tr), 200, replace=False)]
    np.savez_compressed(args.out / "calib.npz", x=calib)
    np.savez_compressed(args.out / "test.npz", x=x_te, y=y_te)


if __name__ == "__main__":
    main()
