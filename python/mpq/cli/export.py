"""mpq export: write a plan as a runtime's configuration (INC FP8 for Gaudi, compressed-tensors, torchao, mpq)."""
from __future__ import annotations

# mpq.application.exporters.TARGETS, named here so that building the parser does not import torch
TARGETS = ("mpq", "inc", "compressed-tensors", "torchao")


def register(sub) -> None:
    p = sub.add_parser("export", help="write a plan for a runtime", description=__doc__)
    p.add_argument("plan", help="plan.json (mpq select), or a Pareto front file (mpq select --pareto) with --index")
    p.add_argument("target", choices=TARGETS)
    p.add_argument("output", help="the configuration file to write")
    p.add_argument("--index", type=int, default=None, metavar="I",
                   help="of a Pareto front file: export plan I (0 = the first; mpq report lists them)")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..application.exporters import export
    from ..artifacts.plan import Plan
    export(Plan.load(args.plan, index=args.index), args.target, args.output)
    print(f"{args.target}: {args.output}")
    return 0
