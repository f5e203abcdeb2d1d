"""Which modules of a model are MoE experts, and whether mpq knows their layout.

Known layout (``stacked_layout``): the experts classes of transformers 5 that ``use_experts_implementation``
decorates (Qwen2/3-MoE, Mixtral, OLMoE, DeepSeek-V2/V3, GPT-OSS, ...). Every one of them is called as
``experts(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``, since transformers' experts interface
(``integrations/moe.py``: eager, batched_mm, grouped_mm) runs any of them through the same functions, and the
decorator records the layout on the instance: ``has_gate`` (``gate_up_proj`` holds gate and up, else ``up_proj``
alone), ``is_transposed`` ([E, in, out] instead of [E, out, in]), ``has_bias`` (``…_proj_bias`` [E, out]),
``has_post_expert_norm``; the gate itself is the module's own ``_apply_gate`` (concatenated or interleaved halves,
clamps). A module is taken only when all of that is present, its parameters are exactly those and their shapes
agree; expert parallelism (``_is_expert_parallel``) is refused.

Unknown layout (``expert_like``): a module whose name or class says "expert" and that holds parameters of 3 or
more dimensions, not of a known layout (JetMoE's ``JetMoeParallelExperts``, remote-code models). It is listed as
not covered, with the reason; its forward is never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn


@dataclass(frozen=True)
class StackedLayout:
    """How one stacked-experts module stores its E experts' two GEMMs."""

    num_experts: int
    up_name: str          # "gate_up_proj" (gate and up in one GEMM) or "up_proj"
    has_gate: bool
    transposed: bool      # weights [E, in, out]
    has_bias: bool
    post_norm: bool

    @property
    def gemms(self) -> tuple[str, str]:
        return (self.up_name, "down_proj")


_FLAGS = ("has_gate", "has_bias", "is_transposed", "has_post_expert_norm", "_is_expert_parallel")


def stacked_layout(module: nn.Module) -> tuple[Optional[StackedLayout], str]:
    """(layout, "") for a stacked-experts module mpq knows, else (None, why not)."""
    missing = [f for f in _FLAGS + ("num_experts", "_apply_gate") if not hasattr(module, f)]
    if missing:
        return None, "not a transformers experts class (lacks the layout use_experts_implementation records)"
    if module._is_expert_parallel:
        return None, "expert-parallel experts (only this rank's experts are here)"
    up = "gate_up_proj" if module.has_gate else "up_proj"
    names = [up, "down_proj"]
    if module.has_bias:
        names += [f"{up}_bias", "down_proj_bias"]
    params = dict(module.named_parameters(recurse=False))
    if sorted(params) != sorted(names):
        return None, f"parameters {sorted(params)}, expected {sorted(names)}"
    if any(p.device.type == "meta" for p in params.values()):
        return None, "its weights are on the meta device (offloaded): nothing to read"
    E = module.num_experts
    wu, wd = params[up], params["down_proj"]
    if wu.dim() != 3 or wd.dim() != 3 or wu.shape[0] != E or wd.shape[0] != E:
        return None, f"{up} {tuple(wu.shape)} and down_proj {tuple(wd.shape)} are not [{E}, ·, ·]"
    # [E, out, in] (transposed: [E, in, out]); up: H -> U, down: I -> H, U = 2I with a gate
    (u_out, u_in), (d_out, d_in) = ((wu.shape[2], wu.shape[1]), (wd.shape[2], wd.shape[1])) if \
        module.is_transposed else ((wu.shape[1], wu.shape[2]), (wd.shape[1], wd.shape[2]))
    inter = u_out // 2 if module.has_gate else u_out
    if d_out != u_in or d_in != inter or (module.has_gate and u_out % 2):
        return None, f"{up} {tuple(wu.shape)} and down_proj {tuple(wd.shape)} do not chain (H -> U -> H)"
    if module.has_bias:
        bu, bd = params[f"{up}_bias"], params["down_proj_bias"]
        if tuple(bu.shape) != (E, u_out) or tuple(bd.shape) != (E, d_out):
            return None, f"biases {tuple(bu.shape)}, {tuple(bd.shape)} are not [E, out]"
    if module.has_post_expert_norm and not isinstance(getattr(module, "post_expert_norm", None), nn.Module):
        return None, "has_post_expert_norm without a post_expert_norm module"
    if not module.has_gate and not callable(getattr(module, "act_fn", None)):
        return None, "no act_fn"
    return StackedLayout(E, up, bool(module.has_gate), bool(module.is_transposed), bool(module.has_bias),
                         bool(module.has_post_expert_norm)), ""


def expert_like(name: str, module: nn.Module) -> bool:
    """A module that says it holds experts and stores ≥ 3-D parameters itself (not a Linear list)."""
    said = "expert" in name.rpartition(".")[2].lower() or "expert" in type(module).__name__.lower()
    return said and any(p.dim() >= 3 for p in module.parameters(recurse=False))


def linear_expert_lists(model) -> list[str]:
    """Names of the ``nn.Linear`` modules inside per-expert lists: under an ``nn.ModuleList`` / ``nn.ModuleDict``
    whose name or class says "expert" (SwitchTransformers' and NLLB-MoE's ``…Experts``, remote-code models'
    ``experts = ModuleList([MLP, ...])``). Such a Linear is called on the rows of the tokens routed to it, in an
    order only the model's code knows, so calibrate gives each sample its own forward pass (rows of one sample)."""
    lists = [n for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.ModuleDict))
             and ("expert" in n.rpartition(".")[2].lower() or "expert" in type(m).__name__.lower())]
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and any(n.startswith(p + ".") for p in lists)]
