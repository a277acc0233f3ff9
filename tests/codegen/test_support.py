"""The early support check (every refusal at once, before calibration) and the supported-layer table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from qpass.cli import main
from qpass.codegen.lower import SUPPORT, unsupported_reason
from qpass.codegen.support import UnsupportedModelError, check_model, markdown_table, problems
from qpass.errors import UnsupportedOpError

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- qpass ops: start -->\n", "<!-- qpass ops: end -->\n"


def _three_bad_nodes(parse_onnx) -> ir.Model:
    rng = np.random.default_rng(0)
    return parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17, "custom.x" : 1]>
        g (float[1, 2, 4, 4, 4] x) => (float[1, 4] y) {
            c = Conv <pads = [1, 1, 1, 1, 1, 1]> (x, w3d)
            r = Relu (c)
            s = custom.x.Magic (r)
            f = Flatten (s)
            m = MatMul (f, f2)
            y = Gemm <transB = 1> (m, wd, bd)
        }""", w3d=rng.normal(size=(3, 2, 3, 3, 3)).astype(np.float32),
        f2=rng.normal(size=(192, 5)).astype(np.float32) * 0,
        wd=rng.normal(size=(4, 5)).astype(np.float32), bd=np.zeros(4, np.float32))


def test_every_unsupported_node_is_reported_at_once(parse_onnx) -> None:
    model = _three_bad_nodes(parse_onnx)
    found = problems(model)
    assert [op for _, op, _ in found] == ["Conv", "Magic"], found
    conv = found[0][2]
    assert "3-D convolution is not supported, only 1-D and 2-D" in conv
    assert "squeeze-conv2d" not in conv  # no pass that cannot help
    assert "custom-domain" in found[1][2]
    with pytest.raises(UnsupportedModelError) as err:
        check_model(model)
    assert isinstance(err.value, UnsupportedOpError)  # the CLI's one-line handling applies
    assert "2 node(s)" in str(err.value) and "Magic" in str(err.value) and "Conv" in str(err.value)


def test_a_one_axis_2d_conv_names_the_pass_that_helps(parse_onnx) -> None:
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 1, 16] x) => (float[1, 3, 1, 14] y) { y = Conv (x, w) }""",
                       w=np.ones((3, 2, 1, 3), np.float32))
    (_, op, why), = problems(model)
    assert op == "Conv" and "the squeeze-conv2d pass makes it 1-D" in why


@pytest.mark.parametrize("text, attr", [
    ("y = Softmax <axis = 1> (x)", "axis=1"),
    ("y = Clip (x, x)", "input 1 (min) must be one constant"),
    ("y = Pow (x, x)", "no integer kernel"),
])
def test_known_op_with_unsupported_attribute_or_operands(parse_onnx, text: str, attr: str) -> None:
    model = parse_onnx(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6, 4] x) => (float[1, 6, 4] y) {{ {text} }}""")
    (_, _, why), = problems(model)
    assert attr in why, why


def test_gemm_alpha_is_named_with_its_value(parse_onnx) -> None:
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 3] y) { y = Gemm <alpha = 2.0> (x, w) }""", w=np.ones((4, 3), np.float32))
    (_, _, why), = problems(model)
    assert "alpha=2" in why


def test_supported_graph_passes_and_matmul_3d_constant_is_accepted(parse_onnx) -> None:
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6, 4] x) => (float[1, 6, 3] y) {
            a = LeakyRelu <alpha = 0.1> (x)
            y = MatMul (a, w)
        }""", w=np.ones((1, 4, 3), np.float32))
    check_model(model)
    node = list(model.graph)[1]
    assert unsupported_reason(node) is None


def test_pipeline_refuses_before_calibration(tmp_path: Path, parse_onnx, monkeypatch) -> None:
    """The support error comes first: calibration is never reached."""
    import qpass.pipeline
    from qpass.config import load_pipeline
    from qpass.pipeline import run_pipeline

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran before the support check")

    monkeypatch.setattr(qpass.pipeline, "calibrate", no_calibration)
    rng = np.random.default_rng(0)
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 4, 4, 4] x) => (float[1, 3, 4, 4, 4] y) {
            c = Conv <pads = [1, 1, 1, 1, 1, 1]> (x, w3d)
            y = Relu (c)
        }""", w3d=rng.normal(size=(3, 2, 3, 3, 3)).astype(np.float32))
    proto = ir.serde.serialize_model(model)
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "calib.npz", x=np.zeros((2, 2, 4, 4, 4), np.float32))
    (tmp_path / "pipeline.yaml").write_text("model: m.onnx\ncalibration: {path: calib.npz, key: x}\n"
                                            "codegen: {name: m, output_dir: out}\n")
    with pytest.raises(UnsupportedModelError, match="3-D convolution"):
        run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert not (tmp_path / "out").exists()


def test_qpass_ops_prints_the_registry_table() -> None:
    result = CliRunner().invoke(main, ["ops"])
    assert result.exit_code == 0
    assert result.output == markdown_table()
    for s in SUPPORT:
        assert ", ".join(s.ops) in result.output


def test_readme_table_is_the_registry_table() -> None:
    """README.md carries `qpass ops` verbatim between the markers (regenerate it with `qpass ops`)."""
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text
    assert text.split(START, 1)[1].split(END, 1)[0] == markdown_table()
