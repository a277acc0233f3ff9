"""Bad input never costs a user a file and never crashes: each case is exit code 2, one `qpass: error:` line
naming the key, file or node, no traceback, and every file in and around the output folder untouched.

The model is a tiny ONNX MLP written with onnx.helper (Gemm → Relu → Gemm → Softmax); each case changes one
thing in a fresh copy of the project: the YAML, the model, the data, the output folder or a user pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest
import yaml

from qpass.config import load_pipeline
from qpass.outdir import MANIFEST
from tests.conftest import run_cli

F = onnx.TensorProto.FLOAT
BASE = {"model": {"path": "tiny.onnx"}, "calibration": {"path": "calib.npz", "key": "x"},
        "passes": ["strip-dropout", "fold-constants"], "codegen": {"name": "tiny", "output_dir": "out/tiny"},
        "compare": {"path": "test.npz", "key": "x", "labels_key": "y"}}


def tiny_model(*, extra_input: bool = False, extra_output: bool = False, custom: bool = False,
               batch: int | str = "N", width: int | str = 8) -> onnx.ModelProto:
    """x[batch, 8] → Gemm(6) → Relu → Gemm(4) → Softmax → y, with one deliberate defect when asked."""
    rng = np.random.default_rng(7)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("Gemm", ["r", "w2", "b2"], ["z"], name="fc2", transB=1),
             oh.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    inputs = [oh.make_tensor_value_info("x", F, [batch, width])]
    outputs = [oh.make_tensor_value_info("y", F, [batch, 4])]
    opsets = [oh.make_opsetid("", 17)]
    if extra_input:
        inputs.append(oh.make_tensor_value_info("bias_in", F, [batch, 6]))
        nodes[1] = oh.make_node("Add", ["h", "bias_in"], ["h2"], name="add_in")
        nodes.insert(2, oh.make_node("Relu", ["h2"], ["r"], name="relu"))
    if extra_output:
        outputs.append(oh.make_tensor_value_info("z", F, [batch, 4]))
    if custom:
        nodes.insert(2, oh.make_node("Scramble", ["r"], ["r2"], name="scramble_1", domain="com.example"))
        nodes[3] = oh.make_node("Gemm", ["r2", "w2", "b2"], ["z"], name="fc2", transB=1)
        opsets.append(oh.make_opsetid("com.example", 1))
    graph = oh.make_graph(nodes, "tiny", inputs, outputs,
                          [weight("w1", (6, 8)), weight("b1", (6,)), weight("w2", (4, 6)), weight("b2", (4,))])
    return oh.make_model(graph, opset_imports=opsets)


def custom_op_in_a_loop_body() -> onnx.ModelProto:
    """tiny_model whose Relu runs inside a one-trip Loop whose body holds a com.example op."""
    model = tiny_model()
    body = oh.make_graph([oh.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
                          oh.make_node("Twist", ["h"], ["hv"], name="loop_twist", domain="com.example")], "body",
                         [oh.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                          oh.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
                         [oh.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
                          oh.make_tensor_value_info("hv", F, None)])
    graph = model.graph
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array(1, np.int64), "trips"),
                              onnx.numpy_helper.from_array(np.array(True), "cond")])
    loop = oh.make_node("Loop", ["trips", "cond"], ["scan_h"], name="loop", body=body)
    squeeze = oh.make_node("Squeeze", ["scan_h", "axis0"], ["h_loop"], name="squeeze")
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    graph.node[1].input[0] = "h_loop"
    graph.node.insert(1, squeeze)
    graph.node.insert(1, loop)
    model.opset_import.append(oh.make_opsetid("com.example", 1))
    return model


def gru_batch_first() -> onnx.ModelProto:
    """A GRU with layout=1 (batch first): valid ONNX that onnxruntime's CPU provider refuses."""
    rng = np.random.default_rng(3)
    w = [onnx.numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
         for n, s in (("W", (1, 12, 8)), ("R", (1, 12, 4)))]
    graph = oh.make_graph([oh.make_node("GRU", ["x", "W", "R"], ["seq", "last"], name="gru_batch_first",
                                        hidden_size=4, layout=1),
                           oh.make_node("Flatten", ["last"], ["y"], name="flat")], "gru",
                          [oh.make_tensor_value_info("x", F, ["N", 8])], [oh.make_tensor_value_info("y", F, None)],
                          w)
    # the input is (batch, seq, features) = (1, 1, 8) once reshaped: feed it as [N, 1, 8]
    graph.input[0].type.tensor_type.shape.dim.add().dim_value = 8
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The good project, written once: model, calibration and comparison data, pipeline.yaml."""
    root = tmp_path_factory.mktemp("bad_inputs_template")
    rng = np.random.default_rng(0)
    onnx.save(tiny_model(), str(root / "tiny.onnx"))
    np.savez(root / "calib.npz", x=rng.normal(size=(48, 8)).astype(np.float32))
    np.savez(root / "test.npz", x=rng.normal(size=(24, 8)).astype(np.float32), y=rng.integers(0, 4, 24))
    write_yaml(root, BASE)
    return root


@pytest.fixture
def proj(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the project in tmp_path/proj (tmp_path is what 'around the output folder' means)."""
    dst = tmp_path / "proj"
    shutil.copytree(template, dst)
    return dst


def write_yaml(proj: Path, data: dict, name: str = "pipeline.yaml") -> Path:
    path = proj / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def with_(section: str, **values) -> dict:
    """BASE with keys of one section replaced (None removes the key)."""
    out = json.loads(json.dumps(BASE))
    out[section] = {k: v for k, v in {**out.get(section, {}), **values}.items() if v is not None}
    return out


def tree(root: Path) -> dict[str, str]:
    """Every entry under root (symlinks not followed) → a hash of its bytes, 'dir' or 'link -> target'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused(proj: Path, *fragments: str, yaml_name: str = "pipeline.yaml") -> str:
    """Run the project's YAML: exit 2, one error line holding every fragment, nothing written or removed."""
    root = proj.parent
    before = tree(root)
    result = run_cli("run", str(proj / yaml_name))
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("qpass: error: ") and "Traceback" not in result.stderr, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert result.stdout == ""
    assert tree(root) == before
    return line


# ---------------------------------------------------------------------------------------------- cases

def _save_model(model: onnx.ModelProto) -> Callable[[Path], tuple[str, ...]]:
    def setup(proj: Path) -> tuple[str, ...]:
        onnx.save(model, str(proj / "tiny.onnx"))
        return ()
    return setup


def _yaml(data: dict, *fragments: str) -> Callable[[Path], tuple[str, ...]]:
    def setup(proj: Path) -> tuple[str, ...]:
        write_yaml(proj, data)
        return fragments
    return setup


def _yaml_text(text: str, *fragments: str) -> Callable[[Path], tuple[str, ...]]:
    def setup(proj: Path) -> tuple[str, ...]:
        (proj / "pipeline.yaml").write_text(text, encoding="utf-8")
        return fragments
    return setup


def _array(section: str, name: str, make: Callable[[], object], *fragments: str, npz: bool = True,
           allow_pickle: bool = False) -> Callable[[Path], tuple[str, ...]]:
    """Write data file `name` for `section` (calibration or compare) and point the YAML at it."""
    def setup(proj: Path) -> tuple[str, ...]:
        value = make()
        if npz:
            np.savez(proj / name, **value)  # type: ignore[arg-type]
        else:
            np.save(proj / name, value, allow_pickle=allow_pickle)
        keys = {"key": "x" if npz else None}
        if section == "compare":
            keys["labels_key"] = "y" if npz and "y" in value else None  # type: ignore[operator]
        write_yaml(proj, with_(section, path=name, **keys))
        return (f"{section}.", name, *fragments)
    return setup


def _out_dir(make: Callable[[Path], str], *fragments: str) -> Callable[[Path], tuple[str, ...]]:
    """Prepare the folders, set codegen.output_dir to what `make` returns; the error names the key."""
    def setup(proj: Path) -> tuple[str, ...]:
        out_dir = make(proj)
        data = yaml.safe_load((proj / "pipeline.yaml").read_text(encoding="utf-8"))
        data["codegen"]["output_dir"] = out_dir
        write_yaml(proj, data)
        return ("codegen.output_dir", *fragments)
    return setup


def _user_files(folder: Path, *extra: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text('{"mine": true}\n')  # the old marker must no longer be enough
    (folder / "notes.txt").write_text("my notes\n")
    for name in extra:
        (folder / name).write_text(f"{name}\n")


def _moved_data(sub: str, key: str) -> Callable[[Path], str]:
    """Move the calibration or compare file into proj/sub and refer to it there."""
    def make(proj: Path) -> str:
        (proj / sub).mkdir(parents=True)
        name = "calib.npz" if key == "calibration" else "test.npz"
        shutil.move(proj / name, proj / sub / name)
        data = with_(key, path=f"{sub}/{name}")
        write_yaml(proj, data)
        return sub
    return make


def _model_in_folder(proj: Path) -> str:
    (proj / "models").mkdir()
    shutil.move(proj / "tiny.onnx", proj / "models")
    write_yaml(proj, with_("model", path="models/tiny.onnx"))
    return "models"


def _pass_in_folder(proj: Path) -> str:
    (proj / "passes").mkdir()
    (proj / "passes" / "my_pass.py").write_text(PASSES)
    write_yaml(proj, {**BASE, "passes": ["passes/my_pass.py:Crash"]})
    return "passes"


def _manifest_folder(entries: list[str] | str, *files: str) -> Callable[[Path], str]:
    def make(proj: Path) -> str:
        out = proj / "out" / "tiny"
        out.mkdir(parents=True)
        body = entries if isinstance(entries, str) else json.dumps({"entries": entries})
        (out / MANIFEST).write_text(body)
        for name in files:
            (out / name).write_text(f"{name}\n")
        return "out/tiny"
    return make


def _symlink_to_proj(proj: Path) -> str:
    (proj / "link").symlink_to(proj, target_is_directory=True)
    return "link"


def _file_in_place(proj: Path) -> str:
    (proj / "out").mkdir()
    (proj / "out" / "tiny").write_text("a file, not a folder\n")
    return "out/tiny"


def _user_pass(code: str, cls: str, **check) -> Callable[[Path], tuple[str, ...]]:
    def setup(proj: Path) -> tuple[str, ...]:
        (proj / "my_pass.py").write_text(code)
        data = {**BASE, "passes": ["fold-constants", f"my_pass.py:{cls}"]}
        if check:
            data["passes_check"] = check
        write_yaml(proj, data)
        return ("my_pass.py:" + cls,)
    return setup


PASSES = '''
import numpy as np
import onnx_ir as ir

from qpass.passes import QPass
from qpass.passes._util import bypass


class DropSoftmax(QPass):
    """Remove the final Softmax (a float pass that changes the model's function)."""

    def call(self, model):
        for node in list(model.graph):
            if node.op_type == "Softmax":
                bypass(node, node.inputs[0])
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


class BreakShapes(QPass):
    """Turn off fc1's transB: the product no longer has matching shapes."""

    def call(self, model):
        for node in model.graph:
            if node.name == "fc1":
                node.attributes["transB"] = ir.AttrInt64("transB", 0)
        return ir.passes.PassResult(model, True)


class UnknownOp(QPass):
    """Rename Relu to an op type no domain defines."""

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Relux"
        return ir.passes.PassResult(model, True)


class Crash(QPass):
    """Fails inside call."""

    def call(self, model):
        raise KeyError("boom")
'''


def _pickled(proj: Path) -> tuple[str, ...]:
    np.save(proj / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    write_yaml(proj, with_("calibration", path="objects.npy", key=None))
    return ("calibration.path", "objects.npy", "pickle")


def _broken_npz(proj: Path) -> tuple[str, ...]:
    data = (proj / "calib.npz").read_bytes()
    (proj / "half.npz").write_bytes(data[: len(data) // 2])
    write_yaml(proj, with_("calibration", path="half.npz"))
    return ("calibration.path", "half.npz")


def _truncated_model(proj: Path) -> tuple[str, ...]:
    data = (proj / "tiny.onnx").read_bytes()
    (proj / "tiny.onnx").write_bytes(data[: len(data) // 3])
    return ("tiny.onnx",)


def _hostile_model_name(proj: Path) -> tuple[str, ...]:
    (proj / "bad\nmodel: x.onnx").write_bytes(b"not onnx")
    write_yaml(proj, with_("model", path="bad\nmodel: x.onnx"))
    return ("model: x.onnx", "not a readable ONNX file")


def _calibration_callable_raises(proj: Path) -> tuple[str, ...]:
    (proj / "gen.py").write_text("def data():\n    raise RuntimeError('sensor offline')\n")
    write_yaml(proj, with_("calibration", path="gen.py:data", key=None))
    return ("calibration.path", "sensor offline")


def _gru(passes: list[str]) -> Callable[[Path], tuple[str, ...]]:
    """With passes, the pass check's first session fails; without, calibration's: both name the node."""
    def setup(proj: Path) -> tuple[str, ...]:
        onnx.save(gru_batch_first(), str(proj / "tiny.onnx"))
        rng = np.random.default_rng(1)
        np.savez(proj / "seq.npz", x=rng.normal(size=(8, 1, 8)).astype(np.float32))
        write_yaml(proj, {**BASE, "passes": passes, "calibration": {"path": "seq.npz"},
                          "compare": {"path": "seq.npz"}})
        return ("node 'gru_batch_first' (GRU)", "layout")
    return setup


DUPLICATE_TOP = """\
model: tiny.onnx
calibration: calib.npz
codegen: {name: tiny, output_dir: out/tiny}
compare: test.npz
codegen: {name: other, output_dir: .}
"""
DUPLICATE_NESTED = """\
model: tiny.onnx
calibration: calib.npz
quantization:
  weights: int8
  activations: int8
  weights: int16
codegen: {name: tiny, output_dir: out/tiny}
"""

ALIAS_BOMB = "model: tiny.onnx\ncalibration: calib.npz\nbomb:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
DUPLICATE_IN_LIST = """\
model: tiny.onnx
calibration: calib.npz
passes:
  - {name: fold-constants}
  - name: strip-dropout
    options: {}
    name: fold-batchnorm
"""

CASES: dict[str, Callable[[Path], tuple[str, ...]]] = {
    # -- the output folder: qpass removes only what it wrote
    "output is the yaml folder": _out_dir(lambda p: (_user_files(p), ".")[1], "YAML's folder"),
    "output is the yaml folder's parent": _out_dir(lambda p: "..", "YAML's folder"),
    "output is an absolute path to the yaml folder": _out_dir(lambda p: str(p), "YAML's folder"),
    "output is the model's folder": _out_dir(_model_in_folder, "model's folder"),
    "output is a user pass file's folder": _out_dir(_pass_in_folder, "passes[0]"),
    "output is the calibration folder": _out_dir(_moved_data("data", "calibration"), "calibration.path"),
    "output contains the compare folder": _out_dir(_moved_data("data/held_out", "compare"), "compare.path"),
    "output is a symlink to the yaml folder": _out_dir(_symlink_to_proj, "YAML's folder"),
    "output holds user files and a report.json": _out_dir(lambda p: (_user_files(p / "out" / "tiny"),
                                                                      "out/tiny")[1], "not a qpass output"),
    "output holds files beside a manifest": _out_dir(_manifest_folder(["tiny.c"], "tiny.c", "mine.txt"),
                                                     "mine.txt"),
    "output manifest is not json": _out_dir(_manifest_folder("not json", "tiny.c"), MANIFEST),
    "output manifest lists a path outside": _out_dir(_manifest_folder(["../../pipeline.yaml", "x.c"], "x.c"),
                                                     MANIFEST),
    "output is a file": _out_dir(_file_in_place, "not a folder"),
    "output under a file": _out_dir(lambda p: "pipeline.yaml/out", "cannot create"),
    "output in /proc": _out_dir(lambda p: "/proc/qpass-cannot-write-here/out", "cannot create"),
    # -- the YAML
    "duplicate top-level key": _yaml_text(DUPLICATE_TOP, "codegen: written twice, at lines 3 and 5"),
    "duplicate nested key": _yaml_text(DUPLICATE_NESTED, "quantization.weights: written twice, at lines 4 and 6"),
    "duplicate key in a list item": _yaml_text(DUPLICATE_IN_LIST, "passes[1].name: written twice, at lines 5 and 7"),
    "alias bomb (10^9 elements if expanded)": _yaml_text(ALIAS_BOMB, "bomb: unknown key"),
    "batch size 4": _yaml(with_("model", batch_size=4), "model.batch_size", "only 1"),
    "passes_check tolerance 0": _yaml({**BASE, "passes_check": {"tolerance": 0}}, "passes_check.tolerance"),
    "passes_check unknown key": _yaml({**BASE, "passes_check": {"fial": True}}, "passes_check.fial"),
    "unknown pass": _yaml({**BASE, "passes": ["fold-constans"]}, "passes[0].name", "fold-constants"),
    "model file missing": _yaml(with_("model", path="nope.onnx"), "model.path", "nope.onnx"),
    "model of unknown format": _yaml(with_("model", path="pipeline.yaml"), "model.path", "pipeline.yaml"),
    # -- the model
    "second graph input": _save_model(tiny_model(extra_input=True)),
    "second graph output": _save_model(tiny_model(extra_output=True)),  # refused by the lowering, today
    "custom-domain node": _save_model(tiny_model(custom=True)),
    "custom-domain node in a Loop body": _save_model(custom_op_in_a_loop_body()),
    "batch fixed to 3": _save_model(tiny_model(batch=3)),
    "symbolic feature dimension": _save_model(tiny_model(width="W")),
    "truncated onnx file": _truncated_model,
    "model name with a newline that does not load": _hostile_model_name,
    "batch-first GRU (onnxruntime refuses), passes checked": _gru(["fold-constants"]),
    "batch-first GRU (onnxruntime refuses), no passes": _gru([]),
    # -- the data
    "calibration complex .npy": _array("calibration", "c.npy", lambda: np.ones((8, 8), np.complex64), "complex",
                                       npz=False),
    "calibration pickled .npy": _pickled,
    "calibration NaN": _array("calibration", "nan.npz", lambda: {"x": np.full((8, 8), np.nan, np.float32)}, "NaN"),
    "calibration wrong shape": _array("calibration", "w.npz", lambda: {"x": np.ones((8, 7), np.float32)}, "(8, 7)"),
    "calibration no samples": _array("calibration", "e.npz", lambda: {"x": np.ones((0, 8), np.float32)}, "no sample"),
    "calibration strings": _array("calibration", "s.npy", lambda: np.array([["a"] * 8] * 4), "<U1", npz=False),
    "calibration npz without arrays": _array("calibration", "none.npz", lambda: {}, "no arrays"),
    "calibration corrupt npz": _broken_npz,
    "calibration callable raises": _calibration_callable_raises,
    "compare NaN": _array("compare", "n.npz", lambda: {"x": np.where(np.eye(8, dtype=bool), np.nan, 1.0)
                                                       .astype(np.float32)}, "sample 0", "NaN"),
    "compare infinity": _array("compare", "i.npz", lambda: {"x": np.r_[np.ones((3, 8)), np.full((1, 8), np.inf)]
                                                            .astype(np.float32)}, "sample 3"),
    "compare too large for float32": _array("compare", "big.npy", lambda: np.full((4, 8), 1e300), "float32",
                                            npz=False),
    "compare complex": _array("compare", "cc.npz", lambda: {"x": np.ones((4, 8), np.complex128)}, "complex"),
    "compare labels of another length": _array("compare", "l.npz", lambda: {"x": np.ones((6, 8), np.float32),
                                                                             "y": np.zeros(3, np.int64)},
                                               "labels_key", "6 samples"),
    "compare file missing": _yaml(with_("compare", path="gone.npz"), "compare.path", "gone.npz"),
    # -- passes
    "user pass breaks the shapes": _user_pass(PASSES, "BreakShapes"),
    "user pass writes an unknown op": _user_pass(PASSES, "UnknownOp"),
    "user pass raises": _user_pass(PASSES, "Crash"),
    "user pass drops the softmax, fail on": _user_pass(PASSES, "DropSoftmax", fail=True),
}
NODE_NAMED = {"second graph input": "bias_in", "custom-domain node": "scramble_1",
              "custom-domain node in a Loop body": "loop_twist",
              "batch fixed to 3": "'x'", "symbolic feature dimension": "'W'", "user pass breaks the shapes": "fc1",
              "user pass writes an unknown op": "Relux", "user pass drops the softmax, fail on": "changed the model's"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(proj: Path, case: str):
    fragments = CASES[case](proj)
    extra = (NODE_NAMED[case],) if case in NODE_NAMED else ()
    assert_refused(proj, *fragments, *extra)


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_one_line(proj: Path):
    ro = proj / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        write_yaml(proj, with_("codegen", output_dir="ro/out"))
        assert_refused(proj, "codegen.output_dir", "ro")
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------- runs that work

def run_ok(proj: Path, yaml_name: str = "pipeline.yaml", *args: str):
    result = run_cli("run", *args, str(proj / yaml_name))
    assert result.exit_code == 0, (result.output, result.exception, result.stderr)
    return result


def test_second_run_replaces_exactly_what_the_manifest_lists(proj: Path):
    """Files beside the output folder survive both runs byte for byte; a stage dump of the first run is
    removed by a second run without --dump (it was listed); the permissions follow the umask."""
    sibling = proj / "out" / "other"
    _user_files(sibling)
    (proj / "out" / "readme.txt").write_text("keep me\n")
    before = {k: v for k, v in tree(proj).items() if not k.startswith("out/tiny")}
    run_ok(proj, "pipeline.yaml", "--dump")
    out = proj / "out" / "tiny"
    manifest = json.loads((out / MANIFEST).read_text())["entries"]
    assert any(e.startswith("stages/") for e in manifest) and "tiny.c" in manifest
    assert sorted(manifest) == sorted(tree(out))
    run_ok(proj)
    assert not (out / "stages").exists()
    assert sorted(json.loads((out / MANIFEST).read_text())["entries"]) == sorted(tree(out))
    assert {k: v for k, v in tree(proj).items() if not k.startswith("out/tiny")} == before
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "tiny.c").stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in out.parent.iterdir() if ".staging-" in p.name] == []
    report = json.loads((out / "report.json").read_text())  # strict JSON: json.loads rejects bare NaN
    assert sorted(report["files"]) == sorted(p.name for p in out.iterdir() if p.is_file())


def test_stale_staging_is_cleaned_and_a_cache_is_kept_apart(proj: Path):
    """A staging folder of a dead run goes; a look-alike folder without a manifest and the YAML's files stay;
    a `.qpass-cache` folder in the output is qpass's own, not a foreign file."""
    out = proj / "out" / "tiny"
    run_ok(proj)
    (out / ".qpass-cache").mkdir(exist_ok=True)
    (out / ".qpass-cache" / "model.onnx").write_bytes(b"cache")
    dead = proj / "out" / ".tiny.staging-dead"
    dead.mkdir()
    (dead / MANIFEST).write_text(json.dumps({"entries": [MANIFEST], "staging_pid": 2 ** 22 + 12345}))
    (dead / "tiny.c").write_text("half written\n")
    lookalike = proj / "out" / ".tiny.staging-mine"
    lookalike.mkdir()
    (lookalike / "mine.txt").write_text("mine\n")
    run_ok(proj)
    assert not dead.exists()
    assert (lookalike / "mine.txt").read_text() == "mine\n"
    assert (proj / "pipeline.yaml").is_file() and (proj / "tiny.onnx").is_file()


def test_codegen_name_main_builds(proj: Path):
    """The harness lives apart from the model's files: a model named `main` (or `stdio`) compiles and runs."""
    for name in ("main", "stdio"):
        write_yaml(proj, with_("codegen", name=name, output_dir=f"out/{name}"))
        run_ok(proj)
        report = json.loads((proj / "out" / name / "report.json").read_text())
        assert report["c_equals_runtime_ref"] is True
        assert {f"{name}.c", f"{name}.h"} <= set(report["files"])


def test_a_pass_that_drops_the_softmax_is_flagged(proj: Path, caplog):
    """Warn by default: the run succeeds, the deviation per pass is in report.json and a warning names it."""
    (proj / "my_pass.py").write_text(PASSES)
    write_yaml(proj, {**BASE, "passes": ["fold-constants", "my_pass.py:DropSoftmax", "strip-dropout"]})
    with caplog.at_level(logging.WARNING, logger="qpass"):
        run_ok(proj)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("my_pass.py:DropSoftmax" in m and "changed the model's outputs" in m for m in logged), logged
    report = json.loads((proj / "out" / "tiny" / "report.json").read_text())
    devs = [p["max_deviation"] for p in report["passes"]]
    assert devs[0] < 1e-5 and devs[1] > 0.1 and devs[2] == devs[1]
    assert report["passes_check"]["max_deviation"] == devs[1]
    assert sum("my_pass.py:DropSoftmax" in w for w in report["warnings"]) == 1


def test_checked_after_the_last_pass_only(proj: Path):
    (proj / "my_pass.py").write_text(PASSES)
    write_yaml(proj, {**BASE, "passes": ["my_pass.py:DropSoftmax", "fold-constants"],
                      "passes_check": {"per_pass": False, "samples": 2}})
    run_ok(proj)
    report = json.loads((proj / "out" / "tiny" / "report.json").read_text())
    assert report["passes"][0]["max_deviation"] is None and report["passes"][1]["max_deviation"] > 0.1
    assert report["passes_check"]["samples"] == 2
    assert sum(w.startswith("the passes (checked after the last, 'fold-constants') changed")
               for w in report["warnings"]) == 1


def test_report_json_is_strict_json():
    from qpass.pipeline import _json_safe

    report = {"layers": [{"sqnr_db": float("inf")}], "x": (float("nan"), 1.5, -float("inf")), "n": 3}
    assert json.loads(json.dumps(_json_safe(report), allow_nan=False)) == {
        "layers": [{"sqnr_db": None}], "x": [None, 1.5, None], "n": 3}


def test_faithful_passes_record_small_deviations(proj: Path):
    run_ok(proj)
    report = json.loads((proj / "out" / "tiny" / "report.json").read_text())
    assert all(0 <= p["max_deviation"] < 1e-5 for p in report["passes"])
    assert not any("changed the model's outputs" in w for w in report["warnings"])


# ---------------------------------------------------------------------------------------------- qpass init

HOSTILE_NAMES = [
    "x.onnx\n  safe_mode: false\nextra: {a: 1}\n#.onnx",
    "my model #2: final.onnx",
    "it's \"quoted\".onnx",
    "modèle_é_日本.onnx",
    "- [a, b]: {c}.onnx",
    "&anchor *alias !!python.onnx",
    "tab\there\rcr.onnx",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_init_writes_hostile_file_names_as_plain_values(tmp_path: Path, name: str):
    folder = tmp_path / "m"
    folder.mkdir()
    model = folder / name
    onnx.save(tiny_model(), str(model))
    out = folder / "pipeline.yaml"
    result = run_cli("init", str(model), "-o", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    raw = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert set(raw) == {"model", "calibration", "passes", "quantization", "codegen", "compare"}
    assert set(raw["model"]) == {"path", "safe_mode", "batch_size"}
    assert raw["model"] == {"path": name, "safe_mode": True, "batch_size": 1}
    comments = [line for line in out.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("#")]
    assert not any(Path(name).stem[:6] in line for line in comments)  # raw names never reach a comment
    for data in ("calib.npz", "test.npz"):
        np.savez(folder / data, x=np.zeros((2, 8), np.float32), y=np.zeros(2))
    pipe = load_pipeline(out)
    assert pipe.resolve(pipe.model.path) == model.resolve()
    assert pipe.model.safe_mode is True
