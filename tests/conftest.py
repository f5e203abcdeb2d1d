import contextlib

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny ops
    with two threads on a busy 2-core box wait for scheduler quanta."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
