"""Step 4, select: the multiple-choice knapsack built from a SensitivityTable and a GainTable (``selector``),
solved by mpq's exact C++ solver, HiGHS or Gurobi (``solvers``)."""
from .limits import avg_bits
from .selector import pareto, select

__all__ = ["avg_bits", "pareto", "select"]
