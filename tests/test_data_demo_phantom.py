"""Demo phantom: the fast renderer still draws every tissue, at CT values, with the noise it was asked for."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsuite.data.demo.phantom import _resize_linear, _smooth_field, finish, render_thorax, sample_thorax


@pytest.fixture(scope="module")
def slab():
    rng = np.random.default_rng(7)
    thorax = sample_thorax(rng, contrast=True)
    ps, dz = 2.8, 2.5  # a coarse 128 x 128 grid over the whole chest keeps the test fast
    xs = (np.arange(128) - 63.5) * ps
    ys = (np.arange(128) - 63.5) * ps + 5
    zs = -150 + np.arange(12) * dz
    hu, lung = render_thorax(thorax, zs, ys, xs, (dz, ps, ps), rng)
    return thorax, hu, lung, (dz, ps, ps)


def test_every_tissue_is_drawn_at_its_ct_value(slab):
    thorax, hu, lung, _ = slab
    assert hu.dtype == np.float32 and lung.shape == hu.shape
    frac = lambda m: float(np.mean(m))  # noqa: E731
    assert frac(hu == -1000) > 0.05  # air around the body
    assert frac(np.abs(hu - thorax.fat_hu) < 1) > 0.03  # subcutaneous and mediastinal fat
    assert frac(np.abs(hu - thorax.muscle_hu) < 1) > 0.02  # chest wall, paraspinal muscles
    assert 0.15 < frac(lung) < 0.6  # both lungs
    assert frac(hu > 600) > 0.002  # cortical bone: vertebra, ribs, sternum
    assert frac(np.abs(hu - thorax.blood_hu) < 1) > 0.01  # heart chambers, great vessels
    in_lung = hu[lung]
    assert abs(np.median(in_lung) - (thorax.lung_hu + thorax.lung_gradient / 3)) < 40
    spread = np.subtract(*np.percentile(in_lung, [75, 25])) / 1.35  # robust to partial-volume vessel edges
    assert 8 < spread < 40  # parenchymal texture, not a flat fill
    near_lung = ndimage.binary_dilation(lung, iterations=2) & ~lung
    assert frac(near_lung & (hu > -400)) > 0.003  # vessels and airway walls cut out of the lung mask
    ribs = hu[:, :, :20] > 600  # the lateral chest wall holds rib cross-sections somewhere in the slab
    assert ribs.any()


def test_finish_blurs_and_adds_the_requested_noise(slab):
    _, hu, lung, spacing = slab
    flat = np.full((6, 64, 64), -850.0, dtype=np.float32)
    out = finish(flat, spacing, 2.5, 20.0, np.random.default_rng(0))
    assert out.dtype == np.int16
    assert abs(out.std() - 20.0) < 1.5 and abs(out.mean() + 850) < 1.5
    img = finish(hu, spacing, 2.5, 12.0, np.random.default_rng(0))
    assert img.min() >= -1024 and img.max() <= 3071


def test_smooth_fields_are_unit_variance_and_linear_upsampling_is_exact_on_ramps():
    field = _smooth_field((10, 64, 64), (2.0, 8.0, 8.0), np.random.default_rng(0))
    assert field.shape == (10, 64, 64) and field.dtype == np.float32
    assert 0.6 < field.std() < 1.4
    assert np.abs(np.diff(field, axis=2)).mean() < 0.3  # correlated, not white
    ramp = np.add.outer(np.arange(5.0), np.arange(6.0) * 2)[None]
    up = _resize_linear(ramp, (1, 13, 16), (1, 3, 3))
    expected = np.add.outer(np.arange(13) / 3, np.arange(16) / 3 * 2)[None]
    np.testing.assert_allclose(up, expected, atol=1e-5)
