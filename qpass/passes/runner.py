"""The pass runner: the one place that logs, times, cleans up after, checks and dumps every pass.

After each pass the graph must still be valid ONNX (checker + strict shape inference on the serialized
model), or a PassError names the pass. With a PassCheck, onnxruntime runs the graph on a few samples after
each pass (or only after the last) and records the largest deviation from the converted model's outputs;
a pass whose own change (against the graph checked before it) exceeds `tolerance` × the output range is
a warning, or a PassError when `fail`, naming the pass:

    converted ──pass 1──▶ g1 ──pass 2──▶ g2      max|g2(x) − converted(x)| → passes[2].max_deviation
                                                 max|g2(x) − g1(x)| > tol·range → "pass 2 changed ..."
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common
import pydantic

from qpass.errors import PassError, QpassError
from qpass.passes import QPass, resolve_pass
from qpass.report_warnings import IN_SUMMARY

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)
    max_deviation: float | None = None


@dataclass
class PassCheck:
    """Inputs (each shaped as the graph input) and the converted model's outputs on them, to check passes."""

    inputs: list[np.ndarray]
    expected: np.ndarray
    tolerance: float = 1e-3
    fail: bool = False
    per_pass: bool = True
    warnings: list[str] = field(default_factory=list)
    last: np.ndarray | None = None

    @classmethod
    def of(cls, model: ir.Model | onnx.ModelProto, inputs: list[np.ndarray], **options) -> PassCheck:
        return cls(inputs, _outputs(model, inputs, "the converted model"), **options)

    @property
    def scale(self) -> float:
        """The output range the tolerance is relative to."""
        return float(np.ptp(self.expected)) or float(np.abs(self.expected).max()) or 1.0

    def measure(self, model: ir.Model, name: str) -> float:
        """Largest |output - converted output| over the samples (inf when the output shape changed); a pass
        whose own change (against the graph checked before it) exceeds the tolerance is reported."""
        got = _outputs(model, self.inputs, f"the graph after pass {name!r}")
        previous = self.expected if self.last is None else self.last
        self.last = got
        self.judge(f"pass {name!r}" if self.per_pass else f"the passes (checked after the last, {name!r})",
                   _max_abs(got, previous))
        return _max_abs(got, self.expected)

    def judge(self, who: str, dev: float) -> None:
        if dev <= self.tolerance * self.scale:
            return
        msg = (f"{who} changed the model's outputs by up to {dev:.4g} (output range {self.scale:.4g}, "
               f"tolerance {self.tolerance:g} of it) on {len(self.inputs)} samples; a float pass must keep the "
               "model's function")
        if self.fail:
            raise PassError(msg)
        log.warning("%s", msg, extra=IN_SUMMARY)  # report["warnings"] lists it too
        self.warnings.append(msg)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _outputs(model: ir.Model | onnx.ModelProto, inputs: list[np.ndarray], what: str) -> np.ndarray:
    """The first output of `model` on each input, stacked (float64); OrtError when onnxruntime fails."""
    from qpass.ort import ort_errors, session

    with ort_errors(f"running {what}"):
        sess = session(model, optimize=False)  # a faithful run of the graph as written, and a faster start
        name = sess.get_inputs()[0].name
        return np.stack([np.asarray(sess.run(None, {name: x})[0], dtype=np.float64) for x in inputs])


def validate(model: ir.Model, name: str) -> None:
    """The graph after pass `name` passes the ONNX checker and strict shape inference, or PassError names it."""
    try:
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several kinds; the message says what is wrong
        text = " ".join(str(exc).split())[:300]
        raise PassError(f"pass {name!r} left an invalid graph: {type(exc).__name__}: {text}") from None


def op_counts(model: ir.Model) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph).items()))


def save(model: ir.Model, path: Path) -> None:
    ir.save(model, str(path))


def _shapes_known(model: ir.Model) -> bool:
    """Every node output has a type and a fully static shape (what shape inference would add or make
    static: a pass that folds a Shape/Gather chain leaves dimensions only inference can resolve)."""
    return all(v.type is not None and v.shape is not None and all(isinstance(d, int) for d in v.shape)
               for node in model.graph for v in node.outputs)


def _options(name: str, cls: type[QPass], options: object) -> pydantic.BaseModel:
    """The pass's validated options; a bad key or value is a PassError naming the pass."""
    try:
        return cls.Options.model_validate(options)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                             for err in exc.errors())
        raise PassError(f"pass {name!r}: invalid options: {problems}") from None


def run_passes(model: ir.Model, entries: list[tuple[str, dict]], *, base_dir: Path,
               dump_dir: Path | None = None, check: PassCheck | None = None) -> list[PassRecord]:
    """Apply the named passes in order; after each one that changed the graph, drop what became unused and
    keep graph order, so the next pass sees the shapes this one made static (shape inference only updates
    value shapes and types: nodes, and their metadata, stay as they are). A pass that changed nothing costs
    no cleanup, and shape inference (which serializes the whole model twice) runs only when some value has no
    shape or type. The graph is validated (checker, strict shape inference) after every user pass, whose
    bugs are not ours to know, and after the last pass. With `check`, measure how far the outputs moved."""
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
            try:
                cleanup(model)
                if not _shapes_known(model):
                    infer(model)
            except Exception as exc:  # noqa: BLE001 - a broken graph fails inside onnx_ir's common passes
                raise PassError(f"pass {name!r} left a graph that cannot be cleaned up: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:300]}") from None
            if not cls.__module__.startswith("qpass.passes.") or index == len(entries):
                validate(model, name)
        rec = PassRecord(name, result.modified, time.perf_counter() - start, op_counts(model))
        if check is not None and (check.per_pass or index == len(entries)):
            if not result.modified and records and records[-1].max_deviation is not None:
                rec.max_deviation = records[-1].max_deviation  # an unchanged graph computes what it did
            else:
                rec.max_deviation = check.measure(model, name)
        log.info("pass %-18s %s in %.3fs  %s  max deviation %s", name, "modified" if rec.modified else "no change",
                 rec.seconds, rec.op_counts, rec.max_deviation)
        records.append(rec)
        if dump_dir is not None:
            save(model, dump_dir / f"{index:02d}_{cls.name or name}.onnx".replace(":", "_").replace("/", "_"))
    return records
