"""How much does calibration cost? (1) Time of mpq.calibrate with 4 candidates against a plain forward + backward
with weight gradients on the same batches, measured in the same run; (2) peak memory of both (each in a fresh
child process, RSS sampled every 2 ms above the RSS after loading); (3) the fused kernel's throughput against the
memory copy bandwidth. One thread. Goals: calibration <= 2x the plain pass; peak memory within 10% of the plain
pass; kernel >= 50% of the copy bandwidth.
--algorithms instead compares calibration with RTN candidates only against the same plus GPTQ / AWQ /
optimized-RTN / SmoothQuant candidates (time, peak memory, the QuantizedWeights' size), and times a re-solve from
the saved table.

    python bench/calibrate.py [--model smollm2|tiny] [--batches 2] [--batch-size 4] [--seq-len 128] [--repeat 3]
                              [--algorithms]
    python bench/calibrate.py --kernel-only        # (3) alone, at every SIMD level this CPU has
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from mpq import _core

from _util import at_isa, machine_line, print_table, timeit

CANDIDATES = ("fp8", "int8", "int8_static", "w4a16")
RTN_SET = ("w8a16", "w4a16_g64", "int8_static")
ALGO_SET = RTN_SET + ("w8a16_gptq", "w4a16_g64_gptq", "w4a16_g64_awq", "w4a16_g64_ortn", "int8_static_sq")
KERNEL_QUANTS = ("fp8", "int8", "int8_static", "fp8_gaudi2")  # four activation quantizers (per token, static)


def load(args):
    from mpq import data
    if args.model == "smollm2":
        model, tok = data.load_smollm2()
        text = "\n".join(data.shakespeare_texts(["as_you_like_it", "twelfth_night"]).values())
        ids = data.tokenize(tok, text)
    else:
        import transformers
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                       bos_token_id=0, eos_token_id=1)
        model = transformers.LlamaForCausalLM(cfg).eval()
        ids = torch.randint(0, 4096, (args.batches * args.batch_size * args.seq_len,))
    windows = data.token_windows(ids, args.seq_len, args.batches * args.batch_size)
    return model, data.lm_batches(windows, args.batch_size)


def plain_pass(model, batches):
    from mpq.calibration import causal_lm_loss
    model.eval()
    for b in batches:
        causal_lm_loss(model(**{k: v for k, v in b.items()}), b).sum().backward()
    model.zero_grad(set_to_none=True)


def calib_pass(model, batches, candidates=CANDIDATES):
    import mpq.calibration
    return mpq.calibration.calibrate(model, batches, candidates, progress=False)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args):
    """One pass in this fresh process: peak RSS above the RSS before the pass."""
    torch.set_num_threads(1)
    model, batches = load(args)
    import gc
    gc.collect()
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    if args.child == "plain":
        plain_pass(model, batches)
    else:
        calib_pass(model, batches, {"calib": CANDIDATES, "rtn": RTN_SET, "algo": ALGO_SET}[args.child])
    stop.set()
    th.join()
    peak[0] = max(peak[0], rss())
    print(json.dumps({"peak_mib": (peak[0] - base) / 2**20}))


def kernel_bench(repeat):
    from mpq.calibration.kernel import act_quant, delta_sums
    from mpq.candidates import CANDIDATES as ALL
    rows, cols = 16384, 1024  # 64 MiB each for T and G: far beyond the caches
    t = torch.randn(rows, cols)
    g = torch.randn(rows, cols)
    quants = [act_quant(ALL[c], 0.05) if ALL[c].act_static else act_quant(ALL[c]) for c in KERNEL_QUANTS]
    dst = torch.empty_like(t)
    got = delta_sums(t[:256], g[:256], quants, 128, num_threads=1)
    ref = delta_sums(t[:256], g[:256], quants, 128, use_core=False)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-3), "kernel differs from its reference"
    n = t.numel() * 4
    t_copy, iqr_copy = timeit(lambda: dst.copy_(t), repeat)
    rows_out = []
    for isa in [i for i in _core.available_isas() if i != "scalar"]:  # every SIMD level this CPU has, one run
        with at_isa(isa):
            for k in (1, len(quants)):
                tk, iqr = timeit(lambda: delta_sums(t, g, quants[:k], 512, num_threads=1), repeat)
                rows_out.append((isa, f"{k} quantizer(s)", 2 * n / tk / 1e9, 2 * n / t_copy / 1e9,
                                 t_copy / tk * 1.0))
    return rows_out, t_copy, iqr_copy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", choices=("plain", "calib", "rtn", "algo"), help=argparse.SUPPRESS)
    p.add_argument("--algorithms", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--kernel-only", action="store_true", help="only the kernel's throughput, at every SIMD level")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    torch.set_num_threads(1)
    print(machine_line())
    if args.kernel_only:
        return print_kernel_bench(args.repeat)
    model, batches = load(args)
    if args.algorithms:
        return algorithms(args, model, batches)
    ntok = sum(b["input_ids"].numel() for b in batches)
    print(f"# model={args.model} batches={len(batches)}x{args.batch_size}x{args.seq_len} ({ntok} tokens) "
          f"candidates={','.join(CANDIDATES)}")
    t_plain, iqr_plain = timeit(lambda: plain_pass(model, batches), args.repeat)
    t_cal, iqr_cal = timeit(lambda: calib_pass(model, batches), args.repeat)
    rows = [("plain fwd+bwd", t_plain, iqr_plain, 1.0), ("calibrate", t_cal, iqr_cal, t_cal / t_plain)]
    print("\n## time (s, median of %d; goal: calibrate <= 2x plain)" % args.repeat)
    print_table(["pass", "median s", "IQR s", "x plain"], rows, ["", ".3f", ".3f", ".2f"])
    if not args.skip_memory:
        mem = {}
        for kind in ("plain", "calib"):
            cmd = [sys.executable, __file__, "--child", kind, "--model", args.model, "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem[kind] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
        print("\n## peak memory above the loaded model (MiB, RSS; goal: calibrate within 10% of plain)")
        print_table(["pass", "peak MiB", "x plain"], [("plain fwd+bwd", mem["plain"], 1.0),
                                                       ("calibrate", mem["calib"], mem["calib"] / mem["plain"])],
                    ["", ".1f", ".3f"])
    print_kernel_bench(args.repeat)


def print_kernel_bench(repeat):
    krows, t_copy, _ = kernel_bench(max(repeat, 5))
    print("\n## kernel: T and G [16384, 1024] fp32, read once (8 bytes/value); copy: dst.copy_(T) (8 bytes/value)")
    print_table(["isa", "kernel", "GB/s", "copy GB/s", "x copy"], krows, ["", "", ".2f", ".2f", ".2f"])


def child_peak(kind, args) -> float:
    cmd = [sys.executable, __file__, "--child", kind, "--model", args.model, "--batches", str(args.batches),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def algorithms(args, model, batches):
    """RTN-only calibration against calibration with the calibrated-weight candidates; then a re-solve."""
    import tempfile

    import mpq
    ntok = sum(b["input_ids"].numel() for b in batches)
    print(f"# model={args.model} batches={len(batches)}x{args.batch_size}x{args.seq_len} ({ntok} tokens)\n"
          f"# rtn: {','.join(RTN_SET)}\n# with algorithms: {','.join(ALGO_SET)}")
    tables = {}

    def run(kind, cands):
        tables[kind] = calib_pass(model, batches, cands)
    t_rtn, iqr_rtn = timeit(lambda: run("rtn", RTN_SET), args.repeat, warmup=0)
    t_alg, iqr_alg = timeit(lambda: run("algo", ALGO_SET), args.repeat, warmup=0)
    qw = tables["algo"].quantized_weights
    rows = [("rtn only", t_rtn, iqr_rtn, 1.0), ("with algorithms", t_alg, iqr_alg, t_alg / t_rtn)]
    print(f"\n## calibration time (s, median of {args.repeat})")
    print_table(["calibrate", "median s", "IQR s", "x rtn"], rows, ["", ".2f", ".2f", ".2f"])
    if not args.skip_memory:
        m_rtn, m_alg = child_peak("rtn", args), child_peak("algo", args)
        print("\n## peak memory above the loaded model (MiB, RSS, fresh process each)")
        print_table(["calibrate", "peak MiB", "x rtn"], [("rtn only", m_rtn, 1.0),
                                                         ("with algorithms", m_alg, m_alg / m_rtn)],
                    ["", ".1f", ".2f"])
    with tempfile.TemporaryDirectory() as d:
        tables["algo"].save(f"{d}/t.npz")
        qw.save(f"{d}/qw.npz")
        sizes = (os.path.getsize(f"{d}/t.npz"), os.path.getsize(f"{d}/qw.npz"))
        example = {"input_ids": batches[0]["input_ids"][:1]}
        gains = mpq.profile(model, example, ALGO_SET, backend="memory")
        need = 0.5 * float(sum(sg.gain.max() for sg in gains.subgraphs))

        def resolve():
            t = mpq.SensitivityTable.load(f"{d}/t.npz")
            return mpq.select(t, gains, min_gain=need)
        t_solve, iqr_solve = timeit(resolve, max(args.repeat, 5))
        chosen = sorted(set(resolve().quantized.values()))
    print(f"\n## saved: table {sizes[0] / 2**10:.0f} KiB, QuantizedWeights {sizes[1] / 2**20:.1f} MiB "
          f"({len(qw)} (layer, candidate) entries)")
    print(f"## re-solve from the saved table (load + select at half the memory gain): {1e3 * t_solve:.1f} ms "
          f"(IQR {1e3 * iqr_solve:.1f}); calibration with algorithms {t_alg:.1f} s; plan uses {chosen}")


if __name__ == "__main__":
    main()
