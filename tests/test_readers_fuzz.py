"""Bounded, seeded fuzzing of every artifact reader (SensitivityTable.load, GainTable.load, Plan.load,
Plan.load_front): valid files of each kind with random bits flipped, cut short, random bytes spliced in, one
.npy member or the meta record damaged behind a valid CRC, or one JSON value replaced by a value of another type.
Each load either succeeds, and then the object saves again and loads back, or raises ValueError: any other
exception (TypeError, IndexError, KeyError, MemoryError, RecursionError, ...) fails the test. A few hundred cases,
about a second."""
import io
import json
import random

import numpy as np
import pytest

from mpq.artifacts import GainTable, Plan, SensitivityTable
from mpq.artifacts.io import write_json
from test_artifact_io import a_plan, gain_table, members, npy, sensitivity_table, write_members

# values of every JSON type, and numbers at the edges, to put where another value was
ODD_VALUES = [None, True, 0, -1, 7, 10 ** 30, 1e300, -0.5, "", "x", "base", [], ["l0"], ["l0", "l0"], [1, 2], {},
              {"a": 1}, {"l0": "int8"}, [[["deep"]]]]


def save_front(path):
    write_json(path, [a_plan().to_dict(), a_plan(predicted_gain=1.5).to_dict()])


def save_again(obj, path):
    if isinstance(obj, list):
        write_json(path, [p.to_dict() for p in obj])
    else:
        obj.save(path)


KINDS = {  # kind: (file name, write a valid file, the reader)
    "sensitivity": ("t.npz", lambda p: sensitivity_table().save(p), SensitivityTable.load),
    "gains": ("g.npz", lambda p: gain_table().save(p), GainTable.load),
    "plan": ("p.json", lambda p: a_plan().save(p), Plan.load),
    "front": ("f.json", save_front, Plan.load_front),
}


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def splice(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    if rng.random() < 0.5:  # overwrite
        return data[:i] + junk + data[i + len(junk):]
    return data[:i] + junk + data[i:]  # insert


RAW = (flip_bits, truncate, splice)


def damage_member(data: bytes, rng: random.Random) -> bytes:
    """One .npy member (its header more often than its data) damaged, the archive rewritten with valid CRCs."""
    items = members(io.BytesIO(data))
    name = rng.choice(sorted(items))
    raw = items[name]
    head = min(len(raw), 128)
    if rng.random() < 0.7:  # the header: magic, length, the dict literal
        raw = rng.choice(RAW)(raw[:head], rng) + raw[head:]
    else:
        raw = rng.choice(RAW)(raw, rng)
    items[name] = raw
    out = io.BytesIO()
    write_members(out, items)
    return out.getvalue()


def json_paths(value, prefix=()):
    """Every (path to a value) in a parsed JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, prefix + (i,))


def replace_value(doc, rng: random.Random):
    """``doc`` with one value (anywhere, the document itself included) replaced by an odd one or removed."""
    paths = list(json_paths(doc))
    shallow = [p for p in paths if len(p) <= 2]  # the fields of a record (or of a front's plan) half the time
    path = rng.choice(shallow if rng.random() < 0.5 else paths)
    if not path:
        return rng.choice(ODD_VALUES)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(ODD_VALUES)
    return doc


def damage_meta(data: bytes, rng: random.Random) -> bytes:
    """The meta record of an .npz with one JSON value replaced, or its bytes damaged, behind valid CRCs."""
    items = members(io.BytesIO(data))
    text = np.lib.format.read_array(io.BytesIO(items["meta.npy"])).tobytes()
    if rng.random() < 0.75:
        text = json.dumps(replace_value(json.loads(text), rng)).encode()
    else:
        text = rng.choice(RAW)(text, rng)
    items["meta.npy"] = npy(np.frombuffer(text, np.uint8))
    out = io.BytesIO()
    write_members(out, items)
    return out.getvalue()


def damage_json(data: bytes, rng: random.Random) -> bytes:
    return json.dumps(replace_value(json.loads(data), rng)).encode()


STRATEGIES = {  # (kind, strategy): cases
    **{(kind, "raw"): 40 for kind in KINDS},
    ("sensitivity", "member"): 40, ("gains", "member"): 40,
    ("sensitivity", "meta"): 40, ("gains", "meta"): 50,
    ("plan", "field"): 40, ("front", "field"): 40,
}
MUTATE = {"member": damage_member, "meta": damage_meta, "field": damage_json}


@pytest.mark.parametrize("kind,strategy", sorted(STRATEGIES), ids=lambda x: str(x))
def test_a_damaged_file_loads_and_saves_again_or_is_a_value_error(tmp_path, kind, strategy):
    name, write, load = KINDS[kind]
    good = tmp_path / name
    write(good)
    original = good.read_bytes()
    rng = random.Random(f"{kind}/{strategy}")
    bad, loaded, refused = tmp_path / f"bad.{name}", 0, 0
    for case in range(STRATEGIES[kind, strategy]):
        mutate = rng.choice(RAW) if strategy == "raw" else MUTATE[strategy]
        data = mutate(original, rng)
        bad.write_bytes(data)
        what = f"case {case} ({mutate.__name__}) of {kind}/{strategy}"
        try:
            obj = load(bad)
        except ValueError as e:
            assert str(bad) in str(e), f"{what}: the error does not name the file: {e}"
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001 (the point: nothing but ValueError)
            pytest.fail(f"{what}: {type(e).__name__}: {e}")
        again = tmp_path / f"again.{name}"
        save_again(obj, again)
        load(again)
        loaded += 1
    assert refused, f"{kind}/{strategy}: no case was refused: the mutations did not reach the reader"
