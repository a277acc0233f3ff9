"""codegen: lower a QDQ model to an integer Program and render it as C99 (NAME.c + NAME.h)."""

from qpass.codegen.emit import GeneratedC, render
from qpass.codegen.lower import lower

__all__ = ["GeneratedC", "lower", "render"]
