"""runtime_ref: the executable integer definition of every kernel, in numpy.

`run(program, x_q)` executes a lowered `Program` exactly as the generated C does.
"""

from qpass.runtime_ref.program import Program, QTensor, Step, run

__all__ = ["Program", "QTensor", "Step", "run"]
