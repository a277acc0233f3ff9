"""keras-gru: tf2onnx's Loop for a Keras 3 GRU becomes one ONNX GRU with the same outputs (onnxruntime, 1e-5).

Real Keras models with seeded random weights (.keras and .h5), converted once per module by
`qpass.converters.load_model`. The float pipeline's recurrent passes (keras-gru, fold-reverse-sequence,
unroll-gru) then reproduce Keras itself. reset_after=False becomes a GRU with linear_before_reset=0.
"""

from __future__ import annotations

import numpy as np
import pytest

RECURRENT_PASSES = ["fold-constants", "keras-lstm", "keras-gru", "fold-reverse-sequence", "simplify-layout",
                    "unroll-gru", "fold-constants", "simplify-layout"]


def _keras_models(L, seq):
    """name → (Keras model, file format, GRU layers)."""
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
def converted(tmp_path_factory, convert_keras_seeded) -> dict[str, tuple[bytes, int, np.ndarray, np.ndarray]]:
    """name → (serialized converter output, GRU count, input batch, Keras' output on it)."""
    return convert_keras_seeded(tmp_path_factory.mktemp("keras_gru"), _keras_models, 200)


@pytest.mark.parametrize("name", ["last", "stacked", "backwards", "bidirectional", "no_bias", "reset_before",
                                  "reset_before_stacked"])
def test_loop_becomes_one_gru_and_unrolls_to_keras(converted, check_loops_to_recurrence, name):
    data, n_gru, x, want = converted[name]
    grus = check_loops_to_recurrence(data, x, want, "keras-gru", "GRU", n_gru, RECURRENT_PASSES)
    lbr = 0 if name.startswith("reset_before") else 1  # Keras reset_after=False: r before the recurrent product
    assert all(n.attributes.get_int("linear_before_reset") == lbr for n in grus)
