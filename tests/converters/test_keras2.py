"""Keras 2 files (saved by tf_keras, as TF <= 2.15 saved them) that Keras 3 refuses load through tf_keras,
convert to ONNX computing what the Keras 2 model computes, and say which loader was used; safe_mode still
refuses a Lambda layer on that route."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from qpass.converters import load_model
from qpass.errors import ConvertError

pytest.importorskip("tf_keras")


def _keras2_model(lambda_layer: bool):
    """A tiny Keras 2 model: DepthwiseConv2D (its Keras 2 config has `groups`, which Keras 3 refuses)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_keras as k2

    k2.utils.set_random_seed(3)
    inp = k2.Input((12, 1, 3))
    x = k2.layers.DepthwiseConv2D((3, 1), padding="same", depth_multiplier=2)(inp)
    if lambda_layer:
        x = k2.layers.Lambda(lambda t: t * 2.0)(x)
    x = k2.layers.ReLU()(x)
    x = k2.layers.Flatten()(x)
    return k2.Model(inp, k2.layers.Dense(4)(x))


@pytest.fixture(scope="session")
def keras2_files(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    work = tmp_path_factory.mktemp("keras2")
    out = {}
    for name, lam in (("depthwise", False), ("lambda", True)):
        model = _keras2_model(lam)
        model.save(work / f"{name}.h5")
        out[name] = (work / f"{name}.h5", model)
        if not lam:
            model.save(work / f"{name}.keras")  # tf_keras's own zip format
            out[f"{name}.keras"] = (work / f"{name}.keras", model)
    return out


def test_keras3_refuses_the_keras2_file(keras2_files) -> None:
    import keras

    with pytest.raises(Exception, match="groups"):
        keras.models.load_model(str(keras2_files["depthwise"][0]), compile=False)


@pytest.mark.parametrize("file", ["depthwise", "depthwise.keras"])
def test_keras2_file_converts_through_tf_keras(keras2_files, ort_run, rng, caplog, file) -> None:
    path, k2_model = keras2_files[file]
    with caplog.at_level(logging.INFO, logger="qpass.converters.keras"):
        model = load_model(path, batch_size=2)
    assert "tf_keras" in model.metadata_props["qpass.converter"]
    assert any("loaded with tf_keras" in r.getMessage() for r in caplog.records)
    x = rng.normal(size=(2, 12, 1, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, x), k2_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_keras3_files_keep_the_keras3_loader(keras_zoo) -> None:
    assert "Keras 3" in keras_zoo.converted("dense_bn", "h5").metadata_props["qpass.converter"]


def test_safe_mode_refuses_a_lambda_on_the_tf_keras_route(keras2_files, ort_run, rng) -> None:
    path, k2_model = keras2_files["lambda"]
    with pytest.raises(ConvertError, match=r"lambda\.h5.*Lambda layer.*safe_mode: false"):
        load_model(path)
    model = load_model(path, safe_mode=False)  # the user trusts the file
    x = rng.normal(size=(1, 12, 1, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, x), k2_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
