"""Calibration of routed experts: each row of an expert GEMM's input is one token of one sample.

An expert's Linear (``mpq.experts.RoutedExperts``) is called with the rows of the tokens the router sent it, from
the flattened batch [B·S, H]; while it runs, its ``RoutedExperts.routing`` holds (token rows, T = B·S). Per sample
n the formulas are the Linear ones over the sample's rows only:

    δ[n] = ⟨Σ_{t∈n} g_t x_tᵀ, Q(W) − W⟩ + Σ_{t∈n} ⟨g^X_t, Q(X)_t − x_t⟩

with g_t the real gradient reaching the GEMM's output (it carries the routing weight that multiplies the
expert's output) and Q(X) the quantizer applied to the expert's whole input, as ``apply`` runs it. How:
  * weight term: the rows are scattered into a zero-padded [B, R, ·] (R = most rows of one sample), so the
    Linear path's per-sample ∂ℓ_n/∂W = G_nᵀ X_n and the fused kernel run unchanged (zero rows add nothing);
  * activation term: the kernel sums G ⊙ (Q(X) − X) per row of the unpadded input (Q's scales from the real rows
    only: zero rows would move an asymmetric format's range), then the rows are added into their samples.
Rows of padded tokens are kept (their gradient is zero) but not counted as calibration tokens.
"""
from __future__ import annotations

import torch

from .kernel import delta_sums


def row_samples(owner, layer) -> torch.Tensor:
    """Sample index of every input row of the expert GEMM being called now; counts its unpadded tokens."""
    tok, total = owner.routing
    run = layer.run
    B = run.batch_samples
    if total % B:
        raise ValueError(f"layer {layer.name}: the experts saw {total} tokens, not a whole number of sequences "
                         f"for the batch's {B} samples")
    mask = run.mask
    counted = tok.numel() if mask is None or mask.numel() != total else \
        int(mask.reshape(-1).to(tok.device)[tok].bool().sum())
    run.routed_tokens[layer.index] = run.routed_tokens.get(layer.index, 0) + counted
    return tok // (total // B)


def by_sample(t: torch.Tensor, sample: torch.Tensor, B: int) -> torch.Tensor:
    """Rows [R, F] as [B, max rows of one sample, F], each sample's rows in order, zeros after them."""
    t = t.reshape(-1, t.shape[-1])
    sample = sample.to(t.device)
    counts = torch.bincount(sample, minlength=B)
    width = max(1, int(counts.max())) if sample.numel() else 1
    order = torch.argsort(sample, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(sample)
    slot[order] = torch.arange(sample.numel(), device=t.device) - starts[sample[order]]
    out = t.new_zeros(B, width, t.shape[-1])
    out[sample, slot] = t
    return out


def act_delta(x: torch.Tensor, g: torch.Tensor, quants, sample: torch.Tensor, B: int) -> torch.Tensor:
    """[B, len(quants)] float64: Σ over each sample's rows of g ⊙ (Q(x) − x), Q over all rows of x."""
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    per_row = delta_sums(x2, g2, quants, 1).reshape(x2.shape[0], len(quants))
    out = torch.zeros(B, len(quants), dtype=torch.float64, device=per_row.device)
    return out.index_add_(0, sample.to(per_row.device), per_row)


def unpadded_rows(x: torch.Tensor, owner, mask) -> torch.Tensor:
    """The rows of an expert GEMM's input that belong to non-padded tokens (for static activation ranges)."""
    tok, total = owner.routing
    if mask is None or mask.numel() != total:
        return x
    return x[mask.reshape(-1).to(tok.device)[tok].bool()]


def expert_info(named, owners, routed_tokens, unknown, warned=()) -> tuple[dict, list, str]:
    """(table info about experts, the expert entries without a calibration token, a warning or ""); unknown
    modules in ``warned`` (the coverage report's warning named them already) are not warned about again."""
    info, unrouted = {}, []
    if owners:
        tokens = {}
        for i, owner_name in owners.items():
            n = routed_tokens.get(i, 0)
            tokens[named[i][0]] = n
            if n == 0:
                unrouted.append(named[i][0])
        info["experts"] = {"entries": len(owners), "tokens": tokens,
                           "modules": sorted(set(owners.values()))}
    if unknown:
        info["experts_not_covered"] = dict(unknown)
    msgs = []
    if unrouted:
        info["unrouted_experts"] = unrouted
        msgs.append(f"{len(unrouted)} expert GEMM(s) received no calibration token, so their δ are not measured "
                    f"(0 in the table, listed in info['unrouted_experts']): {unrouted[:4]}"
                    f"{' ...' if len(unrouted) > 4 else ''}")
    unwarned = [n for n in unknown if n not in warned]
    if unwarned:
        msgs.append(f"expert module(s) of unknown layout, not calibrated (info['experts_not_covered']): "
                    f"{unwarned[:4]}{' ...' if len(unwarned) > 4 else ''}")
    return info, unrouted, "; ".join(msgs)


def single_samples(batch, B: int) -> list:
    """``batch`` as B batches of one sample: every tensor whose first dimension is the B samples is sliced."""
    def cut(x, n):
        if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == B:
            return x[n:n + 1]
        if isinstance(x, dict):
            return {k: cut(v, n) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(cut(v, n) for v in x)
        return x
    return [cut(batch, n) for n in range(B)]
