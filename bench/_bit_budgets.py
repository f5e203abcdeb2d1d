"""Allocators and full systems at equal average weight bits (issue 20 item 6, issue 16 item 3). Run as
``python bench/selection_quality.py --budgets [--bits 4.5 5 6 8 9]``.

Candidates: {RTN, AWQ, GPTQ} × {INT4 weight-only in groups of 64, INT8 weight-only per channel} (``--candidates``;
SmolLM2's 576-wide layers take no groups of 128), calibrated once from the same windows. lm_head (tied to the
embeddings) stays in base precision for every method; q/k/v and gate/up share one format (mpq's profile ties
them, ModelOpt groups them, AutoRound is told they are shared). The budget is the average weight bits over the
decoder's Linear weights at nominal bits (4 for INT4, 8 for INT8, 16 for a layer left alone; no scales), the way
ModelOpt's effective_bits and AutoRound's avg_bits (``ignore_scale_zp_bits``) count them; mpq and the baselines
get it through ``mpq.select(max_avg_bits=...)`` on a GainTable whose bytes are those nominal ones.

Allocators, all choosing among the same calibrated candidates (the same integers, ``table.quantized_weights``),
solved to the same budget, and measured the same way:
  mpq      ``mpq.select``: least Σ s[l, c] (first-order loss MSE) within the bits;
  hawq     HAWQ-V3: Ω = Tr(H_l)/n_l · ‖Q_c(W_l) − W_l‖² (bench/_hawq.py), the same exact solver;
  fisher   ModelOpt-AutoQuantize-style Σ (G_Y ⊙ ΔY)², the same exact solver;
  ompq     OMPQ: network orthogonality from one batch's features, its LP, rounded (bench/_ompq.py); it allocates
           widths only, so each width runs the candidate of that width with the least Σ_l s over the layers;
  greedy   uniform at the budget's lower width, then the most sensitive choice groups (by s) move to the upper
           width while the bits allow (the existing greedy baseline, from below).
Full systems, each with its own quantizers (a delivered-model comparison):
  ModelOpt ``mtq.auto_quantize`` with INT4_AWQ_CFG (groups of 64) and INT8_WEIGHT_ONLY_CFG; its plan is also
           measured with mpq's RTN quantizers;
  AutoRound AutoScheme over W4A16 g64 / W8A16 (``--autoround-iters`` of its signed-gradient rounding; 0 = RTN).
Measured: held-out loss MSE against the base model, mean_n (ℓ_n − ℓ_n^base)² ± its standard error, perplexity,
and each method's search time (scores once, then solve per budget).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch

from _hawq import hawq_table, hutchinson_traces
from _modelopt_peer import measured
from _ompq import importance, layer_features, lp_weights, orm_matrix, solve_bits
from _selection_baselines import fisher_scores, fisher_table, greedy_keep

DEFAULT_CANDIDATES = "w4a16_g64,w4a16_g64_awq,w4a16_g64_gptq,w8a16,w8a16_awq,w8a16_gptq"
ALLOCATORS = ("mpq", "hawq", "fisher", "ompq", "greedy")
METHODS = ALLOCATORS + ("modelopt", "autoround")


def say(msg: str) -> None:
    import sys
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the budget ---------------------------------------------------------------------------------------------------
def nominal_decoder_gains(gains, bits_of: dict):
    """The memory GainTable without lm_head's sub-graph, its bytes the nominal ones (bits_of[candidate] bits per
    weight, 16 for base, no scales) and its gains the nominal bytes saved against 16 bits: then
    ``select(max_avg_bits=B)`` limits the decoder's nominal average bits to B."""
    shapes = gains.shapes["layers"]
    bits = np.array([16.0] + [float(bits_of[c]) for c in gains.candidates[1:]])
    nbytes = np.array([[shapes[l][1] * shapes[l][2] * b / 8 for b in bits] for l in gains.layers])
    subgraphs = []
    for sg in gains.subgraphs:
        if "lm_head" in sg.layers:
            continue
        per = np.array([[shapes[l][1] * shapes[l][2] * (16 - bits[c]) / 8 for c in range(len(bits))]
                        for l in sg.layers])
        gain = per[np.arange(len(sg.layers))[None, :], sg.configs].sum(axis=1)
        subgraphs.append(replace(sg, gain=gain, spread=np.zeros_like(gain)))
    return replace(gains, subgraphs=tuple(subgraphs), layer_bytes=nbytes)


def decoder_bits(model, mapping, bits_of) -> float:
    lin = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    total = sum(m.weight.numel() for _, m in lin)
    return sum(m.weight.numel() * (bits_of.get(mapping.get(n, "base"), 16)) for n, m in lin) / total


def choice_groups(gains):
    """[(layers of a choice group)] in network order: the tie groups of each sub-graph, and its untied layers."""
    out = []
    for sg in gains.subgraphs:
        tied = {l: g for g in sg.ties for l in g}
        seen = set()
        for l in sg.layers:
            g = tuple(tied.get(l, (l,)))
            if g not in seen:
                seen.add(g)
                out.append(g)
    return out


def widths_around(budget: float) -> tuple[int, int]:
    return (4, 8) if budget <= 8 else (8, 16)


def best_of_width(table, width: int, bits_of: dict) -> str:
    """The candidate of that width with the least Σ_l s over the layers (how OMPQ and greedy get a quantizer)."""
    cs = [c for c in table.candidates if bits_of[c] == width]
    mse = table.mse
    return min(cs, key=lambda c: float(np.nansum(np.where(np.isfinite(mse[:, table.candidates.index(c)]),
                                                          mse[:, table.candidates.index(c)], 0))))


# --- the run ------------------------------------------------------------------------------------------------------
def main(args):
    from mpq.application.swap import apply
    from mpq.artifacts import SensitivityTable
    from mpq.artifacts.quantized_weights import QuantizedWeights
    from mpq.calibration import calibrate
    from mpq.candidates import get_candidates
    from mpq.data import leading_tokens, lm_batches, split_spread, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses
    from mpq.profiling import profile
    from mpq.selection import select
    torch.set_num_threads(1)
    methods = set(args.methods.split(","))
    unknown = methods - set(METHODS)
    if unknown:
        raise ValueError(f"unknown --methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    bits_of = {c.name: c.weight_bits for c in get_candidates(cands)}
    model, tok = load_model(RunSettings(model=None if args.model == "smollm2" else args.model))
    model.eval()
    lead = leading_tokens(tok)  # Gemma's BOS starts every window
    cal_ids = tokenize(tok, demo_text("calibration"))
    cal = spread_windows(cal_ids, args.seq_len, args.calib_windows + args.quantizer_windows, lead)
    cal, fit = split_spread(cal, args.quantizer_windows)  # fit: the calibrated candidates' own windows
    held = spread_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval_windows, lead)
    batches = lm_batches(cal, args.batch_size)
    out = args.out
    times = {}

    if methods & set(ALLOCATORS):  # the peers alone need no calibration
        key = json.dumps(dict(c=cands, n=args.calib_windows, s=args.seq_len, b=args.batch_size, m=args.model,
                              q=args.quantizer_windows))
        tpath, qpath, kpath = out / "budgets_table.npz", out / "budgets_qweights.npz", out / "budgets_key.json"
        if args.reuse and kpath.exists() and kpath.read_text() == key:
            say("reusing the calibration")
            table = replace(SensitivityTable.load(tpath), quantized_weights=QuantizedWeights.load(qpath))
            tfile = out / "budgets_times.json"
            times.update(json.loads(tfile.read_text()) if tfile.exists() else {})
        else:
            say(f"calibrating {cands} on {args.calib_windows} x {args.seq_len} tokens")
            t0 = time.perf_counter()
            table = calibrate(model, batches, cands, progress=False, quantizer_batches=lm_batches(
                fit, args.batch_size) if args.quantizer_windows else None)
            times["mpq calibrate"] = time.perf_counter() - t0
            table.save(tpath)
            table.quantized_weights.save(qpath)
            kpath.write_text(key)
            (out / "budgets_times.json").write_text(json.dumps(times))
        t0 = time.perf_counter()
        gains = nominal_decoder_gains(profile(model, {"input_ids": cal[:1]}, cands, backend="memory"), bits_of)
        times["mpq profile"] = time.perf_counter() - t0
        layers = [l for sg in gains.subgraphs for l in sg.layers]
        qw = table.quantized_weights

        htable = ftable = None  # each baseline's scores only when it runs: HAWQ's traces alone take the longest
        if "hawq" in methods and ("hawq traces" not in times or not (out / "budgets_hawq.npy").exists()):
            say(f"HAWQ: Hutchinson traces of {len(layers)} layers, {args.hawq_probes} probes x {len(batches)} batches")
            t0 = time.perf_counter()
            traces = hutchinson_traces(model, layers, batches, probes=args.hawq_probes, method=args.hawq_method)
            times["hawq traces"] = time.perf_counter() - t0
            np.save(out / "budgets_hawq.npy", traces)
            (out / "budgets_times.json").write_text(json.dumps(times))
        if "hawq" in methods:
            traces = np.load(out / "budgets_hawq.npy")
            t0 = time.perf_counter()
            htable = hawq_table(model, traces, layers, table)
            times["hawq ‖ΔW‖²"] = time.perf_counter() - t0

        if "fisher" in methods and ("fisher scores" not in times or not (out / "budgets_fisher.npy").exists()):
            say("Fisher scores Σ(G⊙ΔY)² on the same batches")
            t0 = time.perf_counter()
            sc = fisher_scores(model, layers, batches, cands, quantized_weights=qw)
            full = np.full((sc.shape[0], len(table.layers), len(cands)), np.nan)
            full[:, [table.layers.index(l) for l in layers], :] = sc
            times["fisher scores"] = time.perf_counter() - t0
            np.save(out / "budgets_fisher.npy", full)
            (out / "budgets_times.json").write_text(json.dumps(times))
        if "fisher" in methods:
            ftable = fisher_table(np.load(out / "budgets_fisher.npy"), table)

        groups = choice_groups(gains)
        t0 = time.perf_counter()
        order = [l for g in groups for l in g]  # network order
        orm = orm_matrix(layer_features(model, order, batches[0]))
        gamma = orm.sum(axis=1) - 1.0
        beta = args.ompq_beta if args.ompq_beta is not None else 4.0 / max(float(gamma.max() - gamma.min()), 1e-12)
        w_layer = dict(zip(order, lp_weights(importance(orm, beta))))
        w_group = np.array([sum(w_layer[l] for l in g) for g in groups])  # a tied group: one width, its members' sum
        times["ompq ORM"] = time.perf_counter() - t0
        say(f"OMPQ: γ in [{gamma.min():.1f}, {gamma.max():.1f}], β = {beta:.3g}")
        args.ompq_beta_used = beta
        shapes = gains.shapes["layers"]
        sizes = np.array([sum(shapes[l][1] * shapes[l][2] for l in g) for g in groups], np.float64)
        (out / "budgets_times.json").write_text(json.dumps(times))
        n_dec = sizes.sum()
    else:
        table = qw = htable = ftable = None
        n_dec = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
        args.ompq_beta_used = float("nan")

    base = per_sample_losses(model, held, args.batch_size)
    base_ppl = math.exp(float(base.mean()))
    say(f"base perplexity {base_ppl:.2f}; " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))

    def ompq_plan(budget):
        lo, hi = widths_around(budget)
        b = solve_bits(w_group, sizes, budget * n_dec, lo, hi)
        cand = {lo: best_of_width(table, lo, bits_of) if lo < 16 else None,
                hi: best_of_width(table, hi, bits_of) if hi < 16 else None}
        return {l: cand[int(bi)] for g, bi in zip(groups, b) for l in g if cand[int(bi)] is not None}

    def greedy_plan(budget):
        lo, hi = widths_around(budget)
        need = (16 - budget) * n_dec / 8
        start = best_of_width(table, lo, bits_of)
        to = best_of_width(table, hi, bits_of) if hi < 16 else "base"
        return greedy_keep(table, gains, need, cand=start, to=to)[0]

    rows = []
    memo = {}

    def measure(mapping):
        k = tuple(sorted(mapping.items()))
        if k not in memo:
            q = apply(model, mapping, mode="fake", quantized_weights=qw)
            memo[k] = measured(q, held, base, args.batch_size)
            del q
        return memo[k]

    search = out / "budgets_modelopt_search.pth"
    search.unlink(missing_ok=True)
    for budget in args.bits:
        here = {}
        for name, tab in (("mpq", table), ("hawq", htable), ("fisher", ftable)):
            if name not in methods:
                continue
            t0 = time.perf_counter()
            try:
                # least loss within the bits: on the nominal GainTable the bytes saved against 16 bits are the
                # gain, so min_gain is the same limit as max_avg_bits (which select takes with a loss budget only)
                plan = select(tab, gains, min_gain=(16 - budget) * n_dec / 8, keep=["lm_head"])
            except ValueError as e:
                here[name] = dict(error=str(e).splitlines()[0])
                continue
            here[name] = dict(mapping=dict(plan.quantized), solve_ms=1e3 * (time.perf_counter() - t0))
        for name, fn in (("ompq", ompq_plan), ("greedy", greedy_plan)):
            if name not in methods:
                continue
            t0 = time.perf_counter()
            try:
                here[name] = dict(mapping=fn(budget), solve_ms=1e3 * (time.perf_counter() - t0))
            except ValueError as e:
                here[name] = dict(error=str(e).splitlines()[0])
        if "modelopt" in methods:
            here.update(_modelopt(args, model, budget, batches, held, base, search, bits_of))
        if "autoround" in methods:
            here.update(_autoround(args, model, tok, budget, cal_ids, held, base))
        for name, r in here.items():
            if "mapping" in r and "loss" not in r:
                r["loss"] = measure(r["mapping"])
            if "mapping" in r:
                r["bits"] = decoder_bits(model, r["mapping"], bits_of)
                r["avg_bits_with_scales"] = _with_scales(model, r["mapping"])
            say(f"{budget} bits: {name}: " + (f"{r['loss'][0]:.3g} ± {r['loss'][1]:.2g} ({r['loss'][2]:.1f}) at "
                                              f"{r['bits']:.2f} bits" if "loss" in r else r.get("error", "")))
            rows.append(dict(budget=budget, method=name, **{k: v for k, v in r.items() if k != "mapping"},
                             mapping=r.get("mapping")))
        (out / f"budgets_results_{'_'.join(sorted(methods))}.json").write_text(json.dumps(dict(times=times, base_ppl=base_ppl, rows=rows),
                                                             indent=1, default=str))
    print(report(rows, times, base_ppl, args))


def _with_scales(model, mapping) -> float:
    """The decoder's average bits with each format's scales counted (fp32 per group of 64 / per channel), as
    mpq's own avg_bits counts them."""
    total, bits = 0, 0.0
    for n, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or "lm_head" in n:
            continue
        o, i = m.weight.shape
        c = mapping.get(n)
        total += o * i
        bits += o * i * 16 if c is None else (o * i * 4 + o * (i // 64) * 32 if c.startswith("w4a16_g64") else
                                               o * i * 8 + o * 32)
    return bits / total


def _modelopt(args, model, budget, batches, held, base, search, bits_of):
    """ModelOpt's plan at the budget: measured with its own quantizers, and as a plan with mpq's RTN ones."""
    import modelopt.torch.quantization as mtq

    from _modelopt_peer import GROUPS, search_plan
    int4 = copy.deepcopy(mtq.INT4_AWQ_CFG)
    for entry in int4["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"][-1] = 64
    formats = [mtq.INT8_WEIGHT_ONLY_CFG, int4]
    lin = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    total = sum(m.weight.numel() for _, m in lin)
    head = sum(m.weight.numel() for n, m in lin if "lm_head" in n)
    effective = (budget * (total - head) + 16 * head) / total  # its count includes lm_head at 16

    mo_model = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        mo_model, state = search_plan(mtq, mo_model, effective, formats, batches, search)
    except ValueError as e:
        return {"ModelOpt (own quantizers)": dict(error=str(e).splitlines()[0])}
    secs = time.perf_counter() - t0
    own = measured(mo_model, held, base, args.batch_size)
    del mo_model
    mapping = {}
    for k, recipe in state["best"]["recipe"].items():
        name = k[: -len(".quant_recipe")]
        b = float(str(recipe).rsplit("effective-bits:", 1)[1].strip(" )"))
        if b == 16:
            continue
        parent, leaf = name.rsplit(".", 1)
        for member in GROUPS.get(leaf, (leaf,)):
            mapping[f"{parent}.{member}"] = "w4a16_g64" if b == 4 else "w8a16"
    return {"ModelOpt (own quantizers)": dict(mapping=mapping, loss=own, search_s=secs),
            "ModelOpt plan, mpq RTN": dict(mapping=mapping)}


def calibration_texts(tok, ids, seq_len: int, n: int) -> list[str]:
    """The text of each calibration window (``spread_windows``' starts) with 32 tokens of slack: AutoScheme takes
    its data as a file of texts, re-tokenizes them and drops any shorter than seq_len."""
    slots = ids.numel() // seq_len
    starts = [(i * (slots - 1) // (n - 1) if n > 1 else 0) * seq_len for i in range(n)]
    return [tok.decode(ids[s:s + seq_len + 32].tolist()) for s in starts]


def _autoround(args, model, tok, budget, cal_ids, held, base):
    """AutoRound's AutoScheme at the budget with its own rounding (``args.autoround_iters`` steps per block)."""
    from auto_round import AutoRound, AutoScheme
    from auto_round.schemes import QuantizationScheme
    w4 = QuantizationScheme.from_dict(dict(bits=4, group_size=64, sym=True, data_type="int", act_bits=16))
    w8 = QuantizationScheme.from_dict(dict(bits=8, group_size=-1, sym=True, data_type="int", act_bits=16))
    path = args.out / "budgets_autoround_calibration.json"
    path.write_text(json.dumps(calibration_texts(tok, cal_ids, args.seq_len, args.calib_windows)))
    n = args.calib_windows
    # low_cpu_mem_usage=False: its streaming mode reloads blocks from checkpoint files, which a model built in
    # memory (here from the GGUF file) does not have
    scheme = AutoScheme(avg_bits=budget, options=[w4, w8], ignore_scale_zp_bits=True, nsamples=n,
                        seqlen=args.seq_len, batch_size=args.batch_size, dataset=str(path),
                        shared_layers=[["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]],
                        low_cpu_mem_usage=False, enable_torch_compile=False)
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        ar = AutoRound(m, tokenizer=tok, scheme=scheme, dataset=str(path), iters=args.autoround_iters,
                       nsamples=n, seqlen=args.seq_len, batch_size=args.batch_size, device_map="cpu",
                       low_cpu_mem_usage=False, enable_torch_compile=False, layer_config={"lm_head": {"bits": 16}})
        qm, layer_config = ar.quantize()
    except Exception as e:  # a peer's failure is reported in the table, not hidden
        return {"AutoRound AutoScheme (own)": dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:150]}")}
    secs = time.perf_counter() - t0
    mapping = {}
    for n, cfg in layer_config.items():
        b = cfg.get("bits") if isinstance(cfg, dict) else getattr(cfg, "bits", None)
        if b in (4, 8) and "lm_head" not in n:
            mapping[n] = "w4a16_g64" if b == 4 else "w8a16"
    own = measured(qm, held, base, args.batch_size)
    del qm, m
    # its plan with mpq's RTN quantizers too: which part of the difference is the selection, which the rounding
    return {"AutoRound AutoScheme (own)": dict(mapping=mapping, loss=own, search_s=secs),
            "AutoRound plan, mpq RTN": dict(mapping=mapping)}


def report(rows, times, base_ppl, args) -> str:
    lines = [f"{args.model}, candidates {args.candidates}; calibration {args.calib_windows} x {args.seq_len} tokens, "
             f"held out {args.eval_windows} x {args.seq_len}; base perplexity {base_ppl:.2f}; OMPQ β "
             f"{args.ompq_beta_used:.3g}. Scores once: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), "",
             "| average bits | method | loss MSE ± se | ppl | bits reached (with scales) | search / solve |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "loss" not in r:
            lines.append(f"| {r['budget']} | {r['method']} | {r.get('error', '')} | | | |")
            continue
        t = f"{r['search_s']:.0f} s" if "search_s" in r else (f"{r['solve_ms']:.1f} ms" if "solve_ms" in r else "")
        lines.append(f"| {r['budget']} | {r['method']} | {r['loss'][0]:.3g} ± {r['loss'][1]:.2g} | {r['loss'][2]:.1f} | "
                     f"{r['bits']:.2f} ({r['avg_bits_with_scales']:.2f}) | {t} |")
    verdict = []
    for b in args.bits:
        here = [r for r in rows if r["budget"] == b and "loss" in r]
        if not here:
            continue
        best = min(here, key=lambda r: r["loss"][0])
        mp = next((r for r in here if r["method"] == "mpq"), None)
        verdict.append(f"- {b} bits: lowest measured loss MSE {best['method']} {best['loss'][0]:.3g}"
                       + (f"; mpq {mp['loss'][0]:.3g} ({mp['loss'][0] / best['loss'][0]:.2f}x the lowest)"
                          if mp is not None else ""))
    return "\n".join(lines + [""] + verdict)
