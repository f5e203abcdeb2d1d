"""Multipoint quantization (quantizers.multipoint) and its CPU Linear (application.multipoint_linear): one point
is the candidate's round-to-nearest, the error bound and decay per point, the δ identity calibration relies on,
and both layouts against x·(Σ a_p q_p)ᵀ within the weight-only kernels' rounding."""
import pytest
import torch
from torch import nn

from mpq.application import cpu_kernels
from mpq.application.multipoint_linear import MultipointLinear
from mpq.candidates import CANDIDATES
from mpq.formats import fake_quantize
from mpq.quantizers.multipoint import multipoint, multipoint_weight, residual


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("fmt,group,cand", [("int4", 128, "w4a16_g128"), ("int4", 64, "w4a16_g64"),
                                             ("int8", None, "w8a16")])
def test_one_point_is_the_candidates_rounding(fmt, group, cand):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(multipoint_weight(w, fmt, group, 1), CANDIDATES[cand].quantize_weight(w))


@pytest.mark.parametrize("fmt,group,qmax", [("int4", 128, 7), ("int8", None, 127)])
def test_each_point_divides_the_residual_by_twice_qmax(fmt, group, qmax):
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    errs = []
    prev = w
    for k in (1, 2, 3):
        r = residual(w, fmt, group, k)
        eps = 2 ** -21 * float(w.abs().max())  # float32 sums in another order
        torch.testing.assert_close(r, w - multipoint_weight(w, fmt, group, k), rtol=0, atol=eps)
        blocks = (lambda t: t.reshape(32, -1, group)) if group else (lambda t: t.unsqueeze(1))
        bound = blocks(prev).abs().amax(-1, keepdim=True) / (2 * qmax)
        assert bool((blocks(r).abs() <= bound * (1 + 1e-5) + 1e-12).all())
        errs.append(float(r.norm()))
        prev = r
    assert errs[0] > errs[1] > errs[2]


def test_delta_of_k_points_is_the_kernel_on_the_residual():
    """Q_k(W) − W = Q(r_{k−1}) − r_{k−1}: what lets the fused kernel compute a k-point candidate's δ."""
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(2))
    for k in (2, 3):
        r = residual(w, "int4", 128, k - 1)
        lhs = multipoint_weight(w, "int4", 128, k) - w
        rhs = fake_quantize(r, "int4", group_size=128) - r
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt,group", [("int4", 128), ("int8", None)])
@pytest.mark.parametrize("layout", ["stacked", "points"])
@pytest.mark.parametrize("m", [1, 7, 32])
def test_multipoint_linear_matches_the_sum_of_points(fmt, group, layout, m):
    cand = "w4a16_g128" if fmt == "int4" else "w8a16"
    if not cpu_kernels.admitted(cand):
        pytest.skip(f"no admitted weight-only {fmt} kernel here: {cpu_kernels.why_not(cand)}")
    torch.manual_seed(3)
    lin = nn.Linear(256, 64)
    x = torch.randn(m, 256)
    for k in (1, 2, 3):
        mod = MultipointLinear(lin, fmt, group, k, layout)
        with torch.no_grad():
            got = mod(x)
            want = x.double() @ multipoint_weight(lin.weight, fmt, group, k).double().t() + lin.bias.double()
        scale = float(want.abs().max())
        assert float((got.double() - want).abs().max()) <= k * 2 ** -7 * scale, (k, layout)


def test_multipoint_linear_refuses():
    with pytest.raises(ValueError, match="layout must be"):
        MultipointLinear(nn.Linear(128, 16), layout="rows")
    with pytest.raises(ValueError, match="not 'fp8_e4m3'"):
        MultipointLinear(nn.Linear(128, 16), fmt="fp8_e4m3")
