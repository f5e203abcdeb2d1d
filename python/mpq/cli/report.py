"""mpq report: print what a saved artifact holds (a SensitivityTable, a GainTable, a Plan or a Pareto front of
plans from ``mpq select --pareto``)."""
from __future__ import annotations

import math
import os

NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz), empty or not


def register(sub) -> None:
    p = sub.add_parser("report", help="summarise a saved artifact", description=__doc__)
    p.add_argument("artifact", help="a .npz table, a plan .json or a Pareto front .json")
    p.add_argument("--top", type=int, default=None, help="only the N most sensitive layers")
    p.add_argument("--index", type=int, default=None, metavar="I",
                   help="of a Pareto front file: show plan I in full")
    p.set_defaults(func=main)


def main(args) -> int:
    path = str(args.artifact)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not an artifact file")
    if is_npz(path):
        if args.index is not None:
            raise ValueError(f"{path}: --index picks a plan of a Pareto front file; this is an .npz table")
        return report_table(path, args.top)
    from ..artifacts.plan import Plan, load_plan_or_front
    if args.index is not None:
        print_plan(Plan.load(path, index=args.index))
        return 0
    loaded = load_plan_or_front(path)
    if isinstance(loaded, list):
        print_front(loaded)
    else:
        print_plan(loaded)
    return 0


def is_npz(path: str) -> bool:
    """An .npz table by its content (a zip archive), else by its name; everything else is read as JSON."""
    if path.endswith(".json"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""  # the reader names what is wrong (no such file, no permission)
    return head in NPZ_MAGIC or path.endswith(".npz")


def report_table(path: str, top) -> int:
    from ..artifacts.io import load_npz, npz_format
    kind = npz_format(path)
    if kind == "mpq.SensitivityTable":
        from ..artifacts.sensitivity_table import SensitivityTable
        print(SensitivityTable.load(path).report(top=top))
    elif kind == "mpq.GainTable":
        from ..artifacts.gain_table import GainTable
        print_gains(GainTable.load(path))
    else:
        load_npz(path, "mpq artifact", 1)  # raises the uniform "holds ..., not a ..." error
    return 0


def print_plan(plan) -> None:
    print(plan.summary())
    for layer, cand in plan.mapping.items():
        print(f"  {layer:60s} {cand}")


def print_front(front) -> None:
    print(f"Pareto front: {len(front)} plan{'' if len(front) == 1 else 's'} (--index I shows one in full)")
    print(f"{'index':>5} {'budget':>10} {'loss MSE':>10} {'gain':>10} {'speedup':>8} {'layers q':>8}")
    for i, p in enumerate(front):
        budget = p.objective.get("value")
        print(f"{i:5d} {_num(budget, '10.3g')} {_num(p.predicted_loss_mse, '10.3g')} "
              f"{_num(p.predicted_gain, '10.4g')} {_num(p.predicted_speedup, '8.3f')} {len(p.quantized):8d}")


def _num(x, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else f"{'-':>{width}}"


def print_gains(gains) -> None:
    print(f"GainTable: backend {gains.backend}, phase {gains.phase}, unit {gains.unit}, candidates "
          f"{', '.join(gains.candidates)}, baseline {gains.baseline_seconds:.4g}")
    print(f"{'sub-graph':40s} {'configs':>7} {'best gain':>10} {'best configuration'}")
    for i, sg in enumerate(gains.subgraphs):
        k = int(sg.gain.argmax())
        best = ", ".join(f"{l.rsplit('.', 1)[-1]}={c}" for l, c in zip(sg.layers, gains.config_names(i, k)))
        flag = " (noisy)" if sg.noisy[k] else ""
        print(f"{sg.name:40s} {len(sg.configs):7d} {sg.gain[k]:10.4g} {best}{flag}")
