"""The solver: calibrate ranges, resolve the contracts, produce a QuantPlan, write the QDQ model."""

from qpass.solver.calibrate import calibrate
from qpass.solver.plan import QuantPlan, solve
from qpass.solver.qdq import apply_plan

__all__ = ["QuantPlan", "apply_plan", "calibrate", "solve"]
