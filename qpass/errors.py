"""qpass's error hierarchy. Library code raises these; only the CLI catches them."""

from __future__ import annotations


class QpassError(Exception):
    """Base of every error qpass reports to a user."""


class ConfigError(QpassError):
    """A pipeline.yaml problem, located by its key path."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file, self.key = file, key
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


class ConfigErrors(ConfigError):
    """Several problems found in one pipeline.yaml, reported together (one line each); `file` and `key`
    are the first one's."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        self.file, self.key = errors[0].file, errors[0].key
        QpassError.__init__(self, "\n".join(str(e) for e in self.errors))


class ConvertError(QpassError):
    """The model file could not be loaded or converted to ONNX."""


class UnsupportedOpError(QpassError):
    """A node qpass cannot handle at some stage."""

    def __init__(self, node_name: str, op_type: str, message: str) -> None:
        self.node_name, self.op_type = node_name, op_type
        super().__init__(f"node {node_name!r} ({op_type}): {message}")


class PassError(QpassError):
    """A graph pass failed or was misconfigured."""


class SolverError(QpassError):
    """The quantization solver could not satisfy a contract."""


class CodegenError(QpassError):
    """C generation, compilation or execution failed."""


class OrtError(QpassError):
    """onnxruntime refused or failed to run a graph qpass built or was given."""
