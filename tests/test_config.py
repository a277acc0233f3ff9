"""pipeline.yaml validation: every bad input is one ConfigError naming the file and the key path, and
through the CLI one `qpass: error:` line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from qpass.config import load_pipeline
from qpass.errors import ConfigError
from tests.conftest import run_cli, write_yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"

BASE = {
    "model": {"path": "digits.h5"},
    "calibration": {"path": "calib.npz", "key": "x", "limit": 100},
    "passes": ["strip-dropout", "fold-constants", "fold-batchnorm", "matmul-to-gemm"],
    "quantization": {"activations": "int8", "weights": "int8", "per_channel": True},
    "codegen": {"name": "digits", "output_dir": "out/digits"},
    "compare": {"path": "test.npz", "key": "x", "labels_key": "y", "limit": 50},
}


def assert_user_error(result, yaml_path: Path, key: str, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `qpass: error: FILE: KEY: ...`, no traceback, no output written."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("qpass: error: "), line
    assert str(yaml_path) in line, line
    assert f": {key}: " in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert_nothing_written(yaml_path.parent)
    return line


def assert_nothing_written(proj: Path, out: str = "out/digits") -> None:
    out_dir = proj / out
    assert not out_dir.exists(), f"{out_dir} was created"
    if out_dir.parent.exists():
        leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
        assert not leftovers, f"staging left behind: {leftovers}"


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


# (id, mutation of BASE, expected key path, fragments the message must contain)
BAD = [
    ("unknown-top-level-key", lambda d: {**d, "compre": {"path": "test.npz"}}, "compre",
     ["unknown key", "did you mean 'compare'?"]),
    ("unknown-nested-key", lambda d: _set(d, "quantization.activation", "int8"), "quantization.activation",
     ["unknown key", "did you mean 'activations'?"]),
    ("unknown-key-in-optional-section", lambda d: _set(d, "compare.label_key", "y"), "compare.label_key",
     ["did you mean 'labels_key'?"]),
    ("unknown-key-in-pass-entry", lambda d: _set(d, "passes.0", {"name": "strip-dropout", "option": {}}),
     "passes[0].option", ["did you mean 'options'?"]),
    ("wrong-type", lambda d: _set(d, "model.batch_size", "one"), "model.batch_size", ["integer"]),
    ("out-of-range", lambda d: _set(d, "calibration.limit", 0), "calibration.limit", []),
    ("bad-literal", lambda d: _set(d, "quantization.activations", "int4"), "quantization.activations", ["int8"]),
    ("missing-required-section", lambda d: {k: v for k, v in d.items() if k != "calibration"}, "calibration",
     ["required"]),
    ("missing-model-file", lambda d: _set(d, "model.path", "nope.h5"), "model.path", ["nope.h5", "does not exist"]),
    ("model-wrong-suffix", lambda d: _set(d, "model.path", "test.npz"), "model.path", ["test.npz"]),
    ("missing-calibration-file", lambda d: _set(d, "calibration.path", "nope.npz"), "calibration.path",
     ["nope.npz", "does not exist"]),
    ("calibration-csv", lambda d: _set(d, "calibration.path", "calib.csv"), "calibration.path",
     ["calib.csv", ".npy", ".npz"]),
    ("missing-compare-file", lambda d: _set(d, "compare.path", "held_out.npy"), "compare.path",
     ["held_out.npy", "does not exist"]),
    ("misspelt-pass", lambda d: _set(d, "passes.2", "fold-batchnom"), "passes[2].name",
     ["fold-batchnom", "did you mean 'fold-batchnorm'?"]),
    ("unknown-pass-no-guess", lambda d: _set(d, "passes.0", "quantum-entangle"), "passes[0].name",
     ["quantum-entangle", "qpass passes"]),
    ("bad-pass-options", lambda d: _set(d, "passes.1", {"name": "fold-constants", "options": {"max_size": 3}}),
     "passes[1].options.max_size", ["not permitted"]),
    ("user-pass-file-missing", lambda d: _set(d, "passes.0", "my_passes.py:Mine"), "passes[0].name",
     ["my_passes.py"]),
    ("codegen-name-digit", lambda d: _set(d, "codegen.name", "1digits"), "codegen.name", ["C identifier"]),
    ("codegen-name-injection", lambda d: _set(d, "codegen.name", 'x(); system("rm")'), "codegen.name",
     ["C identifier"]),
]


@pytest.mark.parametrize(("mutate", "key", "fragments"), [pytest.param(m, k, f, id=i) for i, m, k, f in BAD])
def test_load_pipeline_rejects(project, mutate, key, fragments):
    (project / "calib.csv").write_text("1,2,3\n")
    path = write_yaml(project, mutate(BASE))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    err = info.value
    assert err.file == str(path) and err.key == key
    assert "\n" not in str(err)
    for fragment in fragments:
        assert fragment in str(err)


@pytest.mark.parametrize(("mutate", "key", "fragments"), [pytest.param(m, k, f, id=i) for i, m, k, f in BAD])
def test_cli_run_rejects(project, mutate, key, fragments):
    (project / "calib.csv").write_text("1,2,3\n")
    path = write_yaml(project, mutate(BASE))
    assert_user_error(run_cli("run", str(path)), path, key, *fragments)


def test_base_pipeline_is_valid(project):
    pipe = load_pipeline(write_yaml(project, BASE))
    assert pipe.codegen.name == "digits"
    assert pipe.output_dir == (project / "out" / "digits").resolve()
    assert [p.name for p in pipe.passes] == BASE["passes"]
    assert pipe.resolve(pipe.calibration.path) == (project / "calib.npz").resolve()


def test_short_forms_are_accepted(project):
    pipe = load_pipeline(write_yaml(project, {"model": "digits.h5", "calibration": "calib.npz"}))
    assert pipe.model.path == "digits.h5" and pipe.calibration.path == "calib.npz" and pipe.calibration.key is None
    assert pipe.passes == [] and pipe.codegen.name == "model"


def test_paths_are_relative_to_the_yaml_not_the_cwd(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = project / "configs"
    sub.mkdir()
    data = _set(_set(_set(BASE, "model.path", "../digits.h5"), "calibration.path", "../calib.npz"),
                "compare.path", "../test.npz")
    pipe = load_pipeline(write_yaml(sub, data))
    assert pipe.output_dir == (sub / "out" / "digits").resolve()
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(sub, BASE))  # digits.h5 is not next to configs/pipeline.yaml
    assert info.value.key == "model.path"


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "expected a mapping"),
    ("- model\n- calibration\n", "expected a mapping"),
])
def test_not_a_mapping(project, text, fragment):
    path = write_yaml(project, text)
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qpass: error: {path}: "), result.stderr
    assert fragment in lines[0] and "Traceback" not in result.stderr
    assert_nothing_written(project)


def test_missing_pipeline_file(tmp_path):
    path = tmp_path / "nope.yaml"
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"qpass: error: {path}: no such file; pass the path of a pipeline.yaml (see `qpass init`)"]


def test_invalid_yaml_is_one_line(project):
    path = write_yaml(project, "model: [digits.h5\ncalibration: calib.npz\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_yaml_cli_exit_code_and_no_traceback(project):
    path = write_yaml(project, "model: [digits.h5\ncalibration: calib.npz\n")
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"qpass: error: {path}: not valid YAML")
    assert "Traceback" not in result.stderr
    assert_nothing_written(project)


def test_misspelt_required_key_names_the_typo(project):
    data = {("modle" if k == "model" else k): v for k, v in BASE.items()}
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(project, data))
    assert info.value.key == "modle"
    assert "did you mean 'model'?" in str(info.value)


def test_source_is_not_a_yaml_key(project):
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(project, {**BASE, "source": "/etc"}))
    assert info.value.key == "source"
