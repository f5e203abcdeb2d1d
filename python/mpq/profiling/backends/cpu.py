"""The ``cpu`` timing backend: the native kernels of ``mpq.application.native_cpu`` (the ones
``apply(mode="native")`` installs), timed inside the model as loaded (float32, or bf16 / fp16: the GainTable's
``meta["base_format"]`` says which) on one thread. The clock is the thread's CPU
time (``time.thread_time_ns``, immune to other jobs taking the core away) unless ``MPQ_CPU_CLOCK=wall`` asks for
``time.perf_counter_ns``."""
from __future__ import annotations

import os

import torch

from ...application import cpu_features, cpu_kernels
from ...application.cpu_kernels import CPU_KERNELS, MODEL_DTYPES, native_linear
from ...models import copy_sharing_tensors
from ..timing import PerfClock, ThreadClock
from .base import TimedBackend


BASE_FORMATS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class CpuBackend(TimedBackend):
    name = "cpu"
    base_format = "fp32"
    kernels = CPU_KERNELS

    def prepare(self, model, example_input):
        # the model as loaded (float32, or bf16 / fp16 as checkpoints often come): "base" is what it runs in
        for n, p in model.named_parameters():
            if p.device.type != "cpu" or (p.is_floating_point() and p.dtype not in MODEL_DTYPES):
                raise ValueError(f"the cpu backend times CPU models in {' / '.join(str(d) for d in MODEL_DTYPES)}; "
                                 f"parameter {n!r} is {p.dtype} on {p.device}")
        # the copy shares the weights' memory with the model, as apply(mode="native")'s plan models do, so that
        # base sub-graphs are timed on the memory the unquantized model and every plan model run from
        return copy_sharing_tensors(model).eval(), example_input

    def supported(self, candidate: str) -> bool:
        return bool(cpu_kernels.admitted(candidate)) if candidate in CPU_KERNELS else False

    def unsupported_reason(self, candidate: str) -> str:
        if candidate not in CPU_KERNELS:
            return super().unsupported_reason(candidate)
        return cpu_kernels.why_not(candidate)

    def runs(self, linear, candidate: str) -> bool:
        return bool(cpu_kernels.runnable(linear, candidate))

    def implementations(self, candidate: str, linear=None) -> tuple[str, ...]:
        impls = cpu_kernels.admitted(candidate) if linear is None else cpu_kernels.runnable(linear, candidate)
        return tuple(impl.name for impl in impls)

    def make_module(self, linear, candidate: str, act_scale=None, implementation=None):
        from ...candidates import get_candidate
        from ...quantizers.grid import timing_stand_in
        cand = get_candidate(candidate)
        # a calibrated-weight candidate runs the same kernel (plus its input divide) whatever its integers: it is
        # timed with RTN codes and a unit input scale of the same shapes
        quantized = timing_stand_in(linear, cand) if cand.calibrated_weight else None
        return native_linear(linear, candidate, act_scale, implementation, quantized=quantized)

    def base_format_of(self, model) -> str:
        dtypes = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
        return "+".join(sorted(BASE_FORMATS[d] for d in dtypes)) or self.base_format

    def extra_meta(self) -> dict:
        return {"cpu": cpu_features.describe()}

    def clock(self):
        mode = os.environ.get("MPQ_CPU_CLOCK", "thread")
        if mode not in ("thread", "wall"):
            raise ValueError(f"MPQ_CPU_CLOCK must be 'thread' or 'wall', got {mode!r}")
        return PerfClock() if mode == "wall" else ThreadClock()


BACKEND = CpuBackend()

# for callers that import this module (`from mpq.profiling.backends import cpu`); new code: get_backend("cpu")
clock = BACKEND.clock
make_module = BACKEND.make_module
