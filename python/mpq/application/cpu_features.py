"""What this CPU is: its model name, the instruction-set flags of /proc/cpuinfo that decide which kernels exist
and win (AVX2, AVX-512, VNNI, BF16, AMX), torch's own view (``torch.backends.cpu.get_cpu_capability()``) and the
ISA mpq's C++ core dispatches to. Every figure mpq records names the CPU through ``describe()``."""
from __future__ import annotations

import functools
import platform

# the flags that matter for the CPU kernels, in /proc/cpuinfo's spelling
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
         "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.processor(), platform.machine()):
                    name = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:  # not Linux: no flags known, only what torch reports
        pass
    return name, flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def flags() -> frozenset:
    """The CPU's flags from /proc/cpuinfo (empty where that file does not exist)."""
    return _cpuinfo()[1]


def has(flag: str) -> bool:
    return flag in flags()


def torch_capability() -> str:
    import torch
    return torch.backends.cpu.get_cpu_capability()


def describe() -> dict:
    """The CPU in the words every recorded figure carries."""
    from .. import _core
    return {"cpu": cpu_name(), "flags": [f for f in FLAGS if has(f)], "torch_capability": torch_capability(),
            "mpq_isa": _core.isa()}


def summary() -> str:
    d = describe()
    return (f"{d['cpu']}; flags {' '.join(d['flags']) or 'none of ' + ', '.join(FLAGS[:3])}; "
            f"torch {d['torch_capability']}; mpq core {d['mpq_isa']}")
