"""MoE experts as quantizable layers: which expert modules mpq knows (``layouts``), and the routed forward that runs
a stacked-experts module as one Linear pair per expert while mpq calibrates, partitions, profiles or applies
(``routed``). Names: ``<experts module>.<e>.gate_up_proj`` / ``.down_proj``; by default the 2·E entries of one
experts module are tied to one choice (``partition(experts="tied")``), since serving engines hold the experts of
a layer as one fused tensor per GEMM with one quantization scheme."""
from .layouts import StackedLayout, stacked_layout
from .routed import ExpertGemms, RoutedExperts, find_experts, routed_experts, routed_modules

__all__ = ["ExpertGemms", "RoutedExperts", "StackedLayout", "find_experts", "routed_experts", "routed_modules",
           "stacked_layout"]
