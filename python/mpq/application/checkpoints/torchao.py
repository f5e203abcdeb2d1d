"""A torchao checkpoint: a copy of the model quantized by torchao's ``quantize_`` with the config that
``exporters.torchao_config`` exports (an ``FqnToConfig`` naming each planned layer), saved by transformers'
``save_pretrained`` with that config as its ``TorchAoConfig``, so that ``from_pretrained`` rebuilds torchao's
quantized tensors. torchao picks its own scales (its int8 per-row and int4 per-group quantizers), which are close
relatives of mpq's, not the identical ones (``exporters`` says how). A layer torchao cannot quantize on this
machine (its FP8 needs a CUDA GPU of compute capability >= 8.9; its int4 needs the mslk kernels) is an error,
and so is a layer ``quantize_`` leaves untouched: nothing is written."""
from __future__ import annotations

from torch import nn

from ...artifacts.plan import Plan
from ...candidates import Candidate
from ...models import copy_sharing_tensors
from ..exporters import TORCHAO_CONFIGS, torchao_config

FORMAT = "torchao"


def unsupported(c: Candidate) -> str:
    if c.name in TORCHAO_CONFIGS:
        return ""
    return f"torchao export runs {sorted(TORCHAO_CONFIGS)} only"


def write(model: nn.Module, plan: Plan, layers: dict[str, Candidate], folder: str) -> None:
    from torchao.quantization import quantize_
    from torchao.utils import TorchAOBaseTensor
    from transformers import TorchAoConfig
    from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

    by_cand: dict[str, list[str]] = {}
    for n, c in layers.items():
        by_cand.setdefault(c.name, []).append(n)
    qmodel = copy_sharing_tensors(model)  # the library swaps in new tensors: no second copy of the weights
    for cname, names in by_cand.items():  # one candidate at a time, so that a failure names its candidate
        try:
            quantize_(qmodel, _config({n: cname for n in names}), filter_fn=None)
        except (RuntimeError, AssertionError, ImportError, NotImplementedError, ValueError) as e:
            raise ValueError(f"torchao cannot quantize {len(names)} layer(s) to {cname} on this machine (e.g. "
                             f"{names[0]}): {type(e).__name__}: {e}; nothing written") from None
    config = _config({n: c.name for n, c in layers.items()})
    modules = dict(qmodel.named_modules())
    untouched = [n for n in layers if not isinstance(modules[n].weight, TorchAOBaseTensor)]
    if untouched:
        raise ValueError(f"torchao's quantize_ left layer(s) {untouched[:5]} unquantized; nothing written")
    quant = TorchAoConfig(quant_type=config)  # the whole plan's FqnToConfig, as the export writes it
    qmodel.config.quantization_config = quant
    qmodel.hf_quantizer = TorchAoHfQuantizer(quant)  # what from_pretrained sets: save_pretrained serializes by it
    qmodel.save_pretrained(folder)


def _config(mapping: dict[str, str]):
    from torchao.core.config import config_from_dict
    return config_from_dict(torchao_config(Plan(mapping, float("nan"), float("nan"))))
