"""Where calibration finds a model's tensors when the model is spread over devices or offloaded (accelerate's
``device_map``, ``dispatch_model``, ``cpu_offload``, ``disk_offload``).

accelerate moves each module's inputs to the module's execution device and, for offloaded modules, loads the
weights from their offload store just for the forward, leaving a ``meta`` placeholder on the module afterwards.
Calibration reads a Linear's weight again in the backward pass (for Q(W) − W), so it loads it the same way
accelerate does (``align_module_device``), on the device its output gradient is on. And autograd would keep every
loaded weight until the backward pass (the input gradient needs it), so that offloading saved nothing:
``offloaded_weights_reloaded`` has it keep a note instead and load the weight again in the backward.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn


def input_device(model: nn.Module) -> torch.device:
    """The device the batches go to: that of the first parameter (or buffer) that holds data. An offloaded tensor
    sits on ``meta``; accelerate's hooks move the inputs on to each module's execution device themselves."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def weight_on(module: nn.Module, device: torch.device, name: str) -> torch.Tensor:
    """The (detached) weight of ``module`` on ``device``; an offloaded weight is loaded from its offload store.
    @raises ValueError when the weight is on ``meta`` and no accelerate offload hook can load it."""
    w = module.weight
    if w.device.type == "meta":
        with _onloaded(module, device, name):
            w = module.weight  # the loaded tensor outlives the context: only the module's reference is reset
    return w.detach().to(device)


def _onloaded(module: nn.Module, device: Optional[torch.device], name: str):
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:
        raise ValueError(f"the weight of layer {name!r} is on the meta device; only a model offloaded by "
                         "accelerate (>= 1.2) can be calibrated that way (pip install 'accelerate>=1.2')") from None
    if not has_offloaded_params(module):
        raise ValueError(f"the weight of layer {name!r} is on the meta device and no accelerate offload hook on "
                         "that layer can load it: load the model with its weights, or dispatch it with accelerate")
    return align_module_device(module, device)


def parameters_with_data(model: nn.Module) -> Iterator[tuple[str, Optional[torch.Tensor]]]:
    """(name, tensor) of every parameter, offloaded ones loaded one module at a time (the tensor is None for a
    ``meta`` parameter that nothing can load)."""
    align_module_device = has_offloaded_params = None
    if any(hasattr(m, "_hf_hook") for m in model.modules()):  # dispatched by accelerate
        try:
            from accelerate.utils import align_module_device, has_offloaded_params
        except ImportError:
            pass
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        if has_offloaded_params is not None and any(p.device.type == "meta" for _, p in own) \
                and has_offloaded_params(module):
            with align_module_device(module):
                for n, _ in own:
                    yield f"{prefix}.{n}" if prefix else n, getattr(module, n)
            continue
        for n, p in own:
            yield f"{prefix}.{n}" if prefix else n, None if p.device.type == "meta" else p


class _Reload:
    """What autograd keeps of an offloaded module's weight (or a view of it) instead of the tensor."""

    def __init__(self, module: nn.Module, name: str, weight: torch.Tensor, t: torch.Tensor):
        self.module, self.name, self.size, self.stride, self.device = module, name, t.size(), t.stride(), t.device
        self.offset = t.storage_offset() - weight.storage_offset()  # t is a view of the (contiguous) weight

    def load(self) -> torch.Tensor:
        with _onloaded(self.module, self.device, self.name):
            w = getattr(self.module, self.name).detach().contiguous()
        return w.as_strided(self.size, self.stride, w.storage_offset() + self.offset)


@contextlib.contextmanager
def offloaded_weights_reloaded(model: nn.Module):
    """While active, autograd keeps no weight of a module that accelerate offloads (to the CPU or disk): it keeps
    a note and loads the weight again when the backward pass needs it, so that a forward pass holds one offloaded
    module's weights at a time, not all of them until the backward. Without offloaded modules: nothing."""
    if not any(hasattr(m, "_hf_hook") for m in model.modules()):  # not dispatched: spare importing accelerate
        yield
        return
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:
        yield
        return
    offloaded = [m for m in model.modules() if has_offloaded_params(m)]
    if not offloaded:
        yield
        return
    running: list = []  # the offloaded modules whose forward is running (innermost last)

    def enter(module, args):
        running.append(module)

    def leave(module, args, out):
        running.pop()

    def pack(t: torch.Tensor):
        if running and t.layout == torch.strided and t.device.type != "meta":
            module = running[-1]
            for name, p in module.named_parameters(recurse=False):
                if p.device == t.device and p.dtype == t.dtype and p.is_contiguous() and \
                        p.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                    return _Reload(module, name, p, t)
        return t

    def unpack(x):
        return x.load() if isinstance(x, _Reload) else x

    handles = [h for m in offloaded for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
