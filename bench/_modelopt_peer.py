"""Selection quality against the real peer (issue 15, item 6): NVIDIA ModelOpt's ``mtq.auto_quantize`` (gradient
score, its own search) and mpq (first-order loss MSE, its exact solver) choose per-layer formats for the same
model, on the same calibration windows, at the same average weight bits; both plans are then applied with mpq's
quantizers and measured on the same held-out windows. Run as ``python bench/selection_quality.py --peer modelopt``.

Formats: INT8 with per-channel weights and static per-tensor activations (ModelOpt ``INT8_DEFAULT_CFG``, mpq
``int8_static``) and INT4 in groups of 64, weight-only (``INT4_AWQ_CFG`` with its block size set to 64, mpq ``w4a16_g64``; SmolLM2's
576-wide layers take no groups of 128, and its weights lie on a grid of 32); lm_head stays in
base precision in both; q/k/v and gate/up share one format in both (ModelOpt groups them, mpq's profile ties them).
Average bits are counted as ModelOpt counts its ``effective_bits``: each Linear's nominal weight bits (16 for a
layer left alone, lm_head included) times its weights, over all Linear weights; mpq gets the same limit through a
memory row in those units. Also measured: ModelOpt's model with its own quantizers (AWQ scales, its int8
calibration) — a different comparison (quantizers and selection together).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import numpy as np
import torch

NOMINAL_BITS = {"base": 16, "int8_static": 8, "w4a16_g64": 4}
BY_BITS = {8.0: "int8_static", 4.0: "w4a16_g64"}  # ModelOpt's recipes, told apart by their effective bits
GROUPS = {"q_proj": ("q_proj", "k_proj", "v_proj"), "gate_proj": ("gate_proj", "up_proj")}


CANDIDATES = ("int8_static", "w4a16_g64")  # mpq's names of the two formats both searches choose from


def modelopt_formats(mtq) -> list:
    """ModelOpt's two formats matching ``CANDIDATES``: INT8_DEFAULT_CFG and INT4_AWQ_CFG in blocks of 64."""
    int4 = copy.deepcopy(mtq.INT4_AWQ_CFG)
    for entry in int4["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"][-1] = 64
    return [mtq.INT8_DEFAULT_CFG, int4]


def forward_step(m, b):
    return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def loss_func(out, b):
    lg, t = out[:, :-1], b["input_ids"][:, 1:]
    return torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), t.reshape(-1))


def nominal_gains(gains):
    """The memory GainTable in ModelOpt's accounting: a configuration's gain is the weight bytes it saves against
    16-bit weights, each format at its nominal bits (no scales), so that a least-loss plan reaching a gain is the
    least-loss plan under an average-bits limit."""
    shapes = gains.shapes["layers"]
    subgraphs = []
    for sg in gains.subgraphs:
        per = np.array([[shapes[l][1] * shapes[l][2] * (16 - NOMINAL_BITS[c]) / 8 for c in gains.candidates]
                        for l in sg.layers])
        gain = per[np.arange(len(sg.layers))[None, :], sg.configs].sum(axis=1)
        subgraphs.append(replace(sg, gain=gain, spread=np.zeros_like(gain)))
    return replace(gains, subgraphs=tuple(subgraphs))


def effective_bits(model, mapping) -> float:
    lin = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    total = sum(m.weight.numel() for _, m in lin)
    return sum(m.weight.numel() * NOMINAL_BITS[mapping.get(n, "base")] for n, m in lin) / total


def modelopt_mapping(state) -> dict:
    """{layer: mpq candidate} of ModelOpt's chosen recipe, its grouped modules expanded."""
    out = {}
    for key, recipe in state["best"]["recipe"].items():
        name = key[: -len(".quant_recipe")]
        bits = float(str(recipe).rsplit("effective-bits:", 1)[1].strip(" )"))
        if bits == 16:
            continue
        cand = BY_BITS[bits]
        parent, leaf = name.rsplit(".", 1)
        for member in GROUPS.get(leaf, (leaf,)):
            out[f"{parent}.{member}"] = cand
    return out


def measured(model, windows, base_losses, batch_size):
    from mpq.demo_run import per_sample_losses
    losses = per_sample_losses(model, windows, batch_size)
    sq = (losses - base_losses) ** 2
    return float(sq.mean()), float(sq.std() / math.sqrt(sq.numel())), float(torch.exp(losses.mean()))


def smollm2_and_windows(args):
    """(SmolLM2 in eval mode, its calibration batches, the held-out windows): windows of ``args.seq_len`` tokens
    spread over the demo texts (``args.calib_windows`` of the calibration text, ``args.eval_windows`` held out)."""
    from mpq.data import lm_batches, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model
    model, tok = load_model(RunSettings(model=None))
    model.eval()
    cal = spread_windows(tokenize(tok, demo_text("calibration")), args.seq_len, args.calib_windows)
    held = spread_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval_windows)
    return model, lm_batches(cal, 4), held


def main(args):
    import modelopt.torch.quantization as mtq

    from mpq.application.swap import apply
    from mpq.calibration import calibrate
    from mpq.demo_run import per_sample_losses
    from mpq.profiling import profile
    from mpq.selection import select
    torch.set_num_threads(1)
    model, batches, held = smollm2_and_windows(args)
    cands = CANDIDATES
    formats = modelopt_formats(mtq)
    t0 = time.perf_counter()
    table = calibrate(model, batches, cands, progress=False)
    gains = nominal_gains(profile(model, {"input_ids": batches[0]["input_ids"][:1]}, cands, backend="memory"))
    mpq_calib_s = time.perf_counter() - t0
    scales = {l: float(table.act_scales[i, table.candidates.index("int8_static")]) for i, l in enumerate(table.layers)}
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    base = per_sample_losses(model, held, 4)
    print(f"# SmolLM2-135M; calibration {args.calib_windows} x {args.seq_len} tokens spread over the demo "
          f"calibration text, held out {args.eval_windows} x {args.seq_len} spread over the evaluation text; base "
          f"perplexity {math.exp(float(base.mean())):.2f}; mpq calibration + profile {mpq_calib_s:.0f} s")
    print("| average bits (ModelOpt's count) | ModelOpt plan, mpq quantizers: loss MSE ± se (ppl) | mpq plan: loss MSE "
          "± se (ppl) | lower | ModelOpt plan, its own quantizers | ModelOpt search s | mpq select ms |")
    print("|---|---|---|---|---|---|---|")

    search = args.out / "modelopt_search.pth"  # the scores of this run, reused across its budgets only
    search.unlink(missing_ok=True)
    for bits in args.bits:
        mo_model = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            mo_model, state = search_plan(mtq, mo_model, bits, formats, batches, search)
        except ValueError as e:  # below what lm_head at 16 bits allows: said, and the next budget tried
            print(f"| {bits} | {str(e).splitlines()[0]} | | | | | |", flush=True)
            continue
        mo_s = time.perf_counter() - t0
        mo_own = measured(mo_model, held, base, 4)
        del mo_model
        mo_map = modelopt_mapping(state)
        b_mo = effective_bits(model, mo_map)
        t0 = time.perf_counter()
        need = (16 - b_mo) * weights / 8  # bytes saved against 16 bits: the average bits ModelOpt's plan reached
        plan = select(table, gains, min_gain=need, keep=["lm_head"])
        sel_ms = (time.perf_counter() - t0) * 1e3
        b_mpq = effective_bits(model, plan.mapping)
        res = {}
        for name, mapping in (("modelopt", mo_map), ("mpq", plan.mapping)):
            q = apply(model, mapping, mode="fake", act_scales={l: scales[l] for l, c in mapping.items()
                                                               if c == "int8_static"})
            res[name] = measured(q, held, base, 4)
            del q
        lower = "mpq" if res["mpq"][0] < res["modelopt"][0] else "ModelOpt"
        ratio = max(res["mpq"][0], res["modelopt"][0]) / max(min(res["mpq"][0], res["modelopt"][0]), 1e-300)
        print(f"| {bits} (ModelOpt {b_mo:.2f}, mpq {b_mpq:.2f}) | {res['modelopt'][0]:.3g} ± {res['modelopt'][1]:.2g} "
              f"({res['modelopt'][2]:.1f}) | {res['mpq'][0]:.3g} ± {res['mpq'][1]:.2g} ({res['mpq'][2]:.1f}) | "
              f"{lower}, {ratio:.2f}x | {mo_own[0]:.3g} ± {mo_own[1]:.2g} ({mo_own[2]:.1f}) | {mo_s:.0f} | "
              f"{sel_ms:.1f} |", flush=True)



def search_plan(mtq, model, bits, formats, batches, checkpoint):
    """ModelOpt's AutoQuantize at ``bits`` average bits: (its quantized model, its state with the chosen recipes)."""
    return mtq.auto_quantize(
        model, constraints={"effective_bits": bits}, quantization_formats=formats, data_loader=batches,
        forward_step=forward_step, loss_func=loss_func, disabled_layers=["*lm_head*"],
        num_calib_steps=len(batches), num_score_steps=len(batches), method="gradient", checkpoint=str(checkpoint))
