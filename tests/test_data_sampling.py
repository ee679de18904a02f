"""World-mm sampling: exact geometry, both interpolation paths agree, padding, crop-only reads."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import GEOMETRIES, RAMP, inside, ramp_volume, volume_for

from medsuite.data.sampling import CT_AIR_HU, Grid, _sample_general, pad_value, sample_grid
from medsuite.io.volume import Volume


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("rotated", [False, True])
def test_ramp_is_reproduced_exactly_at_grid_world(geometry, rotated):
    vol = ramp_volume(geometry)
    axes = np.diag([1.3, 0.9, 1.1])
    if rotated:
        from scipy.spatial.transform import Rotation

        axes = Rotation.from_euler("zyx", [20, -35, 10], degrees=True).as_matrix() @ axes
    grid = Grid(vol.center_world + [2.0, -3.0, 1.5], axes, (7, 19, 23))
    values = sample_grid(vol, grid)
    world = grid.world()
    ok = inside(vol, world)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(values[ok], world[ok] @ RAMP, atol=2e-2)


@pytest.mark.parametrize(
    ("perm_axes", "shape"),
    [
        (np.diag([0.9, 1.1, 1.3]), (5, 33, 40)),
        (np.diag([-0.9, 1.1, -1.3])[:, [2, 1, 0]], (5, 33, 40)),
        (np.diag([9.0, -4.0, 4.0]), (4, 5, 6)),  # sparse: samples further apart than voxels on every axis
    ],
    ids=["aligned", "permuted-flipped", "sparse"],
)
@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (25.0, -10.0, 14.0), (500.0, 0.0, 0.0)])
def test_separable_path_equals_map_coordinates(perm_axes, shape, offset):
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(20, 30, 40)).astype(np.float32), (2.0, 0.7, 0.8), (-10.0, 5.0, 3.0), modality="CT")
    grid = Grid(vol.center_world + np.asarray(offset), perm_axes, shape)
    a, b = grid.index_affine(vol)
    fast = sample_grid(vol, grid)
    general = _sample_general(vol.array, a, b, grid.shape, CT_AIR_HU)
    np.testing.assert_allclose(fast, general, atol=1e-3)


def test_outside_the_scan_is_air_for_ct_and_minimum_otherwise():
    vol = ramp_volume("anisotropic")
    corner = vol.index_to_world((0.0, 0.0, 0.0))
    grid = Grid(corner, np.diag([1.0, 1.0, 1.0]), (9, 21, 21))
    values = sample_grid(vol, grid)
    far_out = ~inside(vol, grid.world(), margin=-1.0)  # more than one voxel outside: pure padding
    assert far_out.any()
    assert np.all(values[far_out] == CT_AIR_HU)
    mr = vol.with_array(vol.array + 5000.0, modality="MR")
    assert pad_value(mr) == pytest.approx(float(mr.array.min()))
    assert np.all(sample_grid(mr, grid)[far_out] == pytest.approx(float(mr.array.min())))
    assert pad_value(mr.with_array(mr.array, meta={"pad_value": 7.0})) == 7.0


def test_grid_entirely_outside_is_all_padding():
    vol = volume_for("oblique")
    grid = Grid(vol.center_world + 1e4, np.eye(3), (3, 4, 5))
    assert np.all(sample_grid(vol, grid) == CT_AIR_HU)


class _RecordingArray(np.ndarray):
    """An ndarray that records the index of every read (to prove that only a crop is read)."""

    def __getitem__(self, key):
        if isinstance(key, tuple) and all(isinstance(k, slice) for k in key):
            self.reads.append(tuple(k.stop - k.start for k in key))
        return np.asarray(self).__getitem__(key)


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_only_the_bounding_box_is_read(geometry):
    base = ramp_volume(geometry, shape=(60, 120, 120))
    rec = base.array.view(_RecordingArray)
    rec.reads = []
    vol = base.with_array(rec)
    grid = Grid(vol.center_world, np.diag([1.0, 1.0, 1.0]), (3, 16, 16))
    sample_grid(vol, grid)
    assert len(rec.reads) == 1
    assert np.prod(rec.reads[0]) < 0.02 * np.prod(vol.shape)


def test_grid_transform_about_a_point():
    grid = Grid((10.0, 0.0, 0.0), np.eye(3), (1, 3, 3))
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved = grid.transformed(rot, shift=(0.0, 0.0, 2.0), about=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(moved.center, (0.0, 10.0, 2.0), atol=1e-12)
    np.testing.assert_allclose(moved.axes, rot, atol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        Grid((np.nan, 0, 0), np.eye(3), (1, 1, 1))
