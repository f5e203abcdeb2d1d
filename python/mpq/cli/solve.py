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
BAD_INPUT_EXIT = 1  # not the 2 of the other subcommands: 2 is the infeasible status here (mpq.cli reads this)

# the grammar of docs/mckp-file-format.md, the same in mpq-solve: no hex, no inf/nan, no "1_000", ASCII digits only
INTEGER = re.compile(r"[+-]?[0-9]+\Z")
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
# mpq-solve's tokens are bytes split at C's whitespace, lines end at LF only: Python's own str.split and
# splitlines also split at \x1c-\x1f, \x85 and more, which would read files that mpq-solve refuses
C_WHITESPACE = re.compile(rb"[ \t\n\v\f\r]+")


def shown(raw: bytes) -> str:
    """A token as both readers' messages show it: bytes outside printable ASCII as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02X}" for b in raw)


def integer(tok: str) -> int:
    if not INTEGER.match(tok):
        raise ValueError(f"'{tok}' is not an integer")
    return int(tok)


def number(tok: str) -> float:
    """A finite decimal that does not round to 0 unless every digit is 0 (subnormals are kept)."""
    if not DECIMAL.match(tok):
        raise ValueError(f"'{tok}' is not a decimal number")
    v = float(tok)
    if math.isinf(v):
        raise ValueError(f"'{tok}' is beyond the range of a double")
    if v == 0 and re.search(r"[1-9]", tok.split("e")[0].split("E")[0]):
        raise ValueError(f"'{tok}' is too small for a double (it would read as 0)")
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
    tokens = []  # (token as shown, line number); '#' starts a comment
    for ln, line in enumerate(_read_bytes(path).split(b"\n"), 1):
        tokens += [(shown(t), ln) for t in C_WHITESPACE.split(line.split(b"#", 1)[0]) if t]
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
        raise ValueError(f"{path}: line {tokens[pos][1]}: unexpected '{tokens[pos][0]}' after the last group")
    return gains, costs


def _read_bytes(path: str) -> bytes:
    """The file's bytes; a missing file or a folder is named in the words mpq-solve uses."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file") from None


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

    def usage_error(message: str):  # argparse exits 2, which here would read as "infeasible"
        p.print_usage(sys.stderr)
        p.exit(BAD_INPUT_EXIT, f"mpq solve: error: {message}\n")
    p.error = usage_error
