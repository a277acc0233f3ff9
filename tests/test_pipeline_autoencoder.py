"""The autoencoder example (dense, reconstruction output, real BasicMotions windows) through the whole pipeline:
the comparison reports anomaly-score correlation (shown instead of argmax), the C is bit-exact vs runtime_ref, and the
C's scores still separate the anomalous activities. Plus the comparison metrics on small arrays."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qpass.compare import is_reconstruction, metrics, reconstruction_scores, score_correlation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "autoencoder"


@pytest.fixture(scope="module")
def autoencoder(example_run) -> tuple[dict, Path]:
    return example_run("autoencoder")  # the session's run, shared with test_arena


def test_autoencoder_c_is_bit_exact_and_scores_correlate(autoencoder) -> None:
    report, _ = autoencoder
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["accuracy"] is None
    for stage in ("qdq_vs_float", "runtime_ref_vs_float", "c_vs_float"):
        m = report["comparisons"][stage]
        assert "score_pearson" in m and m["samples"] == 160
        assert m["score_pearson"] >= 0.99 and m["score_spearman"] >= 0.99, m


def test_autoencoder_c_scores_separate_the_anomalies(autoencoder) -> None:
    """The C's int8 reconstruction, run again here from the generated files, flags Running/Badminton windows."""
    from qpass.codegen.build import compile_and_run
    from qpass.runtime_ref.intmath import dequantize, quantize

    report, out = autoencoder
    test = np.load(EXAMPLE / "test.npz")
    x, anomaly = test["x"], test["anomaly"]
    h = (out / "autoencoder.h").read_text()
    macro = {k: float(v) for k, v in re.findall(r"#define AUTOENCODER_(\w+) \(?(-?[\d.e+-]+)f?\)?", h)}
    xq = quantize(x.reshape(len(x), -1), macro["INPUT_SCALE"], int(macro["INPUT_ZERO_POINT"]), "int8")
    yq = compile_and_run(out / "autoencoder.c", out / "autoencoder.h", "autoencoder", "int8_t", "int8_t", xq,
                         np.int8, x[0].size)
    y = dequantize(yq, macro["OUTPUT_SCALE"], int(macro["OUTPUT_ZERO_POINT"]))
    score = reconstruction_scores(x, y)
    assert score[anomaly == 1].min() > score[anomaly == 0].max(), "every anomalous window scores above every normal one"


def test_metrics_switch_to_score_correlation_for_reconstructions(rng) -> None:
    x = rng.normal(size=(20, 5, 3))
    y = x + rng.normal(scale=0.1, size=x.shape)
    assert is_reconstruction(x, y.reshape(20, 15)) and not is_reconstruction(x, y[:, :, 0])
    m = metrics(y, y + 0.01, x)
    assert "score_pearson" in m and m["max_abs_error"] == pytest.approx(0.01)
    assert m["score_pearson"] > 0.9
    assert "score_pearson" not in metrics(y[:, 0], y[:, 0]) and "score_pearson" not in metrics(y, y)  # no x
    a = np.array([1.0, 2.0, 3.0, 10.0])
    c = score_correlation(a, a**3)  # monotone, not linear
    assert c["score_spearman"] == pytest.approx(1.0) and c["score_pearson"] < 1.0
    assert c["score_pearson"] == pytest.approx(np.corrcoef(a, a**3)[0, 1])
    assert score_correlation(a, -a)["score_spearman"] == pytest.approx(-1.0)
    assert score_correlation(a, np.array([1.0, 1.0, 2.0, 2.0]))["score_spearman"] == pytest.approx(
        np.corrcoef([0, 1, 2, 3], [0.5, 0.5, 2.5, 2.5])[0, 1])
