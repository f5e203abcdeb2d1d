"""The whole pipeline on a tiny model in seconds: calibrate -> partition -> profile (macs) -> select -> apply ->
export -> reload, with the artifacts round-tripping through files."""
import re

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.artifacts import GainTable
from mpq.artifacts import Plan
from mpq.artifacts import SensitivityTable


def tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(256, 16)
    y = (x[:, :4] * 2).argmax(1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):  # trained a little, so the gradients mean something
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def per_sample_ce(outputs, batch):
    return nn.functional.cross_entropy(outputs, batch[1], reduction="none")


def test_pipeline_on_a_tiny_mlp(tmp_path):
    model, x, y = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    table = mpq.calibrate(model, batches, candidates=("int8", "fp8"), loss_fn=per_sample_ce, progress=False)
    table.save(tmp_path / "sens.npz")
    gains = mpq.profile(model, x[:32], candidates=("int8", "fp8"), backend="macs")
    gains.save(tmp_path / "gains.npz")
    table, gains = SensitivityTable.load(tmp_path / "sens.npz"), GainTable.load(tmp_path / "gains.npz")
    assert set(gains.layers) <= set(table.layers)

    loose = mpq.select(table, gains, max_loss_mse=1e9)
    assert all(c != "base" for c in loose.mapping.values())  # no loss limit: everything that gains is quantized
    tight = mpq.select(table, gains, max_loss_mse=float(table.mse.min()) / 2)
    assert tight.quantized == {}  # below every layer's sensitivity nothing can be quantized
    mid_budget = float(np.sort(table.mse.ravel())[1])
    plan = mpq.select(table, gains, max_loss_mse=mid_budget)
    assert plan.predicted_loss_mse <= mid_budget
    plan.save(tmp_path / "plan.json")
    plan = Plan.load(tmp_path / "plan.json")

    qmodel = mpq.apply(model, plan, mode="fake")
    with torch.no_grad():
        assert torch.isfinite(qmodel(x)).all()
        # measured loss change is of the order the sensitivity predicted
        base = per_sample_ce(model(x), (x, y))
        quant = per_sample_ce(qmodel(x), (x, y))
    measured = float(((quant - base) ** 2).mean())
    assert measured <= 10 * mid_budget + 1e-9

    cfg = mpq.export(plan, "compressed-tensors", tmp_path / "ct.json")
    targeted = {n for g in cfg["config_groups"].values() for t in g["targets"] for n in plan.mapping
                if re.fullmatch(t[3:], n)}
    assert targeted == set(plan.quantized)
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])


def test_front_plans_are_consistent(tmp_path):
    model, x, y = tiny_mlp()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    table = mpq.calibrate(model, batches, candidates=("int8",), loss_fn=per_sample_ce, progress=False)
    gains = mpq.profile(model, x[:32], candidates=("int8",), backend="macs")
    front = mpq.pareto(table, gains)
    assert front and all(b.predicted_gain >= a.predicted_gain - 1e-12 for a, b in zip(front, front[1:]))
    for p in front:
        recomputed = sum(table.mse[table.layers.index(l), table.candidates.index(c)] for l, c in p.quantized.items())
        assert p.predicted_loss_mse == pytest.approx(recomputed, rel=1e-9, abs=1e-15)


def test_artifacts_from_another_model_are_refused():
    model, x, y = tiny_mlp()
    batches = [(x[:64], y[:64])]
    table = mpq.calibrate(model, batches, candidates=("int8",), loss_fn=per_sample_ce, progress=False)
    other = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(3, 2))
    gains = mpq.profile(other, x[:8], candidates=("int8",), backend="macs")
    with pytest.raises(ValueError, match="different models"):
        mpq.select(table, gains, max_loss_mse=1.0)
