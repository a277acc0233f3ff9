"""What `qpass passes` and `qpass check` need to know about the built-in passes, without importing them.

Importing a pass imports onnx_ir, onnx and sympy (about 2 s); listing the passes or checking a YAML
must answer in well under that. The built-in pass files are read as text and parsed with `ast`: the
`@register_pass("name")` class, its docstring's first line, and its `Options` fields (name, default,
description). tests/test_catalog.py proves the result equal to the imported registry.

    @register_pass("unroll-lstm")                 →   PassInfo(name="unroll-lstm", module="unroll_lstm",
    class UnrollLstmPass(QPass):                                summary="Unroll ...", options=(...))
        \"\"\"Unroll ...\"\"\"
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PASS_DIR = Path(__file__).parent / "passes"


@dataclass(frozen=True)
class OptionInfo:
    name: str
    default: object
    description: str


@dataclass(frozen=True)
class PassInfo:
    name: str
    module: str
    class_name: str
    summary: str
    options: tuple[OptionInfo, ...]


@cache
def builtin_catalog() -> dict[str, PassInfo]:
    """Every built-in pass by its registered name, read from the source files."""
    out: dict[str, PassInfo] = {}
    for module in builtin_modules():
        tree = ast.parse((PASS_DIR / f"{module}.py").read_text(encoding="utf-8"))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for cls in classes.values():
            name = _registered_name(cls)
            if name is not None:
                doc = ast.get_docstring(cls) or ""
                summary = doc.strip().splitlines()[0] if doc.strip() else ""
                out[name] = PassInfo(name, module, cls.name, summary, _options(cls, classes))
    return out


def builtin_modules() -> list[str]:
    """The modules qpass/passes/__init__.py imports from itself (`from qpass.passes import (...)`): the one
    explicit list of built-in passes."""
    tree = ast.parse((PASS_DIR / "__init__.py").read_text(encoding="utf-8"))
    return [alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "qpass.passes"
            for alias in node.names]


def _registered_name(cls: ast.ClassDef) -> str | None:
    for deco in cls.decorator_list:
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "register_pass"
                and deco.args and isinstance(deco.args[0], ast.Constant) and isinstance(deco.args[0].value, str)):
            return deco.args[0].value
    return None


def _options(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> tuple[OptionInfo, ...]:
    """The fields of the pass's `Options`: a nested class, or `Options = SomeClass` naming one in the module."""
    options: ast.ClassDef | None = None
    for stmt in cls.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == "Options":
            options = stmt
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
            stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "Options" and isinstance(stmt.value, ast.Name):
            options = classes.get(stmt.value.id)
    if options is None:
        return ()
    fields = []
    for stmt in options.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if stmt.target.id.startswith("_") or stmt.target.id == "model_config":
            continue
        default, description = _default(stmt.value)
        fields.append(OptionInfo(stmt.target.id, default, description))
    return tuple(fields)


def _default(node: ast.expr | None) -> tuple[object, str]:
    """(default, description) of a field's right-hand side: `value` or `Field(value, description=...)`."""
    if node is None:
        return None, ""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Field":
        kw = {k.arg: k.value for k in node.keywords}
        value = node.args[0] if node.args else kw.get("default")
        desc = kw.get("description")
        return _literal(value), (desc.value if isinstance(desc, ast.Constant) and isinstance(desc.value, str) else "")
    return _literal(node), ""


def _literal(node: ast.expr | None) -> object:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)  # e.g. a default_factory or a name: shown as written
