"""VolumeCache: hits and misses, keys, memory-mapped read-only arrays, corruption, housekeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsuite.io.cache import CACHE_FORMAT, CacheError, VolumeCache, canonical_json, params_hash
from medsuite.io.volume import Volume

UID = "1.2.826.0.1.3680043.8.498.1"


def _volume(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    angle = np.deg2rad(15)
    direction = np.array([[0, 0, 1], [np.sin(angle), np.cos(angle), 0], [np.cos(angle), -np.sin(angle), 0]]).T
    direction = np.linalg.qr(direction)[0]
    return Volume(
        rng.integers(-1024, 3000, size=(6, 5, 4)).astype(np.int16),
        spacing=(1.25, 0.6, 0.7),
        origin=(-100.0, 12.5, 40.0),
        direction=direction,
        series_uid=UID,
        study_uid="1.2.3.4",
        modality="CT",
        meta={
            "patient_id": "PAT-001",
            "window_center": [40.0, 400.0],
            "kvp": np.float32(120.0),
            "n_files": 6,
        },
    )


class Loader:
    """Counts calls, so tests can tell a hit from a miss."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.calls = 0

    def __call__(self) -> Volume:
        self.calls += 1
        return self.volume


def _entry_dir(cache: VolumeCache, params: dict) -> Path:
    return cache.root / UID / params_hash(params)


def test_miss_then_hit_returns_the_same_readonly_memmapped_volume(tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    loader = Loader(_volume())
    first = cache.get(UID, {"spacing": [1, 1, 1]}, loader)
    second = cache.get(UID, {"spacing": [1, 1, 1]}, loader)
    assert loader.calls == 1
    for got in (first, second):
        assert isinstance(got.array, np.memmap)
        assert not got.array.flags.writeable
        with pytest.raises(ValueError):
            got.array[0, 0, 0] = 1
        np.testing.assert_array_equal(got.array, loader.volume.array)
        assert got.spacing == loader.volume.spacing and got.origin == loader.volume.origin
        np.testing.assert_allclose(got.direction, loader.volume.direction, atol=1e-12)
        assert (got.series_uid, got.study_uid, got.modality) == (UID, "1.2.3.4", "CT")
        assert got.meta["window_center"] == [40.0, 400.0] and got.meta["kvp"] == 120.0


def test_patient_identifiers_are_not_stored_unless_asked(tmp_path):
    plain = VolumeCache(tmp_path / "a").get(UID, {}, Loader(_volume()))
    assert "patient_id" not in plain.meta
    assert "PAT-001" not in "".join(p.read_text() for p in (tmp_path / "a").rglob("meta.json"))
    kept = VolumeCache(tmp_path / "b", keep_phi=True).get(UID, {}, Loader(_volume()))
    assert kept.meta["patient_id"] == "PAT-001"


def test_key_depends_on_params_not_on_their_order(tmp_path):
    cache = VolumeCache(tmp_path)
    loader = Loader(_volume())
    cache.get(UID, {"a": 1, "b": [1, 2]}, loader)
    cache.get(UID, {"b": (1, 2), "a": np.int64(1)}, loader)  # same canonical JSON
    assert loader.calls == 1
    cache.get(UID, {"a": 2, "b": [1, 2]}, loader)
    assert loader.calls == 2
    assert params_hash({"a": 1}) != params_hash({"a": 1.5})
    assert canonical_json({"b": 1, "a": [1.0]}) == '{"a":[1.0],"b":1}'
    assert len(cache) == 2


def test_key_includes_the_cache_format_version():
    text = canonical_json({"format": CACHE_FORMAT, "params": {}})
    assert str(CACHE_FORMAT) in text


def test_bad_params_and_uids_are_clear_errors(tmp_path):
    cache = VolumeCache(tmp_path)
    loader = Loader(_volume())
    with pytest.raises(CacheError, match=r"params\.fn.*not JSON"):
        cache.get(UID, {"fn": object()}, loader)
    with pytest.raises(CacheError, match=r"nan"):
        cache.get(UID, {"x": float("nan")}, loader)
    with pytest.raises(CacheError, match="non-empty string"):
        cache.get("", {}, loader)
    with pytest.raises(CacheError, match="not a Volume"):
        cache.get(UID, {}, lambda: np.zeros((2, 2, 2)))
    assert loader.calls == 0


def test_unusual_uid_cannot_escape_the_root(tmp_path):
    root = tmp_path / "cache"
    cache = VolumeCache(root)
    got = cache.get("../../evil", {}, Loader(_volume()))
    assert got.series_uid == "../../evil"
    assert [p.parent.parent.parent for p in root.rglob("meta.json")] == [root]
    assert cache.contains("../../evil", {})
    assert [e.series_uid for e in cache.entries()] == ["../../evil"]


def _corrupt_meta(entry: Path) -> None:
    (entry / "meta.json").write_text("{not json")


def _drop_array(entry: Path) -> None:
    (entry / "array.npy").unlink()


def _truncate_array(entry: Path) -> None:
    data = (entry / "array.npy").read_bytes()
    (entry / "array.npy").write_bytes(data[: len(data) - 10])


def _wrong_shape(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["shape"] = [1, 2, 3]
    (entry / "meta.json").write_text(json.dumps(meta))


def _old_format(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["format"] = CACHE_FORMAT - 1
    (entry / "meta.json").write_text(json.dumps(meta))


def _pickled_array(entry: Path) -> None:
    np.save(entry / "array.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize(
    "damage", [_corrupt_meta, _drop_array, _truncate_array, _wrong_shape, _old_format, _pickled_array]
)
def test_corrupt_entry_is_removed_and_rebuilt_never_served(tmp_path, damage):
    cache = VolumeCache(tmp_path)
    loader = Loader(_volume())
    cache.get(UID, {"k": 1}, loader)
    damage(_entry_dir(cache, {"k": 1}))
    assert not cache.contains(UID, {"k": 1})
    got = cache.get(UID, {"k": 1}, loader)
    assert loader.calls == 2
    np.testing.assert_array_equal(got.array, loader.volume.array)
    assert cache.contains(UID, {"k": 1})


def test_remove_clear_and_size(tmp_path):
    cache = VolumeCache(tmp_path)
    other = "1.2.3.999"
    cache.get(UID, {"a": 1}, Loader(_volume()))
    cache.get(UID, {"a": 2}, Loader(_volume()))
    cache.get(other, {"a": 1}, Loader(_volume(1)))
    assert len(cache) == 3
    assert cache.size_bytes() >= 3 * _volume().array.nbytes
    assert {e.params["a"] for e in cache.entries() if e.series_uid == UID} == {1, 2}
    assert all(e.nbytes > e.shape[0] for e in cache.entries())
    assert cache.remove(UID, {"a": 1}) == 1
    assert cache.remove(UID, {"a": 1}) == 0
    assert not cache.contains(UID, {"a": 1}) and cache.contains(UID, {"a": 2})
    assert cache.remove(UID) == 1
    (tmp_path / ".tmp-left-by-a-dead-writer").mkdir()
    assert cache.clear() == 1
    assert len(cache) == 0 and cache.size_bytes() == 0
    assert list(tmp_path.iterdir()) == []


def test_prune_temp_removes_only_old_temp_folders(tmp_path):
    cache = VolumeCache(tmp_path)
    cache.get(UID, {}, Loader(_volume()))
    (tmp_path / ".tmp-dead").mkdir()
    assert cache.prune_temp(older_than_s=3600) == 0
    assert cache.prune_temp(older_than_s=-1) == 1
    assert len(cache) == 1


def test_loader_errors_propagate_and_leave_nothing_behind(tmp_path):
    cache = VolumeCache(tmp_path)

    def broken() -> Volume:
        raise ValueError("series 1.2.3: slice 4 missing")

    with pytest.raises(ValueError, match="slice 4 missing"):
        cache.get(UID, {}, broken)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CacheError, match="dtype"):
        cache.get(UID, {}, lambda: _volume().with_array(np.zeros((2, 2, 2), dtype=np.complex64)))
    assert list(p for p in tmp_path.rglob("*") if p.is_file()) == []


def test_a_volume_read_from_dicom_round_trips_without_its_patient_id(tmp_path):
    from medsuite.io.dicom_write import write_series
    from medsuite.io.reader import read_series

    plain = _volume().with_array(_volume().array, meta={})
    files = write_series(plain, tmp_path / "dicom", patient_id="PAT-DICOM-7", shuffle_names=True)
    decoded = read_series(files)
    assert decoded.meta.get("patient_id") == "PAT-DICOM-7"
    cache = VolumeCache(tmp_path / "cache")
    cached = cache.get(decoded.series_uid, {"reader": "read_series"}, lambda: decoded)
    np.testing.assert_array_equal(cached.array, decoded.array)
    np.testing.assert_allclose(cached.index_to_world((5, 4, 3)), decoded.index_to_world((5, 4, 3)), atol=1e-9)
    expected_meta = json.loads(
        json.dumps({k: v for k, v in decoded.meta.items() if k != "patient_id"}, default=str)
    )
    assert cached.meta == expected_meta
    assert "patient_id" not in cached.meta
    assert b"PAT-DICOM-7" not in b"".join(
        p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()
    )
