"""Calibration and selection below the layer: calibrate(granularity="channel" | "group:G") against per-sample
autograd gradients (brute force, float64, per row), its sums against the layer-level pass, the ChannelTable and
ChannelPlan files, and the channel MCKP against exhaustive enumeration."""
import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.artifacts.channel_plan import ChannelPlan
from mpq.artifacts.channel_table import ChannelTable
from mpq.candidates import CANDIDATES

CANDS = ("int8", "w8a16", "w4a16", "fp8")


pytestmark = pytest.mark.usefixtures("one_thread")


def ce_loss(out, batch):
    return nn.functional.cross_entropy(out, batch[1], reduction="none")


@pytest.fixture(scope="module")
def mlp_and_data():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 5)).eval()
    X = torch.randn(24, 32)
    y = torch.randint(0, 5, (24,))
    return m, [(X[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]


@pytest.fixture(scope="module")
def tables(mlp_and_data):
    m, batches = mlp_and_data
    layer = mpq.calibrate(m, batches, CANDS, ce_loss, progress=False)
    channel = mpq.calibrate(m, batches, CANDS, ce_loss, progress=False, granularity="channel")
    group = mpq.calibrate(m, batches, CANDS, ce_loss, progress=False, granularity="group:16")
    return layer, channel, group


def brute_force_rows(model, batches, layer_name, cand):
    """δw[n, r] = Σ_i (∂ℓ_n/∂W)[r, i] (Q(W) − W)[r, i], each sample's gradient by autograd on a float64 copy."""
    m64 = copy.deepcopy(model).double()
    lin = dict(m64.named_modules())[layer_name]
    w32 = dict(model.named_modules())[layer_name].weight.detach()
    dw = (CANDIDATES[cand].quantize_weight(w32) - w32).double()
    out = []
    for xb, yb in batches:
        for n in range(xb.shape[0]):
            loss = ce_loss(m64(xb[n:n + 1].double()), (None, yb[n:n + 1]))[0]
            (g,) = torch.autograd.grad(loss, lin.weight)
            out.append((g * dw).sum(1))
    return torch.stack(out).numpy()


def test_channel_deltas_match_per_sample_autograd_per_row(mlp_and_data, tables):
    m, batches = mlp_and_data
    _, channel, _ = tables
    o = channel.offsets
    for li, name in enumerate(channel.layers):
        for cand in ("int8", "w8a16", "fp8"):
            want = brute_force_rows(m, batches, name, cand)
            got = channel.group_delta_weight[:, o[li]:o[li + 1], channel.candidates.index(cand)]
            scale = np.abs(want).max()
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("which", [1, 2])
def test_groups_sum_to_the_layer_weight_delta(tables, which):
    layer, split = tables[0], tables[which]
    # the same pass split: Σ over groups = the layer's weight δ of the split pass and of a layer-level pass
    np.testing.assert_allclose(split.layer_weight_delta(), split.table.delta_weight, rtol=1e-12, atol=0)
    np.testing.assert_allclose(split.layer_weight_delta(), layer.delta_weight, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(split.table.delta, layer.delta)  # the layer table is unchanged by the split
    assert np.isnan(split.group_delta_weight).any() == np.isnan(layer.delta_weight).any()


def test_group_size_that_does_not_divide_keeps_the_layer_whole(tables):
    _, _, group = tables
    assert group.group_rows == (16, 16, 5)
    assert "does not divide out_features 5" in group.kept_whole["4"]
    assert list(group.entries[-1:]) == ["4#rows 0:5"] and len(group.entries) == 4 + 3 + 1
    assert "0" not in group.kept_whole


def test_act_term_is_a_layer_entry_charged_by_row_share(tables):
    _, channel, _ = tables
    t = channel.table
    j = t.candidates.index("int8")
    act = np.mean((t.delta - t.delta_weight)[:, :, j] ** 2, axis=0)
    assert (act > 0).all()                                         # int8 quantizes activations
    charged = np.add.reduceat(channel.cost[:, j] - channel.weight_mse[:, j], channel.offsets[:-1])
    np.testing.assert_allclose(charged, act, rtol=1e-12)           # all rows in int8: the whole term
    j16 = t.candidates.index("w8a16")                              # weight-only: nothing charged
    np.testing.assert_array_equal(channel.cost[:, j16], channel.weight_mse[:, j16])


def test_channel_table_round_trip_and_refusals(tmp_path, tables):
    _, channel, _ = tables
    p = tmp_path / "c.npz"
    channel.save(p)
    back = ChannelTable.load(p)
    np.testing.assert_array_equal(back.group_delta_weight, channel.group_delta_weight)
    np.testing.assert_array_equal(back.table.delta, channel.table.delta)
    assert back.group_rows == channel.group_rows and back.granularity == "channel"
    assert back.entries == channel.entries and back.kept_whole == channel.kept_whole
    tables[0].save(tmp_path / "t.npz")
    with pytest.raises(ValueError, match="ChannelTable"):
        ChannelTable.load(tmp_path / "t.npz")


@pytest.mark.parametrize("bad", ["rows", "group:0", "group:x", "group:-4", 3])
def test_bad_granularity(mlp_and_data, bad):
    m, batches = mlp_and_data
    with pytest.raises(ValueError, match="granularity must be"):
        mpq.calibrate(m, batches, ("int8",), ce_loss, progress=False, granularity=bad)


# --- selection ---------------------------------------------------------------------------------------------------
def _brute_force(problem, budget, max_memory=None):
    o = problem.offsets
    ranges = [range(o[g + 1] - o[g]) for g in range(len(o) - 1)]
    best = -np.inf
    for choice in itertools.product(*ranges):
        idx = o[:-1] + np.array(choice)
        if problem.item_cost[idx].sum() > budget * (1 + 1e-12):
            continue
        if max_memory is not None and problem.item_memory[idx].sum() > max_memory * (1 + 1e-12):
            continue
        best = max(best, problem.item_gain[idx].sum())
    return best


@pytest.mark.parametrize("backend", ["memory", "ebops"])
def test_channel_select_is_the_exhaustive_optimum(mlp_and_data, tables, backend):
    from mpq.selection.channels import ChannelProblem
    m, batches = mlp_and_data
    _, _, group = tables   # 4 + 3 + 1 groups, up to 5 items each: 10⁴–10⁵ combinations
    gains = mpq.profile(m, batches[0][0], candidates=("int8", "w8a16", "w4a16"), backend=backend)
    top = float(group.cost[np.isfinite(group.cost)].sum())
    for frac in (0.001, 0.05, 0.3):
        plan = mpq.select(group, gains, max_loss_mse=frac * top)
        problem = ChannelProblem(group, gains, with_memory=False)
        assert plan.predicted_gain == pytest.approx(_brute_force(problem, frac * top), rel=1e-9, abs=1e-9)
        assert plan.predicted_loss_mse <= frac * top * (1 + 1e-9)
        # the plan's own numbers recomputed from the table: per group cost and gain share
        assert isinstance(plan, ChannelPlan) and plan.layers == group.layers
    problem = ChannelProblem(group, gains, with_memory=True)
    base = float(problem.item_memory[problem.offsets[:-1]].sum())
    least = float(np.minimum.reduceat(problem.item_memory, problem.offsets[:-1]).sum())
    limit = least + 0.3 * (base - least)
    plan = mpq.select(group, gains, max_loss_mse=0.5 * top, max_memory=limit)
    assert plan.predicted_memory <= limit * (1 + 1e-9)
    assert plan.predicted_gain == pytest.approx(_brute_force(problem, 0.5 * top, limit), rel=1e-9)


def test_channel_select_avg_bits_and_pareto(mlp_and_data, tables, tmp_path):
    m, batches = mlp_and_data
    _, channel, _ = tables
    gains = mpq.profile(m, batches[0][0], candidates=("int8", "w8a16", "w4a16"), backend="memory")
    weights = sum(int(s[1]) * int(s[2]) for s in gains.shapes["layers"].values())
    plan = mpq.select(channel, gains, max_loss_mse=1.0, max_avg_bits=9.0)
    assert 8 * plan.predicted_memory / weights <= 9.0 + 1e-9
    counts = plan.row_counts()
    assert sum(counts.values()) == sum(channel.out_features)
    front = mpq.pareto(channel, gains, points=6)
    assert len(front) >= 2 and all(isinstance(p, ChannelPlan) for p in front)
    assert all(a.predicted_gain <= b.predicted_gain + 1e-9 for a, b in zip(front, front[1:]))
    plan.save(tmp_path / "p.npz")
    back = ChannelPlan.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.choice, plan.choice)
    assert back.classes("2").keys() == plan.classes("2").keys()


def test_channel_select_refuses_timed_gains_and_layer_only_options(mlp_and_data, tables):
    m, batches = mlp_and_data
    _, channel, _ = tables
    gains = mpq.profile(m, batches[0][0], candidates=("int8",), backend="memory")
    timed = dataclasses.replace(gains, backend="cpu")
    with pytest.raises(ValueError, match="one kernel per class"):
        mpq.select(channel, timed, max_loss_mse=1.0)
    with pytest.raises(ValueError, match="pin: not supported with a ChannelTable"):
        mpq.select(channel, gains, max_loss_mse=1.0, pin={"0": "int8"})


def test_calibrated_weight_candidates_split_by_row(mlp_and_data):
    """GPTQ's δ (the stored integers' real ΔW, one matmul per candidate) splits by row the same way."""
    m, batches = mlp_and_data
    layer = mpq.calibrate(m, batches, ("w8a16_gptq",), ce_loss, progress=False)
    split = mpq.calibrate(m, batches, ("w8a16_gptq",), ce_loss, progress=False, granularity="group:8")
    np.testing.assert_allclose(split.layer_weight_delta(), layer.delta_weight, rtol=1e-9, atol=1e-300)
    name = "2"
    q = split.table.quantized_weights.get_for(name, "w8a16_gptq", dict(m.named_modules())[name].weight)
    w = dict(m.named_modules())[name].weight.detach()
    m64 = copy.deepcopy(m).double()
    lin = dict(m64.named_modules())[name]
    dw = (q.effective_weight() - w).double()
    want = []
    for xb, yb in batches:
        for n in range(xb.shape[0]):
            (g,) = torch.autograd.grad(ce_loss(m64(xb[n:n + 1].double()), (None, yb[n:n + 1]))[0], lin.weight)
            want.append((g * dw).sum(1).reshape(-1, 8).sum(1))
    want = torch.stack(want).numpy()
    o = split.offsets
    got = split.group_delta_weight[:, o[1]:o[2], 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
