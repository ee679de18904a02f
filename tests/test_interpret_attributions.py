"""Attribution methods peak where a model is known to look, in input pixels and in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpret_fixtures import MaskedNet, SmallCNN, add_blob, make_block, make_volume, region_world
from torch import nn

from medsuite.data.blocks import MultiView, Patch3D, SeriesSlices
from medsuite.interpret.attributions import (
    attribute,
    block_layout,
    check_no_inplace,
    grad_cam,
    grid_pixel_spacing,
    integrated_gradients,
    occlusion,
    sample_layout,
)
from medsuite.interpret.explain import prepare_case
from medsuite.interpret.mapping import grid_peak, peak_world, splat_to_volume
from medsuite.learn.models import build_model


@pytest.fixture(scope="module")
def case():
    vol = make_volume()
    block = make_block()
    center = vol.center_world + np.array([2.0, -3.0, 1.0])
    where = region_world(block, vol, center)
    return prepare_case(block, add_blob(vol, where), center), where


@pytest.mark.parametrize("method", ["ig", "occlusion", "gradcam"])
def test_each_method_peaks_at_the_known_region_in_world_mm(case, method):
    prep, where = case
    a = attribute(method, MaskedNet(), prep.x, prep.layout, prep.pixel_spacing_mm, baseline=prep.baseline, target=1)
    assert a.values.shape == prep.x.shape
    values = prep.layout.to_grid(a.values)
    # occlusion hides the whole stack at once: it locates in-plane, depth only to the stack's extent
    axes = slice(0, 2) if method == "occlusion" else slice(0, 3)
    assert np.linalg.norm((grid_peak(values, prep.grid) - where)[axes]) < 5.0
    vol = splat_to_volume(values, prep.grid, prep.volume)
    assert np.linalg.norm((peak_world(vol) - where)[axes]) < 5.0
    assert abs(peak_world(vol)[2] - where[2]) <= 2.5 * 3 / 2 + 2.5
    far = np.linalg.norm(prep.grid - where, axis=-1) > 15
    assert np.abs(values[far]).max() < 0.2 * np.abs(values).max()


def test_integrated_gradients_is_complete_and_batched(case):
    prep, _ = case
    model = MaskedNet()
    a = integrated_gradients(model, prep.x, prep.baseline, target=1, n_steps=20)
    assert a.params["internal_batch_size"] == 20
    with torch.no_grad():
        out = model(torch.as_tensor(np.stack([prep.x, prep.baseline])))
    assert a.values.sum() == pytest.approx(float(out[0, 1] - out[1, 1]), rel=0.05, abs=1e-3)
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(model, prep.x, prep.baseline, n_steps=1)
    with pytest.raises(ValueError, match="baseline shape"):
        integrated_gradients(model, prep.x, prep.baseline[:1])


def test_noise_tunnel_runs_and_keeps_the_peak(case):
    prep, where = case
    a = integrated_gradients(MaskedNet(), prep.x, prep.baseline, target=1, n_steps=8, noise_tunnel=True,
                             nt_samples=3, nt_stdev=0.02)
    assert a.params["noise_tunnel"]
    assert np.linalg.norm(grid_peak(prep.layout.to_grid(a.values), prep.grid) - where) < 5.0


def test_occlusion_window_is_sized_in_millimetres(case):
    prep, _ = case
    a = occlusion(MaskedNet(), prep.x, prep.layout, (0.5, 0.5), window_mm=8.0, stride_mm=4.0, target=1)
    assert a.params["window_px"] == [16, 16] and a.params["stride_px"] == [8, 8]
    b = occlusion(MaskedNet(), prep.x, prep.layout, prep.pixel_spacing_mm, window_mm=6.0, target=1)
    assert b.params["window_px"] == [6, 6]


def test_inplace_activation_is_refused_with_its_name(case):
    prep, _ = case
    model = SmallCNN(inplace=True)
    with pytest.raises(ValueError, match=r"features\.1.*inplace=True"):
        check_no_inplace(model)
    with pytest.raises(ValueError, match="Captum #156"):
        grad_cam(model, prep.x)


def test_model_mode_is_restored_and_eval_used(case):
    prep, _ = case
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(prep.x.size, 2))
    model.train()
    a1 = integrated_gradients(model, prep.x, prep.baseline, target=1, n_steps=4)
    a2 = integrated_gradients(model, prep.x, prep.baseline, target=1, n_steps=4)
    assert model.training
    np.testing.assert_allclose(a1.values, a2.values)  # dropout off while attributing


def test_gradcam_reports_its_native_resolution_on_real_models():
    model = build_model("slice_cnn", in_channels=3, width=4, depth=3)
    x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    a = grad_cam(model, x, target=1)
    assert a.values.shape == x.shape
    assert a.params["native_shape"] == [4, 4] and a.params["upsampling"] == "bilinear"
    assert "native resolution 4x4" in a.notes[0]
    series = build_model("series_encoder", in_channels=1, width=4, depth=2)
    xs = np.random.default_rng(1).random((5, 1, 16, 16), dtype=np.float32)
    s = grad_cam(series, xs, target=0)
    assert s.values.shape == xs.shape and s.params["native_shape"] == [4, 4]
    cnn3d = build_model("cnn3d", in_channels=1, width=4, depth=2)
    x3 = np.random.default_rng(2).random((1, 8, 16, 16), dtype=np.float32)
    c = grad_cam(cnn3d, x3, target=1)
    assert c.values.shape == x3.shape and c.params["upsampling"] == "trilinear"


def test_layouts_of_the_real_blocks_round_trip():
    vol = make_volume()
    c = vol.center_world
    for block in (make_block(k=3), MultiView(views=3, size=16, window=["lung", "mediastinum"]),
                  MultiView(views=3, size=16, window=["lung", "mediastinum"], as_channels=True),
                  SeriesSlices(n=4, size=16), Patch3D(size=(6, 8, 8), window=["lung", "mediastinum"])):
        from medsuite.data.blocks import SliceStack

        if isinstance(block, SliceStack):
            block = SliceStack(window=["lung", "mediastinum"], k=3, size=16)
        center = None if isinstance(block, SeriesSlices) else c
        x = block.sample(vol, center)
        grid = block.grid_world(vol, center)
        layout = block_layout(block, x.shape, grid.shape[:-1])
        g = np.random.default_rng(0).random(layout.grid_shape)
        expanded = layout.expand(g)
        assert expanded.shape == x.shape
        np.testing.assert_allclose(layout.to_grid(expanded), g * layout.n_windows)
    # window-major stacking: each window's slice s carries slice s's value
    lay = sample_layout((6, 4, 4), (3, 4, 4), window_major=True)
    e = lay.expand(np.arange(3.0)[:, None, None] * np.ones((3, 4, 4)))
    assert list(e[:, 0, 0]) == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="cannot relate"):
        sample_layout((5, 4, 4), (3, 4, 4))


def test_grid_pixel_spacing_measures_mm():
    vol = make_volume()
    grid = make_block().grid_world(vol, vol.center_world)
    assert grid_pixel_spacing(grid, 2) == pytest.approx((1.0, 1.0))
    assert grid_pixel_spacing(grid, 3)[0] == pytest.approx(2.5)


def test_attributions_of_a_tta_predictor_follow_each_flipped_copy_back_to_the_input():
    from interpret_fixtures import REGION, SIZE

    from medsuite.learn.predict import FLIPS, Predictor, PredictorSettings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, SIZE, SIZE)).astype(np.float32)
    model = MaskedNet()
    plain = Predictor.plain(model, ["benign", "malignant"])
    tta = Predictor(model, PredictorSettings(("benign", "malignant"), "malignant", FLIPS))
    rows, cols = REGION

    def mirrored(s: slice) -> slice:
        return slice(SIZE - s.stop, SIZE - s.start)

    regions = {(): (rows, cols), (-1,): (rows, mirrored(cols)), (-2,): (mirrored(rows), cols),
               (-2, -1): (mirrored(rows), mirrored(cols))}

    def contrast(values, where):  # mean |attribution| there over the mean everywhere
        g = np.abs(values).sum(0)
        return g[where].mean() / g.mean()

    for method in ("gradcam", "ig"):
        kw = {"baseline": np.zeros_like(x)} if method == "ig" else {}
        a_plain = attribute(method, plain.module, x, sample_layout(x.shape, x.shape), (1.0, 1.0), target=1, **kw)
        a_tta = attribute(method, tta.module, x, sample_layout(x.shape, x.shape), (1.0, 1.0), target=1, **kw)
        # the masked model only sees REGION; the copy flipped on axes f sees REGION's mirror along f, and its
        # map must be flipped back there: every mirror lights up with TTA, none without
        for flip, where in regions.items():
            assert contrast(a_tta.values, where) > 1.3, (method, flip)
            if flip:
                assert contrast(a_plain.values, where) < 1.0, (method, flip)
