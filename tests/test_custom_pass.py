"""User passes, the three ways the README documents: a file next to the YAML (examples/custom_pass, whole
pipeline through the C), an installed package's entry point in the `qpass.passes` group (a real
dist-info on sys.path), and passes applied to an onnx_ir model directly through the Python API
(examples/custom_pass/api.py)."""

from __future__ import annotations

import re
import runpy
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import qpass
from qpass.cli import main
from qpass.config import load_pipeline
from qpass.passes import resolve_pass
from qpass.passes.runner import run_passes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def examples(tmp_path) -> Path:
    """examples/custom_pass and the digits data it points at, copied so the build lands in tmp_path."""
    for name in ("custom_pass", "digits"):
        shutil.copytree(ROOT / "examples" / name, tmp_path / "examples" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "examples"


def test_the_custom_pass_example_runs_through_the_pipeline(examples) -> None:
    report = qpass.run(examples / "custom_pass" / "pipeline.yaml")
    last = report["passes"][-1]
    assert last["name"] == "short_names.py:ShortNamesPass" and last["modified"]
    assert [row["node"] for row in report["layers"]] == ["dense_1", "dense_1_2", "dense_2_1", "dense_2_1_softmax"]
    assert report["c_equals_runtime_ref"] and report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.99
    source = (examples.parent / "build" / "custom_pass" / "digits_short.c").read_text()
    assert re.search(r"/\* layer 0 linear: [^*]*; from dense_1 \*/", source) and "MatMul_Gemm" not in source
    listed = CliRunner().invoke(main, ["passes", str(examples / "custom_pass" / "pipeline.yaml")])
    assert listed.exit_code == 0 and "short_names.py:ShortNamesPass Rename each node" in listed.output


def test_the_api_example_runs(examples, tmp_path, capsys) -> None:
    api = runpy.run_path(str(examples / "custom_pass" / "api.py"), run_name="api_example")
    report = api["main"](str(tmp_path / "api_out"))
    out = capsys.readouterr().out
    assert "nodes: ['dense_1', 're_lu_1', 'dense_1_2'" in out and "C vs float: argmax agreement" in out
    assert (tmp_path / "api_out" / "report.json").is_file() and report["name"] == "digits_short"


ENTRY_POINT_PASS = '''\
import onnx_ir as ir
from qpass.passes import QPass


class TagPass(QPass):
    """Tag every Relu with metadata (an installed pass, found through its entry point)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        relus = [n for n in model.graph if n.op_type == "Relu" and "demo.tag" not in n.metadata_props]
        for node in relus:
            node.metadata_props["demo.tag"] = "seen"
            self.mark(node)
        return ir.passes.PassResult(model, modified=bool(relus))
'''


def test_an_installed_entry_point_pass_is_found_listed_and_runs(tmp_path, monkeypatch, parse_onnx) -> None:
    site = tmp_path / "site"
    (site / "qpass_demo_pass").mkdir(parents=True)
    (site / "qpass_demo_pass" / "__init__.py").write_text(ENTRY_POINT_PASS)
    dist = site / "qpass_demo_pass-0.1.dist-info"  # what `pip install` of a package declaring the entry point makes
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qpass-demo-pass\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qpass.passes]\ntag-relus = qpass_demo_pass:TagPass\n")
    monkeypatch.syspath_prepend(str(site))

    cls = resolve_pass("tag-relus")
    assert cls.__module__ == "qpass_demo_pass"
    listed = CliRunner().invoke(main, ["passes"])
    assert listed.exit_code == 0 and "Tag every Relu with metadata" in listed.output

    model = parse_onnx(textwrap.dedent("""\
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) {
            r = Relu(x)
            y = Relu(r)
        }
    """))
    records = run_passes(model, [("tag-relus", {}), ("tag-relus", {})], base_dir=tmp_path)
    assert [r.modified for r in records] == [True, False]  # honest `modified`: a second run changes nothing
    assert all(n.metadata_props.get("qpass.pass") for n in model.graph)

    yaml_file = tmp_path / "pipeline.yaml"
    for f in ("digits.h5", "calib.npz"):
        shutil.copy(ROOT / "examples" / "digits" / f, tmp_path / f)
    yaml_file.write_text("model: digits.h5\ncalibration: {path: calib.npz, key: x}\npasses: [tag-relus]\n")
    assert load_pipeline(yaml_file).passes[0].name == "tag-relus"
