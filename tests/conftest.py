import contextlib

import pytest

from mpq import _core


@pytest.fixture
def force_isa():
    """Runs a block with the kernels forced to one SIMD level, restoring the best one afterwards."""

    @contextlib.contextmanager
    def use(name):
        _core._set_isa(name)
        try:
            yield
        finally:
            _core._set_isa(_core.available_isas()[-1])

    return use
