"""The "Why" overlay: heat colours with alpha proportional to the clipped magnitude, the legend, zoom, and the
whole attribution path (explain -> cropped world-mapped volume -> plane -> rendered view) on a tiny real bundle."""

from __future__ import annotations

import numpy as np
import pytest
import viewer_support as V

from medsuite.viewer import images


def _redness(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] - rgb[..., 2]  # heat colours are red/orange/yellow: R well above B; grey has R == B


def test_blend_alpha_follows_magnitude_and_clips():
    grey = np.full((4, 5, 3), 100.0, dtype=np.float32)
    v = np.array([[0.0, 0.25, 0.5, 1.0, 3.0]] * 4, dtype=np.float32)
    out = images.blend_overlay(grey, v, opacity=0.8)
    assert np.allclose(out[:, 0], 100.0)  # zero attribution: untouched
    red = _redness(out)[0]
    assert np.all(np.diff(red[:4]) > 0)  # stronger attribution -> more colour
    assert np.allclose(out[:, 3], out[:, 4])  # above the clip value: same as at it
    assert np.allclose(images.blend_overlay(grey, v, opacity=0.0), grey)
    bar = images.colorbar(width=50, height=6, opacity=0.8)
    assert bar.shape == (6, 50, 3) and bar.dtype == np.uint8
    assert _redness(bar)[0, 0] == 0 and np.all(np.diff(_redness(bar)[0, ::10]) > 0)


def test_scale_is_the_percentile_of_nonzero_magnitudes():
    a = np.zeros((3, 10, 10), dtype=np.float32)
    a[1, :, :] = -np.linspace(0.01, 1.0, 100).reshape(10, 10)
    a[1, 0, 0] = 50.0  # one hot pixel must not set the scale
    assert images.attribution_scale(a) == pytest.approx(np.percentile(np.abs(a[a != 0]), 99))
    assert images.attribution_scale(a) < 2.0
    assert images.attribution_scale(np.zeros((2, 2))) == 0.0


def test_zoom_crops_around_the_crosshair():
    arr = np.full((10, 40, 60), -1000, dtype=np.int16)
    geo = images.Geometry((1.0, 1.0, 1.0))
    full = images.render(arr, geo, "axial", (5, 10, 50), (1500, -600), crosshair=True)
    z2 = images.render(arr, geo, "axial", (5, 10, 50), (1500, -600), crosshair=True, zoom=2.0)
    assert full.shape == (40, 60, 3) and z2.shape == (20, 30, 3)
    # window rows 0-19 (clamped at the top), columns 35-64 clamped to 30-59: the crosshair is at row 10, column 20
    assert np.all(z2[:, 20, 2] > z2[:, 0, 2]) and np.all(z2[10, :, 2] > z2[0, 0, 2])
    assert np.array_equal(z2, full[0:20, 30:60])


def test_attribution_overlay_sits_on_the_nodule(tmp_path):
    """Occlusion and Grad-CAM of a tiny real bundle, through the viewer's own attribution path: the coloured
    pixels lie inside the model's input field around the nodule, strongest where the attribution is."""
    import scoring_support as S

    from medsuite.learn.bundle import load_bundle
    from medsuite.viewer import analysis

    bundle = load_bundle(V.make_bundle_with_index(tmp_path / "bundle"))
    vol = S.make_volume(0)
    nod = np.array([6.0, 12.0, 12.0])
    center = tuple(float(v) for v in vol.index_to_world(nod))
    grey_window = (1500.0, -600.0)
    for method in ("occlusion", "gradcam"):
        ov = analysis.attribution(str(tmp_path / "bundle"), 1, method, bundle, vol, center)
        assert ov["scale"] > 0 and ov["method"] == method and ov["resolution"]
        off, shape = np.asarray(ov["offset"]), np.asarray(ov["array"].shape)
        assert np.all(off <= nod) and np.all(nod < off + shape)  # the crop is around the nodule (world-mapped)
        plane = images.overlay_plane(ov["array"], ov["offset"], vol.shape, "axial", int(nod[0]), ov["scale"])
        assert plane is not None and plane.shape == vol.shape[1:]
        plain = images.render(vol.array, images.Geometry(vol.spacing), "axial", (6, 12, 12), grey_window, crosshair=False)
        shown = images.render(vol.array, images.Geometry(vol.spacing), "axial", (6, 12, 12), grey_window,
                              overlay=plane, opacity=0.9, crosshair=False)
        tint = _redness(shown) - _redness(plain)
        hot = plane >= 0.5
        assert hot.any() and tint[hot].mean() > 40  # coloured where the attribution is high
        assert np.all(tint[plane == 0] == 0)  # untouched where the input did not reach
        if method == "gradcam":
            assert "coarse" in ov["resolution"]
