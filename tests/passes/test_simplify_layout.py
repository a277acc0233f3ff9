"""simplify-layout: the nodes it writes get names no other node has, even when the chains it collapses are
unnamed (their replacements would all be `layout_reshape`) or a name it would pick is taken."""

from __future__ import annotations

from collections import Counter

import numpy as np

TWO_UNNAMED_CHAINS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 6, 4] x) => (float[1, 24] z) {
    a = Unsqueeze(x, one)
    y1 = Flatten(a)
    r = Relu(x)
    b = Unsqueeze(r, one)
    y2 = Flatten(b)
    z = Add(y1, y2)
}
"""


def test_new_nodes_have_unique_names(parse_onnx, check_pass, rng) -> None:
    model = parse_onnx(TWO_UNNAMED_CHAINS, one=np.array([1], np.int64))
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.name = "layout_reshape"  # the name an unnamed chain's Reshape would take
    check = check_pass("simplify-layout", model, rng.normal(size=(1, 6, 4)).astype(np.float32), modified=True)
    assert check.after == {"Reshape": 2, "Relu": 1, "Add": 1}, check.after
    assert all(n.name for n in model.graph if n.op_type == "Reshape")
    names = Counter(n.name for n in model.graph if n.name)  # the parsed Add has none
    assert all(count == 1 for count in names.values()), names
