"""Shared fixtures: real Keras models converted once per session, tiny ONNX graphs from text, and
helpers that run a pass and check it against onnxruntime.

TensorFlow is imported only when a test asks for a Keras model, and every Keras model is built, saved
and converted at most once per session (`keras_zoo`); tests get a fresh `onnx_ir.Model` each time, so a
pass that edits in place cannot leak into another test.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx.shape_inference
import onnx_ir as ir
import pytest

from qpass.ort import session
from qpass.passes import resolve_pass

RTOL = ATOL = 1e-5
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---------------------------------------------------------------------------------------------- onnx helpers


def ort_run(model: ir.Model | onnx.ModelProto, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """The first output of `model` on `x` (an array for the first graph input, or a feed dict)."""
    sess = session(model)
    feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    return sess.run(None, feeds)[0]


def parse_onnx(text: str, **constants: np.ndarray) -> ir.Model:
    """A model from `onnx.parser` text; the names in `constants` become initializers.

    The text names the weights (as graph inputs or simply as free names) and the values come as numpy
    arrays, so the text stays readable while the weights are random. Shapes are inferred (strictly), as
    the converters do, and the result passes the checker.
    """
    proto = onnx.parser.parse_model(text)
    graph = proto.graph
    kept = [i for i in graph.input if i.name not in constants]
    del graph.input[:]
    graph.input.extend(kept)
    for name, array in constants.items():
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def op_counts(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def apply_pass(name: str, model: ir.Model, **options) -> ir.passes.PassResult:
    """Resolve a pass by its registered name and run it once on `model` (in place)."""
    cls = resolve_pass(name)
    return cls(cls.Options.model_validate(options))(model)


@dataclass
class PassCheck:
    """What `check_pass` saw: the results of the first and second runs and the outputs."""

    first: ir.passes.PassResult
    second: ir.passes.PassResult
    before: Counter
    after: Counter
    expected: np.ndarray
    actual: np.ndarray


def check_pass(name: str, model: ir.Model, x: np.ndarray | dict[str, np.ndarray], *, modified: bool | None,
               **options) -> PassCheck:
    """Run pass `name` twice on `model` and check the invariants every float pass keeps.

    - onnxruntime outputs before and after agree (rtol = atol = 1e-5);
    - the first run's `modified` is `modified` (None: either), and it is honest: the graph did (or did
      not) change;
    - the second run changes nothing and says so;
    - the result is a valid ONNX model.
    """
    expected = ort_run(model, x)
    before_proto = ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    before = op_counts(model)
    first = apply_pass(name, model, **options)
    assert first.model is model, "an in-place pass returns the model it was given"
    after_proto = ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    if modified is not None:
        assert first.modified is modified, f"{name}: expected modified={modified}, got {first.modified}"
    assert (before_proto != after_proto) is first.modified, f"{name}: modified={first.modified} is not honest"
    onnx.checker.check_model(ir.serde.serialize_model(model))
    actual = ort_run(model, x)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    second = apply_pass(name, model, **options)
    assert second.modified is False, f"{name}: a second run reported a change"
    again = ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    assert again == after_proto, f"{name}: a second run changed the graph"
    return PassCheck(first, second, before, op_counts(model), expected, actual)


@pytest.fixture(name="ort_run")
def ort_run_fixture() -> Callable[..., np.ndarray]:
    return ort_run


@pytest.fixture(name="parse_onnx")
def parse_onnx_fixture() -> Callable[..., ir.Model]:
    return parse_onnx


@pytest.fixture(name="check_pass")
def check_pass_fixture() -> Callable[..., PassCheck]:
    return check_pass


@pytest.fixture(name="apply_pass")
def apply_pass_fixture() -> Callable[..., ir.passes.PassResult]:
    return apply_pass


def convert_keras_seeded(root: Path, models: Callable[..., dict[str, tuple]], seed: int) -> dict[str, tuple]:
    """name → (serialized converter output, the entry's tag, input [1, 12, 3], Keras' output on it) for the models
    `models(L, seq)` gives as name → (Keras model, file format, tag), where L is keras.layers and seq(*layers) a
    Sequential on a [12, 3] input: weights N(0, 0.4) seeded `seed` + index, saved, converted by
    qpass.converters.load_model (the keras-gru / keras-rnn tests' models)."""
    from qpass.converters import load_model

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    def seq(*layers):
        return keras.Sequential([keras.Input((12, 3)), *layers])

    out = {}
    for index, (name, (model, fmt, tag)) in enumerate(models(keras.layers, seq).items()):
        rng = np.random.default_rng(seed + index)
        for layer in model.layers:
            weights = [rng.normal(0.0, 0.4, w.shape).astype(np.float32) for w in layer.get_weights()]
            if weights:
                layer.set_weights(weights)
        path = root / f"{name}.{fmt}"
        model.save(str(path))
        x = np.cumsum(rng.normal(0, 0.5, (1, 12, 3)), axis=1).astype(np.float32)
        out[name] = (ir.serde.serialize_model(load_model(path)).SerializeToString(), tag, x, np.asarray(model(x)))
    return out


def check_loops_to_recurrence(data: bytes, x: np.ndarray, want: np.ndarray, keras_pass: str, op_type: str,
                              loops: int, passes: list[str]) -> list[ir.Node]:
    """`keras_pass` turns the converter output's `loops` Loops into as many `op_type` nodes (checker, provenance,
    onnxruntime = Keras, a second run finds nothing); then `passes` leave no Loop, recurrence or ReverseSequence,
    still equal Keras, and the early support check accepts every node. Returns the recurrent nodes."""
    from qpass.codegen.support import problems

    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    assert sum(n.op_type == "Loop" for n in model.graph) == loops
    assert apply_pass(keras_pass, model).modified
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    found = [n for n in model.graph if n.op_type == op_type]
    assert len(found) == loops and not any(n.op_type == "Loop" for n in model.graph)
    assert all(n.metadata_props["qpass.pass"] == keras_pass for n in found)
    np.testing.assert_allclose(ort_run(model, x), want, rtol=RTOL, atol=ATOL)
    assert not apply_pass(keras_pass, model).modified  # a second run finds nothing

    unrolled = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    for p in passes:
        resolve_pass(p)()(unrolled)
    assert not any(n.op_type in ("Loop", op_type, "ReverseSequence") for n in unrolled.graph)
    np.testing.assert_allclose(ort_run(unrolled, x), want, rtol=RTOL, atol=ATOL)
    assert not problems(unrolled)  # the early support check accepts every node
    return found


def unroll_checked(pass_name: str, op_type: str, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, ir.Model]:
    """Run an unroll pass on `proto`: it changes the model, leaves no `op_type` node, a second run finds nothing,
    and the result passes the checker. Returns the result serialized and in memory."""
    model = ir.serde.deserialize_model(proto)
    assert apply_pass(pass_name, model).modified
    assert not any(n.op_type == op_type for n in model.graph)
    assert not apply_pass(pass_name, model).modified  # a second run finds nothing
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    return out, model


@pytest.fixture(name="unroll_checked")
def unroll_checked_fixture() -> Callable[..., tuple[onnx.ModelProto, ir.Model]]:
    return unroll_checked


@pytest.fixture(name="convert_keras_seeded", scope="session")
def convert_keras_seeded_fixture() -> Callable[..., dict[str, tuple]]:
    return convert_keras_seeded


@pytest.fixture(name="check_loops_to_recurrence")
def check_loops_to_recurrence_fixture() -> Callable[..., list[ir.Node]]:
    return check_loops_to_recurrence


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------- Keras models


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as qpass.converters.keras does
    import tensorflow as tf

    return tf


def _randomize(model, rng: np.random.Generator) -> None:
    """Give every weight a non-trivial value: BN folding with γ=1, β=0, μ=0, σ²=1 would prove nothing."""
    for layer in model.layers:
        values = []
        for var in layer.weights:
            shape = tuple(var.shape)
            if "gamma" in var.path or "moving_variance" in var.path:
                values.append(rng.uniform(0.5, 2.0, shape))
            elif "moving_mean" in var.path or "beta" in var.path or "bias" in var.path:
                values.append(rng.normal(0.0, 1.0, shape))
            else:
                values.append(rng.normal(0.0, 0.5, shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])


def _build(name: str):
    """The Keras models the tests use. Each is small; the names say what tf2onnx makes of them."""
    _tf()
    import keras

    L = keras.layers
    if name == "dense_bn":  # Gemm → Mul → Add (the BN) → Gemm → Relu; the Dropout vanishes in tf2onnx
        return keras.Sequential([keras.Input((16,)), L.Dense(8), L.BatchNormalization(), L.Dropout(0.5),
                                 L.Dense(4, activation="relu")])
    if name == "dense_nobias_bn":  # MatMul → Mul → Add → Gemm
        return keras.Sequential([keras.Input((16,)), L.Dense(8, use_bias=False), L.BatchNormalization(),
                                 L.Dense(4)])
    if name == "conv1d_bn":  # Unsqueeze/Transpose → Conv → Squeeze → Add → Mul → Add → Relu → ... → Gemm
        return keras.Sequential([keras.Input((20, 3)), L.Conv1D(6, 3), L.BatchNormalization(), L.ReLU(),
                                 L.Flatten(), L.Dense(4)])
    if name == "bn_first":  # a BN with no linear op before it: Mul → Add → Gemm
        return keras.Sequential([keras.Input((16,)), L.BatchNormalization(), L.Dense(4)])
    if name == "seq_dense_flatten":  # Dense on [batch, 4, 6] (Reshape → MatMul → Reshape), Flatten, Dense
        return keras.Sequential([keras.Input((4, 6)), L.Dense(3), L.Flatten(), L.Dense(2)])
    if name == "lambda":
        return keras.Sequential([keras.Input((8,)), L.Lambda(lambda t: t * 2.0 + 1.0), L.Dense(2)])
    raise KeyError(name)


class KerasZoo:
    """Real Keras models, built, saved and converted lazily, at most once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._keras: dict[str, object] = {}
        self._files: dict[tuple[str, str], Path] = {}
        self._converted: dict[tuple, bytes] = {}

    def keras(self, name: str):
        """The (randomized, deterministic) Keras model."""
        if name not in self._keras:
            model = _build(name)
            _randomize(model, np.random.default_rng(sum(map(ord, name))))
            self._keras[name] = model
        return self._keras[name]

    def predict(self, name: str, x: np.ndarray) -> np.ndarray:
        """The Keras model's own inference output, the reference a converter must reproduce."""
        return np.asarray(self.keras(name)(x, training=False))

    def path(self, name: str, fmt: str) -> Path:
        """`name` saved as `fmt`: "h5", "keras", "savedmodel" (a `model.export` folder) or "onnx".

        "onnx" is tf2onnx's output with a symbolic batch and tf2onnx's own optimizer turned off, as
        an ONNX file exported elsewhere may look: Shape → Gather/Slice → Concat → Reshape chains,
        Identity nodes, MatMul without Gemm fusion.
        """
        key = (name, fmt)
        if key not in self._files:
            model = self.keras(name)
            if fmt == "savedmodel":
                out = self.root / f"{name}_savedmodel"
                model.export(str(out), verbose=False)
            elif fmt == "onnx":
                out = self.root / f"{name}.onnx"
                onnx.save(self._unoptimized_onnx(model), str(out))
            else:
                out = self.root / f"{name}.{fmt}"
                model.save(str(out))
            self._files[key] = out
        return self._files[key]

    @staticmethod
    def _unoptimized_onnx(model) -> onnx.ModelProto:
        from unittest import mock

        tf = _tf()
        import tf2onnx
        import tf2onnx.optimizer

        specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name="x") for t in model.inputs]

        @tf.function(input_signature=specs)
        def traced(x):
            return {"y": model(x, training=False)}

        with mock.patch.object(tf2onnx.optimizer, "_get_optimizers", dict):
            proto, _ = tf2onnx.convert.from_function(traced, input_signature=specs, opset=17)
        return proto

    def converted(self, name: str, fmt: str = "keras", **kwargs) -> ir.Model:
        """A fresh `onnx_ir.Model` from `qpass.converters.load_model` (conversion cached)."""
        from qpass.converters import load_model

        key = (name, fmt, tuple(sorted(kwargs.items())))
        if key not in self._converted:
            model = load_model(self.path(name, fmt), **kwargs)
            self._converted[key] = ir.serde.serialize_model(model).SerializeToString()
        return ir.serde.deserialize_model(onnx.ModelProto.FromString(self._converted[key]))


@pytest.fixture(scope="session")
def keras_zoo(tmp_path_factory) -> KerasZoo:
    return KerasZoo(tmp_path_factory.mktemp("keras_zoo"))


# ---------------------------------------------------------------------------------------------- the CLI


def run_cli(*args: str):
    """`qpass ARGS` in this process (click's CliRunner), stderr kept apart from stdout (the default from click
    8.2; an option before). Exceptions are caught: the result's exit_code and exception tell."""
    from click.testing import CliRunner

    from qpass.cli import main

    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, list(args), catch_exceptions=True)


def write_yaml(proj: Path, data: dict | str, name: str = "pipeline.yaml") -> Path:
    """A pipeline YAML (a dict dumped, or text as is) in proj; its absolute path."""
    import yaml

    path = proj / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path.resolve()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the digits example (model and data) with nothing else in it, in tmp_path/proj."""
    import shutil

    proj = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "digits", proj, ignore=shutil.ignore_patterns("pipeline.yaml", "build"))
    return proj


# ---------------------------------------------------------------------------------------------- tools/

TOOLS = EXAMPLES.parent / "tools"


def load_tool(name: str):
    """tools/<name>.py as a module (registered in sys.modules: dataclasses, and tools importing each other, look
    modules up there)."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------- examples

class ExampleRuns:
    """The shipped examples run as they are (the pipeline of a copy of examples/, each output in
    <example>/out), each at most once per session: the example tests and the arena test share the work."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[str, tuple[dict, Path]] = {}

    def __call__(self, name: str) -> tuple[dict, Path]:
        """(report, output folder) of examples/<name>/pipeline.yaml."""
        import re
        import shutil

        from qpass.config import load_pipeline
        from qpass.pipeline import run_pipeline

        if name not in self._runs:
            if not (self.root / "examples").exists():  # copied whole: custom_pass reads ../digits
                shutil.copytree(EXAMPLES, self.root / "examples")
            yaml = self.root / "examples" / name / "pipeline.yaml"
            yaml.write_text(re.sub(r"output_dir: .*", "output_dir: out", yaml.read_text()))
            self._runs[name] = run_pipeline(load_pipeline(yaml)), yaml.parent / "out"
        return self._runs[name]


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> ExampleRuns:
    return ExampleRuns(tmp_path_factory.mktemp("example_runs"))
