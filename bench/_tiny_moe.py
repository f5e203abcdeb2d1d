"""A tiny Qwen3-MoE language model trained in the bench on real text, for fidelity measurements on experts.

An untrained random MoE measures nothing (its loss does not depend on what its experts compute in any learned
way), so ``trained_tiny_moe`` trains one from a seeded config for a few hundred AdamW steps on random windows of
mpq's demo calibration text (A Midsummer Night's Dream), byte-level (vocabulary: the 256 byte values, so no
tokenizer is needed and the embedding stays small). The demo evaluation text (Macbeth) is never trained on.
"""
from __future__ import annotations

import math
import time

import torch


def byte_ids(text: str) -> torch.Tensor:
    """1-D int64 ids of the UTF-8 bytes of ``text`` (the model's vocabulary is the 256 byte values)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def demo_texts() -> tuple[str, str]:
    """(calibration text, evaluation text) of mpq's built-in demo data."""
    from mpq.data import package_file
    return (package_file("mpq", "demo_data/calibration.txt").read_text(encoding="utf-8"),
            package_file("mpq", "demo_data/evaluation.txt").read_text(encoding="utf-8"))


def tiny_moe_config(layers: int, experts: int, top_k: int, hidden: int):
    import transformers
    return transformers.Qwen3MoeConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
        num_experts=experts, num_experts_per_tok=top_k, decoder_sparse_step=1, norm_topk_prob=True,
        max_position_embeddings=1024, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=0.01)  # the load-balancing loss keeps every expert in use


def trained_tiny_moe(train_ids: torch.Tensor, *, layers=2, experts=8, top_k=2, hidden=128, steps=300,
                     batch=16, seq_len=128, lr=3e-3, seed=0, log_every=50, log=print):
    """(model in eval mode, list of (step, training LM loss)): AdamW with a cosine schedule on random windows
    of ``train_ids``; the loss logged is the LM loss alone (without the router's auxiliary loss), averaged over
    the last ``log_every`` steps."""
    import transformers
    torch.manual_seed(seed)
    model = transformers.Qwen3MoeForCausalLM(tiny_moe_config(layers, experts, top_k, hidden))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    history, window, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        for g in opt.param_groups:  # warm-up 20 steps, then cosine to 10%
            g["lr"] = lr * min(1.0, step / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        starts = torch.randint(0, train_ids.numel() - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[s:s + seq_len] for s in starts.tolist()])
        out = model(input_ids=x, labels=x, use_cache=False)
        aux = out.aux_loss if out.aux_loss is not None else 0.0
        opt.zero_grad(set_to_none=True)
        (out.loss + model.config.router_aux_loss_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(float(out.loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append((step, sum(window) / len(window)))
            log(f"#   step {step:>4}: training loss {history[-1][1]:.3f} (bytes, nats)  "
                f"{time.perf_counter() - t0:.0f}s")
            window = []
    model.config.output_router_logits = False
    return model.eval(), history
