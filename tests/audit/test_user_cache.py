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
    for damage in (b"not a zip", b""):  # garbage, and a file truncated to nothing
        entry.write_bytes(damage)
        again = cached_arrays("thing", compute)
        assert np.array_equal(again["a"], np.arange(5))
    assert len(calls) == 3


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


def test_the_mni152_tables_read_back_equal_to_the_built_ones(tmp_path, monkeypatch):
    """What load_atlas/load_prior return from a cache file is what they build: every array, dtype included."""
    from audit.anatomy import prior, registration

    monkeypatch.setenv("ALZAUDIT_CACHE_DIR", str(tmp_path))
    built_atlas, built_prior = registration.load_atlas(), prior.load_prior()
    cached_arrays("atlas", lambda: registration._atlas_arrays(built_atlas))  # written
    cached_arrays("prior", lambda: {"z_mm": built_prior.z_mm, "brain": built_prior.brain, **built_prior.regions})
    atlas = registration._atlas_from_arrays(cached_arrays("atlas", lambda: {}))  # read back (nothing to compute)
    planes = prior._prior_from_arrays(cached_arrays("prior", lambda: {}))
    for name in registration._ATLAS_ARRAYS:
        a, b = getattr(atlas, name), getattr(built_atlas, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for frame in registration._FRAMES:
        for a, b in zip(atlas.canon[frame], built_atlas.canon[frame]):
            assert a.dtype == b.dtype and np.array_equal(a, b), frame
    assert np.array_equal(planes.z_mm, built_prior.z_mm) and np.array_equal(planes.brain, built_prior.brain)
    for name, region in built_prior.regions.items():
        assert planes.regions[name].dtype == region.dtype and np.array_equal(planes.regions[name], region)
