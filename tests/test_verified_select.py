"""select(verify=...): the chosen plan's loss MSE, measured on held-out batches, stays within the budget; the
figures carry standard errors computed from the per-sample values."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.artifacts import Plan, SensitivityTable


def per_sample_mse(out, batch):
    return ((out - batch[1]) ** 2).mean(1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    teacher = nn.Linear(32, 16)

    def batches(seed, n=4):
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            x = torch.randn(8, 32, generator=g)
            out.append((x, teacher(x).detach()))
        return out
    calib, held = batches(1), batches(2, n=6)
    table = mpq.calibrate(model, calib, ("int8", "w4a16"), loss_fn=per_sample_mse, progress=False)
    gains = mpq.profile(model, calib[0][0], ("int8", "w4a16"), backend="macs")
    return model, calib, held, table, gains


def measured(model, plan, held):
    """The loss MSE of ``plan`` against the base model on ``held``, computed here from scratch."""
    q = mpq.apply(model, plan.mapping, mode="fake")
    with torch.no_grad():
        d = torch.cat([(per_sample_mse(q(x), (x, y)) - per_sample_mse(model(x), (x, y))) ** 2 for x, y in held])
    return float(d.double().mean()), float(d.double().std() / math.sqrt(d.numel()))


def scaled(table, factor):
    """The same table with every δ scaled: an estimate `factor` times off."""
    return dataclasses.replace(table, delta=table.delta * factor, delta_weight=table.delta_weight * factor)


def test_the_plans_standard_error_comes_from_the_per_sample_sums(setup):
    model, calib, held, table, gains = setup
    plan = mpq.select(table, gains, max_loss_mse=float(table.mse.max()))
    li = [table.layers.index(l) for l in plan.quantized]
    ci = [table.candidates.index(c) for c in plan.quantized.values()]
    q = (table.delta[:, li, ci] ** 2).sum(1)
    assert plan.predicted_loss_mse == pytest.approx(q.mean(), rel=1e-12)
    assert plan.predicted_loss_mse_stderr == pytest.approx(q.std(ddof=1) / math.sqrt(len(q)), rel=1e-12)


def test_a_verified_plan_measures_within_its_budget(setup):
    model, calib, held, table, gains = setup
    budget = float(table.mse.sum()) * 0.3
    plan = mpq.select(table, gains, max_loss_mse=budget, verify=(model, held, per_sample_mse))
    v = plan.verification
    mse, se = measured(model, plan, held)
    assert v["measured_loss_mse"] == pytest.approx(mse, rel=1e-9) and v["measured_loss_mse_stderr"] == \
        pytest.approx(se, rel=1e-6)
    assert mse <= budget and plan.quantized and v["samples"] == 48 and 1 <= v["rounds"] <= 8


def test_an_estimate_that_is_too_low_is_tightened_until_the_measurement_holds(setup):
    model, calib, held, table, gains = setup
    low = scaled(table, 0.05)                       # predicts 400x less than it should
    fastest = mpq.select(low, gains, max_loss_mse=1e9)
    budget = 0.6 * measured(model, fastest, held)[0]  # the cheapest layers on int8 fit, all three do not
    plain = mpq.select(low, gains, max_loss_mse=budget)
    assert measured(model, plain, held)[0] > budget  # so the unverified plan breaks the budget
    plan = mpq.select(low, gains, max_loss_mse=budget, verify=(model, held, per_sample_mse))
    v = plan.verification
    assert v["rounds"] > 1 and v["additive_budget"] < budget and measured(model, plan, held)[0] <= budget
    assert any(not t["holds"] for t in v["tried"]) and len(v["tried"]) == v["rounds"] <= 8
    upper = mpq.select(low, gains, max_loss_mse=budget, verify=(model, held, per_sample_mse), verify_bound="upper")
    m, s = measured(model, upper, held)
    assert m + 2 * s <= budget and upper.verification["bound"] == "upper"


def test_verification_on_the_calibration_batches_warns(setup):
    model, calib, held, table, gains = setup
    plan = mpq.select(table, gains, max_loss_mse=float(table.mse.sum()), verify=(model, calib, per_sample_mse))
    assert "not held out" in plan.verification["warnings"][0]


def test_a_budget_no_quantized_plan_meets_names_the_least_measured(setup):
    model, calib, held, table, gains = setup
    with pytest.raises(ValueError, match=r"no quantized plan measured within the loss budget .* the least loss "
                                         r"MSE a quantized plan measured was"):
        mpq.select(scaled(table, 1e-4), gains, max_loss_mse=float(table.mse.min()) * 1e-3,
                   verify=(model, held, per_sample_mse), verify_rounds=3)
    with pytest.raises(ValueError, match="verify checks a loss budget"):
        mpq.select(table, gains, min_gain=1.0, verify=(model, held, per_sample_mse))
    with pytest.raises(ValueError, match="verify_bound"):
        mpq.select(table, gains, max_loss_mse=1.0, verify=(model, held, per_sample_mse), verify_bound="maybe")
    with pytest.raises(ValueError, match=r"verify must be \(model, batches\)"):
        mpq.select(table, gains, max_loss_mse=1.0, verify=model)


def test_a_verified_front_says_which_points_held(setup):
    model, calib, held, table, gains = setup
    front = mpq.pareto(table, gains, points=5, verify=(model, held, per_sample_mse))
    assert front
    for p in front:
        mse, _ = measured(model, p, held)
        assert p.verification["measured_loss_mse"] == pytest.approx(mse, rel=1e-9)
        assert p.verification["holds"] == (mse <= p.objective["value"])


def test_verification_and_unknown_figures_survive_a_file(setup, tmp_path):
    model, calib, held, table, gains = setup
    plan = mpq.select(table, gains, max_loss_mse=float(table.mse.sum()), verify=(model, held, per_sample_mse))
    plan.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert back.verification == plan.verification
    assert back.predicted_loss_mse_stderr == plan.predicted_loss_mse_stderr
    hand = Plan({"0": "int8"}, float("nan"), float("nan"))  # a hand-made plan: no predictions
    hand.save(tmp_path / "h.json")
    again = Plan.load(tmp_path / "h.json")
    assert math.isnan(again.predicted_loss_mse) and math.isnan(again.predicted_gain)
    mpq.export(hand, "mpq", tmp_path / "e.json")


def test_a_measurement_says_how_many_sequences_it_rests_on():
    from mpq.selection.measured import Measurement
    even = Measurement.of(torch.full((10,), 2.0, dtype=torch.float64))
    assert even.mse == 2.0 and even.largest_share == pytest.approx(0.1) and even.effective_samples == \
        pytest.approx(10.0) and even.warning() is None
    q = torch.tensor([1e-4] * 47 + [0.0763], dtype=torch.float64)  # one memorised passage among 48 (RESULTS.md)
    one = Measurement.of(q)
    total = float(q.sum())
    assert one.largest_share == pytest.approx(0.0763 / total)
    assert one.effective_samples == pytest.approx(total ** 2 / float((q ** 2).sum()))
    assert one.effective_samples < 1.2 and "holds 94% of the measured loss MSE" in one.warning()
    assert Measurement.of(torch.zeros(4, dtype=torch.float64)).warning() is None  # nothing moved, nothing dominates


def test_a_plan_whose_measurement_rests_on_one_sequence_warns(setup):
    model, calib, held, table, gains = setup
    x, y = held[0]
    odd = [(x * 40, y)] + list(held[1:])  # one batch far outside the others: its samples dominate the sum
    plan = mpq.select(table, gains, max_loss_mse=1e9, verify=(model, odd, per_sample_mse))
    v = plan.verification
    sq = torch.cat([(per_sample_mse(mpq.apply(model, plan.mapping, mode="fake")(a), (a, b)) -
                     per_sample_mse(model(a), (a, b))) ** 2 for a, b in odd]).double().detach()
    assert v["largest_sample_share"] == pytest.approx(float(sq.max() / sq.sum()), rel=1e-6)
    assert v["effective_samples"] == pytest.approx(float(sq.sum() ** 2 / (sq ** 2).sum()), rel=1e-6)
    assert v["largest_sample_share"] > 0.5, "the scaled batch was meant to dominate"
    assert any("verification sequence holds" in w for w in v["warnings"])
    assert "warning: one verification sequence" in plan.summary()
    front = mpq.pareto(table, gains, points=3, verify=(model, odd, per_sample_mse))
    assert all("effective_samples" in p.verification for p in front)
