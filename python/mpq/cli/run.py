"""mpq run: the whole pipeline — calibrate, profile, select, measure, report. With no arguments it runs the
built-in default: SmolLM2-135M on the Shakespeare text shipped with mpq (needs the demo extra)."""
from __future__ import annotations

from pathlib import Path

from ._common import MODEL_HELP, add_candidates, add_score, check_model, parse_candidates


def register(sub) -> None:
    p = sub.add_parser("run", help="run the whole pipeline (default: the built-in SmolLM2 demo)", description=__doc__)
    p.add_argument("--model", default="smollm2", help=f"{MODEL_HELP} (default smollm2)")
    add_candidates(p, auto=True)
    add_score(p)
    p.add_argument("--phase", default="prefill", choices=("prefill", "decode"),
                   help="what is profiled and timed: the whole prompt (prefill, default) or one token with the "
                   "prompt in the KV cache (decode, the tokens-per-second figure)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="load the model in this precision: the baseline every speedup is measured against "
                        "(default fp32; bf16 as checkpoints often come, fast where the CPU has AVX512-BF16 or AMX)")
    p.add_argument("--max-loss-rmse", type=float, default=0.01, help="loss budget in nats (default 0.01)")
    p.add_argument("--calib-windows", type=int, default=16, help="calibration sequences (default 16)")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out evaluation sequences (default 8)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--verify-windows", type=int, default=32, help="held-out sequences the chosen plan is "
                   "measured on, the budget tightened until the measurement holds (default 32)")
    p.add_argument("--no-verify", action="store_true", help="select on the first-order estimate alone")
    p.add_argument("--out", default="mpq_run", help="folder for the artifacts and the report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    candidates = parse_candidates(args.candidates, allow_auto=True)
    check_model(args.model)
    from ..demo_run import RunSettings, run
    settings = RunSettings(out_dir=Path(args.out), model=None if args.model == "smollm2" else args.model,
                           candidates=candidates, phase=args.phase, dtype=args.dtype, max_loss_rmse=args.max_loss_rmse,
                           calib_windows=args.calib_windows, eval_windows=args.eval_windows,
                           verify_windows=0 if args.no_verify else args.verify_windows, seq_len=args.seq_len,
                           progress=not args.no_progress, score=args.score)
    run(settings)
    return 0
