"""Configurations, GainTable files, mpq.profile on tiny models (correctness of the table, never wall-clock)."""
import numpy as np
import pytest
import torch
from torch import nn

from _tiny_models import tiny_llama
from mpq.formats import compute_scales, format_info
from mpq.profiling.backends import BackendUnavailable, TimedBackend, get_backend
from mpq.artifacts import GainTable, SubgraphGains
from mpq.partitioning import Subgraph
from mpq.profiling import enumerate_configs, profile


def attn_like():
    return Subgraph("attn", ("q", "k", "v", "o"), (("q", "k", "v"),), "q")


def test_configs_respect_ties_and_count():
    cfg, subset, note = enumerate_configs(attn_like(), ["int8", "w8a16"])
    assert cfg.shape == (9, 4) and not subset and note == ""
    assert (cfg[0] == 0).all()
    assert (cfg[:, 0] == cfg[:, 1]).all() and (cfg[:, 1] == cfg[:, 2]).all()
    assert len({tuple(r) for r in cfg}) == 9
    assert {tuple(r[[0, 3]]) for r in cfg} == {(a, b) for a in range(3) for b in range(3)}


def test_configs_skip_candidates_that_do_not_apply():
    sg = Subgraph("s", ("a", "b"), (), "a")
    cfg, _, note = enumerate_configs(sg, ["int8", "w4a16_g128"], lambda l, c: not (l == "b" and c == "w4a16_g128"))
    assert cfg.shape == (6, 2)
    assert 2 not in cfg[:, 1]
    assert "w4a16_g128 on b" in note


def test_configs_subset_when_too_many():
    sg = Subgraph("big", tuple("abcdef"), (), "a")
    cfg, subset, note = enumerate_configs(sg, ["int8", "w8a16", "w4a16"], max_configs=40, seed=3)
    assert subset and "subset: 40 of 4096" in note
    assert cfg.shape == (40, 6) and (cfg[0] == 0).all()
    rows = {tuple(r) for r in cfg}
    assert len(rows) == 40
    for j in (1, 2, 3):                                   # every candidate alone on every layer, and uniform
        assert tuple([j] * 6) in rows
        for i in range(6):
            assert tuple(j if k == i else 0 for k in range(6)) in rows
    again, _, _ = enumerate_configs(sg, ["int8", "w8a16", "w4a16"], max_configs=40, seed=3)
    assert np.array_equal(cfg, again)


def small_table():
    sg0 = SubgraphGains("s0", ("a", "b"), (("a", "b"),), np.array([[0, 0], [1, 1]], np.int32),
                        np.array([0.0, 2e-3]), np.array([0.0, 1e-4]), np.array([False, False]), 5e-3)
    sg1 = SubgraphGains("s1", ("c",), (), np.array([[0], [1], [2]], np.int32), np.array([0.0, -1e-3, 3e-4]),
                        np.array([0.0, 1e-4, 5e-4]), np.array([False, False, True]), 2e-3, True, "subset: test")
    return GainTable("cpu", "decode", ("base", "int8", "w8a16"), (sg0, sg1), 8e-3, "seconds",
                     {"input": [[1, 1]], "layers": {"a": [1, 4, 4]}}, {"threads": 1}, ("a", "b", "c"),
                     np.arange(9.0).reshape(3, 3), np.zeros((3, 3)), np.zeros((3, 3)))


def test_gain_table_round_trip(tmp_path):
    t = small_table()
    t.save(tmp_path / "g.npz")
    u = GainTable.load(tmp_path / "g.npz")
    assert (u.backend, u.phase, u.candidates, u.baseline_seconds, u.unit) == \
        (t.backend, t.phase, t.candidates, t.baseline_seconds, t.unit)
    assert u.shapes == t.shapes and u.meta == t.meta and u.layer_names == t.layer_names
    for a, b in zip(t.subgraphs, u.subgraphs):
        assert (a.name, a.layers, a.ties, a.subset, a.note, a.baseline_seconds) == \
            (b.name, b.layers, b.ties, b.subset, b.note, b.baseline_seconds)
        for f in ("configs", "gain", "spread", "noisy"):
            assert np.array_equal(getattr(a, f), getattr(b, f))
    assert np.array_equal(u.layer_bytes, t.layer_bytes)


def test_gain_table_queries_and_errors(tmp_path):
    t = small_table()
    assert t.predict({"a": "int8", "b": "int8", "c": "w8a16"}) == pytest.approx(2.3e-3)
    assert t.predict({}) == 0.0
    with pytest.raises(KeyError, match="was not measured"):
        t.predict({"a": "int8"})                      # breaks the a/b tie
    with pytest.raises(KeyError, match="not in this table"):
        t.predict({"zz": "int8"})
    (tmp_path / "x.npz").write_bytes(b"not an npz file")
    with pytest.raises(ValueError, match="not a readable mpq.GainTable"):
        GainTable.load(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="must start with 'base'"):
        GainTable("cpu", "decode", ("int8",), ())


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_profile_cpu_table_is_consistent(phase):
    m = mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    t = profile(m, torch.randn(16, 64), ["int8", "w8a16"], backend="cpu", phase=phase, repeats=3, warmup=1)
    assert [s.layers for s in t.subgraphs] == [("0",), ("2",), ("4",)]
    assert t.candidates == ("base", "int8", "w8a16") and t.phase == phase and t.unit == "seconds"
    assert t.shapes["layers"]["0"] == ([16, 64, 128] if phase == "prefill" else [1, 64, 128])
    assert t.meta["threads"] == 1 and t.meta["clock"] == "ThreadClock"
    for s in t.subgraphs:
        assert s.configs.tolist() == [[0], [1], [2]]
        assert s.gain[0] == 0 and np.isfinite(s.gain).all() and (s.spread >= 0).all()
        assert np.array_equal(s.noisy[1:], s.spread[1:] >= np.abs(s.gain[1:]))
        assert s.baseline_seconds > 0
    assert t.layer_gain.shape == (3, 3) and np.isfinite(t.layer_gain).all()
    assert t.baseline_seconds > 0
    check = t.meta["additivity"]
    assert check["passes"] == 3 * 3      # the figures themselves: test_additivity_figures_of_planted_times
    assert set(check) == {"passes", "median_error_s", "median_abs_error_s", "base_pass_iqr_s",
                          "base_slower_in_mixed_passes_s"} and all(np.isfinite(v) for v in check.values())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())   # model untouched
    assert all(isinstance(mod, nn.Linear) for mod in (m[0], m[2], m[4]))


class _SimClock:
    """A clock that only advances when a simulated kernel says so: timings become exact."""

    def __init__(self):
        self.now = 0

    def mark(self):
        return self.now

    def seconds(self, t0, t1):
        return float(t1 - t0)

    def sync(self):
        pass


class _Costly(nn.Module):
    def __init__(self, clock, cost):
        super().__init__()
        self.clock, self.cost = clock, cost

    def forward(self, x):
        self.clock.now += self.cost
        return x


def test_mixed_passes_time_every_configuration_exactly():
    """One all-base pass and mixed passes (sub-graphs on random, shifted configurations) per repeat: with a clock
    that advances by a known cost per module, every configuration of every sub-graph is timed once per repeat and
    its gain and the additivity check are exact, whatever the other sub-graphs ran in the same pass."""
    from mpq.profiling.timing import additivity_check, gains_from_times, time_in_model
    clock = _SimClock()
    model = nn.Sequential(*[nn.Identity() for _ in range(5)])
    base_cost = [10, 20, 30, 40, 50]
    for i in range(5):
        model[i] = _Costly(clock, base_cost[i])
    subgraphs = [Subgraph("a", ("0", "1"), (), "0"), Subgraph("b", ("2",), (), "2"), Subgraph("c", ("3", "4"), (), "3")]
    cands = ("base", "x", "y")
    cost = {("0", "x"): 4, ("1", "x"): 5, ("0", "y"): 1, ("1", "y"): 2, ("2", "x"): 7, ("3", "x"): 33, ("4", "x"): 1}
    modules = {k: _Costly(clock, v) for k, v in cost.items()}
    configs = [np.array([[0, 0], [1, 1], [2, 2], [1, 2]]), np.array([[0], [1]]), np.array([[0, 0], [1, 0], [1, 1]])]
    seg, base_whole, passes, base_mixed = time_in_model(model, lambda: model(torch.zeros(1)), subgraphs, configs,
                                                        cands, modules, clock, repeats=5, warmup=1, seed=3)
    assert (base_whole == 150).all()
    assert (base_mixed == np.array([[30], [30], [90]])).all()   # base once a repeat in the mixed passes too
    for sg, cfg, t in zip(subgraphs, configs, seg):
        assert t.shape == (len(cfg), 5) and np.isfinite(t).all()
        expected = [sum(base_cost[int(l)] if j == 0 else cost[(l, cands[j])] for l, j in zip(sg.layers, row))
                    for row in cfg]
        assert (t == np.array(expected)[:, None]).all()
    assignment, whole = passes
    assert assignment.shape == (5, 4, 3)                    # 4 mixed passes: the most configurations
    for r in range(5):
        for i, cfg in enumerate(configs):
            ran = assignment[r, :, i]
            assert sorted(ran[ran >= 0].tolist()) == list(range(len(cfg)))   # each once a repeat, base too
    mixed = {tuple(a) for a in assignment.reshape(-1, 3).tolist()}
    assert len(mixed) > 4                                   # passes combine configurations differently
    check = additivity_check(base_whole, [gains_from_times(t)[0] for t in seg], passes)
    assert check == {"passes": 20, "median_error_s": 0.0, "median_abs_error_s": 0.0, "base_pass_iqr_s": 0.0}
    assert all(model[i] is not None and isinstance(model[i], _Costly) and model[i].cost == base_cost[i]
               for i in range(5))                           # originals restored


class _SlowAmongQuantized(_Costly):
    """A base kernel that costs `extra` more in a pass where any layer runs quantized (as measured on a real CPU:
    base segments run slower among quantized neighbours than in the unquantized model)."""

    def __init__(self, clock, cost, extra, mixed):
        super().__init__(clock, cost)
        self.extra, self.mixed = extra, mixed

    def forward(self, x):
        self.clock.now += self.cost + (self.extra if self.mixed[0] else 0)
        return x


def test_gains_are_against_the_unquantized_model():
    """A sub-graph's base time comes from the all-base pass, so its gain is what quantizing it saves against the
    unquantized model, even where base kernels slow down among quantized neighbours."""
    from mpq.profiling.timing import gains_from_times, time_in_model
    clock, mixed, n = _SimClock(), [False], 5
    model = nn.Sequential(*[_SlowAmongQuantized(clock, 10, 3, mixed) for _ in range(n)])
    quantized = {(str(i), "x"): _Costly(clock, 4) for i in range(n)}
    model.register_forward_pre_hook(lambda m, a: mixed.__setitem__(
        0, any(c is q for c in m.children() for q in quantized.values())))
    subgraphs = [Subgraph(str(i), (str(i),), (), str(i)) for i in range(n)]
    configs = [np.array([[0], [1]])] * n
    seg, base_whole, _, base_mixed = time_in_model(model, lambda: model(torch.zeros(1)), subgraphs, configs,
                                                   ("base", "x"), quantized, clock, repeats=4, warmup=1, seed=0)
    assert (base_whole == 10 * n).all()
    assert set(np.unique(base_mixed)) == {10, 13}           # slower in the passes with a quantized layer...
    assert [gains_from_times(t)[0].tolist() for t in seg] == [[0.0, 6.0]] * n   # ...but the gain is 10 − 4


class _CostlyLinear(nn.Linear):
    """An nn.Linear of the model that costs `cost` on a simulated clock; `qcost` {candidate: cost} of the
    modules the simulated backend makes for it."""

    def __init__(self, clock, cost, qcost):
        super().__init__(4, 4)
        self.clock, self.cost, self.qcost = clock, cost, qcost

    def forward(self, x):
        self.clock.now += self.cost
        return x


class _Prologue(nn.Module):
    """Runs before every sub-graph (outside all segments) and costs a planted amount per call."""

    def __init__(self, clock, plant):
        super().__init__()
        self.clock, self.plant, self.charged = clock, plant, []

    def forward(self, x):
        cost = self.plant(len(self.charged))
        self.charged.append(cost)
        self.clock.now += cost
        return x


class _SimBackend(TimedBackend):
    """A timed backend on a simulated clock: what every module costs is known, so a profile's figures are."""
    name, base_format = "cpu", "fp32"
    kernels = {"int8": "sim", "w8a16": "sim"}

    def __init__(self, clock):
        self.sim = clock

    def prepare(self, model, example_input):
        return model, example_input

    def make_module(self, linear, candidate, act_scale=None, implementation=None):
        return _Costly(self.sim, linear.qcost[candidate])

    def clock(self):
        return self.sim


def test_additivity_figures_of_planted_times(monkeypatch):
    """Every layer costs a known time and a prologue outside all sub-graphs a planted, varying one per pass: a mixed
    pass's error (measured − (its repeat's all-base pass − Σ gains)) is then exactly its prologue's cost minus that
    of its repeat's all-base pass, whatever configurations it ran; the figures in meta are their medians."""
    from mpq.profiling.backends import cpu as cpu_module
    from mpq.profiling.timing import iqr
    clock = _SimClock()
    monkeypatch.setattr(cpu_module, "BACKEND", _SimBackend(clock))
    prologue = _Prologue(clock, lambda i: (7 * i * i + 3 * i) % 11)
    costs = {"1": (50, {"int8": 20, "w8a16": 45}), "2": (30, {"int8": 10, "w8a16": 40}),
             "3": (80, {"int8": 35, "w8a16": 60})}
    model = nn.Sequential(prologue, *[_CostlyLinear(clock, c, q) for c, q in costs.values()])
    subgraphs = [Subgraph("a", ("1",), (), "1"), Subgraph("b", ("2", "3"), (), "2")]
    repeats, warmup = 5, 2
    t = profile(model, torch.zeros(2, 4), ["int8", "w8a16"], subgraphs=subgraphs, repeats=repeats, warmup=warmup)
    kmax = 9                                                # sub-graph b: 3 x 3 configurations
    passes = np.array(prologue.charged[-(warmup + repeats) * (1 + kmax):]).reshape(-1, 1 + kmax)[warmup:]
    base_pass, mixed = passes[:, 0], passes[:, 1:]
    err = (mixed - base_pass[:, None]).ravel()
    check = t.meta["additivity"]
    assert check == {"passes": repeats * kmax, "median_error_s": float(np.median(err)),
                     "median_abs_error_s": float(np.median(np.abs(err))),
                     "base_pass_iqr_s": iqr(base_pass), "base_slower_in_mixed_passes_s": 0.0}
    assert check["median_error_s"] != 0 and check["base_pass_iqr_s"] > 0     # the plant is not trivial
    base = sum(c for c, _ in costs.values())
    assert t.baseline_seconds == base + float(np.median(base_pass))
    for sg in t.subgraphs:
        expected = [sum(costs[l][0] - (costs[l][1][t.candidates[j]] if j else costs[l][0])
                        for l, j in zip(sg.layers, row)) for row in sg.configs]
        assert sg.gain.tolist() == expected and not sg.spread.any()
        assert sg.baseline_seconds == sum(costs[l][0] for l in sg.layers)
    assert t.layer_gain.tolist() == [[0.0] + [costs[l][0] - costs[l][1][c] for c in ("int8", "w8a16")]
                                     for l in ("1", "2", "3")]
    assert t.meta["clock"] == "_SimClock" and t.meta["base_format"] == "fp32" and t.unit == "seconds"


def _record_scales(monkeypatch, backend, model):
    """Records the static activation scale each module the backend makes gets: {(layer, candidate): scale} (the
    model's Linear layers have distinct shapes: they name the backend's copies of them)."""
    names = {m.weight.shape: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(names) == sum(isinstance(m, nn.Linear) for m in model.modules())
    made, make = {}, backend.make_module

    def recording(linear, candidate, act_scale=None, implementation=None):
        made[(names[linear.weight.shape], candidate)] = act_scale
        return make(linear, candidate, act_scale, implementation)
    monkeypatch.setattr(backend, "make_module", recording)
    return made


def test_two_static_candidates_of_a_layer_get_their_own_scales(monkeypatch):
    m = mlp()
    made = _record_scales(monkeypatch, get_backend("cpu"), m)
    x = torch.randn(4, 64)
    scales = {"int8_static": {"0": 0.05, "2": 0.07, "4": 0.09}, "fp8_static": {"0": 0.003, "2": 0.004}}
    profile(m, x, ["int8_static", "fp8_static"], repeats=3, warmup=0, per_layer=False, act_scales=scales)
    for c, per_layer in scales.items():
        for l, s in per_layer.items():
            assert made[(l, c)] == s, (l, c)
    with torch.no_grad():                                  # no calibrated scale: its own, not int8_static's
        x4 = m[3](m[2](m[1](m[0](x))))
    assert made[("4", "fp8_static")] == float(compute_scales(x4, "fp8_e4m3")[0][0])


def test_act_scales_per_layer_need_exactly_one_static_candidate(monkeypatch):
    m = mlp()
    made = _record_scales(monkeypatch, get_backend("cpu"), m)
    x = torch.randn(4, 64)
    profile(m, x, ["int8", "int8_static"], repeats=3, warmup=0, per_layer=False,
            act_scales={"0": 0.1, "2": 0.2, "4": 0.3})
    assert [made[(l, "int8_static")] for l in ("0", "2", "4")] == [0.1, 0.2, 0.3]
    assert made[("0", "int8")] is None
    with pytest.raises(ValueError, match="exactly one static candidate.*'int8_static', 'fp8_static'"):
        profile(m, x, ["int8_static", "fp8_static"], repeats=3, act_scales={"0": 0.1})
    with pytest.raises(ValueError, match="exactly one static candidate.*has 0"):
        profile(m, x, ["int8"], repeats=3, act_scales={"0": 0.1})
    with pytest.raises(ValueError, match=r"scales for \['int8'\], which are not static"):
        profile(m, x, ["int8", "int8_static"], repeats=3, act_scales={"int8": {"0": 0.1}})
    with pytest.raises(ValueError, match="mixes"):
        profile(m, x, ["int8_static"], repeats=3, act_scales={"int8_static": {"0": 0.1}, "2": 0.2})
    with pytest.raises(ValueError, match="positive finite"):
        profile(m, x, ["int8_static"], repeats=3, act_scales={"0": -0.1})


def test_static_scales_without_calibration_follow_the_formats_rule(monkeypatch):
    """A static candidate without a calibrated scale gets its format's own scale rule on the layer's input (the
    Gaudi-2 hardware scales for fp8_gaudi2, not amax / 240): the hpu backend's modules, run on CPU tensors."""
    from mpq.models import prepare_bf16_on
    from mpq.profiling.backends import hpu as hpu_module
    from mpq.profiling.timing import PerfClock

    class HpuOnCpu(hpu_module.HpuBackend):
        def available(self):
            return True, ""

        def prepare(self, model, example_input):
            return prepare_bf16_on("cpu", model, example_input)

        def clock(self):
            return PerfClock()

    monkeypatch.setattr(hpu_module, "BACKEND", HpuOnCpu())
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    x = torch.randn(4, 64) * 5
    made = _record_scales(monkeypatch, get_backend("hpu"), m)
    t = profile(m, x, ["fp8_gaudi2", "fp8_static"], backend="hpu", repeats=3, warmup=0, per_layer=False)
    work, xb = prepare_bf16_on("cpu", m, x)
    with torch.no_grad():
        ins = {"0": xb, "2": torch.relu(work[0](xb))}
    for l, xin in ins.items():
        for c, fmt in (("fp8_gaudi2", "fp8_e4m3_gaudi2"), ("fp8_static", "fp8_e4m3")):
            assert made[(l, c)] == float(compute_scales(xin, fmt)[0][0]), (l, c)
        assert made[(l, "fp8_gaudi2")] in format_info("fp8_e4m3_gaudi2")["hw_scales"]
    assert made[("0", "fp8_gaudi2")] != pytest.approx(float(xb.float().abs().max()) / 240)
    assert t.meta["base_format"] == "bf16" and t.meta["clock"] == "PerfClock"
    assert all(np.isfinite(s.gain).all() for s in t.subgraphs)


def test_profile_tiny_llama_decode():
    m = tiny_llama()
    t = profile(m, torch.randint(0, 64, (1, 8)), ["int8"], phase="decode", repeats=3, warmup=1,
                per_layer=False)
    assert [s.name for s in t.subgraphs] == ["model.layers.0.self_attn", "model.layers.0.mlp", "lm_head"]
    assert [len(s.gain) for s in t.subgraphs] == [4, 4, 2]
    assert t.shapes["input"] == [[1, 1]] and t.shapes["cache_tokens"] == 8
    assert t.layer_gain is None


def test_profile_memory_and_macs_exact():
    m = nn.Sequential(nn.Linear(64, 32))
    mem = profile(m, torch.randn(4, 64), ["int8", "w4a16", "bf16"], backend="memory")
    g = mem.subgraphs[0].gain
    base = 64 * 32 * 4
    assert g.tolist() == [0.0, base - (64 * 32 + 4 * 32), base - (64 * 32 / 2 + 4 * 32 * 2), base - (64 * 32 * 2 + 4)]
    assert mem.unit == "bytes" and mem.baseline_seconds == base
    macs = profile(m, torch.randn(4, 64), ["int8", "w8a16"], backend="macs", device="cpu-avx2")
    n = 4 * 64 * 32
    assert macs.subgraphs[0].gain == pytest.approx([0.0, n / 40e9 - n / 80e9, 0.0])


def test_profile_errors():
    m = mlp()
    with pytest.raises(ValueError, match="backend 'cpu' cannot run 'fp8_gaudi2' \\(it runs int8, "):
        profile(m, torch.randn(2, 64), ["fp8_gaudi2"], backend="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        profile(m, torch.randn(2, 64), ["int8"], backend="tpu")
    with pytest.raises(ValueError, match="phase"):
        profile(m, torch.randn(2, 64), ["int8"], phase="train")
    with pytest.raises(ValueError, match="does not run through the model"):
        profile(m, torch.randn(2, 65), ["int8"])
    with pytest.raises(ValueError, match="unknown candidate"):
        profile(m, torch.randn(2, 64), ["int9"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the absent-CUDA path")
def test_cuda_absent_is_a_clean_refusal():
    ok, reason = get_backend("cuda").available()
    assert not ok and "cuda" in reason.lower()
    with pytest.raises(BackendUnavailable, match="backend 'cuda' is not available here"):
        profile(mlp(), torch.randn(2, 64), ["int8"], backend="cuda")


def test_hpu_absent_is_a_clean_refusal():
    ok, reason = get_backend("hpu").available()
    if ok:
        pytest.skip("a Gaudi is present")
    assert "habana_frameworks" in reason
    with pytest.raises(BackendUnavailable, match="habana_frameworks"):
        profile(mlp(), torch.randn(2, 64), ["fp8"], backend="hpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_profile_runs():
    m = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    t = profile(m, torch.randn(64, 256), ["fp8", "int8"], backend="cuda", repeats=5)
    assert t.meta["base_format"] == "bf16" and all(np.isfinite(s.gain).all() for s in t.subgraphs)


def test_cli_registers_profile_and_apply():
    from mpq.cli import build_parser
    p = build_parser()
    a = p.parse_args(["profile", "smollm2", "-o", "g.npz", "--phase", "decode", "--candidates", "int8"])
    assert a.phase == "decode" and a.candidates == "int8" and callable(a.func)
    b = p.parse_args(["apply", "smollm2", "plan.json", "--mode", "fake"])
    assert b.mode == "fake" and callable(b.func)


def unique_bytes(model) -> int:
    """Bytes of every distinct tensor storage the model holds (parameters and buffers)."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_a_tied_lm_head_costs_memory_when_quantized_and_the_plan_says_so():
    from _tiny_models import tiny_llama
    import mpq
    model = tiny_llama(layers=1, tie_word_embeddings=True)
    ids = torch.randint(0, 64, (1, 8))
    with pytest.warns(UserWarning, match="share their memory"):
        gains = mpq.profile(model, {"input_ids": ids}, ("int8",), backend="memory")
    li = gains.layer_names.index("lm_head")
    assert gains.meta["shared_weights"] == {"lm_head": ["model.embed_tokens.weight"]}
    assert gains.layer_bytes[li, 0] == 0 and gains.layer_bytes[li, 1] > 0  # int8 adds a copy, frees nothing
    head = next(sg for sg in gains.subgraphs if "lm_head" in sg.layers)
    j = head.layers.index("lm_head")
    only_head = [k for k, cfg in enumerate(head.configs) if cfg[j] == 1 and cfg.sum() == 1]
    assert only_head and all(head.gain[k] < 0 for k in only_head)  # a negative "saving"
    # what the plan predicts is what apply holds: quantizing every layer but the head saves, the head costs
    base_bytes = unique_bytes(model)
    for mapping in ({"lm_head": "int8"}, {n: "int8" for n in gains.layer_names if n != "lm_head"}):
        plan = mpq.Plan(mapping, 0.0, 0.0)
        q = mpq.apply(model, plan, mode="native")
        predicted = sum(gains.layer_bytes[gains.layer_names.index(l), 1] - gains.layer_bytes[
            gains.layer_names.index(l), 0] for l in mapping)
        held = unique_bytes(q) - base_bytes
        assert held == pytest.approx(predicted, rel=0.02), (mapping, held, predicted)
