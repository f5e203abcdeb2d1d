"""Candidates: what one layer can run in, as a (weight format, activation format) pair with its granularity and
scale rule. The same definitions drive calibration (the quantization error the sensitivity measures), the fake
and native models of ``mpq.apply``, the timing backends and the exporters, so what is measured is what ships.

``BASE`` ("base") means the layer keeps the model's own precision; it is every layer's implicit zero-cost choice
and is not listed among a calibration's candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from . import _core

if TYPE_CHECKING:  # torch loads only when a tensor is quantized: `mpq select` on saved tables stays fast
    import torch

FORMATS = tuple(_core.format_names())

BASE = "base"
# the layer kinds a candidate can apply to (``Candidate.kinds``; ``mpq.attention`` makes the last two hookable)
KINDS = ("linear", "matmul", "kv_cache")
ALGORITHMS = ("rtn", "gptq", "awq", "ortn", "smoothquant")


@dataclass(frozen=True)
class Candidate:
    """How a layer runs: a Linear y = x Wᵀ, or (``kinds``) attention's activation matmuls and its KV cache.

    weight_format / act_format: element formats (``mpq.FORMATS``); ``act_format=None`` is weight-only
    (activations stay in the model's precision).
    weight_granularity: "tensor", "channel" (one scale per output row) or "group" (``group_size`` consecutive
    inputs per scale).
    act_granularity: "tensor" (one scale for the whole activation) or "token" (one scale per row).
    act_static: True when the activation scale is calibrated once on the calibration data (then per tensor);
    False when computed on the fly per call (dynamic).
    algorithm: how the weight's integers are chosen. "rtn": round to nearest, a function of W alone
    (``quantize_weight``). "gptq" (error-compensating rounding), "awq" (activation-aware per-input-channel
    scaling), "ortn" (optimized round-to-nearest: the full signed range, each group's scale searched to its least
    output error; int4 groups), "smoothquant" (activation outliers migrated into the weights, W8A8 only): computed
    once in calibration from the layer's inputs (``mpq.quantizers``) and held in a ``QuantizedWeights`` store, which
    calibration's δ, ``mpq.apply`` (fake and native) and checkpoints all read, so every step runs the same integers.
    kinds: the layer kinds it applies to (``KINDS``): "linear" (``nn.Linear``), "matmul" (attention's
    Q·Kᵀ and P·V, ``…matmul_qk`` / ``…matmul_av``: both inputs are activations, quantized with ``act_format``; no
    weight, ``weight_format=None``) or "kv_cache" (K and V as they enter the cache, ``…k_cache`` / ``…v_cache``).
    Attention candidates are their own names (``mm_*``, ``kv_*``), not the Linear ones applied to new layers: the
    same name would mean different scales (a Linear's ``fp8`` quantizes activations per token, which a matmul's
    contraction cannot use), and a plan or an export must say exactly what runs. For a matmul, dynamic per-tensor
    scales are per sample (a batch-1 request's). For a KV cache, "token" is one dynamic scale per (token, head)
    vector of head_dim values and "head" one static scale per K/V head: both, like per-tensor static, quantize a
    token once as it enters the cache and give the same values when the cache is quantized again.
    points: multipoint quantization (``mpq.quantizers.multipoint``): the weight is the sum of ``points`` greedy
    residual points on the candidate's grid (1: plain round-to-nearest); weight-only int4/int8, a function of W.
    """

    name: str
    weight_format: Optional[str]
    weight_granularity: str = "channel"
    group_size: Optional[int] = None
    act_format: Optional[str] = None
    act_granularity: str = "token"
    act_static: bool = False
    description: str = ""
    algorithm: str = "rtn"
    kinds: tuple = ("linear",)
    points: int = 1

    def __post_init__(self):
        object.__setattr__(self, "kinds", (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds))
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"candidate {self.name!r}: kinds must be some of {', '.join(KINDS)}, got {self.kinds}")
        if ("linear" in self.kinds) == (self.weight_format is None):
            raise ValueError(f"candidate {self.name!r}: a weight_format goes with (and only with) Linear layers")
        if "linear" not in self.kinds:
            self._check_attention()
        for fmt in (self.weight_format, self.act_format):
            if fmt is not None and fmt not in FORMATS:
                raise ValueError(f"candidate {self.name!r}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        if self.weight_granularity not in ("tensor", "channel", "group"):
            raise ValueError(f"candidate {self.name!r}: weight_granularity must be tensor, channel or group")
        if (self.weight_granularity == "group") != (self.group_size is not None):
            raise ValueError(f"candidate {self.name!r}: group_size goes with weight_granularity='group' only")
        if self.act_granularity not in ("tensor", "token", "head"):
            raise ValueError(f"candidate {self.name!r}: act_granularity must be tensor, token or head")
        if self.act_granularity == "head" and not (self.kinds == ("kv_cache",) and self.act_static):
            raise ValueError(f"candidate {self.name!r}: per-head scales are static KV cache scales")
        if self.act_static and self.act_granularity == "token":
            raise ValueError(f"candidate {self.name!r}: static activation scales are per tensor (or per head)")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"candidate {self.name!r}: algorithm must be one of {', '.join(ALGORITHMS)}")
        if not isinstance(self.points, int) or isinstance(self.points, bool) or not 1 <= self.points <= 3:
            raise ValueError(f"candidate {self.name!r}: points must be 1, 2 or 3")
        if self.points > 1 and (self.algorithm != "rtn" or self.act_format is not None or
                                self.weight_format not in ("int4", "int8") or self.weight_granularity == "tensor"):
            raise ValueError(f"candidate {self.name!r}: multipoint is for round-to-nearest weight-only int4/int8 "
                             "weights per channel or group")
        if self.algorithm != "rtn":
            if self.weight_format not in ("int8", "int4") or self.weight_granularity == "tensor":
                raise ValueError(f"candidate {self.name!r}: {self.algorithm} quantizes int8/int4 weights per "
                                 "channel or group")
            if (self.algorithm == "smoothquant") != (self.act_format is not None):
                raise ValueError(f"candidate {self.name!r}: smoothquant is for W8A8 candidates (activations "
                                 "quantized); gptq, awq and ortn for weight-only ones")
            if self.algorithm == "ortn" and self.weight_granularity != "group":
                raise ValueError(f"candidate {self.name!r}: ortn searches a scale per group (a row's search would "
                                 "need its whole in x in block of H)")

    def _check_attention(self):
        what = f"candidate {self.name!r}"
        if len(self.kinds) != 1:
            raise ValueError(f"{what}: an attention candidate is for matmul or for kv_cache layers, not both")
        if self.act_format is None or self.algorithm != "rtn":
            raise ValueError(f"{what}: attention candidates quantize their activations by round-to-nearest")
        if self.kinds == ("matmul",) and self.act_granularity != "tensor":
            raise ValueError(f"{what}: a matmul's inputs are quantized per tensor (static or dynamic)")
        if self.kinds == ("kv_cache",) and self.act_granularity == "tensor" and not self.act_static:
            raise ValueError(f"{what}: a dynamic per-tensor KV cache scale would change with every token")

    def applies_to_kind(self, kind: str) -> bool:
        """Whether this candidate can quantize a layer of this kind (``mpq.attention.layer_kind``)."""
        return kind in self.kinds

    @property
    def calibrated_weight(self) -> bool:
        """Whether the quantized weight depends on calibration data (not RTN): it lives in a QuantizedWeights store."""
        return self.algorithm != "rtn"
    @property
    def weight_only(self) -> bool:
        return self.act_format is None

    @property
    def weight_bits(self) -> int:
        if self.weight_format is None:
            raise ValueError(f"candidate {self.name!r} is for {self.kinds[0]} layers, which have no weight")
        return _core.format_info(self.weight_format)["bits"]

    def applies_to(self, weight: torch.Tensor) -> bool:
        """Whether this candidate can quantize a Linear weight of this shape (group size divides in_features)."""
        return self.group_size is None or weight.shape[-1] % self.group_size == 0

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        """Q(W) for a Linear weight [out, in] by round-to-nearest (for a calibrated-weight candidate, the RTN
        grid its algorithm starts from; its deployed weight is in the QuantizedWeights store)."""
        from .formats import fake_quantize
        if self.points > 1:
            from .quantizers.multipoint import multipoint_weight
            return multipoint_weight(w, self.weight_format, self.group_size, self.points)
        if self.weight_granularity == "tensor":
            return fake_quantize(w, self.weight_format)
        if self.weight_granularity == "channel":
            return fake_quantize(w, self.weight_format, axis=0)
        return fake_quantize(w, self.weight_format, group_size=self.group_size)

    def quantize_act(self, x: torch.Tensor, static_scale: Optional[float] = None) -> torch.Tensor:
        """Q(X) for a Linear input [..., in]; identity for weight-only candidates. Static candidates need the
        calibrated ``static_scale``."""
        if self.act_format is None:
            return x
        from .formats import fake_quantize
        if self.act_static:
            if static_scale is None:
                raise ValueError(f"candidate {self.name!r} has static activation scales: pass static_scale")
            return fake_quantize(x, self.act_format, scale=static_scale)
        if self.act_granularity == "tensor":
            return fake_quantize(x, self.act_format)
        flat = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        return fake_quantize(flat, self.act_format, axis=0).reshape(x.shape)


_BUILTIN = [
    Candidate("fp8", "fp8_e4m3", "channel", act_format="fp8_e4m3", act_granularity="token",
              description="FP8 E4M3 (OCP): weights per channel, activations per token, dynamic"),
    Candidate("fp8_static", "fp8_e4m3", "tensor", act_format="fp8_e4m3", act_granularity="tensor",
              act_static=True, description="FP8 E4M3 (OCP): per-tensor weight and static activation scales"),
    Candidate("fp8_gaudi2", "fp8_e4m3_gaudi2", "tensor", act_format="fp8_e4m3_gaudi2", act_granularity="tensor",
              act_static=True, description="FP8 E4M3 Gaudi-2 (max 240), per-tensor hardware scales, static"),
    Candidate("fp8_e5m2", "fp8_e5m2", "channel", act_format="fp8_e5m2", act_granularity="token",
              description="FP8 E5M2: weights per channel, activations per token, dynamic"),
    Candidate("int8", "int8", "channel", act_format="int8", act_granularity="token",
              description="INT8 W8A8 symmetric: weights per channel, activations per token, dynamic"),
    Candidate("int8_static", "int8", "channel", act_format="int8", act_granularity="tensor", act_static=True,
              description="INT8 W8A8 symmetric: weights per channel, static per-tensor activations"),
    Candidate("bf16", "bf16", "tensor", act_format="bf16", act_granularity="tensor",
              description="bfloat16 weights and activations"),
    Candidate("fp16", "fp16", "tensor", act_format="fp16", act_granularity="tensor",
              description="float16 weights and activations"),
    Candidate("w8a16", "int8", "channel", description="INT8 weight-only, per channel"),
    Candidate("w4a16", "int4", "group", group_size=32, description="INT4 weight-only, symmetric, groups of 32"),
    Candidate("w4a16_g128", "int4", "group", group_size=128,
              description="INT4 weight-only, symmetric, groups of 128"),
    Candidate("w4a16_g64", "int4", "group", group_size=64, description="INT4 weight-only, symmetric, groups of 64"),
]
# calibrated-weight variants (mpq.quantizers): same formats and kernels, integers chosen from calibration inputs
for _base, _what in (("w8a16", "INT8 weight-only per channel"), ("w4a16_g128", "INT4 weight-only, groups of 128"),
                     ("w4a16_g64", "INT4 weight-only, groups of 64")):
    _b = next(c for c in _BUILTIN if c.name == _base)
    _BUILTIN.append(Candidate(f"{_base}_gptq", _b.weight_format, _b.weight_granularity, _b.group_size,
                              description=f"{_what}, GPTQ error-compensating rounding", algorithm="gptq"))
    _BUILTIN.append(Candidate(f"{_base}_awq", _b.weight_format, _b.weight_granularity, _b.group_size,
                              description=f"{_what}, AWQ activation-aware input-channel scaling", algorithm="awq"))
    if _b.group_size:
        _BUILTIN.append(Candidate(f"{_base}_ortn", _b.weight_format, _b.weight_granularity, _b.group_size,
                                  description=f"{_what}, optimized RTN (full signed range, searched scales)",
                                  algorithm="ortn"))
del _base, _what, _b
_BUILTIN += [
    Candidate("int8_sq", "int8", "channel", act_format="int8", act_granularity="token", algorithm="smoothquant",
              description="INT8 W8A8 dynamic per token, SmoothQuant (alpha 0.5) per-input-channel migration"),
    Candidate("int8_static_sq", "int8", "channel", act_format="int8", act_granularity="tensor", act_static=True,
              algorithm="smoothquant",
              description="INT8 W8A8 static per-tensor activations, SmoothQuant (alpha 0.5) migration"),
]

# attention (mpq.attention): the matmuls Q·Kᵀ and P·V (both inputs per tensor) and the KV cache
_BUILTIN += [
    Candidate("mm_fp8", None, act_format="fp8_e4m3", act_granularity="tensor", kinds=("matmul",),
              description="attention matmul, FP8 E4M3 (OCP) inputs, dynamic per-tensor (per sample) scales"),
    Candidate("mm_fp8_static", None, act_format="fp8_e4m3", act_granularity="tensor", act_static=True,
              kinds=("matmul",), description="attention matmul, FP8 E4M3 (OCP) inputs, static per-tensor scales"),
    Candidate("mm_fp8_gaudi2", None, act_format="fp8_e4m3_gaudi2", act_granularity="tensor", act_static=True,
              kinds=("matmul",), description="attention matmul, FP8 E4M3 Gaudi-2 (max 240), static hardware scales"),
    Candidate("mm_int8", None, act_format="int8", act_granularity="tensor", kinds=("matmul",),
              description="attention matmul, INT8 symmetric inputs, dynamic per-tensor (per sample) scales"),
    Candidate("mm_int8_static", None, act_format="int8", act_granularity="tensor", act_static=True,
              kinds=("matmul",), description="attention matmul, INT8 symmetric inputs, static per-tensor scales"),
    Candidate("kv_fp8", None, act_format="fp8_e4m3", act_granularity="tensor", act_static=True,
              kinds=("kv_cache",), description="KV cache FP8 E4M3 (OCP), one static scale per tensor"),
    Candidate("kv_fp8_gaudi2", None, act_format="fp8_e4m3_gaudi2", act_granularity="tensor", act_static=True,
              kinds=("kv_cache",), description="KV cache FP8 E4M3 Gaudi-2 (max 240), one static hardware scale per "
              "tensor (INC's KVCache)"),
    Candidate("kv_fp8_head", None, act_format="fp8_e4m3", act_granularity="head", act_static=True,
              kinds=("kv_cache",), description="KV cache FP8 E4M3 (OCP), one static scale per K/V head"),
    Candidate("kv_fp8_token", None, act_format="fp8_e4m3", act_granularity="token", kinds=("kv_cache",),
              description="KV cache FP8 E4M3 (OCP), dynamic scale per token and head"),
    Candidate("kv_int8_head", None, act_format="int8", act_granularity="head", act_static=True,
              kinds=("kv_cache",), description="KV cache INT8 symmetric, one static scale per K/V head"),
    Candidate("kv_int8_token", None, act_format="int8", act_granularity="token", kinds=("kv_cache",),
              description="KV cache INT8 symmetric, dynamic scale per token and head"),
]
ATTENTION_CANDIDATES = tuple(c.name for c in _BUILTIN if "linear" not in c.kinds)
# multipoint variants: k greedy residual points of the same grid (k = 1 is the candidate itself)
for _base in ("w8a16", "w4a16_g128", "w4a16_g64"):
    _b = next(c for c in _BUILTIN if c.name == _base)
    for _k in (2, 3):
        _BUILTIN.append(Candidate(f"{_base}_mp{_k}", _b.weight_format, _b.weight_granularity, _b.group_size,
                                  description=f"{_b.description}, {_k} greedy residual points (multipoint)",
                                  points=_k))
del _base, _b, _k

CANDIDATES: dict[str, Candidate] = {c.name: c for c in _BUILTIN}


def get_candidate(name) -> Candidate:
    """A candidate by name (or the Candidate itself). @raises ValueError listing the known names."""
    if isinstance(name, Candidate):
        return name
    if name == BASE:
        raise ValueError(f"{BASE!r} is every layer's implicit high-precision choice, not a candidate to calibrate")
    try:
        return CANDIDATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown candidate {name!r}; known candidates: {', '.join(CANDIDATES)}") from None


def get_candidates(names: Iterable) -> tuple[Candidate, ...]:
    """Candidates by name, checked, in the given order, without duplicates."""
    if isinstance(names, (str, Candidate)):
        names = [names]
    result = tuple(get_candidate(n) for n in names)
    if not result:
        raise ValueError("no candidate given")
    seen = [c.name for c in result]
    if len(set(seen)) != len(seen):
        raise ValueError(f"duplicate candidates in {seen}")
    return result
