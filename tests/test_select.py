"""select / pareto against brute force on small synthetic tables, pins and keeps, errors, Plan files."""
import dataclasses
import itertools
import json

import numpy as np
import pytest

from mpq.artifacts import GainTable, Plan, SensitivityTable, SubgraphGains
from mpq.selection import pareto, select

CANDS = ("int8", "fp8")
LAYERS = ("b0.q", "b0.o", "b1.up", "b1.down", "head")
SUBGRAPHS = (("b0", ("b0.q", "b0.o")), ("b1", ("b1.up", "b1.down")), ("h", ("head",)))


def make_tables(seed=0, n=16):
    rng = np.random.default_rng(seed)
    delta = rng.normal(size=(n, len(LAYERS), len(CANDS))) * rng.uniform(0.01, 1, size=(1, len(LAYERS), len(CANDS)))
    L, C = len(LAYERS), len(CANDS)
    table = SensitivityTable(LAYERS, CANDS, delta, delta * 0.5, np.full((L, C), np.nan), np.zeros((L, C)))
    subgraphs = []
    for name, layers in SUBGRAPHS:
        configs = np.array(list(itertools.product(range(3), repeat=len(layers))), dtype=np.int32)
        gain = np.where(configs.sum(1) == 0, 0.0, rng.uniform(-0.2, 1.0, size=len(configs)))
        subgraphs.append(SubgraphGains(name, layers, (), configs, gain, np.zeros(len(configs)),
                                       np.zeros(len(configs), bool)))
    bytes_ = np.stack([np.full(L, 4.0e6), np.full(L, 1.0e6), np.full(L, 1.0e6)], axis=1)
    gains = GainTable("macs", "prefill", ("base",) + CANDS, tuple(subgraphs), baseline_seconds=10.0,
                      layer_names=LAYERS, layer_bytes=bytes_)
    return table, gains


def brute_force(table, gains, budget, forced=None):
    mse = table.mse
    best = (-np.inf, None)
    for rows in itertools.product(*[range(len(sg.configs)) for sg in gains.subgraphs]):
        gain, cost, mapping = 0.0, 0.0, {}
        for sg, k in zip(gains.subgraphs, rows):
            gain += sg.gain[k]
            for layer, j in zip(sg.layers, sg.configs[k]):
                c = gains.candidates[j]
                mapping[layer] = c
                if j:
                    cost += mse[LAYERS.index(layer), CANDS.index(c)]
        if forced and any(mapping[l] != c for l, c in forced.items()):
            continue
        if cost <= budget and gain > best[0]:
            best = (gain, mapping)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_select_equals_brute_force(seed):
    table, gains = make_tables(seed)
    total = table.mse.sum()
    for frac in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0):
        plan = select(table, gains, max_loss_mse=frac * total)
        want, _ = brute_force(table, gains, frac * total)
        assert plan.predicted_gain == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert plan.predicted_loss_mse <= frac * total
        recomputed = sum(table.mse[LAYERS.index(l), CANDS.index(c)] for l, c in plan.quantized.items())
        assert plan.predicted_loss_mse == pytest.approx(recomputed, rel=1e-12, abs=1e-15)
        assert set(plan.mapping) == set(LAYERS)


def test_rmse_budget_is_the_square_root_of_the_mse_budget():
    table, gains = make_tables(1)
    b = 0.1 * table.mse.sum()
    assert select(table, gains, max_loss_rmse=b ** 0.5).mapping == select(table, gains, max_loss_mse=b).mapping


def test_dual_and_speedup_objectives():
    table, gains = make_tables(2)
    best = select(table, gains, max_loss_mse=1e9)
    need = 0.6 * best.predicted_gain
    plan = select(table, gains, min_gain=need)
    assert plan.predicted_gain >= need - 1e-12
    # brute force: the least cost reaching the gain
    mse, least = table.mse, np.inf
    for rows in itertools.product(*[range(len(sg.configs)) for sg in gains.subgraphs]):
        g = sum(sg.gain[k] for sg, k in zip(gains.subgraphs, rows))
        c = sum(mse[LAYERS.index(l), j - 1] for sg, k in zip(gains.subgraphs, rows)
                for l, j in zip(sg.layers, sg.configs[k]) if j)
        if g >= need:
            least = min(least, c)
    assert plan.predicted_loss_mse == pytest.approx(least, rel=1e-9)
    speedup = 10.0 / (10.0 - need)
    assert select(table, gains, target_speedup=speedup).predicted_gain >= need * (1 - 1e-9)


def test_pins_and_keeps_are_honoured():
    table, gains = make_tables(3)
    plan = select(table, gains, max_loss_mse=1e9, pin={"b1\\..*": "fp8"}, keep=["head"])
    assert plan.mapping["b1.up"] == plan.mapping["b1.down"] == "fp8" and plan.mapping["head"] == "base"
    want, _ = brute_force(table, gains, 1e9, forced={"b1.up": "fp8", "b1.down": "fp8", "head": "base"})
    assert plan.predicted_gain == pytest.approx(want, rel=1e-9)


def test_memory_row():
    table, gains = make_tables(4)
    plan = select(table, gains, max_loss_mse=1e9, max_memory=5 * 4.0e6 - 3 * 3.0e6)
    assert plan.predicted_memory <= 5 * 4.0e6 - 3 * 3.0e6
    assert len(plan.quantized) >= 3  # each quantized layer saves 3 MB of the 20 MB
    assert plan.predicted_memory == 5 * 4.0e6 - 3.0e6 * len(plan.quantized)
    free = select(table, gains, max_loss_mse=1e9)
    assert plan.predicted_gain <= free.predicted_gain + 1e-12


def test_errors_name_the_problem():
    table, gains = make_tables(5)
    with pytest.raises(ValueError, match="matches no layer"):
        select(table, gains, max_loss_mse=1.0, keep=["b7.q"])
    with pytest.raises(ValueError, match="exactly one of"):
        select(table, gains, max_loss_mse=1.0, min_gain=1.0)
    with pytest.raises(ValueError, match="no plan meets"):
        select(table, gains, max_loss_mse=1e-12, pin={"head": "int8"})
    with pytest.raises(ValueError, match="no plan meets"):
        select(table, gains, min_gain=1e6)
    other = SensitivityTable(("x.q",), CANDS, np.ones((2, 1, 2)), np.ones((2, 1, 2)), np.full((1, 2), np.nan),
                             np.zeros((1, 2)))
    with pytest.raises(ValueError, match="different models"):
        select(other, gains, max_loss_mse=1.0)
    fewer = SensitivityTable(LAYERS, ("int8",), table.delta[:, :, :1], table.delta_weight[:, :, :1],
                             np.full((5, 1), np.nan), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="did not calibrate"):
        select(fewer, gains, max_loss_mse=1.0)
    with pytest.raises(ValueError, match="baseline_seconds|speedup must"):
        select(table, gains, target_speedup=0.5)


def test_pareto_is_monotone_and_matches_select():
    table, gains = make_tables(6)
    front = pareto(table, gains)
    assert len(front) >= 5
    costs = [p.predicted_loss_mse for p in front]
    gains_ = [p.predicted_gain for p in front]
    assert all(b >= a - 1e-12 for a, b in zip(gains_, gains_[1:]))
    for p in front[::5]:
        budget = p.objective["value"]
        assert select(table, gains, max_loss_mse=budget).predicted_gain == pytest.approx(p.predicted_gain, rel=1e-9)
        assert p.predicted_loss_mse <= budget * (1 + 1e-12)
    assert costs


def test_plan_round_trip_and_corrupt_files(tmp_path):
    table, gains = make_tables(7)
    plan = select(table, gains, max_loss_mse=0.1 * table.mse.sum())
    path = tmp_path / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    assert back.mapping == plan.mapping and back.predicted_gain == plan.predicted_gain
    assert back.solver == plan.solver and back.artifacts == plan.artifacts
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable mpq.Plan"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "mpq.GainTable", "version": 1}))
    with pytest.raises(ValueError, match="not a mpq.Plan"):
        Plan.load(tmp_path / "other.json")
    (tmp_path / "future.json").write_text(json.dumps({"format": "mpq.Plan", "version": 99, "mapping": {}}))
    with pytest.raises(ValueError, match="version 99"):
        Plan.load(tmp_path / "future.json")


def test_a_plan_carries_the_static_scales_of_its_chosen_candidates(tmp_path):
    """apply must run what calibration measured: a static candidate's calibrated scale travels in the Plan."""
    table, gains = make_tables(3)
    gains = GainTable(gains.backend, gains.phase, ("base", "int8_static", "fp8"), gains.subgraphs,
                      baseline_seconds=gains.baseline_seconds)
    L = len(LAYERS)
    scales = np.full((L, 2), np.nan)
    scales[:, 0] = np.arange(1, L + 1) / 64.0
    table = SensitivityTable(LAYERS, ("int8_static", "fp8"), table.delta, table.delta_weight, scales,
                             np.zeros((L, 2)))
    plan = select(table, gains, max_loss_mse=10 * table.mse.sum())
    assert set(plan.act_scales) == {l for l, c in plan.mapping.items() if c == "int8_static"} != set()
    assert all(plan.act_scales[l] == scales[LAYERS.index(l), 0] for l in plan.act_scales)
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json").act_scales == plan.act_scales
    d = plan.to_dict()
    d.update(version=1)
    del d["act_scales"]
    assert Plan.from_dict(d).act_scales == {}  # version 1 files load, without scales
    with pytest.raises(ValueError, match="act_scales names layers the plan does not map"):
        Plan({"a": "int8_static"}, 0.0, 0.0, act_scales={"b": 0.5})
    with pytest.raises(ValueError, match="positive finite"):
        Plan({"a": "int8_static"}, 0.0, 0.0, act_scales={"a": float("nan")})


def test_inputs_that_would_be_misread_are_refused():
    """A string where a list of names belongs would be read letter by letter; a pin list has no candidates."""
    table, gains = make_tables(1)
    with pytest.raises(ValueError, match="keep must be a list of layer names or patterns, not the string 'head'"):
        select(table, gains, max_loss_mse=1.0, keep="head")
    with pytest.raises(ValueError, match="pin must be a mapping"):
        select(table, gains, max_loss_mse=1.0, pin=["head"])
    with pytest.raises(ValueError, match="points must be a whole number >= 1, got 0"):
        pareto(table, gains, points=0)
    again = dataclasses.replace(gains.subgraphs[-1], name="h again")
    twice = GainTable(gains.backend, gains.phase, gains.candidates, gains.subgraphs + (again,),
                      baseline_seconds=gains.baseline_seconds)
    with pytest.raises(ValueError, match="layer 'head' is in two sub-graphs"):
        select(table, twice, max_loss_mse=1.0)


def test_a_front_under_a_memory_limit_keeps_it():
    table, gains = make_tables(2)
    limit = float(gains.layer_bytes[:, 0].sum()) * 0.6
    front = pareto(table, gains, points=6, max_memory=limit)
    assert front and all(p.predicted_memory <= limit for p in front)
    def weight_bytes(plan):
        return sum(gains.layer_bytes[LAYERS.index(l), gains.candidates.index(c)] for l, c in plan.mapping.items())
    assert all(p.predicted_memory == pytest.approx(weight_bytes(p)) for p in front)
    assert max(weight_bytes(p) for p in pareto(table, gains, points=6)) > limit  # the limit binds
    assert pareto(table, gains, points=6, max_memory=1.0) == []  # no plan fits in a byte: an empty front


def test_info_keys_the_file_format_uses_are_refused_not_dropped():
    table, _ = make_tables(0)
    with pytest.raises(ValueError, match=r"info keys \['layers', 'version'\] are reserved"):
        SensitivityTable(table.layers, table.candidates, table.delta, table.delta_weight, table.act_scales,
                         table.act_zero_points, info={"version": "mine", "layers": 3, "note": "ok"})


def test_info_keys_added_after_construction_are_refused_at_save(tmp_path):
    table, _ = make_tables(0)
    table.info["format"] = "mine"  # the dict is the user's to edit; the reserved name must not vanish at save
    with pytest.raises(ValueError, match=r"info keys \['format'\] are reserved"):
        table.save(tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()


def test_an_average_bits_limit_is_the_byte_limit_it_stands_for():
    import torch
    from torch import nn

    import mpq
    from mpq.selection import avg_bits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    batches = [(torch.randn(4, 64), torch.randint(0, 8, (4,))) for _ in range(2)]
    ce = lambda out, b: nn.functional.cross_entropy(out, b[1], reduction="none")  # noqa: E731
    cands = ("int8", "w4a16")
    table = mpq.calibrate(model, batches, cands, loss_fn=ce, progress=False)
    gains = mpq.profile(model, batches[0][0], cands, backend="memory")
    weights = 64 * 128 + 128 * 64 + 64 * 8
    assert avg_bits(gains, {}) == 32.0  # fp32 base
    every4 = {l: "w4a16" for l in ("0", "2", "4")}  # groups of 32 with one fp32 scale each: 4 + 32/32 bits
    assert avg_bits(gains, every4) == pytest.approx(5.0)
    budget = float(np.nansum(table.mse))  # every layer quantized fits
    # on bit-operation gains the best plan puts everything on int8 (8 x 8 bits per MAC beats 4 x 32): ~8 bits;
    # a limit below that binds and moves layers to w4a16
    ebops = mpq.profile(model, batches[0][0], cands, backend="ebops")
    free = select(table, ebops, max_loss_mse=budget)
    assert avg_bits(ebops, free.mapping) > 8
    for bits in (6.0, 7.0):
        plan = select(table, ebops, max_loss_mse=budget, max_avg_bits=bits)
        same = select(table, ebops, max_loss_mse=budget, max_memory=bits * weights / 8)
        assert plan.mapping == same.mapping != free.mapping and avg_bits(ebops, plan.mapping) <= bits + 1e-9
        assert plan.objective["max_avg_bits"] == bits
        front = pareto(table, ebops, [budget / 2, budget], max_avg_bits=bits)
        assert front and all(avg_bits(ebops, p.mapping) <= bits + 1e-9 and p.objective["max_avg_bits"] == bits
                             for p in front)
    with pytest.raises(ValueError, match="not both"):
        select(table, gains, max_loss_mse=budget, max_avg_bits=8.0, max_memory=1e6)
    with pytest.raises(ValueError, match="positive number of bits"):
        select(table, gains, max_loss_mse=budget, max_avg_bits=float("nan"))
