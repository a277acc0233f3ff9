"""Issue 10: answers in seconds. Nothing heavy is imported to list passes or check a YAML; `qpass check`
reports every problem at once before any conversion; the input shape comes from the model file; the build
cache is reused only when its key matches. (Timings are measured by tools/bench_speed.py, not here.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
import yaml
from click.testing import CliRunner

from qpass.cache import CACHE_DIR
from qpass.catalog import builtin_catalog
from qpass.cli import main
from qpass.config import load_pipeline
from qpass.errors import ConfigError, ConfigErrors
from qpass.model_shape import ShapeUnknown, input_shape
from qpass.passes import registered_passes
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnxruntime", "sklearn", "onnx", "onnx_ir", "onnx.reference")


def _imported_by(*argv: str) -> tuple[int, list[str]]:
    """Run the CLI in a fresh interpreter; its exit code and which HEAVY modules it imported."""
    code = ("import sys\nfrom qpass.cli import main\ntry:\n    main(sys.argv[1:], prog_name='qpass')\n"
            "except SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY ")][-1]
    heavy, rc = line[6:].rsplit(" ", 1)
    return int(rc), eval(heavy, {})  # noqa: S307 - our own repr of a list of str


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["passes"], ["check", "examples/har/pipeline.yaml"]])
def test_quick_commands_import_nothing_heavy(argv):
    rc, heavy = _imported_by(*[str(ROOT / a) if a.endswith(".yaml") else a for a in argv])
    assert rc == 0
    assert heavy == [], f"qpass {' '.join(argv)} imported {heavy}"


def test_catalog_equals_the_imported_registry():
    catalog = builtin_catalog()
    registry = registered_passes()
    assert set(catalog) <= set(registry) and len(catalog) >= 9
    for name, info in catalog.items():
        cls = registry[name]
        assert (info.class_name, info.summary) == (cls.__name__, cls.summary()), name
        fields = cls.Options.model_fields
        assert [o.name for o in info.options] == list(fields), name
        for opt in info.options:
            assert (opt.default, opt.description) == (fields[opt.name].default, fields[opt.name].description or "")


def test_version_is_one_line():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == "qpass 0.1.0"


# -- input shape without conversion ---------------------------------------------------------------------


def _onnx_mlp(path: Path, rng: np.random.Generator, *, batch: int | str = "N", width: int = 6,
              old_style: bool = False) -> Path:
    w = onh.from_array(rng.normal(size=(width, 3)).astype(np.float32), "W")
    b = onh.from_array(rng.normal(size=(3,)).astype(np.float32), "B")
    inputs = [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, width])]
    if old_style:  # pre-IR-4 graphs list initializers among the inputs, first
        inputs = [oh.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [width, 3]), *inputs]
    graph = oh.make_graph([oh.make_node("Gemm", ["x", "W", "B"], ["g"]), oh.make_node("Relu", ["g"], ["y"])],
                          "mlp", inputs, [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 3])], [w, b])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


def test_input_shape_from_files(tmp_path, rng):
    assert input_shape(ROOT / "examples/har/har.h5") == (None, 100, 6)
    assert input_shape(ROOT / "examples/digits/digits.h5") == (None, 64)
    assert input_shape(_onnx_mlp(tmp_path / "a.onnx", rng)) == (None, 6)
    assert input_shape(_onnx_mlp(tmp_path / "b.onnx", rng, batch=1, width=9, old_style=True)) == (1, 9)
    (tmp_path / "bad.onnx").write_bytes(b"\x3a\xff\xff")
    with pytest.raises(ShapeUnknown):
        input_shape(tmp_path / "bad.onnx")
    (tmp_path / "k.keras").write_bytes(b"not a zip")
    with pytest.raises(ShapeUnknown):
        input_shape(tmp_path / "k.keras")


# -- qpass check: every problem, at once, before any conversion -----------------------------------------


def _project(tmp_path: Path) -> Path:
    for name in ("har.h5", "calib.npz", "test.npz"):
        shutil.copy(ROOT / "examples/har" / name, tmp_path / name)
    return tmp_path


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_check_reports_every_problem(tmp_path, rng):
    project = _project(tmp_path)
    np.savez(project / "wrong.npz", x=rng.normal(size=(5, 64)).astype(np.float32))
    np.savez(project / "short.npz", x=rng.normal(size=(5, 100, 6)).astype(np.float32), y=np.zeros(4))
    path = _write(project, {
        "model": {"path": "har.h5", "batchsize": 1},
        "calibration": {"path": "wrong.npz", "key": "x"},
        "passes": ["strip-dropout", "fold-constans", {"name": "simplify-layout", "options": {"depth": 2}}],
        "quantization": {"activations": "int12"},
        "codegen": {"name": "har", "output_dir": "out"},
        "compare": {"path": "short.npz", "key": "x", "labels_key": "y"},
    })
    with pytest.raises(ConfigErrors) as info:
        load_pipeline(path)
    found = {e.key: str(e) for e in info.value.errors}
    assert set(found) == {"model.batchsize", "calibration.path", "passes[1].name", "passes[2].options.depth",
                          "quantization.activations", "compare.labels_key"}, found
    assert "did you mean 'batch_size'" in found["model.batchsize"]
    assert "(5, 64)" in found["calibration.path"] and "(N, 100, 6)" in found["calibration.path"]
    assert "did you mean 'fold-constants'" in found["passes[1].name"]
    assert "one per sample" in found["compare.labels_key"]

    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 6 and all(ln.startswith(f"qpass: error: {path}: ") for ln in lines), lines


def test_check_missing_files_and_labels_key(tmp_path):
    project = _project(tmp_path)
    path = _write(project, {"model": "gone.h5", "calibration": {"path": "calib.npz", "key": "xx"},
                            "compare": {"path": "test.npz", "key": "x", "labels_key": "labels"}})
    with pytest.raises(ConfigErrors) as info:
        load_pipeline(path)
    assert [e.key for e in info.value.errors] == ["model.path", "calibration.key", "compare.labels_key"]
    ok = _write(project, {"model": "har.h5", "calibration": {"path": "calib.npz", "key": "x"}})
    result = CliRunner().invoke(main, ["check", str(ok)])
    assert result.exit_code == 0 and "model input (N, 100, 6)" in result.output


def test_one_problem_is_a_plain_config_error(tmp_path):
    project = _project(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project, {"model": "har.h5", "calibration": "calib.npz", "passes": ["nope"]}))
    assert type(info.value) is ConfigError and info.value.key == "passes[0].name"


# -- the build cache ------------------------------------------------------------------------------------


def _cache_project(tmp_path: Path, rng: np.random.Generator) -> Path:
    _onnx_mlp(tmp_path / "mlp.onnx", rng)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(40, 6)).astype(np.float32))
    return _write(tmp_path, {"model": "mlp.onnx", "calibration": {"path": "calib.npz", "key": "x"},
                             "passes": ["fold-constants", "matmul-to-gemm"],
                             "codegen": {"name": "mlp", "output_dir": "out"}})


def _rewrite(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_cache_reused_only_when_its_key_matches(tmp_path, rng):
    path = _cache_project(tmp_path, rng)
    out = tmp_path / "out"
    first = run_pipeline(load_pipeline(path))
    assert first["cache"] == {"converted": False, "float": False}
    c_text = (out / "mlp.c").read_text()
    assert (out / CACHE_DIR / "float" / "key").is_file()

    again = run_pipeline(load_pipeline(path))
    assert again["cache"] == {"converted": True, "float": True}
    assert (out / "mlp.c").read_text() == c_text
    assert again["comparisons"] == first["comparisons"] and again["passes"] == first["passes"]

    _rewrite(path, quantization={"activations": "int16"})  # only the quantization changed: both reused
    assert run_pipeline(load_pipeline(path))["cache"] == {"converted": True, "float": True}

    _rewrite(path, passes=["fold-constants"])  # another pass list: the float graph is rebuilt
    report = run_pipeline(load_pipeline(path))
    assert report["cache"] == {"converted": True, "float": False}
    assert report["op_counts"]["final"] == {"Gemm": 1, "Relu": 1}

    _onnx_mlp(tmp_path / "mlp.onnx", np.random.default_rng(99))  # new weights, same name: nothing reused
    report = run_pipeline(load_pipeline(path))
    assert report["cache"] == {"converted": False, "float": False}
    assert (out / "mlp.c").read_text() != c_text

    key_file = out / CACHE_DIR / "converted" / "key"  # a corrupted key is a miss, not an error
    key_file.write_text("0" * 64)
    assert run_pipeline(load_pipeline(path))["cache"]["converted"] is False


def test_no_cache_and_clean(tmp_path, rng):
    path = _cache_project(tmp_path, rng)
    out = tmp_path / "out"
    run_pipeline(load_pipeline(path))
    assert (out / CACHE_DIR).is_dir()
    result = CliRunner().invoke(main, ["clean", str(out)])
    assert result.exit_code == 0 and not (out / CACHE_DIR).exists() and (out / "mlp.c").is_file()
    report = run_pipeline(load_pipeline(path), cache=False)
    assert report["cache"] == {"converted": False, "float": False} and not (out / CACHE_DIR).exists()
    result = CliRunner().invoke(main, ["clean", str(tmp_path)])  # not a qpass output: nothing removed
    assert result.exit_code == 2 and (tmp_path / "mlp.onnx").is_file()
    assert json.loads((out / "report.json").read_text())["cache"] == {"converted": False, "float": False}
