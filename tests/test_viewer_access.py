"""Local accounts (salted scrypt), the loopback-only rule without authentication, and the slice renderer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsuite.records import access
from medsuite.viewer import images


def test_users_file_salted_hashes(tmp_path):
    path = tmp_path / "users.json"
    access.set_password(path, "alice", "correct horse")
    access.set_password(path, "bob", "correct horse")
    raw = json.loads(path.read_text())["users"]
    assert "correct horse" not in path.read_text()
    assert raw["alice"]["salt"] != raw["bob"]["salt"] and raw["alice"]["hash"] != raw["bob"]["hash"]
    users = access.load_users(path)
    assert access.verify_password(users, "alice", "correct horse")
    assert not access.verify_password(users, "alice", "wrong horse")
    assert not access.verify_password(users, "carol", "correct horse")
    assert (path.stat().st_mode & 0o077) == 0
    with pytest.raises(access.UsersError, match="too short"):
        access.set_password(path, "alice", "short")
    with pytest.raises(access.UsersError, match="user name"):
        access.set_password(path, "../x", "long enough pw")
    (tmp_path / "bad.json").write_text('{"users": {"x": {"hash": "00"}}}')
    with pytest.raises(access.UsersError, match="bad.json: user 'x'"):
        access.load_users(tmp_path / "bad.json")
    with pytest.raises(access.UsersError, match="not found"):
        access.load_users(tmp_path / "missing.json")


def test_binding_rule():
    for ok in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        access.check_binding(ok, auth_configured=False)
    for bad in ("0.0.0.0", "192.168.1.4", "::", ""):
        with pytest.raises(access.UsersError, match="without authentication"):
            access.check_binding(bad, auth_configured=False)
    access.check_binding("0.0.0.0", auth_configured=True)


def test_render_views_crosshair_circle_and_aspect():
    arr = np.full((10, 40, 50), -1000, dtype=np.int16)
    arr[5, 20, 25] = 400
    geo = images.Geometry((2.5, 0.5, 0.5))
    ax = images.render(arr, geo, "axial", (5, 20, 25), (1500, -600), nodule_zyx=(5, 20, 25), nodule_radius_mm=5.0)
    assert ax.shape == (40, 50, 3) and ax.dtype == np.uint8
    ring = np.all(ax == images.RING.astype(np.uint8), axis=-1)
    assert (ax[20, ~ring[20], 2] > ax[5, 5, 2]).all()  # the crosshair row is tinted (outside the ring)
    rr, cc = np.nonzero(ring)
    assert np.allclose(np.hypot(rr - 20, cc - 25) * 0.5, 5.0, atol=0.6)  # circle of the nodule's radius in mm
    cor = images.render(arr, geo, "coronal", (5, 20, 25), (1500, -600))
    assert cor.shape == (50, 50, 3)  # 10 slices of 2.5 mm shown as 50 rows of 0.5 mm
    far = images.render(arr, geo, "axial", (9, 20, 25), (1500, -600), nodule_zyx=(5, 20, 25), nodule_radius_mm=5.0)
    assert not np.all(far == images.RING.astype(np.uint8), axis=-1).any()  # 10 mm away: no circle
    assert images.window_uint8(np.array([-1350.0, -600.0, 150.0]), 1500, -600).tolist() == [0, 127, 255]
    with pytest.raises(IndexError, match="axial slice 10"):
        images.extract(arr, "axial", 10)


def test_overlay_plane_places_the_crop():
    attr = np.ones((2, 3, 4), dtype=np.float32)
    full = images.overlay_plane(attr, (4, 10, 20), (10, 40, 50), "axial", 5, scale=2.0)
    assert full.shape == (40, 50) and full.sum() == pytest.approx(12 * 0.5) and full[10, 20] == 0.5
    assert images.overlay_plane(attr, (4, 10, 20), (10, 40, 50), "axial", 7, scale=2.0) is None
