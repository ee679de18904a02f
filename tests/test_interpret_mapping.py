"""Splatting attributions onto the scan's voxel grid keeps world positions, also for oblique scans."""

from __future__ import annotations

import numpy as np
import pytest
from interpret_fixtures import make_block, make_volume

from medsuite.interpret.mapping import peak_world, planes_through, slice_importance, splat_to_volume
from medsuite.io.volume import Volume


def _rotated_volume() -> Volume:
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    direction = rot @ np.eye(3)[:, ::-1]
    return Volume(np.zeros((20, 48, 48), np.float32), spacing=(2.0, 0.7, 0.7), origin=(5.0, -30.0, 40.0),
                  direction=direction)


@pytest.mark.parametrize("volume", [make_volume(), _rotated_volume()], ids=["axial", "oblique"])
@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
def test_a_single_hot_pixel_lands_at_its_world_point(volume, mode):
    block = make_block()
    center = volume.center_world
    grid = block.grid_world(volume, center)
    values = np.zeros(grid.shape[:-1])
    values[1, 20, 9] = 1.0
    out = splat_to_volume(values, grid, volume, mode=mode)
    assert out.spacing == volume.spacing and np.allclose(out.direction, volume.direction)
    voxel_diag = float(np.linalg.norm(volume.spacing))
    assert np.linalg.norm(peak_world(out) - grid[1, 20, 9]) <= voxel_diag / 2 + 1e-6
    # the crop is a window of the original grid: its voxels sit on the scan's voxel centres
    off = np.asarray(out.meta["offset_zyx"])
    np.testing.assert_allclose(out.index_to_world((0, 0, 0)), volume.index_to_world(off), atol=1e-6)


def test_constant_attribution_stays_constant_where_covered():
    volume = make_volume()
    grid = make_block().grid_world(volume, volume.center_world)
    out = splat_to_volume(np.full(grid.shape[:-1], 3.0), grid, volume)
    covered = out.array != 0
    assert 0.3 < covered.mean() <= 1 and out.meta["coverage"] == pytest.approx(covered.mean())
    np.testing.assert_allclose(out.array[covered], 3.0, rtol=1e-5)


def test_bad_inputs_are_named():
    volume = make_volume()
    grid = make_block().grid_world(volume, volume.center_world)
    with pytest.raises(ValueError, match="grid_world shape"):
        splat_to_volume(np.zeros((2, 2)), grid, volume)
    with pytest.raises(ValueError, match="inside the volume"):
        splat_to_volume(np.ones(grid.shape[:-1]), grid + 1e4, volume)
    with pytest.raises(ValueError, match="splat mode"):
        splat_to_volume(np.ones(grid.shape[:-1]), grid, volume, mode="cubic")


def test_planes_through_carry_the_attribution_onto_the_original_slices():
    volume = make_volume()
    grid = make_block().grid_world(volume, volume.center_world)
    values = np.zeros(grid.shape[:-1])
    values[:, 10:14, 10:14] = 1.0
    attr = splat_to_volume(values, grid, volume)
    point = grid[1, 12, 12]
    views = planes_through(volume, attr, point)
    assert [v.plane for v in views] == ["axial", "coronal", "sagittal"]
    for v in views:
        assert v.image.shape == v.attribution.shape and v.attribution.max() == pytest.approx(1.0, rel=1e-4)
    axial = views[0]
    zyx = np.rint(volume.world_to_index(point)).astype(int)
    lo = np.maximum(np.asarray(attr.meta["offset_zyx"]) - 8, 0)  # default 8-voxel margin around the attribution
    rows, cols = axial.image.shape
    assert np.array_equal(axial.image, volume.array[zyx[0], lo[1]:lo[1] + rows, lo[2]:lo[2] + cols])
    assert axial.index == zyx[0]


def test_slice_importance_finds_the_slice_and_the_spot():
    volume = make_volume()
    grid = make_block(k=3).grid_world(volume, volume.center_world)
    values = np.zeros(grid.shape[:-1])
    values[2, 5, 7] = -4.0
    values[0, 1, 1] = 1.0
    info = slice_importance(values, grid)
    assert [round(i["mass"], 2) for i in info] == [0.2, 0.0, 0.8]
    assert info[2]["peak_pixel"] == [5, 7]
    np.testing.assert_allclose(info[2]["peak_world_mm"], grid[2, 5, 7], atol=0.01)
