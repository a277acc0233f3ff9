"""The early support check and the supported-layer table, both read from the emitter registry in lower.py.

Right after the float passes (before calibration) every node is checked with the same rule the lowering
applies later (`lower.unsupported_reason`, the `check=` next to each emitter), and every refusal is reported
at once. Nodes that `unroll-lstm` / `unroll-gru` / `unroll-rnn` tagged are checked as one recurrent layer by
`lower_lstm.check_group` / `lower_gru.check_gru_group` / `lower_rnn.check_rnn_group`, the functions the recurrent
lowering itself uses.

    model after passes ──check_model──▶ ok | UnsupportedModelError("3 nodes cannot be lowered: ...")
"""

from __future__ import annotations

import onnx_ir as ir

from qpass.codegen.lower import SUPPORT, unsupported_reason
from qpass.codegen.lower_gru import check_gru_group, gru_key
from qpass.codegen.lower_lstm import check_group, group_key
from qpass.codegen.lower_rnn import check_rnn_group, rnn_key
from qpass.errors import UnsupportedOpError

TABLE_COLUMNS = ("ONNX op", "Keras layer", "PyTorch module", "Constraints", "Precisions (activations; weights)")
SKIPPED = {"Constant", "QuantizeLinear", "DequantizeLinear"}


class UnsupportedModelError(UnsupportedOpError):
    """Every node of a model the lowering cannot handle, found in one walk over the graph."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        name, op, _ = problems[0]
        lines = "; ".join(f"node {n!r} ({o}): {why}" for n, o, why in problems)
        Exception.__init__(self, f"{len(problems)} node(s) cannot be lowered to integer C: {lines}")
        self.node_name, self.op_type = name, op


def problems(model: ir.Model) -> list[tuple[str, str, str]]:
    """(node name, op, reason) for every node the lowering would refuse, in graph order."""
    found: list[tuple[str, str, str]] = []
    graph = model.graph
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        found.append((graph.name or "graph", "Graph", f"{len(graph.inputs)} inputs and {len(graph.outputs)} "
                      "outputs: exactly one input and one output are supported"))
    groups: dict[tuple[str, ...], list[ir.Node]] = {}
    for node in graph:
        key = group_key(node) or gru_key(node) or rnn_key(node)
        if key is not None:
            groups.setdefault(key, []).append(node)
            continue
        if node.op_type in SKIPPED and node.domain in ("", "ai.onnx"):
            continue
        reason = unsupported_reason(node)
        if reason is not None:
            found.append((node.name or "", node.op_type, reason))
    for key, nodes in groups.items():
        try:
            ({"GRU": check_gru_group, "RNN": check_rnn_group}[key[0]] if len(key) == 3 else check_group)(nodes)
        except UnsupportedOpError as exc:
            found.append((exc.node_name, exc.op_type, str(exc).split("): ", 1)[-1]))
    return found


def check_model(model: ir.Model) -> None:
    """Raise one UnsupportedModelError listing every node the integer lowering cannot handle."""
    found = problems(model)
    if found:
        raise UnsupportedModelError(found)


def table_rows() -> list[tuple[str, ...]]:
    return [(", ".join(s.ops), s.keras, s.torch, s.constraints, s.precisions) for s in SUPPORT]


def markdown_table() -> str:
    """The supported-layer table as Markdown: `qpass ops` prints it and the README carries it."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows()]
    return "\n".join(lines) + "\n"
