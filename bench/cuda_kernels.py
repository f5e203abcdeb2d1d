"""The cuda backend's Linear kernels against bf16 ``F.linear``, alone, on a GPU: the whole module (activation
quantization + GEMM + dequantization, with the fused Triton quantizer and with torch ops) and its GEMM alone
(``torch._scaled_mm`` / ``torch._int_mm`` on inputs quantized beforehand), so that the cost of quantizing the
activations shows. Shapes: Llama-3-8B's and SmolLM2-135M's q/k/v and gate/up
projections (each as one GEMM) and down projection, at prefill (2048 tokens) and decode (1 token). CUDA events,
median of --repeats.

    python bench/cuda_kernels.py
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpq.application import native_cuda as cuda

SHAPES = {  # name: (in, out)
    "llama8b qkv": (4096, 6144), "llama8b gate/up": (4096, 28672), "llama8b down": (14336, 4096),
    "smollm2 qkv": (576, 960), "smollm2 gate/up": (576, 3072), "smollm2 down": (1536, 576),
}


def time_ms(fn, repeats):
    clock = cuda.clock()
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        t0 = clock.mark()
        fn()
        t1 = clock.mark()
        clock.sync()
        out.append(clock.seconds(t0, t1) * 1e3)
    return float(np.median(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)
    print(f"# {torch.cuda.get_device_name()} torch={torch.__version__}; ms, median of {args.repeats}; "
          f"x: bf16 time / this time (> 1 is faster than bf16); fused: the Triton quantizer (cuda_fused), torch: the "
          f"same arithmetic in torch ops (MPQ_CUDA_QUANT=torch); GEMM: torch._scaled_mm / torch._int_mm alone")
    cols = ("fp8 fused", "fp8 torch", "fp8 GEMM", "int8 fused", "int8 torch", "int8 GEMM")
    print(f"{'shape':<16} {'tokens':>6} {'bf16':>8} " + " ".join(f"{c:>10} {'x':>5}" for c in cols))
    torch.manual_seed(0)
    for name, (k, n) in SHAPES.items():
        lin = nn.Linear(k, n, bias=False).to("cuda", torch.bfloat16)
        f8, i8 = cuda.make_module(lin, "fp8"), cuda.make_module(lin, "int8")
        for m in (2048, 1):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            qx8 = x.float().to(torch.float8_e4m3fn)
            sa = torch.ones(m, 1, device="cuda")
            qi8 = torch.zeros(cuda._padded_rows(m), k, device="cuda", dtype=torch.int8)
            with torch.no_grad():
                t = {"bf16": time_ms(lambda: F.linear(x, lin.weight), args.repeats),
                     "fp8 fused": time_ms(lambda: f8(x), args.repeats),
                     "fp8 GEMM": time_ms(lambda: torch._scaled_mm(qx8, f8.qw.t(), scale_a=sa, scale_b=f8.ws,
                                                                  out_dtype=torch.bfloat16), args.repeats),
                     "int8 fused": time_ms(lambda: i8(x), args.repeats),
                     "int8 GEMM": time_ms(lambda: torch._int_mm(qi8, i8.qw.t()), args.repeats)}
                os.environ["MPQ_CUDA_QUANT"] = "torch"
                t["fp8 torch"] = time_ms(lambda: f8(x), args.repeats)
                t["int8 torch"] = time_ms(lambda: i8(x), args.repeats)
                del os.environ["MPQ_CUDA_QUANT"]
            b = t["bf16"]
            print(f"{name:<16} {m:>6} {b:8.4f} " + " ".join(f"{t[c]:10.4f} {b / t[c]:5.2f}" for c in cols),
                  flush=True)


if __name__ == "__main__":
    main()
