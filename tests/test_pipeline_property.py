"""The whole pipeline on random tiny models (random depth and widths, a tied pair, a module under two names, a
Linear called twice): the model is bit-identical after every step, every Plan meets its budgets by exact
arithmetic, and save → load → save of every artifact is byte-identical."""
import math
import random

import pytest
import torch
from torch import nn

import mpq
from mpq.artifacts import GainTable, Plan, SensitivityTable


class RandomNet(nn.Module):
    def __init__(self, rng: random.Random):
        super().__init__()
        width = rng.choice([16, 32, 48])
        self.embed = nn.Embedding(40, width)
        self.blocks = nn.ModuleList()
        for _ in range(rng.randint(1, 3)):
            hidden = rng.choice([16, 32, 64])
            self.blocks.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)))
        self.twice = nn.Linear(width, width)               # called twice in forward
        self.alias = self.twice if rng.random() < 0.5 else nn.Linear(width, width)  # maybe one module, two names
        self.head = nn.Linear(width, 40, bias=False)
        if rng.random() < 0.5:
            self.head.weight = self.embed.weight            # tied to the embedding

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = x + b(x)
        x = self.twice(torch.relu(self.twice(x)))
        return self.head(self.alias(x))


def lm_loss(out, batch):
    ids = batch[0]
    ce = nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="none").view(ids.shape[0], -1)
    return ce.mean(1)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def exact_sum(values):
    return math.fsum(values)


def resave(obj, cls, path):
    obj.save(path)
    first = path.read_bytes()
    cls.load(path).save(path)
    return first == path.read_bytes()


@pytest.mark.parametrize("seed", range(6))
def test_the_pipeline_on_a_random_tiny_model(seed, tmp_path):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = RandomNet(rng).eval()
    before = state(model)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(0, 40, (4, 12), generator=g),) for _ in range(2)]
    table = mpq.calibrate(model, batches, ("int8", "w8a16"), loss_fn=lm_loss, progress=False)
    assert same(before, state(model))
    example = batches[0][0][:1]
    gains = mpq.profile(model, example, ("int8", "w8a16"), backend="memory")
    assert same(before, state(model))
    assert resave(table, SensitivityTable, tmp_path / "s.npz") and resave(gains, GainTable, tmp_path / "g.npz")
    layer_of = {n: i for i, n in enumerate(table.layers)}
    for frac in (0.0, 0.3, 1.0):
        budget = frac * float(table.mse[table.applicable].sum())
        limit = float(gains.layer_bytes[:, 0].sum()) * rng.uniform(0.5, 1.2)
        try:
            plan = mpq.select(table, gains, max_loss_mse=budget, max_memory=limit)
        except ValueError as e:  # a limit below the smallest plan: said, not silently exceeded
            assert "memory" in str(e) or "budget" in str(e), e
            continue
        cost = exact_sum(float(table.mse[layer_of[l], table.candidates.index(c)])
                         for l, c in plan.quantized.items())
        assert cost <= budget and cost == pytest.approx(plan.predicted_loss_mse, rel=1e-12, abs=1e-300)
        held = exact_sum(float(gains.layer_bytes[gains.layer_names.index(l), gains.candidates.index(c)])
                         for l, c in plan.mapping.items())
        assert held <= limit
        assert resave(plan, Plan, tmp_path / "p.json")
        for mode in ("fake", "native"):
            q = mpq.apply(model, plan, mode=mode)
            with torch.no_grad():
                assert q(example).shape == model(example).shape
            assert same(before, state(model))
