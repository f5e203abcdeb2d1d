"""``mpq solve FILE --budget B``: solve a multiple-choice knapsack stored in the text format of
docs/mckp-file-format.md (the same files ``mpq-solve`` reads). Exit code = status (0 optimal, 2 infeasible,
3 limit); 1 with a message for bad input."""
from __future__ import annotations

import argparse
import sys

from ._common import add_solver

EXIT = {"optimal": 0, "infeasible": 2, "limit": 3}


def read_problem(path: str) -> tuple[list, list]:
    """(gains, costs) as lists of per-group lists. Raises ValueError naming the line on bad input."""
    tokens = []  # (token, line number); '#' starts a comment
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    for ln, line in enumerate(text.splitlines(), 1):
        tokens += [(t, ln) for t in line.split("#", 1)[0].split()]
    pos = 0

    def take(what, conv):
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"{path}: unexpected end of file: expected {what}")
        tok, ln = tokens[pos]
        pos += 1
        try:
            return conv(tok)
        except ValueError:
            kind = "an integer" if conv is int else "a number"
            raise ValueError(f"{path}: line {ln}: {what}: {tok!r} is not {kind}") from None

    n = take("the group count", int)
    if n < 0:
        raise ValueError(f"{path}: the group count must be >= 0")
    gains, costs = [], []
    for g in range(n):
        k = take(f"the item count of group {g}", int)
        if k < 1:
            raise ValueError(f"{path}: group {g} is empty")
        pg, cg = [], []
        for j in range(k):
            pg.append(take(f"the gain of item {j} of group {g}", float))
            cg.append(take(f"the cost of item {j} of group {g}", float))
        gains.append(pg)
        costs.append(cg)
    if pos < len(tokens):
        raise ValueError(f"{path}: line {tokens[pos][1]}: unexpected {tokens[pos][0]!r} after the last group")
    return gains, costs


def main(args: argparse.Namespace) -> int:
    from ..selection.solvers import solve_mckp
    gains, costs = read_problem(args.file)
    sol = solve_mckp(gains, costs, args.budget, min_gain=args.min_gain, solver=args.solver,
                     time_limit=args.time_limit, rel_gap=args.rel_gap)
    print(f"status {sol.status}")
    if sol.choice.size:
        print(f"objective {sol.objective!r}\ncost {sol.cost!r}")
    print(f"bound {sol.bound!r}\nseconds {sol.seconds:.6f}\nnodes {sol.nodes}\nsolver {sol.solver}")
    if sol.choice.size:
        print("choice " + " ".join(map(str, sol.choice.tolist())))
    if sol.message:
        print(f"message {sol.message}")
    return EXIT[sol.status]


def register(subparsers) -> None:
    p = subparsers.add_parser("solve", help="solve a multiple-choice knapsack file (docs/mckp-file-format.md)",
                              description=__doc__)
    p.add_argument("file", help="problem file, or - for stdin")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget", type=float, help="maximise total gain with total cost <= BUDGET")
    goal.add_argument("--min-gain", type=float, help="minimise total cost with total gain >= MIN_GAIN")
    add_solver(p)
    p.add_argument("--time-limit", type=float, default=None, help="seconds (default: none)")
    p.add_argument("--rel-gap", type=float, default=1e-9, help="relative optimality gap (default 1e-9)")
    p.set_defaults(func=main)
