"""Calibration on several processes (torch.distributed, gloo on the CPU) and on models spread over devices by
accelerate (CPU, disk offload): the table equals the one a single process computes on the model in one piece."""
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mpq
from mpq import SensitivityTable
from mpq.calibration import fingerprint
from mpq.calibration.distributed import comm_device

from _cli_model import save_tiny_causal_lm
from _tiny_models import tiny_llama

HERE = Path(__file__).resolve().parent
PYTHON_DIR = Path(mpq.__file__).resolve().parents[1]  # the mpq under test: installed (CI) or the source tree
LAUNCH_TIMEOUT_S = 240  # the workers' own process-group timeout is 60 s: only a hang gets near this


def env_for_children():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(PYTHON_DIR), str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_table(a: SensitivityTable, b: SensitivityTable):
    assert a.layers == b.layers and a.candidates == b.candidates
    assert a.data_fingerprint == b.data_fingerprint and a.n_samples == b.n_samples
    np.testing.assert_allclose(a.delta, b.delta, rtol=1e-6, atol=0)
    np.testing.assert_allclose(a.delta_weight, b.delta_weight, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(a.act_scales, b.act_scales)
    np.testing.assert_array_equal(a.act_zero_points, b.act_zero_points)


# --- several processes -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(output folder, model folder, both ranks' outcome of every step, exit codes, logs) of one launch of two
    tests/_distributed_worker.py processes."""
    out = tmp_path_factory.mktemp("ranks")
    model_dir = save_tiny_causal_lm(out / "m")
    env = env_for_children()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PORT2=str(free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(HERE / "_distributed_worker.py"), str(out), str(model_dir)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=LAUNCH_TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for r in range(2):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote nothing:\n{logs[r][-3000:]}"
        results.append(json.loads(path.read_text()))
    return out, model_dir, results, [p.returncode for p in procs], logs


def test_mpq_calibrate_under_a_launcher_on_two_ranks_equals_one_process(two_ranks, tmp_path):
    import _distributed_worker as w
    from mpq.cli import main
    out, model_dir, results, _, _ = two_ranks
    assert [r["cli"] for r in results] == [{"exit": 0, "group_left": True}] * 2
    one = tmp_path / "one.npz"
    assert main(["calibrate", str(model_dir), *w.CLI_ARGS, "-o", str(one)]) == 0
    two, single = SensitivityTable.load(out / "cli.npz"), SensitivityTable.load(one)
    assert_same_table(two, single)
    assert two.n_samples == 6 and two.info["ranks"] == 2 and "ranks" not in single.info
    assert np.isfinite(two.act_scales[:, 1]).all()  # the static candidate's scales: reduced over both ranks


def single_process_reference():
    import _distributed_worker as w
    return mpq.calibrate(w.mlp(), w.batches(), w.CANDIDATES, loss_fn=w.ce_loss, progress=False)


def test_two_ranks_hold_the_single_process_channel_table(two_ranks):
    """granularity="group:4": the per-group δ are gathered from both ranks in the batches' order too."""
    import _distributed_worker as w
    from mpq.artifacts.channel_table import ChannelTable
    out, _, results, _, _ = two_ranks
    assert all("returned" in r["channel"] for r in results), [r["channel"] for r in results]
    one = mpq.calibrate(w.mlp(), w.batches(), w.CANDIDATES, loss_fn=w.ce_loss, progress=False, granularity="group:4")
    for r in range(2):
        two = ChannelTable.load(out / f"channel{r}.npz")
        assert_same_table(two.table, one.table)
        assert two.group_rows == one.group_rows == (4, 4)
        np.testing.assert_allclose(two.group_delta_weight, one.group_delta_weight, rtol=1e-6, atol=0)


def test_two_ranks_hold_the_single_process_table(two_ranks):
    out, _, results, _, _ = two_ranks
    assert all("returned" in r["same"] for r in results)
    reference = single_process_reference()
    for r in range(2):
        assert_same_table(SensitivityTable.load(out / f"table{r}.npz"), reference)


def test_two_ranks_hold_the_single_process_table_bit_for_bit(two_ranks):
    """At the workers' one thread, the gathered table is the single process's to the last bit, fingerprint too."""
    import _distributed_worker as w
    out, _, _, _, _ = two_ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = single_process_reference()
    finally:
        torch.set_num_threads(threads)
    assert reference.data_fingerprint == fingerprint(w.batches())  # what a single process computes
    for r in range(2):
        two = SensitivityTable.load(out / f"table{r}.npz")
        assert two.data_fingerprint == reference.data_fingerprint and two.n_samples == reference.n_samples == 15
        for name in ("delta", "delta_weight", "act_scales", "act_zero_points"):
            a, b = getattr(two, name), getattr(reference, name)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name


def test_exchanges_larger_than_the_inline_room_take_a_second_collective(two_ranks):
    """With 8 bytes inline, every exchange (what each rank calibrates, the ranges, the δ) spills: same table;
    a failure message that spills still reaches the other rank whole."""
    out, _, results, _, _ = two_ranks
    assert all("returned" in r["spilled"] for r in results), [r["spilled"] for r in results]
    reference = single_process_reference()
    for r in range(2):
        assert_same_table(SensitivityTable.load(out / f"spilled{r}.npz"), reference)
    failing, other = results[1]["failing_spilled"], results[0]["failing_spilled"]
    assert failing.get("raised") == "ValueError" and "non-finite loss in batch 1" in failing["message"]
    assert other.get("raised") == "RankFailed", other
    assert f"rank 1 failed: ValueError: {failing['message']}"[:120] in other["message"]


def test_two_ranks_reduce_attention_ranges_with_the_linear_ones(two_ranks):
    import _distributed_worker as w
    out, _, results, _, _ = two_ranks
    assert all("returned" in r["attention"] for r in results), [r["attention"] for r in results]
    reference = mpq.calibrate(tiny_llama(layers=1), w.lm_batches(), w.ATTENTION_CANDIDATES, progress=False)
    assert any(n.endswith("k_cache") for n in reference.layers)
    for r in range(2):
        two = SensitivityTable.load(out / f"attention{r}.npz")
        assert_same_table(two, reference)
        assert two.info["attention_scales"] == reference.info["attention_scales"]


def test_two_ranks_sum_the_experts_tokens(two_ranks, one_thread):  # the reference on one thread, as the ranks
    import _distributed_worker as w
    from _tiny_moe import tiny_mixtral
    out, _, results, _, _ = two_ranks
    assert all("returned" in r["experts"] for r in results), [r["experts"] for r in results]
    reference = mpq.calibrate(tiny_mixtral(), w.lm_batches(), ("int8",), progress=False)
    tokens = reference.info["experts"]["tokens"]
    assert sum(tokens.values()) > 0
    for r in range(2):
        two = SensitivityTable.load(out / f"experts{r}.npz")
        assert_same_table(two, reference)
        assert two.info["experts"]["tokens"] == tokens


@pytest.mark.parametrize("scenario, every_rank_says, not_said", [
    ("other_candidates", ["rank 1 differs from rank 0 in candidates"], []),
    ("other_weights", ["rank 1 differs from rank 0 in the model's weights", "0.weight"], []),
    ("one_weight_nudged", ["rank 1 differs from rank 0 in the model's weights (2.weight)"], ["0.weight"]),
    ("other_batch_own_shard", ["rank 1 differs from rank 0 in data_fingerprint"], ["weights"]),
    ("other_batch_other_shard", ["rank 1 differs from rank 0 in data_fingerprint"], ["weights"]),
])
def test_ranks_that_differ_are_refused_on_every_rank_naming_the_rank(two_ranks, scenario, every_rank_says, not_said):
    _, _, results, _, _ = two_ranks
    for r in range(2):
        got = results[r][scenario]
        assert got.get("raised") == "ValueError", got
        for text in every_rank_says:
            assert text in got["message"]
        for text in not_said:
            assert text not in got["message"]


@pytest.mark.parametrize("scenario, own_error", [
    ("unknown_candidate", "unknown candidate"),
    ("failing_rank", "non-finite loss in batch 1"),
])
def test_a_failing_rank_makes_every_rank_raise(two_ranks, scenario, own_error):
    _, _, results, _, _ = two_ranks
    failing, other = results[1][scenario], results[0][scenario]
    assert failing.get("raised") == "ValueError" and own_error in failing["message"]
    assert other.get("raised") == "RankFailed", other
    assert "rank 1 failed" in other["message"] and own_error in other["message"]


def test_a_killed_rank_makes_the_others_raise_not_hang(two_ranks):
    _, _, results, codes, logs = two_ranks
    assert codes[1] == -9 and "killed_rank" not in results[1]
    got = results[0]["killed_rank"]
    assert got.get("raised") == "RankFailed", got
    assert "exchanging the per-sample sensitivities" in got["message"]
    assert codes[0] == 0, logs[0][-3000:]


def test_the_exchange_device_follows_the_process_group():
    cpu = torch.device("cpu")
    assert comm_device("gloo", cpu) == cpu
    assert comm_device("cpu:gloo,cuda:nccl", cpu) == cpu
    assert comm_device("xccl", cpu) == torch.device("xpu")  # a backend without the CPU: its own device
    assert comm_device("cpu:gloo,hpu:hccl", torch.device("hpu")) == torch.device("hpu")
    with pytest.raises(ValueError, match="names no device"):
        comm_device("undefined", cpu)


# --- one model over several devices ----------------------------------------------------------------------------
def lm_batches():
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(3)]


CANDS = ("int8", "int8_static", "w4a16")


def dispatched(model, how, folder):
    accelerate = pytest.importorskip("accelerate")
    if how == "device_map":
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
        return accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(folder))
    if how == "cpu_offload":
        return accelerate.cpu_offload(model, execution_device="cpu")
    return accelerate.disk_offload(model, str(folder), execution_device="cpu")


@pytest.mark.parametrize("how", ["device_map", "cpu_offload", "disk_offload"])
def test_a_model_dispatched_by_accelerate_calibrates_as_in_one_piece(how, tmp_path):
    torch.set_num_threads(1)
    whole = tiny_llama(layers=2)
    reference = mpq.calibrate(whole, lm_batches(), CANDS, progress=False)
    with torch.no_grad():
        logits = whole(**lm_batches()[0]).logits

    model = dispatched(copy.deepcopy(whole), how, tmp_path)
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert "model.layers.1.mlp.down_proj.weight" in offloaded
    table = mpq.calibrate(model, lm_batches(), CANDS, progress=False)
    assert_same_table(table, reference)

    # the model is left as it was: still dispatched, flags restored, no gradient, the same outputs
    assert [n for n, p in model.named_parameters() if p.device.type == "meta"] == offloaded
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(**lm_batches()[0]).logits, logits, rtol=0, atol=0)


def test_autograd_keeps_no_offloaded_weight_until_the_backward(tmp_path):
    import gc
    import weakref

    from mpq.calibration.devices import offloaded_weights_reloaded
    whole = tiny_llama(layers=2).requires_grad_(False)  # as in calibration: only activation gradients
    ids = lm_batches()[0]["input_ids"]
    emb = whole.get_input_embeddings()(ids).detach().requires_grad_(True)
    whole(inputs_embeds=emb).logits.square().sum().backward()

    model = dispatched(copy.deepcopy(whole), "disk_offload", tmp_path)
    loaded = []  # a weak reference to every weight accelerate loads for a forward
    for m in model.modules():
        hook = getattr(m, "_hf_hook", None)
        if hook is not None and getattr(hook, "offload", False):
            def pre(module, *args, _orig=hook.pre_forward, **kwargs):
                out = _orig(module, *args, **kwargs)
                loaded.extend((n, weakref.ref(p)) for n, p in module.named_parameters(recurse=False))
                return out
            hook.pre_forward = pre
    x = emb.detach().clone().requires_grad_(True)
    with offloaded_weights_reloaded(model):
        out = model(inputs_embeds=x).logits.square().sum()
        gc.collect()
        assert len(loaded) > 10 and [n for n, r in loaded if r() is not None] == []  # none kept alive by the graph
        out.backward()
    torch.testing.assert_close(x.grad, emb.grad, rtol=1e-5, atol=1e-7)  # the backward found every weight again
