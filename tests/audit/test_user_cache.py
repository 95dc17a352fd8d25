"""The per-machine cache (audit.cache.cached_arrays): computed once, read back without pickle, never in the way."""
import numpy as np

from audit.cache import cached_arrays, user_cache_dir


def _counting():
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(5, dtype=np.int16), "b": np.eye(2, dtype=np.float32)}
    return compute, calls


def test_computed_once_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZAUDIT_CACHE_DIR", str(tmp_path))
    compute, calls = _counting()
    first = cached_arrays("thing", compute, "v1")
    second = cached_arrays("thing", compute, "v1")
    assert len(calls) == 1
    for key in first:
        assert second[key].dtype == first[key].dtype and np.array_equal(second[key], first[key])
    cached_arrays("thing", compute, "v2")  # another key part: another entry
    assert len(calls) == 2 and len(list(tmp_path.glob("thing-*.npz"))) == 2


def test_damaged_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZAUDIT_CACHE_DIR", str(tmp_path))
    compute, calls = _counting()
    cached_arrays("thing", compute)
    (entry,) = tmp_path.glob("thing-*.npz")
    entry.write_bytes(b"not a zip")
    again = cached_arrays("thing", compute)
    assert len(calls) == 2 and np.array_equal(again["a"], np.arange(5))


def test_empty_setting_turns_it_off_and_an_unwritable_folder_is_harmless(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZAUDIT_CACHE_DIR", "")
    assert user_cache_dir() is None
    compute, calls = _counting()
    cached_arrays("thing", compute)
    cached_arrays("thing", compute)
    assert len(calls) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ALZAUDIT_CACHE_DIR", str(blocker / "sub"))  # cannot be made: a file is in the way
    assert cached_arrays("thing", compute)["a"].tolist() == [0, 1, 2, 3, 4]
