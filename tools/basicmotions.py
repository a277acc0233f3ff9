"""BasicMotions for the training scripts (train_har.py, train_ds_tcn.py, train_autoencoder.py): the cases of
examples/har/basicmotions.npz (written by extract_basicmotions.py) and their per-channel standardization with
statistics of the training data only. Importing it first also fixes TensorFlow's settings for seeded,
reproducible training (set before numpy or TensorFlow load).

    from basicmotions import DATA, load, standardize        # tools/ is on sys.path for `python tools/x.py`
    x_tr, y_tr, x_te, y_te, classes = load(DATA)
    mean, std, (x_tr, x_te) = standardize(x_tr, x_te)      # x_std = (x_raw - mean) / std, shape (6,) each
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same float results on every x86 machine

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "har" / "basicmotions.npz"
CHANNELS = 6


def load(path: Path, steps: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test, classes); x as [cases, T, 6] (the first `steps` steps if given)."""
    with np.load(path, allow_pickle=False) as d:
        return (d["x_train"][:, :steps], d["y_train"].astype(np.int64), d["x_test"][:, :steps],
                d["y_test"].astype(np.int64), d["classes"])


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-channel mean and std over every training case and time step (the other arrays never contribute),
    and all the arrays standardized with them, as float32."""
    mean = x_train.reshape(-1, CHANNELS).mean(axis=0).astype(np.float32)
    std = x_train.reshape(-1, CHANNELS).std(axis=0).astype(np.float32)
    std = np.where(std > 1e-8, std, np.float32(1.0)).astype(np.float32)
    return mean, std, [((x - mean) / std).astype(np.float32) for x in (x_train, *others)]


def seed(keras, tf) -> None:
    """The same weights and the same training on every run."""
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
