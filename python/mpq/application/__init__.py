"""Step 5, apply and export: a copy of the model running a plan, with fake-quantized Linears for accuracy or
native kernels for speed (``swap``, ``native_cpu``, ``native_cuda``), and the plan written as configurations of
other tools (``exporters``) or as checkpoints that runtimes load, weights included (``checkpoints``)."""
from .checkpoints import save_quantized
from .exporters import TARGETS, export
from .swap import FakeQuantLinear, apply, plan_mapping

__all__ = ["FakeQuantLinear", "TARGETS", "apply", "export", "plan_mapping", "save_quantized"]
