"""``mpq solve FILE --budget B``: solve a multiple-choice knapsack stored in the text format of
docs/mckp-file-format.md (the same files ``mpq-solve`` reads). Exit code = status (0 optimal, 2 infeasible,
3 limit); 1 with a message for bad input."""
from __future__ import annotations

import argparse
import math
import re
import sys

from ._common import add_solver

EXIT = {"optimal": 0, "infeasible": 2, "limit": 3}

# the grammar of docs/mckp-file-format.md, the same in mpq-solve: no hex, no inf/nan, no "1_000", ASCII digits only
INTEGER = re.compile(r"[+-]?[0-9]+\Z")
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def integer(tok: str) -> int:
    if not INTEGER.match(tok):
        raise ValueError(f"{tok!r} is not an integer")
    return int(tok)


def number(tok: str) -> float:
    """A finite decimal that does not round to 0 unless every digit is 0 (subnormals are kept)."""
    if not DECIMAL.match(tok):
        raise ValueError(f"{tok!r} is not a decimal number")
    v = float(tok)
    if math.isinf(v):
        raise ValueError(f"{tok!r} is beyond the range of a double")
    if v == 0 and re.search(r"[1-9]", tok.split("e")[0].split("E")[0]):
        raise ValueError(f"{tok!r} is too small for a double (it would read as 0)")
    return v


def positive_seconds(tok: str) -> float:
    v = number(tok)
    if not v > 0:
        raise ValueError("must be > 0 seconds (leave it out for no limit)")
    return v


def _option(args, name: str, conv):
    value = getattr(args, name)
    if value is None:
        return None
    try:
        return conv(value)
    except ValueError as e:
        raise ValueError(f"--{name.replace('_', '-')}: {e}") from None


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
        except ValueError as e:
            raise ValueError(f"{path}: line {ln}: {what}: {e}") from None

    n = take("the group count", integer)
    if n < 0:
        raise ValueError(f"{path}: the group count must be >= 0")
    gains, costs = [], []
    for g in range(n):
        k = take(f"the item count of group {g}", integer)
        if k < 1:
            raise ValueError(f"{path}: group {g} is empty")
        pg, cg = [], []
        for j in range(k):
            pg.append(take(f"the gain of item {j} of group {g}", number))
            cg.append(take(f"the cost of item {j} of group {g}", number))
        gains.append(pg)
        costs.append(cg)
    if pos < len(tokens):
        raise ValueError(f"{path}: line {tokens[pos][1]}: unexpected {tokens[pos][0]!r} after the last group")
    return gains, costs


def main(args: argparse.Namespace) -> int:
    from ..selection.solvers import solve_mckp
    # the command line's numbers follow the file's grammar, as mpq-solve's do
    options = {name: _option(args, name, conv) for name, conv in (
        ("budget", number), ("min_gain", number), ("time_limit", positive_seconds), ("rel_gap", number))}
    gains, costs = read_problem(args.file)
    sol = solve_mckp(gains, costs, options["budget"], min_gain=options["min_gain"], solver=args.solver,
                     time_limit=options["time_limit"], rel_gap=options["rel_gap"])
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
    goal.add_argument("--budget", metavar="NUMBER", help="maximise total gain with total cost <= BUDGET")
    goal.add_argument("--min-gain", metavar="NUMBER", help="minimise total cost with total gain >= MIN_GAIN")
    add_solver(p)
    p.add_argument("--time-limit", metavar="SECONDS", default=None, help="seconds (default: none)")
    p.add_argument("--rel-gap", metavar="NUMBER", default="1e-9", help="relative optimality gap (default 1e-9)")
    p.set_defaults(func=main)
