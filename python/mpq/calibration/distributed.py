"""Calibration on several processes (torch.distributed): ``mpq.calibrate`` called on every rank of an initialised
process group, with the same model, candidates and batches everywhere, calibrates rank r's share of the batches
(batches r, r + R, r + 2R, ...) and returns the same table on every rank: the one a single process computes.

Every exchange between the ranks goes through ``Ranks.exchange``: all ranks send a status and a payload, so that
a rank which fails (an exception in its share) reports it at the next exchange and every rank raises, naming it,
instead of waiting for it. A rank that dies is noticed by the backend (gloo, NCCL, HCCL: a closed connection at
once, a hung rank after the process group's ``timeout``) and every other rank raises too. The exchanges are, in
order: (1) what every rank calibrates (model, candidates, batches: refused when a rank differs), (2) only with
static-scale candidates, the activation ranges of every layer in one buffer (min of the minima, max of the maxima),
(3) the per-sample δ (with the per-group δ and the experts' token counts when there are any), in one buffer.
An exchange is one collective when every rank's payload fits in ``INLINE_BYTES``, else two (the rest, sized by
the first). The tensors travel on a device the process group's backend serves: the model's, else the CPU.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from datetime import timedelta
from typing import Callable, Optional, Sequence

import numpy as np
import torch

# how closely two ranks' parameter checksums must agree (they differ only by summation order: thread counts)
CHECKSUM_RTOL = 1e-9
# a parameter's checksum is summed in float64 this many values at a time (bounds the temporary); on the CPU fewer,
# so that the float64 copy stays in the cache and its memory is reused, not faulted in afresh for every parameter
CHECKSUM_CHUNK = 1 << 22
CHECKSUM_CHUNK_CPU = 1 << 18
# bytes of every rank's payload that travel in an exchange's first collective, beside the status: what each rank
# calibrates (a model of a few hundred parameters), the ranges and small δ fit, so each of those is one collective
INLINE_BYTES = 1 << 16
HEAD_BYTES = 16  # [failed, payload length] as int64


class RankFailed(RuntimeError):
    """Another rank failed or the ranks lost each other: raised on every rank that did not fail itself."""


class Ranks:
    """The processes that calibrate together; one process (``size`` 1) when torch.distributed is not in use."""

    def __init__(self, rank: int = 0, size: int = 1, group=None, device: Optional[torch.device] = None):
        self.rank, self.size, self.group, self.device = rank, size, group, device
        self.done = False  # after the last exchange a failure is no longer shared: the ranks left the protocol

    @classmethod
    def current(cls, model_device: torch.device) -> "Ranks":
        """The default process group when torch.distributed is initialised with more than one rank."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return cls()
        group = dist.group.WORLD
        device = comm_device(dist.get_backend_config(group), model_device)
        return cls(dist.get_rank(group), dist.get_world_size(group), group, device)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # --- sharing the work --------------------------------------------------------------------------------------
    def shard(self, batches: Sequence) -> list:
        """(global index, batch) of this rank's batches."""
        return [(i, batches[i]) for i in range(self.rank, len(batches), self.size)]

    def check_same(self, describe: Callable[[], dict]) -> None:
        """Refuses (on every rank) ranks whose ``describe()`` differs from rank 0's, naming them and what differs."""
        if not self.distributed:
            return
        mine = json.dumps(describe(), sort_keys=True).encode()
        theirs = [json.loads(p) for p in self.exchange(mine, "what each rank calibrates")]
        problems = []
        for r in range(1, self.size):
            diff = _differences(theirs[0], theirs[r])
            if diff:
                problems.append(f"rank {r} differs from rank 0 in {'; '.join(diff)}")
        if problems:
            raise ValueError("calibrate: every rank must pass the same model, candidates, layers and batches: "
                             + " | ".join(problems))

    def reduce_range(self, lo: list, hi: list) -> tuple[list, list]:
        """The elementwise min of ``lo`` and max of ``hi`` over the ranks (all layers' ranges in one call: one
        exchange)."""
        if not self.distributed:
            return lo, hi
        parts = [_load(p) for p in self.exchange(_dump(np.array([lo, hi], np.float64)), "activation ranges")]
        both = np.stack(parts)
        return both[:, 0].min(axis=0).tolist(), both[:, 1].max(axis=0).tolist()

    def gather_samples(self, local: Sequence[np.ndarray], sizes: Sequence[int],
                       totals: Sequence[np.ndarray] = ()) -> tuple:
        """Every rank's per-sample rows in the global order of the batches, then the sums over the ranks of
        ``totals``, all in one exchange (the last). ``local``: arrays [n, ...] (each its own trailing shape), this
        rank's rows (its batches in order); ``sizes``: the sample count of every batch; ``totals``: arrays of the
        same shape on every rank (counts)."""
        self.done = True  # from here on a failure on one rank is not announced: there is no exchange left
        if not self.distributed:
            return tuple(local) + tuple(totals)
        local, totals = [np.ascontiguousarray(a) for a in local], [np.ascontiguousarray(a) for a in totals]
        parts = [_load_many(p) for p in self.exchange(_dump_many(local + totals), "the per-sample sensitivities")]
        pieces = [{} for _ in local]
        summed = [np.zeros_like(t) for t in totals]
        for r, part in enumerate(parts):
            idx = list(range(r, len(sizes), self.size))
            n = sum(sizes[i] for i in idx)
            want = [(n,) + a.shape[1:] for a in local] + [t.shape for t in totals]
            if [a.shape for a in part] != want:
                raise RankFailed(f"calibrate: rank {r} sent per-sample values of shapes {[a.shape for a in part]}, "
                                 f"expected {want}")
            for k in range(len(local)):
                at = 0
                for i in idx:
                    pieces[k][i] = part[k][at:at + sizes[i]]
                    at += sizes[i]
            for k in range(len(totals)):
                summed[k] += part[len(local) + k]
        every = [np.concatenate([p[i] for i in range(len(sizes))]) for p in pieces]
        return tuple(every) + tuple(summed)

    # --- the protocol ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def failures_shared(self):
        """An exception on this rank before the last exchange is reported to the others at their next exchange,
        so that they raise instead of waiting for this rank; then it propagates here."""
        try:
            yield
        except RankFailed:
            raise
        except BaseException as e:
            if self.distributed and not self.done:
                self.done = True
                try:
                    self._exchange(_one_line(e).encode(), failed=True, what="a failure")
                except RankFailed:
                    pass  # the others hear of it, or have gone themselves: this rank's own error is the news
            raise

    def exchange(self, payload: bytes, what: str) -> list:
        """Every rank's ``payload``, indexed by rank. @raises RankFailed when a rank reported a failure or the
        exchange broke (a rank died or hung past the process group's timeout)."""
        return self._exchange(payload, failed=False, what=what)

    def _exchange(self, payload: bytes, failed: bool, what: str) -> list:
        if not self.distributed:
            return [payload]
        try:
            # first collective: status, length and the payload's first INLINE_BYTES, the same size on every rank
            # whatever the exchange (a failing rank does not know which one the others are in)
            first = np.zeros(HEAD_BYTES + INLINE_BYTES, np.uint8)
            first[:HEAD_BYTES] = np.array([int(failed), len(payload)], np.int64).view(np.uint8)
            inline = payload[:INLINE_BYTES]
            first[HEAD_BYTES:HEAD_BYTES + len(inline)] = np.frombuffer(inline, np.uint8)
            got = self._all_gather(first)
            heads = [g[:HEAD_BYTES].view(np.int64).tolist() for g in got]
            out = [g[HEAD_BYTES:HEAD_BYTES + min(n, INLINE_BYTES)].tobytes() for g, (_, n) in zip(got, heads)]
            longest = max(n for _, n in heads)
            if longest > INLINE_BYTES:  # every rank saw the same lengths: all of them take this second collective
                rest = np.zeros(longest - INLINE_BYTES, np.uint8)
                tail = payload[INLINE_BYTES:]
                rest[:len(tail)] = np.frombuffer(tail, np.uint8)
                more = self._all_gather(rest)
                out = [o + m[:max(0, n - INLINE_BYTES)].tobytes() for o, m, (_, n) in zip(out, more, heads)]
        except Exception as e:  # noqa: BLE001 - whatever the backend raises, the ranks have lost each other
            self.done = True
            raise RankFailed(f"calibrate on rank {self.rank}: exchanging {what} with the other ranks failed (a rank "
                             f"died, or hung past the process group's timeout): {_one_line(e)}") from e
        bad = [r for r, (f, _) in enumerate(heads) if f]
        if bad:
            self.done = True
            others = [r for r in bad if r != self.rank]
            if others:
                raise RankFailed("calibrate: " + "; ".join(f"rank {r} failed: {out[r].decode(errors='replace')}"
                                                          for r in others))
        return out

    def _all_gather(self, buf: np.ndarray) -> list:
        """Every rank's ``buf`` (uint8, the same size on every rank), as numpy arrays on the CPU."""
        import torch.distributed as dist
        t = torch.from_numpy(buf).to(self.device)
        bufs = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(bufs, t, group=self.group)
        return [b.cpu().numpy() for b in bufs]


def comm_device(backend_config: str, model_device: torch.device) -> torch.device:
    """The device whose tensors the process group can exchange: the model's device type when one of the group's
    backends serves it, else the CPU, else the first device type the group serves. ``backend_config`` is
    ``torch.distributed.get_backend_config``'s text: "gloo", "nccl", "hccl", or "cpu:gloo,cuda:nccl"."""
    import torch.distributed as dist
    types = []
    for part in backend_config.split(","):
        dev, _, name = part.strip().rpartition(":")
        for t in ([dev] if dev else dist.Backend.backend_capability.get(name.lower(), [])):
            if t not in types:
                types.append(t)
    if not types:
        raise ValueError(f"the process group's backend {backend_config!r} names no device it can exchange on")
    kind = model_device.type if model_device.type in types else "cpu" if "cpu" in types else types[0]
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def describe(model, named, cands, batch_sizes, data_fingerprint: str, loss: str) -> dict:
    """What a rank calibrates, for ``Ranks.check_same``: the candidates, the layers, every parameter's name,
    shape, dtype and checksums (sum and sum of squares), and the batches (their fingerprint and sizes)."""
    from .devices import parameters_with_data
    params, sums = [], []
    for name, p in parameters_with_data(model):
        params.append([name, list(p.shape) if p is not None else None, str(p.dtype) if p is not None else None,
                       None])
        sums.append(_checksums(p))
    # the reductions stay tensors until here: one read back per device, not two per chunk (a sync on a GPU)
    by_device = {}
    for k, c in enumerate(sums):
        if c is not None:
            by_device.setdefault(c.device, []).append(k)
    for ks in by_device.values():
        for k, pair in zip(ks, torch.stack([sums[k] for k in ks]).tolist()):
            params[k][3] = pair
    return dict(model=type(model).__name__, candidates=[c.name for c in cands],
                layers=[[n, list(m.weight.shape) if hasattr(m, "weight") else type(m).__name__]
                                          for n, m in named], parameters=params,
                batches=list(batch_sizes), data_fingerprint=data_fingerprint, loss=loss)


def _checksums(p: Optional[torch.Tensor]):
    """[sum, sum of squares] of ``p``'s values in float64, as a tensor [2] on p's device (read back by
    ``describe`` for all parameters at once)."""
    if p is None:
        return None
    flat = p.detach().reshape(-1)
    step = CHECKSUM_CHUNK_CPU if flat.device.type == "cpu" else CHECKSUM_CHUNK
    parts = []
    for i in range(0, flat.numel(), step):
        part = flat[i:i + step].double()
        # one float64 copy per chunk, read twice (the BLAS dot where there is one, not a second temporary)
        sq = torch.dot(part, part) if part.device.type in ("cpu", "cuda") else (part * part).sum()
        parts.append(torch.stack([part.sum(), sq]))
    if not parts:
        return torch.zeros(2, dtype=torch.float64, device=flat.device)
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)


def _differences(a: dict, b: dict) -> list:
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "parameters":
            pa, pb = a.get(key) or [], b.get(key) or []
            if [x[:3] for x in pa] != [x[:3] for x in pb]:
                out.append("the model's parameters (names, shapes or dtypes)")
            else:
                far = [x[0] for x, y in zip(pa, pb) if not _close(x[3], y[3])]
                if far:
                    out.append(f"the model's weights ({', '.join(far[:3])}{' ...' if len(far) > 3 else ''})")
        elif a.get(key) != b.get(key):
            out.append(f"{key} ({_short(b.get(key))} vs {_short(a.get(key))})")
    return out


def _close(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return all(abs(u - v) <= CHECKSUM_RTOL * max(abs(u), abs(v), 1e-30) for u, v in zip(x, y))


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _dump(a: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, np.ascontiguousarray(a), allow_pickle=False)
    return f.getvalue()


def _load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _dump_many(arrays: Sequence[np.ndarray]) -> bytes:
    """Arrays of any shapes and dtypes in one payload: their .npy files one after another."""
    f = io.BytesIO()
    for a in arrays:
        np.save(f, np.ascontiguousarray(a), allow_pickle=False)
    return f.getvalue()


def _load_many(b: bytes) -> list:
    f, out = io.BytesIO(b), []
    while f.tell() < len(b):
        out.append(np.load(f, allow_pickle=False))
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- the command line under torchrun ---------------------------------------------------------------------------
def init_from_launcher(timeout_s: float) -> bool:
    """Joins the process group that ``torchrun`` (or any launcher setting RANK, WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT) describes, with torch's default backend for this machine's devices, when WORLD_SIZE > 1 and no
    group exists yet. Returns whether it created the group (the caller then destroys it)."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not dist.is_available() or dist.is_initialized():
        return False
    if timeout_s <= 0:
        raise ValueError("--timeout must be positive")
    dist.init_process_group(timeout=timedelta(seconds=timeout_s))
    return True
