"""keras-gru: tf2onnx's Loop for a Keras 3 GRU becomes one ONNX GRU with the same outputs (onnxruntime, 1e-5).

Real Keras models with seeded random weights (.keras and .h5), converted once per module by
`qpass.converters.load_model`. The float pipeline's recurrent passes (keras-gru, fold-reverse-sequence,
unroll-gru) then reproduce Keras itself. reset_after=False becomes a GRU with linear_before_reset=0.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qpass.codegen.support import problems
from qpass.ort import session
from qpass.passes import resolve_pass
from qpass.passes.keras_gru import KerasGruPass

ATOL = RTOL = 1e-5
RECURRENT_PASSES = ["fold-constants", "keras-lstm", "keras-gru", "fold-reverse-sequence", "simplify-layout",
                    "unroll-gru", "fold-constants", "simplify-layout"]


def _keras_models():
    """name → (Keras model, file format, GRU layers)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    L = keras.layers

    def seq(*layers):
        return keras.Sequential([keras.Input((12, 3)), *layers])

    return {
        "last": (seq(L.GRU(6), L.Dense(4)), "keras", 1),
        "stacked": (seq(L.GRU(6, return_sequences=True), L.GRU(5), L.Dense(4)), "h5", 2),
        "backwards": (seq(L.GRU(6, go_backwards=True), L.Dense(4)), "h5", 1),
        "bidirectional": (seq(L.Bidirectional(L.GRU(6)), L.Dense(4)), "keras", 2),
        "no_bias": (seq(L.GRU(6, use_bias=False), L.Dense(4)), "keras", 1),
        "reset_before": (seq(L.GRU(6, reset_after=False), L.Dense(4)), "keras", 1),
        "reset_before_stacked": (seq(L.GRU(6, reset_after=False, return_sequences=True),
                                     L.GRU(5, reset_after=False, use_bias=False, go_backwards=True), L.Dense(4)),
                                 "h5", 2),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[bytes, int, np.ndarray, np.ndarray]]:
    """name → (serialized converter output, GRU count, input batch, Keras' output on it)."""
    from qpass.converters import load_model

    root = tmp_path_factory.mktemp("keras_gru")
    out = {}
    for index, (name, (model, fmt, n_gru)) in enumerate(_keras_models().items()):
        rng = np.random.default_rng(200 + index)
        for layer in model.layers:
            weights = [rng.normal(0.0, 0.4, w.shape).astype(np.float32) for w in layer.get_weights()]
            if weights:
                layer.set_weights(weights)
        path = root / f"{name}.{fmt}"
        model.save(str(path))
        x = np.cumsum(rng.normal(0, 0.5, (1, 12, 3)), axis=1).astype(np.float32)
        out[name] = (ir.serde.serialize_model(load_model(path)).SerializeToString(), n_gru, x,
                     np.asarray(model(x)))
    return out


def _fresh(converted, name: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.ModelProto.FromString(converted[name][0]))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", ["last", "stacked", "backwards", "bidirectional", "no_bias", "reset_before",
                                  "reset_before_stacked"])
def test_loop_becomes_one_gru_and_unrolls_to_keras(converted, name):
    model = _fresh(converted, name)
    _, n_gru, x, want = converted[name]
    assert sum(n.op_type == "Loop" for n in model.graph) == n_gru
    assert KerasGruPass()(model).modified
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    grus = [n for n in model.graph if n.op_type == "GRU"]
    assert len(grus) == n_gru and not any(n.op_type == "Loop" for n in model.graph)
    lbr = 0 if name.startswith("reset_before") else 1  # Keras reset_after=False: r before the recurrent product
    assert all(n.attributes.get_int("linear_before_reset") == lbr and n.metadata_props["qpass.pass"] == "keras-gru"
               for n in grus)
    np.testing.assert_allclose(_run(model, x), want, rtol=RTOL, atol=ATOL)
    assert not KerasGruPass()(model).modified  # a second run finds nothing

    model = _fresh(converted, name)
    for p in RECURRENT_PASSES:
        resolve_pass(p)()(model)
    assert not any(n.op_type in ("Loop", "GRU", "ReverseSequence") for n in model.graph)
    np.testing.assert_allclose(_run(model, x), want, rtol=RTOL, atol=ATOL)
    assert not problems(model)  # the early support check accepts every node
