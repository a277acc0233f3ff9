"""report.html: one self-contained page (inline SVG plots, no script, no network) next to report.json.

Sections: summary and gates, warnings, the pipeline (passes in order, ops before -> after, float
deviation when measured), per layer (table and SQNR bar plot, worst first), the comparison (float vs
QDQ simulation vs runtime_ref vs C, error histogram, confusion matrix float vs C, accuracy), and the C
(memory figures, kernels in order, the arena plan as tensor lifetimes against offsets). Every string
from the model file goes through jinja2's HTML autoescaping.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from qpass.compare import Outputs

log = logging.getLogger(__name__)

SECTIONS = ("summary", "warnings", "pipeline", "layers", "comparison", "c-code")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "qpass", "font.size": 9})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML


def sqnr_plot(rows: list[dict]) -> str | None:
    rows = [r for r in rows if r.get("tensor") is not None]
    if not rows:
        return None
    cap = 60.0  # a kernel with no noise at all (SQNR None) is drawn at the cap
    rows = sorted(rows, key=lambda r: cap if r["sqnr_db"] is None else min(r["sqnr_db"], cap))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    vals = [cap if r["sqnr_db"] is None else min(r["sqnr_db"], cap) for r in rows]
    colors = ["#c0392b" if v < 20 else "#e67e22" if v < 30 else "#27ae60" for v in vals]
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), [f"{r['index']}: {r['kernel']} {str(r['tensor'])[:30]}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("SQNR vs float (dB; higher is better, < 20 dB is poor, > 30 dB is good)")
    ax.axvline(20, color="#999", lw=0.8, ls="--")
    ax.axvline(30, color="#999", lw=0.8, ls=":")
    return _svg(fig)


def error_histogram(out: Outputs, unit: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    stages = {"QDQ simulation": out.qdq, "runtime_ref": out.runtime_ref, "C": out.c}
    errs = {k: (v - out.float).reshape(-1) for k, v in stages.items() if v is not None}
    hi = max(float(np.max(np.abs(e))) for e in errs.values()) or 1e-6
    bins = np.linspace(-hi, hi, 41)
    for (label, e), style in zip(errs.items(), ("step", "step", "stepfilled"), strict=False):
        ax.hist(e, bins=bins, histtype=style, alpha=0.5 if style == "stepfilled" else 1.0, label=label)
    ax.set_xlabel(f"output error against float ({unit})")
    ax.set_ylabel("output values")
    ax.legend()
    return _svg(fig)


def confusion_plot(ref: np.ndarray, got: np.ndarray, title: str) -> tuple[str, list[list[int]]]:
    k = ref.shape[1]
    m = np.zeros((k, k), dtype=int)
    np.add.at(m, (ref.argmax(axis=1), got.argmax(axis=1)), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.5 * k + 2, 0.5 * k + 1.6))
    ax.imshow(m, cmap="Blues")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="#000" if m[i, j] < m.max() / 2 else "#fff")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("C prediction (class index)")
    ax.set_ylabel(f"{title} (class index)")
    return _svg(fig), m.tolist()


def memory_plot(program) -> tuple[str | None, list[dict]]:
    """Tensor lifetimes (half steps) against arena offsets, as the arena planner placed them for the C (the input
    included when it lives in the arena: alive from before step 0)."""
    from qpass.codegen.arena import plan_memory

    plan = plan_memory(program)
    items = [{"tensor": t, "source": program.tensors[t].source, "offset": plan.offsets[t], "bytes": plan.sizes[t],
              "first_step": max(0, plan.lifetimes[t][0] // 2), "last_step": plan.lifetimes[t][1] // 2}
             for t in sorted(plan.offsets, key=lambda t: (plan.offsets[t], plan.lifetimes[t]))]
    if not items:
        return None, items
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    cmap = plt.get_cmap("tab20")
    for i, t in enumerate(sorted(plan.offsets)):
        a, b = plan.lifetimes[t]
        ax.broken_barh([(a / 2, (b - a + 1) / 2)], (plan.offsets[t], plan.sizes[t]), facecolors=cmap(i % 20),
                       edgecolor="#333", lw=0.5)
        if plan.sizes[t] >= plan.size / 12:
            ax.text(a / 2 + (b - a + 1) / 4, plan.offsets[t] + plan.sizes[t] / 2, t, ha="center", va="center",
                    fontsize=7)
    ax.set_xlim(0, len(program.steps))
    ax.set_ylim(0, max(plan.size, 1))
    ax.set_xlabel("kernel step (a tensor lives from its write to its last read)")
    ax.set_ylabel("arena offset (bytes)")
    ax.set_title(f"arena {plan.size} B; lower bound {plan.lower_bound} B")
    return _svg(fig), items


def _pass_rows(report: dict) -> list[dict]:
    before = report["op_counts"]["converted"]
    rows = []
    for i, p in enumerate(report.get("passes", []), start=1):
        after = p["op_counts"]
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
        change = ", ".join(f"{k} {v:+d}" for k, v in delta.items() if v)
        rows.append({"index": i, "name": p["name"], "modified": p["modified"], "seconds": p["seconds"],
                     "before": sum(before.values()), "after": sum(after.values()), "change": change or "-",
                     "max_deviation": p.get("max_deviation")})
        before = after
    return rows


def render_html(report: dict, out: Outputs, program, labels: np.ndarray | None) -> str:
    """The page's HTML text."""
    unit = report.get("output_unit", "output value")
    ctx = {
        "r": report, "unit": unit, "passes": _pass_rows(report),
        "sqnr_svg": sqnr_plot(report["layers"]),
        "worst": sorted([r for r in report["layers"] if r.get("sqnr_db") is not None], key=lambda r: r["sqnr_db"]),
        "hist_svg": error_histogram(out, unit),
        "stage_names": {"qdq_vs_float": "QDQ simulation vs float", "runtime_ref_vs_float": "runtime_ref vs float",
                        "c_vs_float": "C vs float"},
    }
    ctx["scores"] = "score_pearson" in report["comparisons"]["c_vs_float"]  # a reconstruction model
    ctx["confusion_svg"], ctx["confusion"], ctx["labels_svg"] = None, None, None
    if not ctx["scores"]:
        ctx["confusion_svg"], ctx["confusion"] = confusion_plot(out.float, out.c, "float prediction")
    if labels is not None and not ctx["scores"]:
        k = out.c.shape[1]
        onehot = np.eye(k)[np.clip(labels.reshape(-1).astype(int), 0, k - 1)]
        ctx["labels_svg"], _ = confusion_plot(onehot, out.c, "true label")
    ctx["memory_svg"], ctx["placements"] = memory_plot(program)
    ctx["steps"] = [{"index": i, "kernel": s.kernel, "node": s.origin,
                     "shape": "x".join(str(d) for d in program.tensors[s.outputs[0]].shape),
                     "dtype": program.tensors[s.outputs[0]].dtype} for i, s in enumerate(program.steps)]
    env = Environment(loader=PackageLoader("qpass", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html", "j2"], default=True), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(ctx)


def write_html(report: dict, out: Outputs, program, labels: np.ndarray | None, path: Path) -> Path:
    path.write_text(render_html(report, out, program, labels), encoding="utf-8")
    log.info("wrote %s", path)
    return path
