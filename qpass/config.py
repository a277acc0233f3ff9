"""pipeline.yaml: schema, loading and validation.

Every path in the YAML is relative to the YAML file. Validation happens before anything runs, converts
nothing (`qpass check` is exactly this), and reports every problem at once, each as a ConfigError naming
the file and the key path.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator

from qpass.data import callable_spec, check_samples, load_array, load_callable
from qpass.errors import ConfigError, ConfigErrors
from qpass.model_shape import ShapeUnknown, input_shape

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".npy", ".npz")
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras", ".tflite", ".onnx")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ModelSection(_Strict):
    path: str = Field(description="the .h5, .keras, SavedModel directory or .onnx file")
    safe_mode: bool = Field(True, description="load Keras models without running Lambda code")
    batch_size: int = Field(1, ge=1, description="the batch dimension the graph is fixed to; only 1 (the C runs "
                                                "one sample per call)")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset tf2onnx converts to")


    @field_validator("batch_size")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only 1 is supported: the generated C runs one sample per call; remove the key")
        return v


class PassesCheckSection(_Strict):
    tolerance: float = Field(1e-3, gt=0, description="largest output change a float pass may make, relative to "
                                                     "the output range")
    fail: bool = Field(False, description="fail the run when a pass exceeds the tolerance (default: warn)")
    samples: int = Field(4, ge=1, le=256, description="comparison samples the graph after each pass is run on")
    per_pass: bool = Field(True, description="check after every pass; false: only after the last")


class DataSection(_Strict):
    path: str
    key: str | None = Field(None, description="array name inside a .npz (default: the first array)")
    labels_key: str | None = Field(None, description="labels array inside the .npz, for test accuracy")
    limit: int | None = Field(None, ge=1, description="use at most this many samples")
    batch_size: int = Field(64, ge=1, description="samples per onnxruntime call (bounds memory)")


class CalibrationSection(DataSection):
    path: str = Field(description="a .npy/.npz file, or `module:function` / `file.py:function` returning an "
                                  "iterable of float32 batches shaped (n, *input_shape[1:])")
    method: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description="range per tensor: observed min/max, symmetric-tail percentile, or the clip range "
                              "minimizing the expected quantization + clipping squared error")
    percentile: float = Field(99.99, gt=50, le=100, description="with method: percentile, the share of samples "
                                                                "kept; (100 - p)/2 % is cut from each tail")

    # the callable `path` names, loaded once by load_pipeline
    _function: Callable[[], Any] | None = PrivateAttr(None)

    @property
    def function(self) -> Callable[[], Any] | None:
        """The data callable when `path` names one and load_pipeline has loaded it, else None."""
        return self._function


class CompareSection(DataSection):
    layer_samples: int | None = Field(None, ge=1, description="compare samples the per-layer figures run on "
                                                              "(default: all of them)")


class GatesSection(_Strict):
    """Quality gates on the compiled C against float; a run that misses one exits 1."""

    min_argmax_agreement: float | None = Field(None, ge=0, le=1, description="C vs float argmax agreement, 0..1")
    max_abs_error: float | None = Field(None, ge=0, description="largest |C − float| output difference")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="C test accuracy (needs compare.labels_key)")
    c_equals_runtime_ref: bool = Field(True, description="the C must equal runtime_ref bit for bit")


class PassEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


Bits = Literal["int8", "int16"]


class PrecisionOverride(_Strict):
    match: str = Field(description="a node name, `re:<regex>` over node names, or `op:<OpType>`; an "
                                   "unrolled LSTM's nodes also match its LSTM's name and `op:LSTM`")
    activations: Bits | None = None
    weights: Bits | None = None


class QuantSection(_Strict):
    activations: Bits = Field("int8", description="int8 asymmetric or int16 symmetric activations")
    weights: Bits = Field("int8", description="symmetric weights")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    requant: Literal["multiplier", "pow2"] = Field(
        "multiplier", description="rescale by fixed-point multiplier + shift, or by power-of-two scales and "
                                  "shifts only")
    overrides: list[PrecisionOverride] = Field(default_factory=list, description="mixed precision, first match wins")
    input_range: tuple[float, float] | None = Field(
        None, description="pin the network input's real range [lo, hi] (e.g. a sensor's full scale) instead of "
                          "calibrating it")

    @field_validator("input_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError("must be [lo, hi] with lo < hi")
        return v


class CodegenSection(_Strict):
    name: str = "model"
    output_dir: str = "build"
    cc: str = "gcc"

    @field_validator("name")
    @classmethod
    def _c_identifier(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", v):
            raise ValueError("must be a C identifier: letters, digits and _, not starting with a digit")
        return v


class Pipeline(_Strict):
    model: ModelSection
    calibration: CalibrationSection
    passes: list[PassEntry] = Field(default_factory=list)
    quantization: QuantSection = Field(default_factory=QuantSection)
    codegen: CodegenSection = Field(default_factory=CodegenSection)
    compare: CompareSection | None = None
    passes_check: PassesCheckSection = Field(default_factory=PassesCheckSection)
    gates: GatesSection | None = None
    dump: bool = Field(False, description="save the graph after every stage as a numbered .onnx")

    # set by load_pipeline, not by the YAML
    _source: Path = PrivateAttr(Path("."))

    @property
    def source(self) -> Path:
        """The pipeline.yaml this came from (set by load_pipeline; not a YAML key)."""
        return self._source

    @source.setter
    def source(self, value: Path) -> None:
        self._source = Path(value)

    def resolve(self, rel: str) -> Path:
        """A path from the YAML, made absolute against the YAML's folder."""
        return (self.source.parent / rel).resolve()

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.codegen.output_dir)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Read and validate a pipeline.yaml (as `qpass run` does); raises ConfigError naming the key."""
        return load_pipeline(path)


def _normalize(raw: Any) -> Any:
    """Accept the short forms: `model: file.h5`, `calibration: data.npz`, passes as bare names."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    for key in ("model", "calibration", "compare"):
        if isinstance(raw.get(key), str):
            raw[key] = {"path": raw[key]}
    if isinstance(raw.get("passes"), list):
        raw["passes"] = [{"name": p} if isinstance(p, str) else p for p in raw["passes"]]
    return raw


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_pipeline(path: str | Path) -> Pipeline:
    """Read, validate and check a pipeline.yaml, converting nothing.

    Every problem is collected: schema errors in any section, missing or misnamed files, data arrays
    that are missing, do not fit the model's input shape (read from the model file without converting
    it) or have a labels array of another length, unknown passes and bad pass options. One problem
    raises its ConfigError; several raise ConfigErrors listing them all.
    """
    path = Path(path)
    file = str(path)
    raw = _read_yaml(path, file)
    problems: list[ConfigError] = []
    normalized = _normalize(raw)
    try:
        pipe = Pipeline.model_validate(normalized)
    except ValidationError as exc:
        problems += _schema_problems(exc, file)
        pipe = _valid_sections(normalized, {err["loc"][0] for err in exc.errors() if err["loc"]})
    pipe.source = path.resolve()
    _check_files(pipe, file, problems)
    _check_passes(pipe, file, problems)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
    return pipe


def _read_yaml(path: Path, file: str) -> dict:
    if not path.is_file():
        raise ConfigError(file, "", "no such file; pass the path of a pipeline.yaml (see `qpass init`)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), file)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(file, "", f"not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "expected a mapping with at least `model` and `calibration`")
    return raw


def _schema_problems(exc: ValidationError, file: str) -> list[ConfigError]:
    """One ConfigError per schema error; a misspelt key's "did you mean" replaces the intended key's "missing"."""
    out, guessed = [], set()
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            guess = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
            msg = "unknown key" + (f"; did you mean {guess[0]!r}?" if guess else f"; known: {parent_fields}")
            if guess:
                guessed.add((*loc[:-1], guess[0]))
        elif err["type"] == "missing" and loc in guessed:
            continue
        out.append(ConfigError(file, _key_path(loc), msg))
    return out


def _valid_sections(normalized: dict, bad: set) -> Pipeline:
    """A Pipeline holding only the top-level sections that validated (the others None), so the file and
    pass checks still run on them."""
    values: dict[str, Any] = {}
    for key, info in Pipeline.model_fields.items():
        if key == "model" and key in bad and isinstance(normalized.get(key), dict) \
                and isinstance(normalized[key].get("path"), str):
            values[key] = ModelSection.model_construct(path=normalized[key]["path"])  # its file is still checked
        elif key in bad or (key not in normalized and info.is_required()):
            values[key] = None
        elif key in normalized:
            values[key] = TypeAdapter(info.annotation).validate_python(normalized[key])
    return Pipeline.model_construct(**values)


def load_yaml(text: str, file: str) -> Any:
    """yaml.safe_load, refusing a key written twice in one mapping (naming both lines)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _no_duplicates(node, (), file, set())
    return yaml.safe_load(text)


def _no_duplicates(node: yaml.Node, where: tuple[Any, ...], file: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its node was checked where the anchor is (and no exponential walk)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first:
                    raise ConfigError(file, _key_path((*where, key)), f"written twice, at lines {first[key]} and "
                                      f"{line}; keep one")
                first[key] = line
            _no_duplicates(value_node, (*where, key), file, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicates(item, (*where, i), file, seen)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Pipeline
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields[str(part)].annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                    and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        if str(part) == "passes":
            sub = PassEntry
        model = sub
    return [k for k in model.model_fields if k != "source"]


def _check_files(pipe: Pipeline, file: str, problems: list[ConfigError]) -> None:
    sample_shape = None
    if pipe.model is not None:
        model = pipe.resolve(pipe.model.path)
        if not model.exists():
            problems.append(ConfigError(file, "model.path", f"{model} does not exist"))
        elif model.is_file() and model.suffix.lower() not in MODEL_SUFFIXES:
            problems.append(ConfigError(file, "model.path", f"{model.name}: expected one of {MODEL_SUFFIXES} "
                                        "or a SavedModel directory"))
        else:
            sample_shape = _sample_shape(model)
    for key, section in (("calibration", pipe.calibration), ("compare", pipe.compare)):
        if section is None or (key == "calibration" and callable_spec(section.path)):
            continue
        data = pipe.resolve(section.path)
        if not data.is_file():
            problems.append(ConfigError(file, f"{key}.path", f"{data} does not exist"))
        elif data.suffix.lower() not in DATA_SUFFIXES:
            problems.append(ConfigError(file, f"{key}.path", f"{data.name}: data must be one of {DATA_SUFFIXES}"))
        else:
            _check_data(data, section, key, sample_shape, file, problems)
    if pipe.calibration is not None:
        _check_calibration(pipe, file, problems)


def _sample_shape(model: Path) -> tuple[int, ...] | None:
    """The model input's shape without the batch, read from the file; None when it cannot be told."""
    try:
        shape = input_shape(model)
    except ShapeUnknown as exc:
        log.info("%s: input shape not read (%s); data shapes are checked after conversion", model, exc)
        return None
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    return tuple(int(d) for d in shape[1:])  # type: ignore[arg-type]


def _check_data(data: Path, section: DataSection, key: str, sample_shape: tuple[int, ...] | None, file: str,
                problems: list[ConfigError]) -> None:
    """The array (and labels array) the section names exist, fit the model input and agree in length."""
    try:
        x = load_array(data, section.key, yaml_file=file, yaml_key=f"{key}.key", path_key=f"{key}.path")
        if sample_shape is not None:
            check_samples(x, sample_shape, yaml_file=file, yaml_key=f"{key}.path", name=section.path)
    except ConfigError as exc:
        problems.append(exc)
        x = None
    if section.labels_key is None:
        return
    try:
        labels = load_array(data, section.labels_key, yaml_file=file, yaml_key=f"{key}.labels_key",
                            path_key=f"{key}.path")
    except ConfigError as exc:
        problems.append(exc)
        return
    if x is not None and (labels.ndim == 0 or len(labels) != len(x)):
        problems.append(ConfigError(file, f"{key}.labels_key", f"{data.name}: {section.labels_key!r} holds "
                                    f"{labels.shape} labels for {len(x)} samples; expected one per sample"))


def _check_calibration(pipe: Pipeline, file: str, problems: list[ConfigError]) -> None:
    """A data callable is loaded now, so a typo fails before the model converts; keys that do nothing fail."""
    calib = pipe.calibration
    if "percentile" in calib.model_fields_set and calib.method != "percentile":
        problems.append(ConfigError(file, "calibration.percentile", f"only used with `method: percentile` "
                                    f"(method is {calib.method!r})"))
    if callable_spec(calib.path) is None:
        return
    for key in ("key", "labels_key"):
        if getattr(calib, key) is not None:
            problems.append(ConfigError(file, f"calibration.{key}", "names an array in a .npz; calibration.path "
                                        "is a callable"))
    if pipe.compare is None and "compare" in pipe.model_fields_set:
        pass  # the compare section is there but invalid: its own problem is reported
    elif pipe.compare is None:
        problems.append(ConfigError(file, "compare", "required when calibration.path is a callable: the "
                                    f"comparison needs a data file ({' or '.join(DATA_SUFFIXES)})"))
    try:
        calib._function = load_callable(calib.path, pipe.source.parent, yaml_file=file,
                                        yaml_key="calibration.path")
    except ConfigError as exc:
        problems.append(exc)


def _check_passes(pipe: Pipeline, file: str, problems: list[ConfigError]) -> None:
    """Pass names and options. A built-in pass without options is checked against the catalog, without
    importing the passes (onnx_ir); a user pass, a plug-in or options load the pass to validate them."""
    from qpass.catalog import builtin_catalog

    catalog = builtin_catalog()
    for i, entry in enumerate(pipe.passes or []):
        if entry.name in catalog and not entry.options:
            continue
        if ":" not in entry.name and entry.name not in catalog and not entry_points(group="qpass.passes",
                                                                                    name=entry.name):
            guess = difflib.get_close_matches(entry.name, list(catalog), n=1)
            hint = f"did you mean {guess[0]!r}?" if guess else "run `qpass passes` to list them"
            problems.append(ConfigError(file, f"passes[{i}].name", f"unknown pass {entry.name!r}; {hint}"))
            continue
        from qpass.errors import PassError
        from qpass.passes import resolve_pass

        try:
            cls = resolve_pass(entry.name, base_dir=pipe.source.parent)
        except PassError as exc:
            problems.append(ConfigError(file, f"passes[{i}].name", str(exc)))
            continue
        try:
            cls.Options.model_validate(entry.options)
        except ValidationError as exc:
            problems += [ConfigError(file, f"passes[{i}].options.{_key_path(err['loc'])}", err["msg"])
                         for err in exc.errors()]
