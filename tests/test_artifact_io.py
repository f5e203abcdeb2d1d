"""Every artifact file is refused with a ValueError naming the file when it is corrupt or foreign."""
import numpy as np
import pytest

from mpq.artifacts.io import load_npz, save_npz


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
