"""The ``mpq`` command line: one subcommand per pipeline step. Each submodule of ``mpq.cli`` defines
``register(subparsers)``, whose parser sets ``func`` to a callable taking the parsed namespace and returning the
exit code."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Optional, Sequence


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe must fail here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader left (`mpq select --pareto 50 | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout again at exit
        return 141  # 128 + SIGPIPE, what the shell reports for a tool the pipe stopped
    except (ValueError, FileNotFoundError, ImportError) as e:  # user errors: one line, no traceback
        print(f"mpq {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
