"""The report of ``mpq run``: a PNG of the Pareto front (predicted and measured points, the baselines) and a
self-contained HTML page with the plan, the front and predicted-against-measured tables."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .artifacts.io import atomic_file, write_json
from .coverage import Coverage


def plot_front(front, results, baseline_seconds: float, path: Path, phase: str = "prefill") -> bool:
    """Loss MSE against speedup: the predicted front, the measured plans and the baselines; and every measured
    point against its prediction (also the uniform plan's and the small plans', clamped to the axis floor where a
    figure is 0). Returns False (and writes nothing) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    pred = [(p.predicted_loss_mse, p.predicted_speedup) for p in front if p.predicted_loss_mse > 0]
    if pred:
        xs, ys = zip(*pred)
        ax.plot(xs, ys, "-o", ms=3, color="#888", label="front, predicted")
    for r in results:
        s = r.speedup
        if r.plan is None:
            ax.scatter([max(r.loss_mse, 1e-12)], [s], marker="s", s=60, zorder=3,
                       label=f"{r.name} (measured)")
        else:
            ax.scatter([max(r.loss_mse, 1e-12)], [s], marker="*" if r.name == "chosen plan" else "o",
                       s=140 if r.name == "chosen plan" else 40, zorder=3, color="C3" if r.name == "chosen plan"
                       else "C0", label=f"{r.name} (measured)" if r.name == "chosen plan" else None)
            ax.plot([r.predicted_mse, max(r.loss_mse, 1e-12)], [r.plan.predicted_speedup, s], ":", color="C0",
                    lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("loss MSE against the base model (log)")
    ax.set_ylabel(f"speedup of a {phase} step (x, one CPU thread)")
    ax.set_title("Pareto front: predicted (grey) and measured (dots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    planned = [r for r in results if r.name != "base" and np.isfinite(r.predicted_mse) and np.isfinite(r.loss_mse)
               and max(r.predicted_mse, r.loss_mse) > 0]
    if planned:
        floor = 1e-3 * min(v for r in planned for v in (r.predicted_mse, r.loss_mse) if v > 0)
        p = np.array([max(r.predicted_mse, floor) for r in planned])
        m = np.array([max(r.loss_mse, floor) for r in planned])
        ax2.loglog(p, m, "o")
        lo, hi = min(p.min(), m.min()), max(p.max(), m.max())
        ax2.plot([lo, hi], [lo, hi], "--", color="#888", label="measured = predicted")
        for r, x, y in zip(planned, p, m):
            ax2.annotate(r.name, (x, y), fontsize=7)
        ax2.legend(fontsize=8)
    ax2.set_xlabel("predicted loss MSE (Σ s[l,c])")
    ax2.set_ylabel("measured loss MSE")
    ax2.set_title("Sensitivity: predicted against measured")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x, spec=".4g"):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_results(results: Sequence) -> str:
    """The predicted-against-measured table of `mpq run` (results: demo_run.Measured records), as text."""
    lines = [f"{'plan':>14} {'layers q':>8} {'pred MSE':>10} {'meas MSE':>10} {'± se':>8} {'ppl':>8} "
             f"{'pred speedup':>12} {'meas speedup':>12} {'ms (IQR)':>16}"]
    for r in results:
        n = len(r.plan.quantized) if r.plan else (0 if r.name == "base" else -1)
        pred_speedup = r.plan.predicted_speedup if r.plan else float("nan")
        lines.append(f"{r.name:>14} {('all' if n < 0 else n):>8} {r.predicted_mse:10.3g} {r.loss_mse:10.3g} "
                     f"{r.loss_mse_stderr:8.2g} {r.ppl:8.3f} {pred_speedup:12.3f} {r.speedup:12.3f} "
                     f"{1e3 * r.seconds:9.1f} ({1e3 * r.seconds_iqr:4.1f})")
    return "\n".join(lines)


def _finite(x):
    """A number for JSON: NaN and infinities (a plan's unknown figures) become null."""
    return float(x) if x is not None and math.isfinite(x) else None


def write_report(out: Path, table, gains, plan, front, results, settings, seconds: float) -> dict:
    png = out / "pareto.png"
    have_png = plot_front(front, results, gains.baseline_seconds, png, gains.phase)
    base = next(r for r in results if r.name == "base")
    text = format_results(results)
    coverage = Coverage.from_dict(table.info["coverage"], "the sensitivity table's 'coverage'") \
        if "coverage" in table.info else None
    print(plan.summary())
    if coverage is not None:
        print(coverage.summary())
    print("Pareto front (predicted):")
    print(f"{'#':>3} {'loss MSE':>10} {'gain s':>9} {'speedup':>8} {'layers q':>8}")
    for i, p in enumerate(front):
        print(f"{i:3d} {p.predicted_loss_mse:10.3g} {p.predicted_gain:9.4f} {p.predicted_speedup:8.3f} "
              f"{len(p.quantized):8d}")
    print(f"Measured (held-out perplexity, loss MSE against the base model, {gains.phase} time on one CPU thread):")
    print(text)
    rows = []
    for r in results:
        rows.append([r.name, len(r.plan.quantized) if r.plan else ("0" if r.name == "base" else "all"),
                     _fmt(r.predicted_mse), f"{_fmt(r.loss_mse)} ± {_fmt(r.loss_mse_stderr, '.2g')}",
                     f"{r.ppl:.3f}",
                     _fmt(r.plan.predicted_speedup, ".3f") if r.plan else "–",
                     f"{r.speedup:.3f}", f"{1e3 * r.seconds:.1f} ± {1e3 * r.seconds_iqr / 2:.1f}"])
    mse = table.mse
    layer_rows = []
    for layer, cand in plan.mapping.items():
        li = table.layers.index(layer)
        s = {c: _fmt(float(mse[li, j]), ".3g") for j, c in enumerate(table.candidates)}
        layer_rows.append([layer, cand] + [s[c] for c in table.candidates])
    front_rows = [[i, _fmt(p.objective.get("value")), _fmt(p.predicted_loss_mse), _fmt(p.predicted_gain),
                   _fmt(p.predicted_speedup, ".3f"), len(p.quantized)] for i, p in enumerate(front)]
    img = ""
    if have_png:
        img = f'<img alt="Pareto front" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
    else:
        img = "<p><i>matplotlib is not installed: no plot (pip install matplotlib).</i></p>"
    coverage_html = f'<p class="note">{html.escape(coverage.summary())}</p>' if coverage is not None else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mpq run</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}} th{{background:#f3f3f3}}
td:first-child{{text-align:left}} img{{max-width:100%}} .note{{color:#555;font-size:13px}}</style></head><body>
<h1>mpq: mixed-precision plan</h1>
<p>{html.escape(plan.summary())}</p>
{coverage_html}
<p class="note">Candidates {', '.join(table.candidates)}; calibration {table.n_samples} sequences;
timing backend {gains.backend} ({gains.phase}), baseline {1e3 * gains.baseline_seconds:.1f} ms predicted,
{1e3 * base.seconds:.1f} ms measured end to end; loss budget RMSE {settings.max_loss_rmse} nats.
The whole run took {seconds:.0f} s.</p>
{img}
<h2>Predicted against measured</h2>
{_table(["plan", "layers quantized", "predicted loss MSE", "measured loss MSE", "perplexity (held out)",
         "predicted speedup", "measured speedup", f"{gains.phase} ms"], rows)}
<h2>Pareto front (predicted)</h2>
{_table(["#", "loss-MSE budget", "predicted loss MSE", "predicted gain (s)", "predicted speedup",
         "layers quantized"], front_rows)}
<h2>The chosen plan, layer by layer (s[l, c] of every candidate)</h2>
{_table(["layer", "chosen"] + [f"s[{c}]" for c in table.candidates], layer_rows)}
</body></html>"""
    with atomic_file(out / "report.html") as f:
        f.write(page)
    summary = {"plan": plan.to_dict(), "results": [
        {"name": r.name, "ppl": _finite(r.ppl), "loss_mse": _finite(r.loss_mse), "seconds": _finite(r.seconds),
         "speedup": _finite(r.speedup),
         "loss_mse_stderr": _finite(r.loss_mse_stderr), "predicted_mse": _finite(r.predicted_mse),
         "predicted_gain": _finite(r.predicted_gain)} for r in results],
        "seconds": seconds, "coverage": coverage.to_dict() if coverage is not None else None}
    write_json(out / "summary.json", summary)
    print(f"report: {out / 'report.html'}" + (f", plot: {png}" if have_png else ""))
    return summary
