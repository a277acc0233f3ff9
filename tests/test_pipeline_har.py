"""The HAR examples (real BasicMotions data) through the whole pipeline: the issue's acceptance figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.fixture(scope="module", params=["har", "har_lstm"])
def har(request, example_run) -> tuple[str, dict, Path]:
    return request.param, *example_run(request.param)  # the session's run, shared with test_arena


def test_har_c_is_bit_exact_and_agrees_with_float(har) -> None:
    name, report, _ = har
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["samples"] == 40
    assert c["argmax_agreement"] >= 0.99, c
    assert c["max_abs_error"] < 0.05, c
    assert report["accuracy"]["c"] >= report["accuracy"]["float"] - 0.025


def test_har_graph_holds_only_computing_ops(har) -> None:
    _, report, _ = har
    final = set(report["op_counts"]["final"])
    assert not final & {"Loop", "LSTM", "Less", "And", "Cast", "Shape", "Slice", "Dropout", "Identity",
                        "BatchNormalization", "Expand", "ConstantOfShape"}, final
    assert report["kernels"].count("lstm") == 1


def test_har_c_runs_one_loop_for_the_recurrence(har) -> None:
    name, _, out = har
    source = (out / f"{name}.c").read_text()
    assert len(re.findall(r"^\s+qp_l\d+_lstm\(", source, flags=re.M)) == 1
    assert "float" not in re.sub(r"#ifdef \w+_FLOAT_HELPERS.*?#endif", "", source, flags=re.S)
