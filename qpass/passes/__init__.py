"""The pass framework: a registry of named graph rewrites on onnx_ir.

A pass subclasses `QPass` (an `onnx_ir.passes.InPlacePass`), carries a kebab-case `name`, a docstring
whose first line is its summary, and an `Options` pydantic model that rejects unknown keys.
Built-in passes register with `@register_pass`; user passes come from the entry-point group
`qpass.passes`, or from `module:Class` / `path/to/file.py:Class` named in the YAML.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

import onnx_ir as ir
from pydantic import BaseModel, ConfigDict

from qpass.errors import PassError

ENTRY_POINT_GROUP = "qpass.passes"
PROVENANCE_KEY = "qpass.pass"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QPass(ir.passes.InPlacePass):
    """Base of every qpass graph pass."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()

    def mark(self, node: ir.Node) -> ir.Node:
        """Record on a node that this pass created it (codegen quotes it in C comments)."""
        node.metadata_props[PROVENANCE_KEY] = self.name or type(self).__name__
        return node

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


_REGISTRY: dict[str, type[QPass]] = {}


def register_pass(name: str):
    """Class decorator: register a built-in pass under `name`. Duplicate names raise."""

    def wrap(cls: type[QPass]) -> type[QPass]:
        if name in _REGISTRY:
            raise PassError(f"pass name {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_passes() -> dict[str, type[QPass]]:
    """Built-in passes plus installed entry points (loaded here, since listing asks for them)."""
    out = dict(_REGISTRY)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in out:
            out[ep.name] = _check_class(ep.load(), ep.value)
    return out


def _check_class(obj: object, where: str) -> type[QPass]:
    if not (isinstance(obj, type) and issubclass(obj, QPass)):
        raise PassError(f"{where} is not a subclass of qpass.passes.QPass")
    if not obj.name:
        obj.name = obj.__name__
    return obj


def _load_user_class(spec: str, base_dir: Path) -> type[QPass]:
    target, _, cls_name = spec.rpartition(":")
    if not target or not cls_name.isidentifier():
        raise PassError(f"{spec!r}: write a user pass as `module:Class` or `file.py:Class`")
    if target.endswith(".py"):
        path = (base_dir / target).resolve()
        if not path.is_file():
            raise PassError(f"{spec!r}: file {path} does not exist")
        mod_name = f"qpass_user_{path.stem}_{abs(hash(str(path)))}"
        mod_spec = importlib.util.spec_from_file_location(mod_name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise PassError(f"{spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(mod_spec)
        # registered before it runs, as `import` does: dataclasses, pydantic and postponed annotations
        # look the module up by name in sys.modules
        sys.modules[mod_name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # a user's file: report any failure as theirs
            sys.modules.pop(mod_name, None)
            raise PassError(f"{spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise PassError(f"{spec!r}: cannot import module {target!r}: {exc}") from exc
    obj = getattr(module, cls_name, None)
    if obj is None:
        raise PassError(f"{spec!r}: {target} has no attribute {cls_name!r}")
    return _check_class(obj, spec)


def resolve_pass(name: str, base_dir: Path | None = None) -> type[QPass]:
    """The pass class for a YAML name: registered name, entry point, `module:Class` or `file.py:Class`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _load_user_class(name, base_dir or Path.cwd())
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _check_class(ep.load(), ep.value)
    guess = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"did you mean {guess[0]!r}?" if guess else "run `qpass passes` to list them"
    raise PassError(f"unknown pass {name!r}; {hint}")


# Built-in passes register on import: the explicit list, no directory scan.
from qpass.passes import (  # noqa: E402,F401
    div_to_mul,
    fold_batchnorm,
    fold_constants,
    fold_pad,
    fold_reverse_sequence,
    fold_softplus_threshold,
    fold_time_distributed,
    fuse_gelu,
    keras_gru,
    keras_lstm,
    keras_rnn,
    matmul_to_gemm,
    roll_rnn,
    simplify_layout,
    squeeze_conv2d,
    strip_dropout,
    unroll_gru,
    unroll_lstm,
    unroll_rnn,
)
