"""User passes: `file.py:Class` next to the pipeline YAML and `module:Class`, resolved by name, validated
with their options and run by the runner; unknown names and duplicate registrations are errors."""

from __future__ import annotations

import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import qpass.passes
from qpass.config import load_pipeline
from qpass.errors import ConfigError, PassError
from qpass.passes import PROVENANCE_KEY, QPass, register_pass, registered_passes, resolve_pass
from qpass.passes.runner import run_passes
from qpass.passes.strip_dropout import StripDropoutPass

# A user pass that changes the function measurably: y ← y · factor, plus a new graph name.
SCALE_PASS = '''
import numpy as np
import onnx_ir as ir
from pydantic import BaseModel, ConfigDict

from qpass.passes import QPass


class ScaleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = 2.0
    graph_name: str = "scaled"


class ScaleOutputPass(QPass):
    """Multiply the first graph output by a constant (a test pass)."""

    Options = ScaleOptions

    def call(self, model):
        graph = model.graph
        out = graph.outputs[0]
        k = ir.Value(name="user_factor", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(np.array(self.options.factor, np.float32), name="user_factor"))
        graph.register_initializer(k)
        mul = self.mark(ir.node("Mul", [out, k], name="user_scale"))
        mul.outputs[0].shape, mul.outputs[0].type = out.shape, out.type
        graph.append(mul)
        graph.outputs[0] = mul.outputs[0]
        mul.outputs[0].name, out.name = out.name, out.name + "_unscaled"
        graph.name = self.options.graph_name
        return ir.passes.PassResult(model, True)


class Broken(QPass):
    """Fails inside call (a test pass)."""

    def call(self, model):
        raise ValueError("the user's bug")


class NotAPass:
    pass
'''

TINY = '''<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
    d = Dropout(x)
    y = Relu(d)
}'''


@pytest.fixture
def project(tmp_path: Path, parse_onnx) -> Path:
    """A folder with a pipeline.yaml, its model and data, and my_passes.py next to it."""
    (tmp_path / "my_passes.py").write_text(SCALE_PASS)
    ir.save(parse_onnx(TINY), str(tmp_path / "tiny.onnx"))
    np.save(tmp_path / "calib.npy", np.ones((2, 4), np.float32))  # (N, 4): the input is [1, 4]
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent("""\
        model: tiny.onnx
        calibration: calib.npy
        passes:
          - strip-dropout
          - name: my_passes.py:ScaleOutputPass
            options: {factor: 3.0, graph_name: renamed}
        """))
    return tmp_path


def test_file_pass_named_in_the_yaml_runs(project, tmp_path_factory, monkeypatch, ort_run, parse_onnx):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # paths are relative to the YAML, not the cwd
    pipe = load_pipeline(project / "pipeline.yaml")
    model = parse_onnx(TINY)
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)
    before = ort_run(model, x)
    records = run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent,
                         dump_dir=project)
    assert [(r.name, r.modified) for r in records] == [("strip-dropout", True),
                                                       ("my_passes.py:ScaleOutputPass", True)]
    assert records[1].op_counts == {"Mul": 1, "Relu": 1}
    np.testing.assert_allclose(ort_run(model, x), 3.0 * before, rtol=1e-6)
    assert model.graph.name == "renamed"
    assert model.graph.outputs[0].name == "y"
    (mul,) = [n for n in model.graph if n.op_type == "Mul"]
    assert mul.metadata_props[PROVENANCE_KEY] == "ScaleOutputPass"
    assert (project / "02_ScaleOutputPass.onnx").is_file()


def test_file_pass_resolves_against_base_dir(project):
    cls = resolve_pass("my_passes.py:ScaleOutputPass", base_dir=project)
    assert issubclass(cls, QPass) and cls.__name__ == "ScaleOutputPass"
    assert cls.summary() == "Multiply the first graph output by a constant (a test pass)."
    assert cls.Options.model_validate({"factor": 5}).factor == 5.0
    with pytest.raises(PassError, match="does not exist"):
        resolve_pass("my_passes.py:ScaleOutputPass", base_dir=project / "sub")


def test_bad_user_option_is_a_config_error_with_its_key_path(project):
    yaml = project / "pipeline.yaml"
    yaml.write_text(yaml.read_text().replace("factor: 3.0", "factr: 3.0"))
    with pytest.raises(ConfigError) as info:
        load_pipeline(yaml)
    assert info.value.key == "passes[1].options.factr"


@pytest.mark.parametrize("spec, fragment", [
    ("missing.py:ScaleOutputPass", "does not exist"),
    ("my_passes.py:Nope", "has no attribute 'Nope'"),
    ("my_passes.py:NotAPass", "not a subclass of qpass.passes.QPass"),
    ("my_passes.py:", "module:Class"),
    ("no_such_module_for_qpass_tests:Pass", "cannot import module"),
])
def test_bad_user_pass_specs(project, spec, fragment):
    with pytest.raises(PassError, match=fragment):
        resolve_pass(spec, base_dir=project)


def test_user_file_that_fails_to_import(tmp_path):
    (tmp_path / "bad.py").write_text("import numpy\nraise RuntimeError('oops at import')\n")
    with pytest.raises(PassError, match="RuntimeError: oops at import"):
        resolve_pass("bad.py:Whatever", base_dir=tmp_path)


def test_user_pass_that_raises_is_reported_by_name(project, parse_onnx):
    with pytest.raises(PassError, match=r"'my_passes.py:Broken' failed: ValueError: the user's bug"):
        run_passes(parse_onnx(TINY), [("my_passes.py:Broken", {})], base_dir=project)


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """An importable module (on sys.path for this test only) holding the user passes."""
    name = "qpass_tests_user_module"
    (tmp_path / f"{name}.py").write_text(SCALE_PASS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_module_pass_runs(user_module, tmp_path, parse_onnx, ort_run):
    spec = f"{user_module}:ScaleOutputPass"
    cls = resolve_pass(spec)
    assert cls is sys.modules[user_module].ScaleOutputPass
    model = parse_onnx(TINY)
    x = np.array([[1.0, -2.0, 3.0, 4.0]], np.float32)
    before = ort_run(model, x)
    records = run_passes(model, [(spec, {"factor": -0.5})], base_dir=tmp_path)
    assert records[0].modified and records[0].op_counts == {"Dropout": 1, "Mul": 1, "Relu": 1}
    np.testing.assert_allclose(ort_run(model, x), -0.5 * before, rtol=1e-6)
    assert model.graph.name == "scaled"


def test_module_form_of_a_builtin_pass(parse_onnx, tmp_path):
    assert resolve_pass("qpass.passes.strip_dropout:StripDropoutPass") is StripDropoutPass
    model = parse_onnx(TINY)
    records = run_passes(model, [("qpass.passes.strip_dropout:StripDropoutPass", {})], base_dir=tmp_path)
    assert records[0].modified
    assert Counter(n.op_type for n in model.graph) == Counter({"Relu": 1})


def test_file_pass_with_postponed_annotations(tmp_path):
    (tmp_path / "typed_pass.py").write_text(textwrap.dedent('''\
        from __future__ import annotations

        import dataclasses
        from typing import Literal

        import onnx_ir as ir
        from pydantic import BaseModel, ConfigDict

        from qpass.passes import QPass


        @dataclasses.dataclass
        class Stats:
            count: int = 0


        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            mode: Literal["fast", "exact"] = "fast"


        class TypedPass(QPass):
            """A pass written the way the built-in ones are."""

            Options = Options

            def call(self, model):
                return ir.passes.PassResult(model, False)
        '''))
    cls = resolve_pass("typed_pass.py:TypedPass", base_dir=tmp_path)
    assert cls.Options.model_validate({"mode": "exact"}).mode == "exact"
    assert sys.modules[cls.__module__].TypedPass is cls


def test_file_pass_that_fails_to_import_is_not_left_in_sys_modules(tmp_path):
    (tmp_path / "bad_pass.py").write_text("import qpass\nraise RuntimeError('broken on import')\n")
    before = set(sys.modules)
    with pytest.raises(PassError, match="importing .*bad_pass.py failed: RuntimeError: broken on import"):
        resolve_pass("bad_pass.py:Whatever", base_dir=tmp_path)
    assert not [m for m in set(sys.modules) - before if "bad_pass" in m]


def test_bad_options_through_the_runner_are_a_pass_error_naming_the_pass(project, parse_onnx):
    spec = "my_passes.py:ScaleOutputPass"
    with pytest.raises(PassError, match=f"pass '{spec}': invalid options: factr: Extra inputs are not permitted"):
        run_passes(parse_onnx(TINY), [(spec, {"factr": 3.0})], base_dir=project)
    with pytest.raises(PassError, match="pass 'strip-dropout': invalid options"):
        run_passes(parse_onnx(TINY), [("strip-dropout", {"x": 1})], base_dir=project)


@pytest.mark.parametrize("typo, guess", [("fold-batchnrom", "fold-batchnorm"), ("strip_dropout", "strip-dropout"),
                                         ("matmul2gemm", "matmul-to-gemm")])
def test_unknown_pass_name_suggests_the_closest(typo, guess, tmp_path):
    with pytest.raises(PassError, match=f"unknown pass '{typo}'; did you mean '{guess}'\\?"):
        resolve_pass(typo)
    with pytest.raises(PassError, match=f"did you mean '{guess}'"):
        run_passes(ir.Model(ir.Graph([], [], nodes=[]), ir_version=8), [(typo, {})], base_dir=tmp_path)


def test_unknown_pass_name_without_a_close_match():
    with pytest.raises(PassError, match="run `qpass passes`"):
        resolve_pass("zzzz-qqqq-xxxx")


def test_builtin_passes_are_registered():
    passes = registered_passes()
    for name in ("strip-dropout", "fold-batchnorm", "fold-constants", "matmul-to-gemm"):
        assert resolve_pass(name) is passes[name]
        assert passes[name].name == name
        assert passes[name].summary()


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(qpass.passes, "_REGISTRY", dict(qpass.passes._REGISTRY))
    before = dict(qpass.passes._REGISTRY)

    class Impostor(QPass):
        """Not the real strip-dropout."""

        def call(self, model):
            return ir.passes.PassResult(model, False)

    with pytest.raises(PassError, match="'strip-dropout' is registered twice"):
        register_pass("strip-dropout")(Impostor)
    assert qpass.passes._REGISTRY == before
    assert resolve_pass("strip-dropout") is StripDropoutPass

    register_pass("qpass-test-new-pass")(Impostor)
    assert resolve_pass("qpass-test-new-pass") is Impostor and Impostor.name == "qpass-test-new-pass"
    with pytest.raises(PassError, match="registered twice"):
        register_pass("qpass-test-new-pass")(Impostor)
