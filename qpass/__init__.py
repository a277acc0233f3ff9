"""qpass: trained network -> integer-only C for microcontrollers.

The Python API (see README, "Python API"):

    import qpass
    report = qpass.run("pipeline.yaml")              # what `qpass run` does; returns report.json's dict
    pipe = qpass.Pipeline.from_yaml("pipeline.yaml")  # the validated pipeline, editable before run
    report = qpass.run(pipe)

Heavy modules load only when these are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "QpassError", "__version__", "run"]

if TYPE_CHECKING:
    from qpass.config import Pipeline
    from qpass.errors import QpassError


def run(pipeline: str | Path | Pipeline, *, dump: bool = False) -> dict:
    """Run a pipeline (a pipeline.yaml path or a `Pipeline`) like `qpass run`; return the report dict.

    Raises a `QpassError` subclass on bad input; a failed quality gate is `report["gates"][name]["passed"]`
    being False (the CLI turns that into exit code 1).
    """
    from qpass.config import Pipeline, load_pipeline
    from qpass.pipeline import run_pipeline

    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    return run_pipeline(pipe, dump=dump)


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from qpass.config import Pipeline

        return Pipeline
    if name == "QpassError":
        from qpass.errors import QpassError

        return QpassError
    raise AttributeError(f"module 'qpass' has no attribute {name!r}")
