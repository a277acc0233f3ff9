"""pipeline.yaml: schema, loading and validation.

Every path in the YAML is relative to the YAML file. Validation happens before anything runs and
turns every problem into one ConfigError naming the file and the key path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from qpass.data import callable_spec, load_callable
from qpass.errors import ConfigError

DATA_SUFFIXES = (".npy", ".npz")
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras", ".tflite", ".onnx")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ModelSection(_Strict):
    path: str = Field(description="the .h5, .keras, SavedModel directory or .onnx file")
    safe_mode: bool = Field(True, description="load Keras models without running Lambda code")
    batch_size: int = Field(1, ge=1, description="the batch dimension the graph is fixed to")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset tf2onnx converts to")


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
    compare: DataSection | None = None
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
    """Read, validate and check a pipeline.yaml; raise ConfigError on the first problem."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, "", "no such file; pass the path of a pipeline.yaml (see `qpass init`)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(file, "", f"not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "expected a mapping with at least `model` and `calibration`")
    try:
        pipe = Pipeline.model_validate(_normalize(raw))
    except ValidationError as exc:
        # a misspelt key also makes its intended key "missing": name what the user wrote first
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        key = _key_path(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_fields = _fields_at(err["loc"][:-1])
            guess = difflib.get_close_matches(str(err["loc"][-1]), parent_fields, n=1)
            msg = "unknown key" + (f"; did you mean {guess[0]!r}?" if guess else f"; known: {parent_fields}")
        raise ConfigError(file, key, msg) from None
    pipe.source = path.resolve()
    _check_files(pipe, file)
    _check_passes(pipe, file)
    return pipe


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


def _check_files(pipe: Pipeline, file: str) -> None:
    model = pipe.resolve(pipe.model.path)
    if not model.exists():
        raise ConfigError(file, "model.path", f"{model} does not exist")
    if model.is_file() and model.suffix.lower() not in MODEL_SUFFIXES:
        raise ConfigError(file, "model.path", f"{model.name}: expected one of {MODEL_SUFFIXES} "
                          "or a SavedModel directory")
    for key, section in (("calibration", pipe.calibration), ("compare", pipe.compare)):
        if section is None or (key == "calibration" and callable_spec(section.path)):
            continue
        data = pipe.resolve(section.path)
        if not data.is_file():
            raise ConfigError(file, f"{key}.path", f"{data} does not exist")
        if data.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(file, f"{key}.path", f"{data.name}: data must be one of {DATA_SUFFIXES}")
    _check_calibration(pipe, file)


def _check_calibration(pipe: Pipeline, file: str) -> None:
    """A data callable is loaded now, so a typo fails before the model converts; keys that do nothing fail."""
    calib = pipe.calibration
    if "percentile" in calib.model_fields_set and calib.method != "percentile":
        raise ConfigError(file, "calibration.percentile", f"only used with `method: percentile` (method is "
                          f"{calib.method!r})")
    if callable_spec(calib.path) is None:
        return
    for key in ("key", "labels_key"):
        if getattr(calib, key) is not None:
            raise ConfigError(file, f"calibration.{key}", "names an array in a .npz; calibration.path is a callable")
    if pipe.compare is None:
        raise ConfigError(file, "compare", "required when calibration.path is a callable: the comparison needs "
                          f"a data file ({' or '.join(DATA_SUFFIXES)})")
    calib._function = load_callable(calib.path, pipe.source.parent, yaml_file=file, yaml_key="calibration.path")


def _check_passes(pipe: Pipeline, file: str) -> None:
    from qpass.errors import PassError
    from qpass.passes import resolve_pass

    for i, entry in enumerate(pipe.passes):
        try:
            cls = resolve_pass(entry.name, base_dir=pipe.source.parent)
        except PassError as exc:
            raise ConfigError(file, f"passes[{i}].name", str(exc)) from None
        try:
            cls.Options.model_validate(entry.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(file, f"passes[{i}].options.{_key_path(err['loc'])}", err["msg"]) from None
