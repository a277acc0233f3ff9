"""Comparison metrics: float onnxruntime vs every quantized stage."""

from __future__ import annotations

import numpy as np


def metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    """Argmax agreement, max and mean absolute error of `got` against `ref` (N x outputs)."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    err = np.abs(ref - got)
    return {
        "argmax_agreement": float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "samples": len(ref),
    }


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(out.reshape(len(out), -1).argmax(axis=1) == labels.reshape(-1)))
