"""What every pipeline step does to a model, in one place, so no step imports another step's private helpers:
the batch and example-input conventions, moving batches to a device, running a Hugging Face model, swapping a
module in place, and copying a model while sharing its tensors."""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn


def model_inputs(batch):
    """(args, kwargs) to call the model with: dict → its entries except ``labels``; tuple/list → its first item
    (the rest are targets for ``loss_fn``); tensor → itself."""
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("an empty tuple is not a batch")
        return (batch[0],), {}
    return (batch,), {}


def batch_size(batch) -> int:
    if isinstance(batch, Mapping):
        first = batch.get("input_ids", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    elif isinstance(batch, (tuple, list)):
        first = batch[0] if batch else None
    else:
        first = batch
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise ValueError(f"cannot tell the number of samples of a batch of type {type(batch).__name__}")
    if first.shape[0] == 0:
        raise ValueError(f"a batch holds no sample (its first tensor has shape {tuple(first.shape)})")
    return int(first.shape[0])


def to_device(batch, device, float_dtype=None):
    """Every tensor of ``batch`` (nested in mappings, tuples and lists) on ``device``; floating ones also cast to
    ``float_dtype`` when given."""
    if isinstance(batch, torch.Tensor):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device, float_dtype)
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, float_dtype) for v in batch)
    return batch


def padding_mask(batch):
    """The batch's attention mask when it marks padded tokens, else None (every token counts)."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return None if mask is None or bool(mask.all()) else mask


def unpadded(x: torch.Tensor, mask) -> torch.Tensor:
    """A layer input [B, S, ...] at its non-padded tokens ([n, ...]); ``x`` itself without a mask or when its
    leading dimensions are not the mask's (a layer that does not see tokens)."""
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x


def split_example(example_input) -> tuple[tuple, dict]:
    """An example input as (args, kwargs): a tensor, a tuple/list of positional args, or a dict of keyword args."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    raise ValueError(f"example_input must be a tensor, a tuple of args or a dict of kwargs, "
                     f"got {type(example_input).__name__}")


def is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and type(model).__module__.startswith("transformers")


def hf_kwargs(model: nn.Module, kwargs: dict) -> dict:
    if is_hf(model) and "use_cache" not in kwargs:
        kwargs = dict(kwargs, use_cache=False)
    return kwargs


def run_example(model: nn.Module, example_input):
    """Runs the example through the model (no grad); a failure becomes a ValueError that says so."""
    args, kwargs = split_example(example_input)
    kwargs = hf_kwargs(model, kwargs)
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure means a bad example input
        raise ValueError(f"the example input does not run through the model: {type(e).__name__}: {e}") from e


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are new tensor objects over the same memory as
    ``model``'s: ``.to()``, ``.eval()`` or swapping a submodule on the copy leave ``model`` alone, an in-place write
    to a shared weight shows in both. Tied weights stay tied."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(model, memo)


def prepare_bf16_on(device: str, model, example_input):
    """A bf16 copy of ``model`` on ``device`` and the example input moved there (floating tensors in bf16):
    the accelerator backends' common starting point. The copy shares the tensors that are already bf16 on
    ``device`` (``copy_sharing_tensors``), and never holds a second host copy of the others."""
    dev = torch.device(device)
    work = copy_sharing_tensors(model).to(dev, torch.bfloat16).eval()
    return work, to_device(example_input, dev, torch.bfloat16)
