"""The pass runner: the one place that logs, times, cleans up after and dumps every pass."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir
import onnx_ir.passes.common
import pydantic

from qpass.errors import PassError, QpassError
from qpass.passes import QPass, resolve_pass

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)


def op_counts(model: ir.Model) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph).items()))


def save(model: ir.Model, path: Path) -> None:
    ir.save(model, str(path))


def _shapes_known(model: ir.Model) -> bool:
    """Every node output has a type and a shape of known rank (what shape inference would add)."""
    return all(v.type is not None and v.shape is not None for node in model.graph for v in node.outputs)


def _options(name: str, cls: type[QPass], options: object) -> pydantic.BaseModel:
    """The pass's validated options; a bad key or value is a PassError naming the pass."""
    try:
        return cls.Options.model_validate(options)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                             for err in exc.errors())
        raise PassError(f"pass {name!r}: invalid options: {problems}") from None


def run_passes(model: ir.Model, entries: list[tuple[str, dict]], *, base_dir: Path,
               dump_dir: Path | None = None) -> list[PassRecord]:
    """Apply the named passes in order; after each one that changed the graph, drop what became unused,
    keep graph order and re-infer shapes, so the next pass sees the shapes this one made static (shape
    inference only updates value shapes and types: nodes, and their metadata, stay as they are). A pass
    that changed nothing costs no cleanup, and shape inference (which serializes the whole model twice) runs
    only when some value has no shape or type."""
    cleanup = ir.passes.Sequential(ir.passes.common.RemoveUnusedNodesPass(),
                                   ir.passes.common.TopologicalSortPass())
    infer = ir.passes.common.ShapeInferencePass()
    records = []
    for index, (name, options) in enumerate(entries, start=1):
        cls = resolve_pass(name, base_dir=base_dir)
        instance = cls(_options(name, cls, options))
        start = time.perf_counter()
        try:
            result = instance(model)
        except QpassError:
            raise
        except Exception as exc:
            raise PassError(f"pass {name!r} failed: {type(exc).__name__}: {exc}") from exc
        model = result.model
        if result.modified:
            cleanup(model)
            if not _shapes_known(model):
                infer(model)
        rec = PassRecord(name, result.modified, time.perf_counter() - start, op_counts(model))
        log.info("pass %-18s %s in %.3fs  %s", name, "modified" if rec.modified else "no change",
                 rec.seconds, rec.op_counts)
        records.append(rec)
        if dump_dir is not None:
            save(model, dump_dir / f"{index:02d}_{cls.name or name}.onnx".replace(":", "_").replace("/", "_"))
    return records
