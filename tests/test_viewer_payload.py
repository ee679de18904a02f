"""What the browser receives: lossless gzip NIfTI of the scan (checked with nibabel: same voxels at the same
world positions) and the overlays on its grid (attribution crop, nodule rings, interpolated-slice marks), and
the attribution path of a tiny real bundle ending on the nodule."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import viewer_support as V

from medsuite.io.volume import Volume
from medsuite.viewer import payload as P
from medsuite.viewer import why


def _nifti(raw: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw))


def _oblique_volume(array: np.ndarray) -> Volume:
    rng = np.random.default_rng(1)
    direction = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return Volume(array, (2.5, 0.7, 0.8), (10.0, -20.0, 30.0), direction)


def _world_lps(img: nib.Nifti1Image, ijk) -> np.ndarray:
    ras = img.affine @ np.array([*ijk, 1.0])
    return ras[:3] * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_scan_is_lossless_at_the_same_world_positions(dtype):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1024, 3000, (5, 6, 7)).astype(dtype)
    if dtype is np.float64:
        arr = arr + 0.123456789  # not representable in float32: must stay float64
    vol = _oblique_volume(arr)
    img = _nifti(P.encode(vol.array, P.Grid.of(vol)))
    data = np.asanyarray(img.dataobj).transpose(2, 1, 0)  # NIfTI (x, y, z) -> (z, y, x)
    assert np.array_equal(data, arr)  # every value exact
    expected = {np.float32: np.int16, np.int16: np.int16, np.float64: np.float64}[dtype]
    assert img.get_data_dtype() == expected  # whole HU in float32 travel as int16
    for zyx in [(0, 0, 0), (4, 5, 6), (1, 2, 3)]:
        assert np.allclose(_world_lps(img, zyx[::-1]), vol.index_to_world(zyx), atol=1e-4)


def test_lossless_keeps_what_int16_cannot_hold():
    assert P.lossless(np.array([[[0.5]]], np.float32)).dtype == np.float32
    assert P.lossless(np.array([[[40000]]], np.float32)).dtype == np.float32
    assert P.lossless(np.array([[[40000]]], np.int32)).dtype == np.int32
    assert P.lossless(np.array([[[np.nan]]], np.float32)).dtype == np.float32
    assert P.lossless(np.array([[[True]]])).dtype == np.uint8
    with pytest.raises(ValueError, match="dtype"):
        P.lossless(np.array([[["a"]]]))


def test_heat_overlay_sits_on_its_crop():
    vol = _oblique_volume(np.zeros((20, 30, 40), np.int16))
    grid = P.Grid.of(vol)
    attr = np.zeros((3, 4, 5), np.float32)
    attr[1, 2, 3] = -2.0
    img = _nifti(P.heat_overlay(attr, (7, 8, 9), grid, scale=4.0))
    data = np.asanyarray(img.dataobj).transpose(2, 1, 0)
    assert data.shape == (3, 4, 5) and data[1, 2, 3] == pytest.approx(0.5) and data.sum() == pytest.approx(0.5)
    # the hot voxel is at scan voxel (7 + 1, 8 + 2, 9 + 3)
    assert np.allclose(_world_lps(img, (3, 2, 1)), vol.index_to_world((8, 10, 12)), atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        P.heat_overlay(attr, (0, 0, 0), grid, scale=0.0)


def test_nodule_rings_surround_each_nodule_at_its_world_position():
    vol = Volume(np.zeros((40, 100, 100), np.int16), (1.0, 0.5, 0.5), (-25.0, -25.0, -100.0))
    grid = P.Grid.of(vol)
    nods = [P.Nodule((10.0, 30.0, 30.0), 6.0, reviewed=True), P.Nodule((30.0, 70.0, 60.0), None)]
    img = _nifti(P.nodule_overlay(nods, grid, vol.shape))
    labels = np.asanyarray(img.dataobj).transpose(2, 1, 0)
    inv = np.linalg.inv(img.affine)
    for n, label, radius in ((nods[0], P.NODULE_REVIEWED, 3.0 + 1.5), (nods[1], P.NODULE_OTHER, 3.0 + 1.5)):
        lps = vol.index_to_world(n.zyx)
        ijk = inv @ np.array([-lps[0], -lps[1], lps[2], 1.0])
        c = np.rint(ijk[:3][::-1]).astype(int)  # the centre voxel in the overlay
        assert labels[tuple(c)] == 0  # the nodule itself is not covered
        ring_mm = np.argwhere(labels[c[0]] == label) * 0.5  # in-plane ring through the centre, mm
        dist = np.hypot(*(ring_mm - c[1:] * 0.5).T)
        assert dist.size > 20 and abs(np.median(dist) - radius) < 0.6
    assert P.nodule_overlay([], grid, vol.shape) is None


def test_slice_marks_span_the_plane_on_marked_slices_only():
    vol = _oblique_volume(np.zeros((10, 30, 40), np.int16))
    img = _nifti(P.slice_marks([3, 4, 9], P.Grid.of(vol), vol.shape))
    marks = np.asanyarray(img.dataobj).transpose(2, 1, 0)
    assert marks.shape == (10, 1, 1) and list(np.flatnonzero(marks[:, 0, 0])) == [3, 4, 9]
    # the single in-plane voxel is centred on the plane and as wide as it
    assert np.allclose(_world_lps(img, (0, 0, 4)), vol.index_to_world((4, 14.5, 19.5)), atol=1e-4)
    assert np.allclose(img.header.get_zooms(), (0.8 * 40, 0.7 * 30, 2.5), atol=1e-5)
    assert P.slice_marks([], P.Grid.of(vol), vol.shape) is None
    with pytest.raises(ValueError, match="outside"):
        P.slice_marks([10], P.Grid.of(vol), vol.shape)


def test_attribution_of_a_real_bundle_lands_on_the_nodule(tmp_path):
    """Occlusion and Grad-CAM of a tiny real bundle, through the viewer's attribution path and the overlay
    payload: the strongest heat lies inside the model's field around the nodule, in world coordinates."""
    import scoring_support as S

    from medsuite.learn.bundle import load_bundle

    bundle = load_bundle(V.make_bundle_with_index(tmp_path / "bundle"))
    vol = S.make_volume(0)
    nod = np.array([6.0, 12.0, 12.0])
    center = tuple(float(v) for v in vol.index_to_world(nod))
    for method in ("occlusion", "gradcam"):
        ov = why.attribution.__wrapped__(str(tmp_path / "bundle"), 1, method, bundle, vol, center)
        assert ov["scale"] > 0 and ov["method"] == method and ov["resolution"]
        off, shape = np.asarray(ov["offset"]), np.asarray(ov["array"].shape)
        assert np.all(off <= nod) and np.all(nod < off + shape)  # the crop is around the nodule
        img = _nifti(P.heat_overlay(ov["array"], ov["offset"], P.Grid.of(vol), ov["scale"]))
        data = np.asanyarray(img.dataobj).transpose(2, 1, 0)
        hot = np.unravel_index(int(np.argmax(data)), data.shape)
        world = _world_lps(img, hot[::-1])
        assert np.linalg.norm(world - np.asarray(center)) < 16.0  # within the 16 mm field of the model's input
        if method == "gradcam":
            assert "coarse" in ov["resolution"]


def test_attribution_scale_ignores_one_hot_pixel():
    a = np.zeros((3, 10, 10), dtype=np.float32)
    a[1, :, :] = -np.linspace(0.01, 1.0, 100).reshape(10, 10)
    a[1, 0, 0] = 50.0
    assert why.attribution_scale(a) == pytest.approx(np.percentile(np.abs(a[a != 0]), 99))
    assert why.attribution_scale(a) < 2.0
    assert why.attribution_scale(np.zeros((2, 2))) == 0.0
