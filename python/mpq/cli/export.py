"""mpq export: write a plan as a runtime's configuration (INC FP8 for Gaudi, compressed-tensors, torchao, mpq)."""
from __future__ import annotations

# mpq.application.exporters.TARGETS, named here so that building the parser does not import torch
TARGETS = ("mpq", "inc", "compressed-tensors", "torchao")


def register(sub) -> None:
    p = sub.add_parser("export", help="write a plan for a runtime", description=__doc__)
    p.add_argument("plan", help="plan.json (mpq select)")
    p.add_argument("target", choices=TARGETS)
    p.add_argument("output", help="the configuration file to write")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..application.exporters import export
    from ..artifacts.plan import Plan
    export(Plan.load(args.plan), args.target, args.output)
    print(f"{args.target}: {args.output}")
    return 0
