"""Every artifact file is refused with a ValueError naming the file when it is corrupt or foreign, crafted or
damaged: the readers check sizes, shapes, dtypes and the type of every field before they use them."""
import io as _io
import json
import zipfile

import numpy as np
import pytest

from mpq.artifacts import GainTable, Plan, SensitivityTable, SubgraphGains
from mpq.artifacts.io import load_npz, save_npz, write_json
from mpq.selection import select


def test_round_trip(tmp_path):
    save_npz(tmp_path / "a.npz", "mpq.Test", 1, {"layers": ["x"]}, {"v": np.arange(3.0)})
    meta, arrays = load_npz(tmp_path / "a.npz", "mpq.Test", 1)
    assert meta["layers"] == ["x"] and meta["version"] == 1 and np.array_equal(arrays["v"], np.arange(3.0))


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04broken zip"])
def test_corrupt_files(tmp_path, content):
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(ValueError, match="bad.npz: not a readable mpq.Test file"):
        load_npz(tmp_path / "bad.npz", "mpq.Test", 1)


def test_npy_array_wrong_kind_and_future_version(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(3))
    with pytest.raises(ValueError, match="not a readable"):
        load_npz(tmp_path / "x.npy", "mpq.Test", 1)
    save_npz(tmp_path / "g.npz", "mpq.GainTable", 1, {}, {})
    with pytest.raises(ValueError, match="holds 'mpq.GainTable', not a mpq.Test"):
        load_npz(tmp_path / "g.npz", "mpq.Test", 1)
    save_npz(tmp_path / "f.npz", "mpq.Test", 7, {}, {})
    with pytest.raises(ValueError, match="version 7 is not one this mpq reads"):
        load_npz(tmp_path / "f.npz", "mpq.Test", 1)
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz", "mpq.Test", 1)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from mpq.artifacts.io import atomic_file, write_json
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as f:
            f.write('{"v": 2, "half')
            raise RuntimeError("disk full")
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(target, {"v": float("nan")})  # NaN is not JSON: refused before anything is written
    assert target.read_text() == '{\n "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_json(tmp_path / "missing" / "a.json", {})


# --- crafted files: every reader validates before it reads, and refuses with one ValueError naming the file -----
LAYERS = ("l0", "l1", "l2")


def sensitivity_table(n=4):
    """A small valid SensitivityTable (3 layers, 2 candidates, ``n`` samples)."""
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(n, 3, 2)) * 0.1
    scales = np.full((3, 2), np.nan)
    scales[:, 1] = [0.5, 0.25, 0.125]
    return SensitivityTable(LAYERS, ("int8", "int8_static"), delta, delta * 0.5, scales, np.zeros((3, 2)),
                            "ab" * 32, {"model": "Tiny", "layer_shapes": [[4, 4]] * 3})


def gain_table(per_layer=True):
    """A small valid memory GainTable over ``LAYERS`` (two sub-graphs), with per-layer arrays when asked."""
    sg0 = SubgraphGains("s0", ("l0", "l1"), (("l0", "l1"),), np.array([[0, 0], [1, 1], [2, 2]], np.int32),
                        np.array([0.0, 2.0, 3.0]), np.zeros(3), np.array([False, False, True]), 5.0)
    sg1 = SubgraphGains("s1", ("l2",), (), np.array([[0], [1], [2]], np.int32), np.array([0.0, 1.0, 1.5]),
                        np.zeros(3), np.zeros(3, bool), 2.0, True, "subset: test")
    extra = dict(layer_names=LAYERS, layer_bytes=np.array([[16.0, 4.0, 4.0]] * 3),
                 layer_gain=np.zeros((3, 3)), layer_spread=np.zeros((3, 3))) if per_layer else {}
    return GainTable("memory", "prefill", ("base", "int8", "int8_static"), (sg0, sg1), 48.0, "bytes",
                     {"layers": {"l0": [1, 4, 4]}}, {"threads": 1, "implementations": {"l0": {"int8": "ref"}}},
                     **extra)


def a_plan(**changes):
    table, gains = sensitivity_table(), gain_table()
    plan = select(table, gains, max_loss_mse=10 * float(np.nansum(table.mse[np.isfinite(table.mse)])))
    return Plan.from_dict({**plan.to_dict(), **changes}) if changes else plan


def members(path) -> dict:
    """{member name: bytes} of a zip archive."""
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_members(path, items: dict) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)


def npy(arr) -> bytes:
    f = _io.BytesIO()
    np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
    return f.getvalue()


def forged_npy(shape, descr="<f8", payload=b"\0" * 64) -> bytes:
    """An .npy member whose header declares ``shape`` over only ``payload``."""
    f = _io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue() + payload


def rewrite(path, meta=None, **arrays) -> None:
    """Rewrites the .npz ``path`` with meta keys changed (None: removed) and members replaced (bytes or arrays;
    None: removed)."""
    items = members(path)
    if meta is not None:
        record = json.loads(np.lib.format.read_array(_io.BytesIO(items["meta.npy"])).tobytes())
        for k, v in meta.items():
            if v is None:
                record.pop(k, None)
            else:
                record[k] = v
        items["meta.npy"] = npy(np.frombuffer(json.dumps(record).encode(), np.uint8))
    for name, value in arrays.items():
        if value is None:
            items.pop(f"{name}.npy")
        else:
            items[f"{name}.npy"] = value if isinstance(value, bytes) else npy(value)
    write_members(path, items)


def saved(tmp_path, kind: str):
    path = tmp_path / ("t.npz" if kind == "sensitivity" else "g.npz")
    (sensitivity_table() if kind == "sensitivity" else gain_table()).save(path)
    return path, (SensitivityTable if kind == "sensitivity" else GainTable).load


def test_a_tiny_file_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    """1 KB of .npz whose 'delta' header declares 10^12 floats: refused from the header, never allocated."""
    path, load = saved(tmp_path, "sensitivity")
    rewrite(path, delta=forged_npy((10 ** 12,)))
    assert path.stat().st_size < 8192
    with pytest.raises(ValueError, match=r"t\.npz: .*member 'delta': shape \(1000000000000,\) of <f8 needs"):
        load(path)
    rewrite(path, delta=forged_npy((10 ** 6, 3, 2), payload=b""))  # the right rank, the data missing
    with pytest.raises(ValueError, match=r"t\.npz: .*member 'delta'"):
        load(path)


def central_directory_offsets(data: bytes) -> list[int]:
    out, i = [], data.find(b"PK\x01\x02")
    while i >= 0:
        out.append(i)
        i = data.find(b"PK\x01\x02", i + 4)
    return out


@pytest.mark.parametrize("offset,bit", [(10, 0), (10, 3), (8, 0), (8, 5)],
                         ids=["method-shrink", "method-deflate", "flag-encrypted", "flag-patched"])
def test_one_flipped_bit_in_a_zip_field_is_a_value_error(tmp_path, offset, bit):
    """The compression method (1: shrink, NotImplementedError in zipfile; 8: deflate over stored data, zlib.error)
    and the flags (encrypted: RuntimeError; patched: NotImplementedError) of the central directory."""
    for kind in ("sensitivity", "gains"):
        path, load = saved(tmp_path, kind)
        data = bytearray(path.read_bytes())
        record = central_directory_offsets(bytes(data))[-1]   # the last member
        data[record + offset] ^= 1 << bit
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=rf"{path.name}: not a readable mpq\.\w+ file \(member '\w+'"):
            load(path)


def test_deeply_nested_json_is_a_value_error(tmp_path):
    path, load = saved(tmp_path, "sensitivity")
    items = members(path)
    items["meta.npy"] = npy(np.frombuffer(b"[" * 200_000, np.uint8))
    write_members(path, items)
    with pytest.raises(ValueError, match=r"t\.npz: .*'meta' record cannot be read \(nested too deeply\)"):
        load(path)
    (tmp_path / "p.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match=r"p\.json: not a readable mpq\.Plan file \(nested too deeply\)"):
        Plan.load(tmp_path / "p.json")
    d = a_plan().to_dict()
    d["solver"]["detail"] = json.loads("[" * 100 + "]" * 100)  # parses, but what copies it would recurse
    (tmp_path / "q.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"q\.json: .*nested deeper than 64 levels"):
        Plan.load(tmp_path / "q.json")


@pytest.mark.parametrize("meta,match", [
    ({"layers": 5}, "'layers' must be a list of strings"),              # TypeError before
    ({"candidates": 3}, "'candidates' must be a list of strings"),      # TypeError before
    ({"layers": ["l0", "l0", "l2"]}, r"'layers' names \['l0'\] more than once"),
    ({"candidates": []}, "'candidates' is empty"),
    ({"n_samples": "4"}, "'n_samples' must be a whole number"),
    ({"n_samples": 5}, r"array 'delta' must be \[5, 3, 2\]"),
    ({"data_fingerprint": 7}, "'data_fingerprint' must be a string"),
    ({"layers": None}, "lacks 'layers'"),
])
def test_sensitivity_meta_fields_are_checked(tmp_path, meta, match):
    path, load = saved(tmp_path, "sensitivity")
    rewrite(path, meta=meta)
    with pytest.raises(ValueError, match=rf"t\.npz: {match}"):
        load(path)


@pytest.mark.parametrize("arrays,match", [
    ({"delta": np.zeros((4, 3))}, r"array 'delta' must be \[4, 3, 2\], got shape \[4, 3\]"),
    ({"delta_weight": np.zeros((4, 3, 2), np.int64)}, "array 'delta_weight' must be floating-point"),
    ({"act_scales": np.zeros((3, 2), np.complex64)}, "dtype '<c8' is not plain numbers"),
    ({"act_zero_points": None}, "lacks the array 'act_zero_points'"),
])
def test_sensitivity_arrays_are_checked(tmp_path, arrays, match):
    path, load = saved(tmp_path, "sensitivity")
    rewrite(path, **arrays)
    with pytest.raises(ValueError, match=rf"t\.npz: .*{match}"):
        load(path)


def sub_graphs(**changes):
    """The meta 'subgraphs' of ``gain_table()`` with the first record changed."""
    records = [dict(name="s0", layers=["l0", "l1"], ties=[["l0", "l1"]], baseline_seconds=5.0, subset=False, note=""),
               dict(name="s1", layers=["l2"], ties=[], baseline_seconds=2.0, subset=True, note="subset: test")]
    records[0].update(changes)
    return records


@pytest.mark.parametrize("meta,arrays,match", [
    ({"subgraphs": sub_graphs(layers=3)}, {}, r"sub-graph 's0': 'layers' must be a list of strings"),  # TypeError
    ({"candidates": "base,int8"}, {}, "'candidates' must be a list of strings"),                      # TypeError
    ({}, {"configs_0": np.array(1, np.int32)}, r"sub-graph 's0': array 'configs_0' must be \[\*, 2\]"),  # IndexError
    ({}, {"configs_0": np.zeros((3, 2))}, "array 'configs_0' must be integer"),
    ({}, {"configs_0": np.array([[0, 0], [1, 3], [2, 2]], np.int32)}, "candidate indices outside 0..2"),
    ({}, {"configs_0": np.zeros((0, 2), np.int32)}, "'configs_0' has no rows"),
    ({}, {"gain_0": np.zeros(2)}, r"sub-graph 's0': array 'gain_0' must be \[3\]"),
    ({}, {"noisy_1": np.zeros(3)}, r"sub-graph 's1': array 'noisy_1' must be boolean"),
    ({}, {"spread_1": None}, r"sub-graph 's1': lacks the array 'spread_1'"),
    ({"subgraphs": sub_graphs(ties=[["l0", 1]])}, {}, r"'ties'\[0\] must be a list of strings"),
    ({"subgraphs": sub_graphs(baseline_seconds="fast")}, {}, "'baseline_seconds' must be a number"),
    ({"subgraphs": sub_graphs(subset="no")}, {}, "'subset' must be true or false"),
    ({"subgraphs": [5]}, {}, "'subgraphs' must be a list of objects"),
    ({"subgraphs": sub_graphs(name="s1")}, {}, "duplicate sub-graph name 's1'"),
    ({"phase": "training"}, {}, "phase must be prefill or decode"),
    ({"unit": 1}, {}, "'unit' must be a string"),
    ({"shapes": []}, {}, "'shapes' must be an object"),
    ({"info": {"implementations": {"l0": {"int8": 3}}}}, {}, r"'info.implementations.l0' must be an object"),
    # select with max_memory looked the sub-graph layers up in layer_names: a KeyError at select time
    ({"layer_names": ["l0", "l1", "lx"]}, {}, r"'layer_names' lacks sub-graph layers \['l2'\]"),
    ({"layer_names": ["l0", "l1"]}, {}, r"array 'layer_bytes' must be \[2, 3\]"),
])
def test_gain_table_fields_are_checked(tmp_path, meta, arrays, match):
    path, load = saved(tmp_path, "gains")
    rewrite(path, meta=meta, **arrays)
    with pytest.raises(ValueError, match=rf"g\.npz: .*{match}"):
        load(path)


def test_the_readers_refuse_a_directory_and_name_it(tmp_path):
    for load in (SensitivityTable.load, GainTable.load, Plan.load, Plan.load_front):
        with pytest.raises(ValueError, match=rf"{tmp_path}: is a directory"):
            load(tmp_path)
        with pytest.raises(FileNotFoundError):
            load(tmp_path / "missing")


@pytest.mark.parametrize("change,match", [
    ({"candidates": 5}, "'candidates' must be a list of strings"),                     # TypeError before
    ({"act_scales": {"l1": 10 ** 400}}, r"'act_scales.l1' is too large a number"),      # OverflowError before
    ({"act_scales": {"l1": -1.0}}, "act_scales must be positive finite numbers"),
    ({"gain_unit": 5}, "'gain_unit' must be a string"),
    ({"predicted_memory": "1 GB"}, "'predicted_memory' must be a number"),
    ({"objective": []}, "'objective' must be an object"),
    ({"objective": {"kind": "max_loss_mse", "value": "x"}}, r"'objective': 'value' must be a number"),
    ({"solver": {"status": 1}}, r"'solver': 'status' must be a string"),
    ({"verification": {"measured_loss_mse": 0.1}}, r"'verification': lacks 'measured_loss_mse_stderr'"),
    ({"version": True}, "mpq.Plan version True is not one this mpq reads"),
])
def test_plan_fields_are_checked(tmp_path, change, match):
    d = a_plan().to_dict()
    d.update(change)
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"p\.json: {match}"):
        Plan.load(tmp_path / "p.json")


def test_nan_is_not_json_and_a_plan_that_loads_saves_again(tmp_path):
    text = json.dumps(a_plan().to_dict())
    (tmp_path / "p.json").write_text(text.replace('"status": "optimal"', '"status": "optimal", "gap": NaN'))
    assert '"gap": NaN' in (tmp_path / "p.json").read_text()
    with pytest.raises(ValueError, match=r"p\.json: not a readable mpq\.Plan file \(NaN is not JSON\)"):
        Plan.load(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(text)
    Plan.load(tmp_path / "p.json").save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["mapping"] == json.loads(text)["mapping"]


def test_a_pareto_front_file_is_read_by_load_front_and_by_index(tmp_path):
    plans = [a_plan(), a_plan(predicted_gain=1.0), a_plan(predicted_gain=2.0)]
    write_json(tmp_path / "front.json", [p.to_dict() for p in plans])
    front = Plan.load_front(tmp_path / "front.json")
    assert [p.predicted_gain for p in front] == [p.predicted_gain for p in plans]
    assert Plan.load(tmp_path / "front.json", index=2).predicted_gain == 2.0
    with pytest.raises(ValueError, match=r"front\.json: a Pareto front of 3 plans, not one plan: .*0\.\.2"):
        Plan.load(tmp_path / "front.json")
    with pytest.raises(ValueError, match=r"front\.json: index 3 is not one of the front's 3 plans"):
        Plan.load(tmp_path / "front.json", index=3)
    plans[0].save(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"plan\.json: holds one plan, not a Pareto front"):
        Plan.load_front(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"plan\.json: holds one plan, not a Pareto front: an index does not"):
        Plan.load(tmp_path / "plan.json", index=0)
    d = [p.to_dict() for p in plans]
    d[1]["mapping"] = ["l0"]
    write_json(tmp_path / "bad.json", d)
    with pytest.raises(ValueError, match=r"bad\.json: plan \[1\]: 'mapping' must be an object"):
        Plan.load_front(tmp_path / "bad.json")
    write_json(tmp_path / "empty.json", [])
    assert Plan.load_front(tmp_path / "empty.json") == []
    with pytest.raises(ValueError, match=r"empty\.json: a Pareto front of 0 plans"):
        Plan.load(tmp_path / "empty.json")
