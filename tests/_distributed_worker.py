"""One rank of tests/test_calibrate_distributed.py, started with the environment a launcher such as torchrun sets
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
  1. ``mpq calibrate MODEL ... -o OUT/cli.npz`` (the command line joins and leaves the process group itself);
  2. a gloo group of its own on port PORT2, in which the scenarios run one after another, each writing what it
     returned or raised to OUT/rank<R>.json (tables to OUT/table<R>.npz). The last scenario kills rank 1.
    python _distributed_worker.py OUT MODEL"""
import json
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mpq

TIMEOUT_S = 60  # the process group's: a hang would end here, not in CI's global timeout
CANDIDATES = ("int8", "int8_static", "w8a16")
CLI_ARGS = ["--candidates", "int8,int8_static,w4a16", "--seq-len", "16", "--samples", "6", "--batch-size", "2",
            "--threads", "1", "--quiet"]


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()


def batches():
    """Five batches (an uneven split over two ranks) of 3 samples of 2 tokens: (x [3, 2, 8], labels [3, 2])."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 2, 8, generator=g), torch.randint(0, 4, (3, 2), generator=g)) for _ in range(5)]


def other_batch(index):
    """``batches()`` with batch ``index``'s inputs changed in one value."""
    out = batches()
    x, y = out[index]
    x = x.clone()
    x[0, 0, 0] += 1.0
    out[index] = (x, y)
    return out


def nudged_mlp():
    """``mlp()`` with one weight of the second Linear changed by one part in a million."""
    model = mlp()
    with torch.no_grad():
        model[2].weight[1, 3] *= 1 + 1e-6
    return model


def lm_batches():
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(3)]


ATTENTION_CANDIDATES = ("int8_static", "mm_int8_static", "kv_int8_head")


def ce_loss(out, batch):
    return F.cross_entropy(out.transpose(1, 2), batch[1], reduction="none").mean(1)


def nan_on_batch_1(out, batch):
    loss = ce_loss(out, batch)
    return loss * float("nan") if torch.equal(batch[1], batches()[1][1]) else loss


def die_on_rank_1(out, batch):
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return ce_loss(out, batch)


def main(out_dir, model_dir):
    from mpq.cli import main as mpq_main
    code = mpq_main(["calibrate", model_dir, *CLI_ARGS, "--timeout", str(TIMEOUT_S), "-o",
                     os.path.join(out_dir, "cli.npz")])
    results = {"cli": {"exit": code, "group_left": not dist.is_initialized()}}

    torch.set_num_threads(1)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['PORT2']}", rank=rank,
                            world_size=size, timeout=timedelta(seconds=TIMEOUT_S))

    def attempt(name, model, cands, loss_fn, granularity="layer", file="table", data=batches, inline=None):
        from mpq.calibration import distributed as mpq_dist
        saved = mpq_dist.INLINE_BYTES
        if inline is not None:  # every exchange then spills into its second collective
            mpq_dist.INLINE_BYTES = inline
        try:
            table = mpq.calibrate(model, data(), cands, loss_fn=loss_fn, progress=False, granularity=granularity)
        except Exception as e:  # noqa: BLE001 - what each rank raised is the result
            results[name] = {"raised": type(e).__name__, "message": str(e)}
        else:
            table.save(os.path.join(out_dir, f"{file}{rank}.npz"))
            results[name] = {"returned": repr(table)}
        finally:
            mpq_dist.INLINE_BYTES = saved
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)

    attempt("same", mlp(), CANDIDATES, ce_loss)
    attempt("channel", mlp(), CANDIDATES, ce_loss, granularity="group:4", file="channel")
    attempt("other_candidates", mlp(), CANDIDATES if rank == 0 else ("int8", "w8a16"), ce_loss)
    attempt("other_weights", mlp(seed=rank), CANDIDATES, ce_loss)
    attempt("one_weight_nudged", nudged_mlp() if rank == 1 else mlp(), CANDIDATES, ce_loss)
    # rank 1 changes a batch of its own share (1), then one of rank 0's share (0): refused either way
    attempt("other_batch_own_shard", mlp(), CANDIDATES, ce_loss,
            data=(lambda: other_batch(1)) if rank == 1 else batches)
    attempt("other_batch_other_shard", mlp(), CANDIDATES, ce_loss,
            data=(lambda: other_batch(0)) if rank == 1 else batches)
    attempt("spilled", mlp(), CANDIDATES, ce_loss, file="spilled", inline=8)
    attempt("failing_spilled", mlp(), CANDIDATES, nan_on_batch_1, inline=8)
    # Linear and attention static ranges reduced together; the experts' token counts summed with the δ gather
    from _tiny_models import tiny_llama
    from _tiny_moe import tiny_mixtral
    attempt("attention", tiny_llama(layers=1), ATTENTION_CANDIDATES, None, file="attention", data=lm_batches)
    attempt("experts", tiny_mixtral(), ("int8",), None, file="experts", data=lm_batches)
    attempt("unknown_candidate", mlp(), CANDIDATES if rank == 0 else ("int7",), ce_loss)
    attempt("failing_rank", mlp(), CANDIDATES, nan_on_batch_1)
    attempt("killed_rank", mlp(), CANDIDATES, die_on_rank_1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
