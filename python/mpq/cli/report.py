"""mpq report: print what a saved artifact holds (a SensitivityTable, a GainTable or a Plan)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="summarise a saved artifact", description=__doc__)
    p.add_argument("artifact", help="a .npz table or a plan .json")
    p.add_argument("--top", type=int, default=None, help="only the N most sensitive layers")
    p.set_defaults(func=main)


def main(args) -> int:
    path = str(args.artifact)
    if path.endswith(".json"):
        from ..artifacts.plan import Plan
        plan = Plan.load(path)
        print(plan.summary())
        for layer, cand in plan.mapping.items():
            print(f"  {layer:60s} {cand}")
        return 0
    from ..artifacts.io import load_npz
    import numpy as np
    with np.load(path, allow_pickle=False) as z:
        import json
        kind = json.loads(z["meta"].tobytes()).get("format") if "meta" in z.files else None
    if kind == "mpq.SensitivityTable":
        from ..artifacts.sensitivity_table import SensitivityTable
        print(SensitivityTable.load(path).report(top=args.top))
    elif kind == "mpq.GainTable":
        from ..artifacts.gain_table import GainTable
        print_gains(GainTable.load(path))
    else:
        load_npz(path, "mpq artifact", 1)  # raises the uniform "not a ... file" error
    return 0


def print_gains(gains) -> None:
    print(f"GainTable: backend {gains.backend}, phase {gains.phase}, unit {gains.unit}, candidates "
          f"{', '.join(gains.candidates)}, baseline {gains.baseline_seconds:.4g}")
    print(f"{'sub-graph':40s} {'configs':>7} {'best gain':>10} {'best configuration'}")
    for i, sg in enumerate(gains.subgraphs):
        k = int(sg.gain.argmax())
        best = ", ".join(f"{l.rsplit('.', 1)[-1]}={c}" for l, c in zip(sg.layers, gains.config_names(i, k)))
        flag = " (noisy)" if sg.noisy[k] else ""
        print(f"{sg.name:40s} {len(sg.configs):7d} {sg.gain[k]:10.4g} {best}{flag}")
