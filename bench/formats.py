"""How fast is fake_quantize? GB/s of the C++ path, the plain-torch reference and a plain memory copy of the same
tensor, one thread, measured in the same run. Goal: C++ >= 50% of the copy bandwidth and >= 3x the reference.

    python bench/formats.py [--mib 256] [--repeat 7]
Bytes counted: input read + output written (2 x size). Two pairs are compared like with like:
  into an existing buffer: mpq.fake_quantize(x, out=buf)  vs  buf.copy_(x);
  into a new tensor:       mpq.fake_quantize(x)           vs  x.clone()   (both pay the page faults of fresh memory).
The torch reference (mpq.reference, plain torch ops) returns a new tensor.
"""
from __future__ import annotations

import argparse

import torch

import mpq
from mpq import reference

from _util import machine_line, print_table, timeit

CASES = [  # (format, layout kwargs, label)
    ("fp8_e4m3", {}, "tensor"),
    ("fp8_e4m3", {"axis": 0}, "channel"),
    ("fp8_e4m3_gaudi2", {}, "tensor/hw"),
    ("fp8_e5m2", {"axis": 0}, "channel"),
    ("int8", {"axis": 0}, "channel"),
    ("int4", {"group_size": 32}, "group32"),
    ("int4_asym", {"group_size": 32}, "group32"),
    ("bf16", {}, "cast"),
    ("fp16", {}, "cast"),
    ("fp8_e4m3", {"scale": 0.01}, "fixed scale"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="tensor size in MiB (fp32); larger than the L3")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_line())
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        cols = 4096
        numel = args.mib * 2**20 // 4
        x = torch.randn(numel // cols, cols).to(dtype)
        out = torch.empty_like(x)
        nbytes = 2 * x.numel() * x.element_size()
        t_copy, _ = timeit(lambda: out.copy_(x), args.repeat)
        t_clone, _ = timeit(lambda: x.clone(), args.repeat)
        for fmt, kwargs, label in CASES:
            assert torch.equal(mpq.fake_quantize(x[:64], fmt, **kwargs).view(torch.uint8),
                               reference.fake_quantize(x[:64], fmt, **kwargs).view(torch.uint8))
            t_out, iqr = timeit(lambda: mpq.fake_quantize(x, fmt, out=out, **kwargs), args.repeat)
            t_new, _ = timeit(lambda: mpq.fake_quantize(x, fmt, **kwargs), args.repeat)
            t_ref, _ = timeit(lambda: reference.fake_quantize(x, fmt, **kwargs), max(3, args.repeat // 2))
            gb = lambda t: nbytes / t / 1e9  # noqa: E731
            rows.append((dtype_name, fmt, label, gb(t_copy), gb(t_out), t_copy / t_out, gb(t_clone), gb(t_new),
                         t_clone / t_new, gb(t_ref), t_ref / t_new, iqr / t_out))
    print_table(["dtype", "format", "granularity", "copy GB/s", "mpq out=", "vs copy", "clone GB/s", "mpq new",
                 "vs clone", "torch GB/s", "mpq/torch", "mpq IQR"], rows,
                ["", "", "", ".2f", ".2f", ".0%", ".2f", ".2f", ".0%", ".2f", ".1f", ".0%"])


if __name__ == "__main__":
    main()
