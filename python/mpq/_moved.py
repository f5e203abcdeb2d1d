"""Import paths of mpq 0.1's flat layout, kept for one release: ``import mpq.plan`` (and the others below) gives
the module's new home and warns once. Nothing inside mpq imports an old path."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module (relative to mpq) -> where it lives now
MOVED = {
    "_artifact_io": "artifacts.io",
    "sensitivity_table": "artifacts.sensitivity_table",
    "gain_table": "artifacts.gain_table",
    "plan": "artifacts.plan",
    "calib_kernel": "calibration.kernel",
    "sensitivity_ref": "reference",
    "backends": "profiling.backends",
    "mckp": "selection.solvers.dispatch",
    "mckp_highs": "selection.solvers.highs",
    "mckp_gurobi": "selection.solvers.gurobi",
    "mckp_verify": "selection.solvers.verify",
    "native": "application.native_cpu",
    "exporters": "application.exporters",
    "pipeline": "demo_run",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        prefix = self.package + "."
        if not fullname.startswith(prefix):
            return None
        rest = fullname[len(prefix):]
        head = rest.split(".", 1)[0]
        if head not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        rest = spec.name[len(self.package) + 1:]
        head, _, tail = rest.partition(".")
        new = f"{self.package}.{MOVED[head]}" + (f".{tail}" if tail else "")
        if not tail:
            warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                          DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the new module is already executed


def install(package: str) -> None:
    if not any(isinstance(f, _Alias) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_Alias(package))
