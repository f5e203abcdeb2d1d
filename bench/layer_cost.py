"""What one decoder layer costs mpq.calibrate (time and memory), measured on Llama-shaped layers built from
configs at several widths, and what that makes for Llama-3 8B and 70B (the formula is printed with the figures).

Per width h (head_dim 64, a quarter as many KV heads, intermediate 3.5 h as in Llama-3), models of 1 and 2
decoder layers (vocabulary 256, so the head weighs little) are calibrated in fresh child processes, one thread,
fp32, on batches of T tokens; the 2-layer minus the 1-layer figure is one layer's cost:
  * CPU time (the process's CPU seconds: the machine is shared, and CPU time suffers less from the others' load
    than wall time) per weight and token: c = t_layer / (P_layer * T). Forward, input gradient and the
    per-sample weight gradients are three GEMMs of P x T; the fused kernel adds P per sample and candidate;
  * memory kept for the backward pass: the bytes of every tensor autograd saves during one batch's forward
    (each storage once, the weights not counted), per token and hidden unit: a = kept_layer / (T * h).
A model of L layers of P weights each, calibrated on N tokens in batches of T tokens, then needs about
    time   = c * (L * P + P_head) * N        (attention's S^2 terms are not in c: seq-len 128 here)
    memory = weights + L * a * h * T + 8 * out * in of the largest Linear (its weight in fp32 and one sample's
             weight gradient, formed one sample at a time when out * in > 4M: calibration/hooks.py)

    python bench/layer_cost.py [--widths 256 512 1024 2048] [--seq-len 128] [--batch-size 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _util import machine_line, print_table

CANDIDATES = ("fp8", "int8", "int8_static", "w4a16")
LLAMA = {  # hidden, intermediate, layers, heads, kv heads, vocabulary (the published configs)
    "Llama-3-8B": (4096, 14336, 32, 32, 8, 128256),
    "Llama-3-70B": (8192, 28672, 80, 64, 8, 128256),
}


def layer_weights(h, inter, heads, kv, head_dim):
    return 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter


def config(h, layers):
    import transformers
    heads = max(1, h // 64)
    return transformers.LlamaConfig(vocab_size=256, hidden_size=h, intermediate_size=h * 7 // 2,
                                    num_hidden_layers=layers, num_attention_heads=heads,
                                    num_key_value_heads=max(1, heads // 4), head_dim=64, bos_token_id=0,
                                    eos_token_id=1)


def child(h, layers, batch, seq_len):
    import transformers

    import mpq
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config(h, layers)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 256, (batch, seq_len), generator=g)} for _ in range(2)]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):  # every tensor autograd keeps for the backward, each storage once, weights aside
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mpq.calibrate(model, batches[:1], CANDIDATES, progress=False)  # also the warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    mpq.calibrate(model, batches, CANDIDATES, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds_per_batch": cpu / len(batches), "wall_per_batch": wall / len(batches),
                      "kept_bytes": sum(kept.values())}))


def measure(h, layers, batch, seq_len):
    out = subprocess.run([sys.executable, __file__, "--child", str(h), str(layers), str(batch), str(seq_len)],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--child", type=int, nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    print(machine_line())
    print(f"# candidates {', '.join(CANDIDATES)}; fp32; 1 thread; batches of {args.batch_size} x {args.seq_len} tokens")
    rows = []
    tokens = args.batch_size * args.seq_len
    for h in args.widths:
        heads = max(1, h // 64)
        p = layer_weights(h, h * 7 // 2, heads, max(1, heads // 4), 64)
        m = {L: measure(h, L, args.batch_size, args.seq_len) for L in (1, 2)}
        t_layer = m[2]["seconds_per_batch"] - m[1]["seconds_per_batch"]
        wall = m[2]["wall_per_batch"] - m[1]["wall_per_batch"]
        kept = m[2]["kept_bytes"] - m[1]["kept_bytes"]
        rows.append((h, p / 1e6, t_layer, wall, t_layer / (p * tokens) * 1e12, kept / 2**20, kept / (tokens * h)))
    print_table(["hidden", "P_layer_M", "cpu_s_layer", "wall_s_layer", "c_ps", "kept_MiB", "a_B/tok/h"], rows,
                ["d", ".2f", ".3f", ".3f", ".1f", ".2f", ".1f"])
    c, a = rows[-1][4] * 1e-12, rows[-1][6]  # the widest layers: the GEMM efficiency of large layers
    print(f"# from hidden {args.widths[-1]}: c = {c * 1e12:.1f} ps of CPU time per weight and token (one thread), "
          f"a = {a:.1f} bytes kept per token and hidden unit (fp32 activations)")
    for name, (h, inter, layers, heads, kv, vocab) in LLAMA.items():
        p = layer_weights(h, inter, heads, kv, h // heads)
        head = h * vocab
        for n_seq, seq in ((16, 256), (128, 2048)):
            t = c * (layers * p + head) * n_seq * seq
            weights = 2 * (layers * p + 2 * head)  # bf16, embedding and head
            act = layers * a * h * seq  # batches of one sequence
            transient = 8 * max(h * inter, h * vocab)
            print(f"# {name}, {n_seq} x {seq} tokens in batches of 1: {t / 3600:.1f} CPU-hours of this CPU (1 "
                  f"thread); memory {weights / 2**30:.0f} GiB bf16 weights + {act / 2**30:.1f} GiB kept activations "
                  f"(fp32) + {transient / 2**30:.1f} GiB transient")


if __name__ == "__main__":
    main()
