"""tools/basicmotions.py, the training scripts' shared loading and standardization, reproduces the data shipped
in the BasicMotions examples exactly (they were made by the scripts' earlier inline copies of it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_tool

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", ["har", "har_lstm", "har_bilstm", "gru", "ds_tcn"])
def test_cases_standardized_as_shipped(example: str) -> None:
    bm = load_tool("basicmotions")
    x_tr, y_tr, x_te, y_te, classes = bm.load(bm.DATA)
    mean, std, (x_tr, x_te) = bm.standardize(x_tr, x_te)
    calib, test = np.load(EXAMPLES / example / "calib.npz"), np.load(EXAMPLES / example / "test.npz")
    for got, want in ((x_tr, calib["x"]), (mean, calib["mean"]), (std, calib["std"]), (x_te, test["x"]),
                      (y_te, test["y"]), (classes, test["classes"])):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_autoencoder_windows_as_shipped() -> None:
    load_tool("basicmotions")
    ae = load_tool("train_autoencoder")
    x_tr, x_te, y_te, anomaly, classes, mean, std = ae.windowed(load_tool("basicmotions").DATA)
    calib, test = np.load(EXAMPLES / "autoencoder" / "calib.npz"), np.load(EXAMPLES / "autoencoder" / "test.npz")
    for got, want in ((x_te, test["x"]), (y_te, test["y"]), (anomaly, test["anomaly"]), (mean, calib["mean"]),
                      (std, test["std"])):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert {row.tobytes() for row in calib["x"]} <= {row.tobytes() for row in x_tr}
