"""Input blocks: a sphere at a known world point lands in the centre of every view, in every geometry;
shapes, windows as channels, grid_world, padding, spec round trip, augmentation semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import BACKGROUND, GEOMETRIES, RAMP, inside, ramp_volume, sphere_volume

from medsuite.data.augment import Augment, AugmentDraw, augment_from_spec
from medsuite.data.blocks import (
    Category,
    MultiView,
    Patch3D,
    SeriesSlices,
    SliceStack,
    TriPlanar,
    block_from_spec,
)
from medsuite.data.windows import WINDOWS, resolve_windows


def _centroid(img: np.ndarray) -> np.ndarray:
    mask = img > 0  # sphere +400 HU, background -1000 / padding -1024
    assert mask.any(), "sphere not visible"
    return np.mean(np.nonzero(mask), axis=1)


def _assert_centred(img: np.ndarray, tol: float = 0.75) -> None:
    np.testing.assert_allclose(_centroid(img), (np.asarray(img.shape) - 1) / 2, atol=tol)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_slice_stack_sphere_in_every_slice_centre(geometry):
    vol, c = sphere_volume(geometry)
    x = SliceStack(k=5, size=32, spacing_mm=1.5, pixel_mm=0.8, window=None).sample(vol, c)
    assert x.shape == (5, 32, 32) and x.dtype == np.float32
    for s in x:
        _assert_centred(s)
    assert x[2, 0, 0] in (BACKGROUND, -1024.0)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("views", [3, 9])
def test_multiview_sphere_in_every_view_centre(geometry, views):
    vol, c = sphere_volume(geometry)
    x = MultiView(views=views, size=24, pixel_mm=1.0, window=None).sample(vol, c)
    assert x.shape == (views, 1, 24, 24)
    for v in x[:, 0]:
        _assert_centred(v)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_patch3d_sphere_in_centre(geometry):
    vol, c = sphere_volume(geometry)
    x = Patch3D(size=(12, 20, 16), spacing_mm=(1.5, 1.0, 1.2), window=None).sample(vol, c)
    assert x.shape == (1, 12, 20, 16)
    _assert_centred(x[0])


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("mode", ["slice", "max"])
def test_series_slices_show_the_sphere_where_grid_world_says(geometry, mode):
    vol, c = sphere_volume(geometry)
    block = SeriesSlices(n=8, size=32, mode=mode, window=None)
    x = block.sample(vol)
    world = block.grid_world(vol)
    assert x.shape == (8, 1, 32, 32) and world.shape == (8, 32, 32, 3)
    # the slice whose plane is nearest the sphere centre, and the pixel nearest it in-plane
    k = int(np.argmin(np.abs(world[:, 0, 0, 2] - c[2])))
    d = np.linalg.norm(world[k, ..., :2] - c[:2], axis=-1)
    expected = np.unravel_index(np.argmin(d), d.shape)
    np.testing.assert_allclose(_centroid(x[k, 0]), expected, atol=1.0)
    # slices span the series' world-z extent: first and last slab centres lie inside the scan's z range
    corners = vol.index_to_world(np.array(np.meshgrid(*[[0, s - 1] for s in vol.shape], indexing="ij")).reshape(3, -1).T)
    assert corners[:, 2].min() < world[0, 0, 0, 2] < world[-1, 0, 0, 2] < corners[:, 2].max()


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(
    "block",
    [
        SliceStack(k=3, size=16, spacing_mm=2.0, pixel_mm=0.9, window=None),
        MultiView(views=9, size=12, window=None),
        MultiView(views=3, size=12, window=None, as_channels=True),
        Patch3D(size=(6, 8, 10), spacing_mm=1.1, window=None),
        SeriesSlices(n=4, size=16, window=None),
    ],
    ids=lambda b: type(b).__name__,
)
def test_grid_world_matches_the_sample(geometry, block):
    vol = ramp_volume(geometry)
    c = vol.center_world + [1.0, -2.0, 3.0]
    x = block.sample(vol, c)
    world = block.grid_world(vol, c)
    values = x.reshape(world.shape[:-1])
    ok = inside(vol, world)
    assert ok.sum() > 50  # an oblique scan's world box is larger than the scan: SeriesSlices pads the rest
    np.testing.assert_allclose(values[ok], world[ok] @ RAMP, atol=2e-2)


def test_padding_outside_the_scan_is_air():
    vol, _ = sphere_volume("oblique")
    corner = vol.index_to_world((0.0, 0.0, 0.0))
    block = SliceStack(k=5, size=32, window=None)
    x = block.sample(vol, corner)
    far_out = ~inside(vol, block.grid_world(vol, corner), margin=-1.0)
    assert far_out.sum() > 100
    assert np.all(x[far_out] == -1024.0)


def test_several_windows_are_channels_window_major():
    vol, c = sphere_volume("anisotropic")
    raw = SliceStack(k=3, size=16, window=None).sample(vol, c)
    two = SliceStack(k=3, size=16, window=("lung", "mediastinum")).sample(vol, c)
    assert two.shape == (6, 16, 16)
    np.testing.assert_allclose(two[:3], WINDOWS["lung"].apply(raw), atol=1e-6)
    np.testing.assert_allclose(two[3:], WINDOWS["mediastinum"].apply(raw), atol=1e-6)
    mv = MultiView(views=3, size=16, window=("lung", "bone"), as_channels=True).sample(vol, c)
    assert mv.shape == (6, 16, 16)
    assert TriPlanar(size=16).output_shape == (3, 1, 16, 16)


def test_window_presets_and_errors():
    lung = WINDOWS["lung"]
    np.testing.assert_allclose(lung.apply(np.array([-1350.0, -600.0, 150.0, 3000.0])), [0.0, 0.5, 1.0, 1.0])
    assert {k: (w.width, w.level) for k, w in WINDOWS.items()} == {
        "lung": (1500, -600), "mediastinum": (350, 50), "bone": (2000, 500), "brain": (80, 40), "soft_tissue": (400, 40)
    }
    assert resolve_windows((400, 40))[0].level == 40
    with pytest.raises(ValueError, match="unknown window 'lungs'"):
        resolve_windows("lungs")
    z = resolve_windows("zscore")[0].apply(np.array([1.0, 2.0, 3.0]))
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5


@pytest.mark.parametrize(
    "block",
    [
        SliceStack(k=7, size=48, spacing_mm=1.25, pixel_mm=0.7, window=("lung", (1000, -500))),
        MultiView(views=9, size=32, pixel_mm=0.8, as_channels=True, window="bone"),
        SeriesSlices(n=12, size=96, mode="mean", window=None),
        Patch3D(size=(8, 16, 24), spacing_mm=(2.0, 1.0, 0.5), window="zscore"),
    ],
    ids=lambda b: type(b).__name__,
)
def test_spec_round_trip(block):
    spec = json.loads(json.dumps(block.spec()))
    assert spec["type"] == type(block).__name__
    rebuilt = block_from_spec(spec)
    assert rebuilt == block and rebuilt.spec() == block.spec()
    vol, c = sphere_volume("isotropic")
    np.testing.assert_array_equal(rebuilt.sample(vol, c), block.sample(vol, c))


def test_a_centre_outside_the_scan_is_a_clear_error():
    vol, c = sphere_volume("oblique")
    ras = c * np.array([-1.0, -1.0, 1.0]) + np.array([300.0, 300.0, 0.0])
    with pytest.raises(ValueError, match=r"lies outside series 1\.2\.3 .*RAS instead of LPS"):
        SliceStack(k=3, size=8).sample(vol, ras)


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="SliceStack.k must be a positive integer"):
        SliceStack(k=0)
    with pytest.raises(ValueError, match="MultiView.views must be 3"):
        MultiView(views=4)
    with pytest.raises(ValueError, match="unknown type 'Foo'"):
        block_from_spec({"type": "Foo"})
    with pytest.raises(ValueError, match="center_xyz"):
        SliceStack().sample(sphere_volume("isotropic")[0], None)
    with pytest.raises(ValueError, match="Augment.scale"):
        Augment(scale=(1.2, 0.9))


def test_augmented_rotation_keeps_the_sphere_centred():
    vol, c = sphere_volume("anisotropic")
    aug = Augment(rotate_deg=180, scale=(0.9, 1.1), flip=True, shift_mm=0.0, intensity=0.0, noise_std=0.0)
    block = MultiView(views=3, size=24, window=None)
    for seed in range(3):
        x = block.sample(vol, c, aug=aug, rng=np.random.default_rng(seed))
        for v in x[:, 0]:
            _assert_centred(v, tol=1.0)


def test_flip_draw_mirrors_the_columns_exactly():
    vol, c = sphere_volume("isotropic", at_index=(0.5, 0.4, 0.6))
    block = SliceStack(k=3, size=20, window=None)
    plain = block.sample(vol, c + [2.0, 0.0, 0.0])  # off-centre, so the image is not symmetric
    flip = AugmentDraw(matrix=np.diag([-1.0, 1.0, 1.0]), shift=np.zeros(3), seed=0)
    flipped = block.sample(vol, c + [2.0, 0.0, 0.0], aug=flip)
    np.testing.assert_allclose(flipped, plain[..., ::-1], atol=1e-3)
    assert not np.allclose(plain, plain[..., ::-1])


def test_augmentation_is_seeded_and_intensity_follows_monai_semantics():
    vol, c = sphere_volume("isotropic")
    block = SliceStack(k=3, size=16)
    aug = Augment(p_intensity=1.0, p_noise=1.0)
    a = block.sample(vol, c, aug=aug, rng=np.random.default_rng(5))
    b = block.sample(vol, c, aug=aug, rng=np.random.default_rng(5))
    d = block.sample(vol, c, aug=aug, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, d)
    assert augment_from_spec(json.loads(json.dumps(aug.spec()))) == aug
    # intensity only: v * (1 + f) with |f| <= 0.1 (RandScaleIntensity), no noise, no geometry
    only_scale = Augment(rotate_deg=0, scale=(1, 1), flip=False, shift_mm=0, intensity=0.1, p_intensity=1.0, noise_std=0)
    plain = block.sample(vol, c)
    scaled = block.sample(vol, c, aug=only_scale, rng=np.random.default_rng(1))
    ratio = scaled[plain > 0.1] / plain[plain > 0.1]
    assert np.ptp(ratio) < 1e-4 and 0.9 <= ratio[0] <= 1.1 and abs(ratio[0] - 1) > 1e-6
    noisy = Augment(rotate_deg=0, scale=(1, 1), flip=False, shift_mm=0, intensity=0, noise_std=0.05, p_noise=1.0)
    resid = block.sample(vol, c, aug=noisy, rng=np.random.default_rng(2)) - plain
    assert abs(resid.std() - 0.05) < 0.005 and abs(resid.mean()) < 0.005


def test_category_vocab_and_errors():
    cat = Category().setup([1, 0, np.int64(1)])
    assert cat.vocab == (0, 1) and cat.encode(np.int64(1)) == 1 and cat.decode(0) == 0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        cat.encode(2)
    with pytest.raises(ValueError, match="at least two classes"):
        Category().setup([1, 1])
    assert Category(["benign", "malignant"]).setup([]).encode("malignant") == 1
