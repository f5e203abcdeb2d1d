"""The files that flow between the pipeline's steps: SensitivityTable (calibrate), GainTable (profile) and Plan
(select), each saved and loaded through one versioned, atomic writer and reader (``io``)."""
from .gain_table import GainTable, SubgraphGains
from .plan import Plan
from .quantized_weights import QuantizedWeight, QuantizedWeights
from .sensitivity_table import SensitivityTable

__all__ = ["GainTable", "Plan", "QuantizedWeight", "QuantizedWeights", "SensitivityTable", "SubgraphGains"]
