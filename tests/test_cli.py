"""The `qpass` command line: errors are one `qpass: error:` line and exit code 2 (a traceback only with
--debug), a failed run writes nothing, `qpass passes` lists the passes, `qpass init` writes a YAML that
validates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from qpass.config import load_pipeline
from qpass.passes import registered_passes
from tests.conftest import run_cli, write_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"

BASE = {
    "model": {"path": "digits.h5"},
    "calibration": {"path": "calib.npz", "key": "x", "limit": 100},
    "passes": ["strip-dropout", "fold-constants", "fold-batchnorm", "matmul-to-gemm"],
    "codegen": {"name": "digits", "output_dir": "out/digits"},
    "compare": {"path": "test.npz", "key": "x", "labels_key": "y", "limit": 50},
}
BAD_NESTED_KEY = {**BASE, "quantization": {"activation": "int8"}}


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file and folder under root with its bytes and mtime: to prove nothing was touched."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
    return out


def staging_leftovers(out_dir: Path) -> list[str]:
    if not out_dir.parent.exists():
        return []
    return [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("qpass: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def cli_subprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "qpass.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)


# -- exit code 2 through a real process ---------------------------------------------------------------


def test_user_error_exits_2_in_a_real_process(project):
    path = write_yaml(project, BAD_NESTED_KEY)
    proc = cli_subprocess("run", str(path))
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith(f"qpass: error: {path}: quantization.activation: unknown key")
    assert line.endswith("did you mean 'activations'?")
    assert proc.stdout == ""
    assert not (project / "out").exists()


@pytest.mark.skipif(shutil.which("qpass") is None, reason="the qpass console script is not on PATH")
def test_console_script_exits_2(project):
    path = write_yaml(project, {**BASE, "passes": ["fold-batchnom"]})
    proc = subprocess.run(["qpass", "run", str(path)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "passes[0].name: unknown pass 'fold-batchnom'; did you mean 'fold-batchnorm'?" in one_error_line(
        proc.stderr)


def test_debug_shows_the_traceback(project):
    path = write_yaml(project, BAD_NESTED_KEY)
    proc = cli_subprocess("--debug", "run", str(path))
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr
    assert f"qpass: error: {path}: quantization.activation: unknown key" in proc.stderr
    assert not (project / "out").exists()


def test_cli_runner_sees_the_same_exit_code(project):
    path = write_yaml(project, BAD_NESTED_KEY)
    result = run_cli("run", str(path))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert one_error_line(result.stderr).endswith("did you mean 'activations'?")


# -- errors found while running (after the model is converted) ---------------------------------------


def _check_run_error(project: Path, path: Path, key: str, *fragments: str) -> str:
    result = run_cli("run", str(path))
    assert result.exit_code == 2, (result.output, result.exception)
    line = one_error_line(result.stderr)
    assert line.startswith(f"qpass: error: {path}: {key}: "), line
    for fragment in fragments:
        assert fragment in line, line
    out_dir = project / "out" / "digits"
    assert not out_dir.exists()
    assert staging_leftovers(out_dir) == []
    return line


def test_calibration_of_the_wrong_shape(project):
    np.savez(project / "calib63.npz", x=np.zeros((20, 63), dtype=np.float32))
    path = write_yaml(project, {**BASE, "calibration": {"path": "calib63.npz", "key": "x"}})
    _check_run_error(project, path, "calibration.path", "(20, 63)", "(N, 64)")


def test_npz_without_the_named_key(project):
    path = write_yaml(project, {**BASE, "calibration": {"path": "calib.npz", "key": "images"}})
    _check_run_error(project, path, "calibration.key", "calib.npz", "'images'", "['x']")


def test_compare_labels_key_missing(project):
    path = write_yaml(project, {**BASE, "compare": {"path": "test.npz", "key": "x", "labels_key": "labels"}})
    _check_run_error(project, path, "compare.labels_key", "'labels'")


def test_corrupt_npz_is_a_user_error(project):
    data = (project / "calib.npz").read_bytes()
    (project / "broken.npz").write_bytes(data[: len(data) // 2])
    path = write_yaml(project, {**BASE, "calibration": {"path": "broken.npz", "key": "x"}})
    _check_run_error(project, path, "calibration.path", "broken.npz")


def test_output_dir_that_is_not_a_qpass_dir_is_left_alone(project):
    out_dir = project / "out" / "digits"
    (out_dir / "src").mkdir(parents=True)
    (out_dir / "main.c").write_text("int main(void) { return 0; }\n")
    (out_dir / "src" / "notes.txt").write_text("mine\n")
    before = snapshot(project / "out")
    path = write_yaml(project, BASE)
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"qpass: error: {path}: codegen.output_dir: "), line
    assert str(out_dir) in line and "not a qpass output directory" in line
    assert snapshot(project / "out") == before
    assert staging_leftovers(out_dir) == []


def test_output_dir_that_is_a_file_is_left_alone(project):
    out = project / "out"
    out.mkdir()
    (out / "digits").write_text("a file, not a folder\n")
    before = snapshot(out)
    path = write_yaml(project, BASE)
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    assert one_error_line(result.stderr).startswith(f"qpass: error: {path}: codegen.output_dir: ")
    assert snapshot(out) == before


# -- qpass passes ---------------------------------------------------------------------------------------


def test_passes_lists_every_registered_pass():
    result = run_cli("passes")
    assert result.exit_code == 0, result.output
    registry = registered_passes()
    assert {"strip-dropout", "fold-constants", "fold-batchnorm", "matmul-to-gemm"} <= set(registry)
    listed = {m.group(1) for m in re.finditer(r"^(\S+)\s", result.stdout, flags=re.MULTILINE)}
    assert listed == set(registry), (listed, set(registry))
    for name, cls in registry.items():
        summary = cls.summary()
        assert summary, f"pass {name} has no docstring summary"
        assert re.search(rf"^{re.escape(name)}\s+{re.escape(summary)}$", result.stdout, flags=re.MULTILINE), name


# -- qpass init ----------------------------------------------------------------------------------------


def test_init_writes_a_pipeline_that_validates(tmp_path):
    out = tmp_path / "tmp" / "pipeline.yaml"
    out.parent.mkdir()
    result = run_cli("init", str(EXAMPLE / "digits.h5"), "-o", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == f"wrote {out}"
    text = out.read_text()
    assert "(N, 64)" in text  # the input shape was read from the model
    raw = yaml.safe_load(text)
    assert raw["codegen"]["name"] == "digits"
    for name in ("calib.npz", "test.npz"):
        shutil.copy(EXAMPLE / name, out.parent / name)
    pipe = load_pipeline(out)
    assert pipe.resolve(pipe.model.path) == (EXAMPLE / "digits.h5").resolve()
    assert pipe.codegen.name == "digits"
    assert pipe.output_dir == (out.parent / "build" / "digits").resolve()
    from qpass.passes import registered_passes

    names = [p.name for p in pipe.passes]
    assert {"strip-dropout", "fold-constants", "fold-batchnorm", "unroll-lstm", "matmul-to-gemm"} <= set(names)
    assert set(names) <= set(registered_passes())


def test_init_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "pipeline.yaml"
    out.write_text("mine: true\n")
    result = run_cli("init", str(EXAMPLE / "digits.h5"), "-o", str(out))
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(out) in line and "--force" in line
    assert out.read_text() == "mine: true\n"
    forced = run_cli("init", str(EXAMPLE / "digits.h5"), "-o", str(out), "--force")
    assert forced.exit_code == 0
    assert yaml.safe_load(out.read_text())["model"]["path"].endswith("digits.h5")


def test_init_sanitizes_the_name_of_an_unreadable_model(tmp_path):
    model = tmp_path / "9 my-model.onnx"
    model.write_bytes(b"not an onnx file")
    out = tmp_path / "pipeline.yaml"
    result = run_cli("init", str(model), "-o", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.startswith("qpass: warning: could not read the input shape")
    raw = yaml.safe_load(out.read_text())
    assert raw["codegen"]["name"] == "m_9_my_model"
    for name in ("calib.npz", "test.npz"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    assert load_pipeline(out).codegen.name == "m_9_my_model"


# -- terminal noise -------------------------------------------------------------------------------------------


def _env_without_tf_settings() -> dict[str, str]:
    """The user's environment as it usually is: none of TensorFlow's logging variables set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TF_")}


def test_a_bad_keras_file_is_one_stderr_line(tmp_path: Path):
    """TensorFlow's C++ start-up lines (absl, cuda probe) do not reach stderr before qpass's one line."""
    (tmp_path / "m.h5").write_bytes(b"not an HDF5 file")
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 8), np.float32))
    path = write_yaml(tmp_path, {"model": "m.h5", "calibration": "calib.npz",
                                 "codegen": {"name": "m", "output_dir": "out"}})
    proc = subprocess.run([sys.executable, "-m", "qpass.cli", "run", str(path)], capture_output=True, text=True,
                          env=_env_without_tf_settings(), timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "could not load the model" in one_error_line(proc.stderr)


def test_each_warning_is_shown_once(tmp_path: Path):
    """A run's warnings are listed in the summary on stdout, not also as log lines on stderr."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    rng = np.random.default_rng(0)
    graph = oh.make_graph([oh.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                          [onh.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w"),
                           onh.from_array(rng.normal(size=3).astype(np.float32), "b")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.zeros((8, 4), np.float32))  # a constant input: a warning
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(8, 4)).astype(np.float32))
    path = write_yaml(tmp_path, {"model": "m.onnx", "calibration": "calib.npz", "compare": "test.npz",
                                 "codegen": {"name": "m", "output_dir": "out"}})
    proc = subprocess.run([sys.executable, "-m", "qpass.cli", "run", str(path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = [line.removeprefix("  - ") for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert any("in every calibration sample" in w for w in listed), proc.stdout
    for warning in listed:
        assert (proc.stdout + proc.stderr).count(warning) == 1, (warning, proc.stderr)
