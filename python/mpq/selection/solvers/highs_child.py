"""Child process of mckp_highs.py: reads a pickled MCKP from stdin, solves it with HiGHS, writes a pickled
result to stdout. Run as a script (never imported as part of mpq) so that it starts without torch."""
import os
import pickle
import sys
import time

sys.path.pop(0)  # this script's folder is the mpq package: none of its modules may shadow numpy's imports
import numpy as np  # noqa: E402


def solve(offsets, gains, costs, target, minimize_cost, memory, max_memory, time_limit, rel_gap):
    """Runs in the child: build the MILP, solve, send back a plain dict."""
    try:
        import highspy
    except ImportError as e:  # reported to the parent, which raises
        return {"import_error": str(e)}
    n = len(offsets) - 1
    nv = int(offsets[-1])
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("mip_rel_gap", float(rel_gap))
    h.setOptionValue("mip_abs_gap", 0.0)
    if time_limit:
        h.setOptionValue("time_limit", float(time_limit))
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = nv
    group_of = np.repeat(np.arange(n), np.diff(offsets))
    if minimize_cost:   # min cost  s.t.  gain >= target
        lp.sense_ = highspy.ObjSense.kMinimize
        lp.col_cost_ = np.asarray(costs, dtype=np.float64)
        extra = [(np.asarray(gains), target, inf)]
    else:               # max gain  s.t.  cost <= target
        lp.sense_ = highspy.ObjSense.kMaximize
        lp.col_cost_ = np.asarray(gains, dtype=np.float64)
        extra = [(np.asarray(costs), -inf, target)]
    if memory is not None:
        extra.append((np.asarray(memory), -inf, max_memory))
    lp.col_lower_ = np.zeros(nv)
    lp.col_upper_ = np.ones(nv)
    lp.num_row_ = n + len(extra)
    lp.row_lower_ = np.concatenate([np.ones(n), [e[1] for e in extra]])
    lp.row_upper_ = np.concatenate([np.ones(n), [e[2] for e in extra]])
    # column-wise (CSC): each column has its group row, then one entry per extra row
    k = 1 + len(extra)
    index = np.empty((nv, k), dtype=np.int32)
    value = np.empty((nv, k), dtype=np.float64)
    index[:, 0] = group_of
    value[:, 0] = 1.0
    for r, (coef, _, _) in enumerate(extra):
        index[:, 1 + r] = n + r
        value[:, 1 + r] = coef
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(0, nv * k + 1, k, dtype=np.int32)
    lp.a_matrix_.index_ = index.ravel()
    lp.a_matrix_.value_ = value.ravel()
    lp.integrality_ = [highspy.HighsVarType.kInteger] * nv
    h.passModel(lp)
    t0 = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - t0
    status = h.getModelStatus()
    info = h.getInfo()
    out = {"seconds": seconds, "status": h.modelStatusToString(status), "bound": float(info.mip_dual_bound),
           "has_solution": info.primal_solution_status == 2, "x": None}
    if out["has_solution"]:
        out["x"] = np.asarray(h.getSolution().col_value, dtype=np.float64)
    out["optimal"] = status == highspy.HighsModelStatus.kOptimal
    out["infeasible"] = status == highspy.HighsModelStatus.kInfeasible
    return out




def main():
    out = os.fdopen(os.dup(1), "wb")  # the result channel; HiGHS' banner goes to stderr instead
    os.dup2(2, 1)
    args = pickle.loads(sys.stdin.buffer.read())
    out.write(pickle.dumps(solve(**args), protocol=4))
    out.flush()


if __name__ == "__main__":
    main()
