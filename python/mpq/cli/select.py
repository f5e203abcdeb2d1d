"""mpq select: solve the selection again on saved tables (no model, no torch): a plan, or a Pareto front."""
from __future__ import annotations

import argparse

from ._common import add_score, add_solver


def register(sub) -> None:
    p = sub.add_parser("select", help="choose a plan (or a Pareto front) from saved sensitivity and gain tables",
                       description=__doc__)
    p.add_argument("sensitivity", help="SensitivityTable .npz (mpq calibrate)")
    p.add_argument("gains", help="GainTable .npz (mpq profile)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--max-loss-mse", type=float, help="loss budget: Σ s[l,c] <= this")
    goal.add_argument("--max-loss-rmse", type=float, help="loss budget as an RMSE (nats)")
    goal.add_argument("--min-gain", type=float, help="least loss MSE reaching this gain (table units)")
    goal.add_argument("--target-speedup", type=float, help="least loss MSE reaching this speedup (timed tables)")
    goal.add_argument("--pareto", type=int, metavar="N", help="a front of N plans instead of one plan")
    p.add_argument("--max-memory", type=float, help="bytes of quantizable weights (needs a memory GainTable)")
    p.add_argument("--max-avg-bits", type=float, help="the same limit as average bits per weight, scales included")
    add_solver(p)
    add_score(p, default=None)
    p.add_argument("--pin", action="append", default=[], metavar="PATTERN=CANDIDATE",
                   help="force layers (name or regex) to a candidate; repeatable")
    p.add_argument("--keep", action="append", default=[], metavar="PATTERN",
                   help="keep layers (name or regex) in the model's precision; repeatable")
    p.add_argument("-o", "--output", default="plan.json", help="plan file (a front writes one JSON list)")
    p.set_defaults(func=main)


def parse_pins(items) -> dict:
    pins = {}
    for item in items:
        pattern, sep, cand = item.rpartition("=")
        if not sep or not pattern or not cand:
            raise ValueError(f"--pin expects PATTERN=CANDIDATE, got {item!r}")
        pins[pattern] = cand
    return pins


def main(args: argparse.Namespace) -> int:
    from ..artifacts.gain_table import GainTable
    from ..artifacts.io import write_json
    from ..selection import pareto, select
    from ..artifacts.sensitivity_table import SensitivityTable

    table = SensitivityTable.load(args.sensitivity)
    gains = GainTable.load(args.gains)
    pins = parse_pins(args.pin)
    if args.pareto is not None:
        if args.pareto < 1:
            raise ValueError(f"--pareto N needs N >= 1 plans, got {args.pareto}")
        front = pareto(table, gains, solver=args.solver, pin=pins, keep=args.keep, points=args.pareto,
                       max_memory=args.max_memory, max_avg_bits=args.max_avg_bits, score=args.score)
        print(f"{'budget':>10} {'loss MSE':>10} {'gain':>10} {'speedup':>8} {'layers q':>8}")
        for p in front:
            print(f"{p.objective['value']:10.3g} {p.predicted_loss_mse:10.3g} {p.predicted_gain:10.4g} "
                  f"{p.predicted_speedup:8.3f} {len(p.quantized):8d}")
        write_json(args.output, [p.to_dict() for p in front])
        print(f"front: {args.output}")
        return 0
    goals = dict(max_loss_mse=args.max_loss_mse, max_loss_rmse=args.max_loss_rmse, min_gain=args.min_gain,
                 target_speedup=args.target_speedup)
    plan = select(table, gains, max_memory=args.max_memory, max_avg_bits=args.max_avg_bits, solver=args.solver,
                  pin=pins, keep=args.keep, score=args.score, **goals)
    plan.save(args.output)
    print(plan.summary())
    print(f"plan: {args.output}")
    return 0
