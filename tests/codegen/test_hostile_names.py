"""Names from a model file are untrusted: they must never break or inject into the generated C."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

HOSTILE = [
    'int', 'return', 'x"; system("rm -rf /"); //', "*/ int evil = 1; /*", "line\nbreak #define main evil",
    "back\\slash\\", "#include <stdio.h>", "ünïcödé—名前", "??/ trigraph", "", "a" * 300, "while", "qp_arena",
]


def _model(path: Path) -> None:
    rng = np.random.default_rng(1)
    n = iter(HOSTILE * 4)
    x, h, r, l2, y = next(n), next(n) + "_1", next(n) + "_2", next(n) + "_3", next(n) + "_4"
    w1, b1, w2, b2 = (next(n) + f"_c{i}" for i in range(4))
    nodes = [helper.make_node("Gemm", [x, w1, b1], [h], name=next(n)),
             helper.make_node("Relu", [h], [r], name=next(n)),
             helper.make_node("Gemm", [r, w2, b2], [l2], name=next(n)),
             helper.make_node("Softmax", [l2], [y], name=next(n))]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 8)).astype(np.float32), w1),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), b1),
             numpy_helper.from_array(rng.normal(0, 1.0, (8, 3)).astype(np.float32), w2),
             numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), b2)]
    graph = helper.make_graph(nodes, "*/ graph \"name\" \n#pragma",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, producer_name="*/ evil\nproducer", opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_hostile_names_produce_c_that_compiles_and_means_the_model(tmp_path: Path) -> None:
    model_file = tmp_path / 'evil "*\\ name #.onnx'
    _model(model_file)
    x = np.random.default_rng(2).normal(0, 1, (64, 6)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:32])
    np.save(tmp_path / "test.npy", x[32:])
    (tmp_path / "pipeline.yaml").write_text(
        f"model: '{model_file.name}'\ncalibration: calib.npy\ncompare: test.npy\n"
        "passes: [fold-constants]\ncodegen: {name: safe, output_dir: out}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))  # compiles with -Werror and all warnings
    assert report["c_equals_runtime_ref"]
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.9
    for name in ("safe.c", "safe.h"):
        text = (tmp_path / "out" / name).read_text(encoding="ascii")  # ASCII only
        comments = re.findall(r"/\*.*?\*/", text, flags=re.S)
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        assert "evil" not in code and "system(" not in code and "#define main" not in code
        assert "line\nbreak" not in text and "*/ int evil" not in text and "*/ graph" not in text
        assert all(c.count("/*") == 1 for c in comments)  # no comment opened inside another
        assert "??/" not in text and "\\" not in text.replace("\\n", "")
    identifiers = set(re.findall(r"\b[A-Za-z_]\w*\s*\(", re.sub(r"/\*.*?\*/", "", (tmp_path / "out" / "safe.c")
                                                            .read_text(), flags=re.S)))
    assert not any(i.startswith(("int(", "return(", "while(")) for i in identifiers)
