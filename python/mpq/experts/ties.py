"""How the expert entries of a partition choose: tied per experts module (default) or free per expert GEMM.

"tied": the 2·E GEMMs of one experts module take one candidate. Serving engines hold a layer's experts as fused
tensors (vLLM's FusedMoE: w13 [E, 2I, H] and w2 [E, H, I]) that one quantization method loads and one fused
kernel runs, so a plan that gives experts of one layer different formats could not be served there.
"per_expert": every expert GEMM chooses alone (for runtimes that run experts as separate GEMMs, and to study
sensitivity); the ties the partition found by shared input (all experts' up GEMMs read the same tokens when
traced densely) are dropped for expert entries, since each expert really reads only its own tokens.
"""
from __future__ import annotations

EXPERT_CHOICES = ("tied", "per_expert")


def expert_ties(layers, ties, entries_of: dict[str, list[str]], experts: str) -> list[list[str]]:
    """The tie groups of one sub-graph (``layers``, ``ties``) with the expert ties of ``experts`` ("tied" |
    "per_expert"); entries_of: {experts module: its entry names}. The entries of one module must lie in one
    sub-graph (a routed module is one segment). Groups that share a layer are joined by the caller."""
    if experts not in EXPERT_CHOICES:
        raise ValueError(f"experts must be one of {EXPERT_CHOICES}, got {experts!r}")
    owner = {n: m for m, names in entries_of.items() for n in names}
    groups = [[l for l in g if l not in owner] for g in ties]  # expert entries leave same-input ties
    groups = [g for g in groups if len(g) > 1]
    if experts == "tied":
        for m, names in entries_of.items():
            inside = [n for n in names if n in layers]
            if inside and len(inside) != len(names):
                raise ValueError(f"partition: the experts of {m} lie in several sub-graphs; they cannot be tied "
                                 f"(pass experts='per_expert')")
            if len(inside) > 1:
                groups.append(inside)
    return groups
