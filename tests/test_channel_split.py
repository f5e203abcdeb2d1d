"""A Linear split into precision classes (application.channel_split): the fake split against a per-row reference
written with torch ops, the native split (one CPU registry kernel per class) against the fake split within the
kernels' stated rounding, apply of a ChannelPlan, and the refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpq
from mpq.application import cpu_kernels
from mpq.application.channel_split import ChannelSplitLinear
from mpq.artifacts.channel_plan import ChannelPlan
from mpq.candidates import CANDIDATES


pytestmark = pytest.mark.usefixtures("one_thread")


def random_classes(n, names, seed=0, multiple=16):
    """Rows 0..n-1 dealt at random to ``names`` in blocks of ``multiple`` rows (int4 kernels take 16-row tiles)."""
    g = np.random.default_rng(seed)
    blocks = g.permutation(n // multiple)
    owner = np.arange(len(blocks)) % len(names)
    out = {}
    for k, name in enumerate(names):
        b = blocks[owner == k]
        out[name] = np.sort((b[:, None] * multiple + np.arange(multiple)).ravel())
    return out


def per_row_reference(lin, classes, x):
    """y[:, r] = Q_act,c(x) · Q_c(W)[r] + b[r] with c the class of row r, in float64 (each candidate's own
    quantizers applied to the whole weight: per-channel and grouped formats quantize a row from that row)."""
    w, b = lin.weight.detach(), lin.bias.detach()
    y = torch.empty(x.shape[0], lin.out_features, dtype=torch.float64)
    for cname, rows in classes.items():
        c = CANDIDATES[cname] if cname != "base" else None
        qw = w if c is None else c.quantize_weight(w)
        qx = x if c is None else c.quantize_act(x)
        r = torch.as_tensor(rows)
        y[:, r] = qx.double() @ qw.double()[r].t() + b.double()[r]
    return y


SPLITS = [("int8", "w4a16_g64"), ("base", "int8"), ("w8a16", "w4a16_g64", "int8"), ("fp8", "base")]


@pytest.mark.parametrize("names", SPLITS)
def test_fake_split_is_the_per_row_quantization(names):
    torch.manual_seed(1)
    lin = nn.Linear(128, 96)
    x = torch.randn(7, 128)
    classes = random_classes(96, names)
    got = ChannelSplitLinear(lin, classes, "fake")(x).double()
    want = per_row_reference(lin, classes, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("names", SPLITS)
@pytest.mark.parametrize("m", [1, 5, 33])
def test_native_split_matches_the_fake_split_within_the_kernels_rounding(names, m):
    admitted = [n for n in names if n == "base" or cpu_kernels.admitted(n)]
    if len(admitted) < len(names):
        pytest.skip(f"not every class has an admitted CPU kernel here: {names}")
    torch.manual_seed(2)
    lin = nn.Linear(256, 128)
    x = torch.randn(m, 256)
    classes = random_classes(128, names, seed=m)
    with torch.no_grad():
        fake = ChannelSplitLinear(lin, classes, "fake")(x)
        native = ChannelSplitLinear(lin, classes, "native")(x)
    for cname, rows in classes.items():
        tol = 1e-6 if cname == "base" else cpu_kernels.admitted(cname)[0].tolerance
        want, got = fake[:, rows], native[:, rows]
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= (tol + 2e-6) * scale, cname


def make_plan(model, layer_classes):
    layers, out, rows, choice = [], [], [], []
    cands = ("base", "int8", "w8a16", "w4a16_g64")
    for name, per_row in layer_classes.items():
        layers.append(name)
        out.append(len(per_row))
        rows.append(1)
        choice.append(np.array([cands.index(c) for c in per_row]))
    return ChannelPlan(tuple(layers), tuple(out), tuple(rows), cands, np.concatenate(choice))


def test_apply_runs_a_channel_plan(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 10)).eval()
    x = torch.randn(9, 64)
    c1 = random_classes(128, ("int8", "w4a16_g64", "base"), seed=4)
    c2 = random_classes(64, ("w8a16", "int8"), seed=5)
    per_row = {}
    for name, classes, n in (("0", c1, 128), ("2", c2, 64)):
        rows = np.empty(n, dtype=object)
        for c, r in classes.items():
            rows[r] = c
        per_row[name] = list(rows)
    plan = make_plan(model, per_row)
    plan.save(tmp_path / "p.npz")
    plan = ChannelPlan.load(tmp_path / "p.npz")
    fake = mpq.apply(model, plan, mode="fake")
    assert isinstance(fake[0], ChannelSplitLinear) and isinstance(fake[4], nn.Linear)
    # the reference: the model's layers replaced by the per-row reference, run in float64
    with torch.no_grad():
        h = per_row_reference(model[0], c1, x).float()
        h = per_row_reference(model[2], c2, F.gelu(h)).float()
        want = model[4](F.gelu(h))
        got = fake(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if all(cpu_kernels.admitted(c) for c in ("int8", "w8a16", "w4a16_g64")):
        with torch.no_grad():
            native = mpq.apply(model, plan, mode="native")(x)
        assert float((native - got).abs().max()) <= 2 ** -6 * float(got.abs().max())


def test_channel_plan_refusals():
    model = nn.Sequential(nn.Linear(32, 48, device="meta"))
    plan = make_plan(model, {"0": ["int8"] * 48})
    with pytest.raises(ValueError, match="meta has no split kernel"):
        mpq.apply(model, plan, mode="native")
    cpu = nn.Sequential(nn.Linear(32, 40))
    with pytest.raises(ValueError, match="has 48 output rows, the model's Linear 40"):
        mpq.apply(cpu, plan, mode="fake")
    with pytest.raises(ValueError, match="cover each of the 48 output rows once"):
        ChannelSplitLinear(nn.Linear(32, 48), {"int8": np.arange(40)})
    if cpu_kernels.admitted("w4a16_g64"):  # int4 kernels take 16-row tiles: a 20-row class is refused, said why
        with pytest.raises(ValueError, match="divisible by 16"):
            ChannelSplitLinear(nn.Linear(64, 48), {"w4a16_g64": np.arange(20), "int8": np.arange(20, 48)}, "native")


def test_channel_plan_has_no_export_or_checkpoint(tmp_path):
    plan = make_plan(None, {"0": ["int8"] * 48})
    with pytest.raises(ValueError, match="ChannelPlan .* has no export or checkpoint format"):
        mpq.export(plan, "compressed-tensors", tmp_path / "c.json")
    with pytest.raises(ValueError, match="ChannelPlan .* has no export or checkpoint format"):
        mpq.save_quantized(nn.Sequential(nn.Linear(32, 48)), plan, tmp_path / "ckpt", "compressed-tensors")
