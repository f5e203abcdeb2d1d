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


pytestmark = pytest.mark.usefixtures("one_thread")


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


# --- as candidates: calibration, gains, selection per channel, apply -------------------------------------------
MP = ("w4a16_g64", "w4a16_g64_mp2", "w4a16_g64_mp3")


def ce_loss(out, batch):
    return nn.functional.cross_entropy(out, batch[1], reduction="none")


@pytest.fixture(scope="module")
def mlp_and_data():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    X, y = torch.randn(16, 64), torch.randint(0, 16, (16,))
    return m, [(X[i:i + 8], y[i:i + 8]) for i in (0, 8)]


def test_calibrated_delta_of_multipoint_candidates_per_row(mlp_and_data):
    """δ of a k-point candidate (the kernel on the residual) against per-sample autograd with ΔW = Σ a_p q_p − W."""
    import copy

    import numpy as np

    import mpq
    m, batches = mlp_and_data
    table = mpq.calibrate(m, batches, MP, ce_loss, progress=False, granularity="channel")
    m64 = copy.deepcopy(m).double()
    for li, name in enumerate(("0", "2")):
        lin = dict(m64.named_modules())[name]
        w = dict(m.named_modules())[name].weight.detach()
        for j, cname in enumerate(MP):
            dw = (CANDIDATES[cname].quantize_weight(w) - w).double()
            want, size = [], []
            for xb, yb in batches:
                for n in range(xb.shape[0]):
                    (g,) = torch.autograd.grad(ce_loss(m64(xb[n:n + 1].double()), (None, yb[n:n + 1]))[0],
                                               lin.weight)
                    want.append((g * dw).sum(1))
                    size.append((g * dw).abs().sum(1))
            want, size = torch.stack(want).numpy(), torch.stack(size).numpy()
            o = table.offsets
            got = table.group_delta_weight[:, o[li]:o[li + 1], j]
            # float32 gradients in the pass: the error scales with Σ|g·ΔW|, which cancellation leaves far above |δ|
            bad = np.abs(got - want) > 1e-3 * size + 1e-15
            assert not bad.any(), (cname, name, got[bad][:3], want[bad][:3], size[bad][:3])
    s = table.table.mse
    assert (s[:2, 0] > s[:2, 1]).all() and (s[:2, 1] > s[:2, 2]).all()  # more points, less loss MSE


def test_points_cost_bytes_and_bit_operations():
    from mpq.profiling.backends import get_backend
    shape = (4, 256, 32)
    for backend in ("memory", "ebops", "macs"):
        be = get_backend(backend)
        one = be.layer_cost(shape, "w4a16_g64")
        assert be.layer_cost(shape, "w4a16_g64_mp2") == pytest.approx(2 * one)
        assert be.layer_cost(shape, "w4a16_g64_mp3") == pytest.approx(3 * one)


def test_the_channel_selection_chooses_k_per_row_group(mlp_and_data):
    import numpy as np

    import mpq
    m, batches = mlp_and_data
    table = mpq.calibrate(m, batches, MP, ce_loss, progress=False, granularity="group:16")
    gains = mpq.profile(m, batches[0][0], candidates=MP, backend="memory")
    weights = sum(int(sh[1]) * int(sh[2]) for sh in gains.shapes["layers"].values())
    need = gains.baseline_seconds - 8.0 * weights / 8     # bytes to save to reach 8 bits a weight on average
    plan = mpq.select(table, gains, min_gain=need)          # the least loss MSE there: a mix of 1, 2, 3 points
    assert 8 * (gains.baseline_seconds - plan.predicted_gain) / weights <= 8.0 + 1e-9
    used = {c for c, n in plan.row_counts().items() if n}
    assert len(used & set(MP)) >= 2, used
    x = batches[0][0]
    with torch.no_grad():
        fake = mpq.apply(m, plan, mode="fake")(x)
        if all(cpu_kernels.admitted(c) for c in MP):
            native = mpq.apply(m, plan, mode="native")(x)
            assert float((native - fake).abs().max()) <= 2 ** -5 * float(fake.abs().max())
    assert np.isfinite(fake.numpy()).all()


def test_multipoint_is_refused_where_no_format_holds_it(tmp_path):
    import mpq
    with pytest.raises(ValueError, match="no multipoint scheme"):
        mpq.export({"0": "w4a16_g64_mp2"}, "compressed-tensors", tmp_path / "c.json")
    with pytest.raises(ValueError, match="torchao export runs"):
        mpq.export({"0": "w4a16_g64_mp2"}, "torchao", tmp_path / "t.json")
    with pytest.raises(ValueError, match="points must be 1, 2 or 3"):
        mpq.Candidate("x", "int4", "group", 64, points=4)
    with pytest.raises(ValueError, match="multipoint is for round-to-nearest weight-only"):
        mpq.Candidate("x", "int8", "channel", act_format="int8", points=2)
