"""The files that flow between the pipeline's steps: SensitivityTable (calibrate), GainTable (profile) and Plan
(select), and below the layer ChannelTable and ChannelPlan, each saved and loaded through one versioned, atomic
writer and reader (``io``)."""
from .channel_plan import ChannelPlan
from .channel_table import ChannelTable
from .gain_table import GainTable, SubgraphGains
from .plan import Plan
from .quantized_weights import QuantizedWeight, QuantizedWeights
from .sensitivity_table import SensitivityTable

__all__ = ["ChannelPlan", "ChannelTable", "GainTable", "Plan", "QuantizedWeight", "QuantizedWeights",
           "SensitivityTable", "SubgraphGains"]
