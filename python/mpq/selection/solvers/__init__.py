"""Solvers of the multiple-choice knapsack: mpq's exact C++ core (default), HiGHS and Gurobi (optional, detected
at run time, their answers verified and repaired by ``verify``); ``dispatch`` is the one entry point."""
from .dispatch import SOLVERS, STATUSES, MckpSolution, solve_mckp, solve_mckp_csr, sweep_mckp, sweep_mckp_csr

__all__ = ["SOLVERS", "STATUSES", "MckpSolution", "solve_mckp", "solve_mckp_csr", "sweep_mckp", "sweep_mckp_csr"]
