"""A synthetic thorax in Hounsfield units, defined in world millimetres and sampled on any axial grid.

Anatomy (all sizes drawn per patient): body outline with skin, subcutaneous fat and chest-wall muscle;
ribs that descend from the spine to the sternum (so each slice cuts them as arcs), costal cartilage,
sternum; vertebral body with cortex, marrow, discs, spinal canal, posterior arch and paraspinal muscles;
mediastinal fat, heart, aorta and pulmonary trunk (enhanced when the source scan used contrast); lungs
at about -850 HU with a posterior (dependent) density gradient and parenchymal texture; branching
pulmonary vessels and airways (trachea, bronchi with walls) as tubes; a patient table. The caller adds
nodules to the sharp image, then `finish` applies the slice-thickness blur and correlated CT noise.

World axes are DICOM LPS: ``x`` towards the patient's left, ``y`` posterior, ``z`` superior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -1000.0


@dataclass(frozen=True)
class Thorax:
    """Per-patient anatomy parameters (mm and HU)."""

    body_a: float  # lateral half-width of the body
    body_b: float  # antero-posterior half-depth
    body_shape: tuple[float, ...]  # Fourier wobble of the outline (cos/sin pairs, relative)
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    mediastinum_half: float  # half-width of the mediastinum
    heart: tuple[float, float, float, float, float]  # centre x, y, semi-axes a, b, angle (rad)
    spine_r: float  # vertebral body radius
    rib_pitch: float  # vertical distance between ribs at the spine
    rib_slope: float  # how far a rib descends per radian from the spine (mm/rad)
    rib_phase: float
    disc_pitch: float
    disc_phase: float
    fat_hu: float
    muscle_hu: float
    blood_hu: float
    lung_hu: float
    lung_gradient: float  # extra HU at the most posterior lung
    contrast: bool


def sample_thorax(rng: np.random.Generator, *, contrast: bool) -> Thorax:
    """Draw one patient's anatomy: size, habitus and tissue values vary between patients."""
    body_a = rng.uniform(135, 180)
    body_b = body_a * rng.uniform(0.62, 0.78)
    shape = tuple(rng.normal(0, 0.025, size=6))
    return Thorax(
        body_a=body_a, body_b=body_b, body_shape=shape,
        fat=rng.uniform(6, 28), muscle=rng.uniform(7, 14),
        mediastinum_half=rng.uniform(20, 30),
        heart=(rng.uniform(12, 30), rng.uniform(-35, -15), rng.uniform(45, 62), rng.uniform(38, 50),
               rng.uniform(-0.6, -0.2)),
        spine_r=rng.uniform(16, 21),
        rib_pitch=rng.uniform(22, 28), rib_slope=rng.uniform(32, 42), rib_phase=rng.uniform(0, 30),
        disc_pitch=rng.uniform(26, 31), disc_phase=rng.uniform(0, 30),
        fat_hu=rng.normal(-105, 8), muscle_hu=rng.normal(45, 5),
        blood_hu=rng.uniform(140, 260) if contrast else rng.normal(40, 4),
        lung_hu=rng.normal(-860, 15), lung_gradient=rng.uniform(20, 70),
        contrast=contrast,
    )


# ----------------------------------------------------------------------------------------- geometry
def _polar(x: np.ndarray, y: np.ndarray, t: Thorax) -> tuple[np.ndarray, np.ndarray]:
    """Angle (0 = posterior midline) and the body outline radius along that angle."""
    theta = np.arctan2(x, y)  # 0 towards +y (posterior), +pi/2 towards patient left
    ellipse = t.body_a * t.body_b / np.sqrt((t.body_b * np.sin(theta)) ** 2 + (t.body_a * np.cos(theta)) ** 2)
    wobble = 1.0
    for k in range(3):
        wobble = wobble + t.body_shape[2 * k] * np.cos((k + 2) * theta) + t.body_shape[2 * k + 1] * np.sin((k + 2) * theta)
    return theta, ellipse * wobble


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2


def _resize_linear(a: np.ndarray, shape: tuple[int, ...], step: tuple[float, ...], origin: float = 0.0) -> np.ndarray:
    """Separable linear upsampling of ``a`` (coarse voxel ``i`` = output voxel ``origin + i * step``) to ``shape``.

    One gather-and-blend pass per axis in float32, the smallest axes first (cheaper than
    ``ndimage.zoom``, which evaluates a general spline per output voxel)."""
    out = a.astype(np.float32, copy=False)
    for axis, (n, st) in enumerate(zip(shape, step, strict=True)):
        if st == 1 and origin == 0 and out.shape[axis] >= n:
            out = out[(slice(None),) * axis + (slice(0, n),)]
            continue
        pos = (np.arange(n, dtype=np.float32) - np.float32(origin if st != 1 else 0.0)) / np.float32(st)
        i0 = np.clip(pos.astype(np.int64), 0, out.shape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        w = w.reshape((-1,) + (1,) * (out.ndim - axis - 1))
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i0 + 1, axis=axis)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return out


def _field_step(sigma_vox: tuple[float, ...]) -> tuple[int, ...]:
    """Coarse-grid step for a smooth field: about 1.2 coarse voxels per sigma (0.8 for fine fields)."""
    return tuple(max(1, int(s / 1.2)) if s >= 3 else max(1, int(s / 0.8)) for s in sigma_vox)


def _coarse_field(shape: tuple[int, ...], sigma_vox: tuple[float, ...], step: tuple[int, ...],
                  rng: np.random.Generator) -> np.ndarray:
    """Unit-variance filtered white noise on the grid of ``step`` covering ``shape`` (coarse voxel ``i``
    sits at full voxel ``i * step``)."""
    coarse_shape = [max(2, -(-n // st) + 1) for n, st in zip(shape, step, strict=True)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32),
                                     [max(s / st, 0.5) for s, st in zip(sigma_vox, step, strict=True)], truncate=3.0)
    coarse /= coarse.std() + 1e-6
    return coarse


def _smooth_field(shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance correlated Gaussian noise (float32): filtered white noise on a coarse grid,
    upsampled linearly to ``shape``."""
    step = _field_step(sigma_vox)
    return _resize_linear(_coarse_field(shape, sigma_vox, step, rng), shape, step)


def _texture(shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lung parenchymal texture (HU, zero mean): 18 HU of 6 mm-correlated plus 10 HU of 1.2 mm-correlated
    noise. The broad field is brought onto the fine field's grid and the sum upsampled once."""
    broad_sigma = tuple(6 / s for s in spacing)
    fine_sigma = tuple(1.2 / s for s in spacing)
    fine_step, broad_step = _field_step(fine_sigma), _field_step(broad_sigma)
    fine = _coarse_field(shape, fine_sigma, fine_step, rng)
    fine *= np.float32(10)
    broad = _coarse_field(shape, broad_sigma, broad_step, rng)
    ratio = tuple(b / f for b, f in zip(broad_step, fine_step, strict=True))
    fine += np.float32(18) * _resize_linear(broad, fine.shape, ratio)
    return _resize_linear(fine, shape, fine_step)


# --------------------------------------------------------------------------------------------- trees
def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product (``np.cross`` costs ~0.5 ms a call on these tiny arrays)."""
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-9)


def _tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float, length: float,
          min_radius: float, max_depth: int, z_range: tuple[float, float] | None = None,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random bifurcating tube tree: segment ``starts`` (n, 3), ``ends`` (n, 3) and ``radii`` (n,), mm.

    Each child turns 20-45 degrees about a random axis and narrows by 15-32 %; branches that leave
    ``z_range`` (mm) are not grown further (they could not re-enter the slab in a few generations).
    Grown one generation at a time with array draws (no per-segment Python work)."""
    p = np.asarray(root, dtype=float)[None, :]
    d = _unit_rows(np.asarray(direction, dtype=float)[None, :])
    r = np.array([float(radius)])
    seg_len = np.array([float(length)])
    starts, ends, radii = [], [], []
    for gen in range(max_depth + 1):
        end = p + d * seg_len[:, None]
        starts.append(p)
        ends.append(end)
        radii.append(r)
        if gen >= max_depth:
            break
        grow = r * 0.75 >= min_radius
        if z_range is not None:
            grow &= (end[:, 2] > z_range[0] - 40) & (end[:, 2] < z_range[1] + 40)
        if not grow.any():
            break
        end, d, r, seg_len = end[grow], d[grow], r[grow], seg_len[grow]
        m = len(end)
        draws = rng.standard_normal((m, 2, 3))
        angles = rng.uniform(0.35, 0.8, size=(m, 2)) * np.array([1.0, -1.0])
        jitter = rng.normal(0, 0.1, size=(m, 2, 3))
        ratios = rng.uniform(0.68, 0.85, size=(m, 2))
        shrink = rng.uniform(0.7, 0.95, size=(m, 2))
        dd = np.broadcast_to(d[:, None, :], (m, 2, 3))
        axis = _unit_rows(_cross(dd, draws))
        c, s = np.cos(angles)[..., None], np.sin(angles)[..., None]
        dot = np.sum(axis * dd, axis=-1, keepdims=True)  # Rodrigues' rotation of d about axis
        nd = dd * c + _cross(axis, dd) * s + axis * dot * (1 - c) + jitter
        p = np.repeat(end, 2, axis=0)
        d = _unit_rows(nd.reshape(-1, 3))
        r = (r[:, None] * ratios).reshape(-1)
        seg_len = (seg_len[:, None] * shrink).reshape(-1)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(radii)


def _render_tubes(occupancy: np.ndarray, tree: tuple[np.ndarray, np.ndarray, np.ndarray],
                  grid: tuple[np.ndarray, np.ndarray, np.ndarray], spacing: np.ndarray,
                  wall_occupancy: np.ndarray | None = None, wall: float = 0.25) -> None:
    """Max-accumulate soft tube occupancy (1 inside, linear 1-voxel edge) into ``occupancy`` (z, y, x).

    Each segment is evaluated only inside its bounding box (boxes are computed for all segments at once,
    segments outside the grid skipped). With ``wall_occupancy`` the hollow wall (thickness ``wall`` x
    radius) is accumulated there from the same distances."""
    starts, ends, radii = tree
    zs, ys, xs = grid
    lo_world = np.array([xs[0], ys[0], zs[0]])
    step = np.array([spacing[2], spacing[1], spacing[0]])
    shape_xyz = np.array([len(xs), len(ys), len(zs)])
    edge = float(spacing[1])
    reach = (radii + 2 * edge)[:, None]
    lo = np.clip(np.floor((np.minimum(starts, ends) - reach - lo_world) / step).astype(int), 0, shape_xyz)
    hi = np.clip(np.ceil((np.maximum(starts, ends) + reach - lo_world) / step).astype(int) + 1, 0, shape_xyz)
    keep = np.flatnonzero(np.all(hi > lo, axis=1))
    xs32, ys32, zs32 = (np.asarray(a, dtype=np.float32) for a in (xs, ys, zs))
    inv_edge = np.float32(1.0 / edge)
    for i in keep:
        (x0, y0, z0), (x1, y1, z1) = lo[i], hi[i]
        p0 = starts[i].astype(np.float32)
        d = (ends[i] - starts[i]).astype(np.float32)
        dd = np.float32(float(d @ d) + 1e-9)
        X = xs32[x0:x1][None, None, :] - p0[0]
        Y = ys32[y0:y1][None, :, None] - p0[1]
        Z = zs32[z0:z1][:, None, None] - p0[2]
        # squared distance to the segment: |P|^2 - t (2 P.d - t |d|^2), t = clip(P.d / |d|^2, 0, 1)
        proj = (X * d[0] + Y * d[1]) + Z * d[2]
        t = proj * (1 / dd)
        np.clip(t, 0, 1, out=t)
        proj *= 2
        proj -= t * dd
        proj *= t
        dist = (X * X + Y * Y) + Z * Z
        dist -= proj
        np.maximum(dist, 0, out=dist)
        np.sqrt(dist, out=dist)
        r = np.float32(radii[i])
        occ = (r + 0.5 * edge) * inv_edge - dist * inv_edge
        np.clip(occ, 0, 1, out=occ)
        view = occupancy[z0:z1, y0:y1, x0:x1]
        np.maximum(view, occ, out=view)
        if wall_occupancy is not None:
            inner = dist * inv_edge - ((r * (1 - wall) - 0.5 * edge) * inv_edge)
            np.clip(inner, 0, 1, out=inner)
            occ *= inner
            view = wall_occupancy[z0:z1, y0:y1, x0:x1]
            np.maximum(view, occ, out=view)


def _join(trees: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.concatenate([tr[k] for tr in trees]) for k in range(3))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- render
def render_thorax(t: Thorax, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray, spacing: tuple[float, float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sharp HU image ``(z, y, x)`` float32 and the lung mask, sampled at world coordinates ``zs, ys, xs``.

    The anatomy that does not change with height (mediastinum, heart, great vessels, spine) is drawn as 2D
    cross-sections broadcast along z; what does (body outline, discs, ribs, vessel and airway trees,
    texture) is evaluated in 3D, the ribs and sternum only in the ring of pixels that can hold them."""
    f32 = np.float32
    Y = ys[:, None].astype(f32)
    X = xs[None, :].astype(f32)
    zs_f = np.asarray(zs, dtype=float)
    shape = (len(zs), len(ys), len(xs))
    sp = np.asarray(spacing, dtype=float)
    theta, outline = _polar(X, Y, t)
    # slow change of the body outline with height (the chest widens caudally)
    r = np.sqrt(X ** 2 + Y ** 2)
    scale = (1.0 + 0.0015 * (zs_f.mean() - zs_f)).astype(f32)
    depth = outline[None] * scale[:, None, None] - r[None]  # mm inside the skin along the ray from the body centre
    body = depth > 0
    hu = np.full(shape, AIR_HU, dtype=f32)

    def paint(value: object, where: np.ndarray) -> None:
        np.copyto(hu, np.asarray(value, dtype=f32), where=where)

    # table under the patient: a curved carbon-fibre shell
    table_y = t.body_b + 10
    table = (np.abs(Y - table_y + 0.0004 * X ** 2) < 2.5) & (np.abs(X) < 210)
    paint(-150.0, table[None] & ~body)

    paint(t.fat_hu, body)
    paint(20.0, body & (depth < 1.5))  # skin
    wall_in = t.fat + t.muscle
    paint(t.muscle_hu, (depth > t.fat) & (depth <= wall_in + 3))

    # thoracic cavity, spine and mediastinum (2D cross-sections)
    cavity = depth > wall_in + 3
    cav_b = t.body_b - wall_in
    spine_y = cav_b - t.spine_r - 4
    vb = ((X / t.spine_r) ** 2 + ((Y - spine_y) / (t.spine_r * 0.9)) ** 2)
    canal_y = spine_y + t.spine_r + 6
    canal = (X ** 2 + (Y - canal_y) ** 2) < 7.5 ** 2
    arch = ((X ** 2 + (Y - canal_y) ** 2) < 12 ** 2) & ~canal
    spinous = (np.abs(X) < 3.5) & (Y > canal_y) & (Y < canal_y + 30)
    disc_z = np.abs(((zs_f - t.disc_phase) % t.disc_pitch) - t.disc_pitch / 2)
    mid_vertebra = (disc_z < 5)[:, None, None]
    transverse2d = (np.abs(Y - canal_y + 2) < 2.5) & (np.abs(X) < 30) & (np.abs(X) > 8)
    paraspinal = (_ellipse(X, Y, 28, canal_y + 10, 22, 16) < 1) | (_ellipse(X, Y, -28, canal_y + 10, 22, 16) < 1)
    paint(t.muscle_hu, paraspinal[None] & body)

    hx, hy, ha, hb, hang = t.heart
    heart = _ellipse(X, Y, hx, hy, ha, hb, hang)
    med_half = t.mediastinum_half + 8 * np.clip(-Y / 60, 0, 1)  # wider anteriorly
    med2d = (np.abs(X - 3) < med_half) | (heart < 1.25)
    mediastinum = cavity & med2d[None]
    paint(t.fat_hu + 10, mediastinum)
    paint(t.muscle_hu + 5, heart < 1.0)  # myocardium
    paint(t.blood_hu, heart < 0.6)  # chambers
    aorta_asc = ((X - 8) ** 2 + (Y + 5) ** 2) < 14 ** 2
    aorta_desc = ((X - 24) ** 2 + (Y - spine_y + 18) ** 2) < 12 ** 2
    pa_trunk = ((X - 26) ** 2 + (Y + 18) ** 2) < 13 ** 2
    esophagus = ((X - 6) ** 2 + (Y - spine_y + 30) ** 2) < 7 ** 2
    paint(t.blood_hu, cavity & (aorta_asc | aorta_desc | pa_trunk)[None])
    paint(t.muscle_hu - 10, cavity & esophagus[None])

    # lungs: the cavity minus mediastinum, heart, spine, with rounded edges (smoothed at half resolution)
    lung_raw = (~med2d & (vb > 1.6) & ~paraspinal)[None] & (depth > wall_in + 6)
    lung = _round_edges(lung_raw, 3.0 / sp[1:])
    ypos = np.clip((Y + t.body_b) / (2 * t.body_b), 0, 1)
    texture = _texture(shape, sp, rng)
    texture += (t.lung_hu + t.lung_gradient * ypos ** 2).astype(f32)[None]
    np.copyto(hu, texture, where=lung)
    del texture

    # bones: vertebra (cortex, marrow, discs), ribs, sternum
    disc = (disc_z > t.disc_pitch / 2 - 2.5)[:, None, None]
    marrow_hu = rng.uniform(180, 300)
    vert = (vb < 1.0)[None]
    paint(np.where(disc, f32(85.0), f32(marrow_hu)), vert)
    paint(750.0, (vert & (vb > 0.8)[None]) & ~disc)
    paint(18.0, canal[None])
    paint(650.0, ((arch | spinous)[None] | (mid_vertebra & transverse2d[None] & ~disc)) & body)
    _paint_ribs(hu, t, zs_f, X, theta, outline, r, scale, wall_in)

    # vessels and airways: trees rooted at the hila; trachea and main bronchi from the carina
    zc = float(zs_f.mean())
    z_range = (float(zs_f.min()), float(zs_f.max()))
    vessel_occ = np.zeros(shape, dtype=f32)
    airway_wall = np.zeros(shape, dtype=f32)
    airway_lumen = np.zeros(shape, dtype=f32)
    grid = (zs_f, ys.astype(float), xs.astype(float))
    carina = np.array([3.0, spine_y - 40, zc + rng.uniform(0, 25)])
    airways = [(carina[None] + [0, 0, 80], carina[None], np.array([8.5]))]
    vessels = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * (t.mediastinum_half + 14), spine_y - 45 + rng.normal(0, 5), zc + rng.normal(0, 8)])
        airways.append((carina[None], hilum[None], np.array([6.0])))
        airways.append(_tree(rng, hilum, np.array([side * 1.0, rng.normal(0, .3), rng.normal(-.4, .3)]), 4.5, 22,
                             min_radius=1.0, max_depth=4, z_range=z_range))
        for _ in range(7):  # pulmonary arteries and veins
            d = np.array([side * 1.0, rng.normal(0, 0.7), rng.normal(0, 0.5)])
            root = hilum + np.array([side * rng.uniform(0, 15), rng.normal(0, 15), rng.uniform(-1, 1) * (np.ptp(zs_f) / 2 + 10)])
            vessels.append(_tree(rng, root, d, rng.uniform(3.5, 5.5), rng.uniform(14, 22), min_radius=0.45,
                                 max_depth=7, z_range=z_range))
    _render_tubes(airway_lumen, _join(airways), grid, sp, wall_occupancy=airway_wall, wall=0.25)
    _render_tubes(vessel_occ, _join(vessels), grid, sp)
    in_lung_or_med = lung | mediastinum
    vessel_occ *= in_lung_or_med
    airway_lumen *= in_lung_or_med
    airway_wall *= in_lung_or_med
    for occ, value in ((vessel_occ, t.blood_hu), (airway_lumen, -990.0), (airway_wall, 20.0)):
        hu -= occ * (hu - f32(value))  # hu * (1 - occ) + value * occ
    lung_mask = lung & (vessel_occ < 0.5) & (airway_lumen < 0.5)
    return hu, lung_mask


def _round_edges(mask: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """``gaussian(mask, sigma in-plane) > 0.5`` (rounds corners), filtered at half resolution in-plane when
    the blur is wide enough (>= 2 pixels) and upsampled linearly: the same outline for a quarter of the work."""
    f = 2 if min(sigma_px) >= 2.0 else 1
    nz, ny, nx = mask.shape
    if f == 2:
        py, px = -ny % 2, -nx % 2
        m = np.pad(mask, ((0, 0), (0, py), (0, px)), mode="edge").astype(np.float32)
        m = 0.25 * (m[:, 0::2, 0::2] + m[:, 1::2, 0::2] + m[:, 0::2, 1::2] + m[:, 1::2, 1::2])
        small = ndimage.gaussian_filter(m, sigma=(0, *(np.asarray(sigma_px) / 2)), truncate=3.0)
        small = np.pad(small, ((0, 0), (1, 1), (1, 1)), mode="edge")
        # block mean k covers fine pixels 2k, 2k+1 (centre 2k + 0.5); after the pad, coarse 0 sits at -1.5
        return _resize_linear(small, (nz, ny, nx), (1, 2, 2), origin=-1.5) > 0.5
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma=(0, *sigma_px), truncate=3.0) > 0.5


def _paint_ribs(hu: np.ndarray, t: Thorax, zs: np.ndarray, X: np.ndarray, theta: np.ndarray, outline: np.ndarray,
                r: np.ndarray, scale: np.ndarray, wall_in: float) -> None:
    """Ribs (cortex and marrow), costal cartilage and sternum, evaluated only on the ring of pixels whose
    depth below the inner chest wall can hold them at some height of the slab."""
    phi = np.abs(theta)  # 0 at the spine, pi at the sternum
    surface = wall_in + 0.5
    ring = (phi > 0.35) & (outline * float(scale.max()) - r > surface - 4) & (outline * float(scale.min()) - r < surface + 6)
    iy, ix = np.nonzero(ring)
    if iy.size == 0:
        return
    f32 = np.float32
    rib_depth = outline[iy, ix][None] * scale[:, None] - r[iy, ix][None] - f32(surface)  # (z, points)
    phi_p = phi[iy, ix][None]
    z_rel = zs.astype(f32)[:, None] + f32(t.rib_slope) * phi_p - f32(t.rib_phase)
    dz = ((z_rel + t.rib_pitch / 2) % t.rib_pitch) - t.rib_pitch / 2
    rib_shape = (dz / 4.5) ** 2 + (rib_depth / 4.0) ** 2
    rib_zone = (phi_p > 0.35) & (phi_p < 2.75)
    vals = hu[:, iy, ix]
    rib = rib_zone & (rib_shape < 1.0) & (phi_p < 2.3)
    cartilage = rib_zone & (rib_shape < 1.0) & (phi_p >= 2.3)
    vals = np.where(rib, np.where(rib_shape > 0.55, f32(820.0), f32(260.0)), vals)
    vals = np.where(cartilage, f32(110.0), vals)
    sternum_shape = (X[0, ix][None] / 15) ** 2 + ((rib_depth - 1) / 5) ** 2
    sternum = (sternum_shape < 1) & (phi_p > 2.6)
    vals = np.where(sternum, np.where(sternum_shape > 0.6, f32(700.0), f32(230.0)), vals)
    hu[:, iy, ix] = vals


def finish(hu: np.ndarray, spacing: tuple[float, float, float], slice_thickness: float, noise_hu: float,
           rng: np.random.Generator) -> np.ndarray:
    """Scanner effects: slice-thickness partial volume (Gaussian along z, FWHM = thickness), then white
    noise blurred in-plane together with the image (sigma 0.7 pixel: reconstruction-kernel blur and
    spatially correlated noise of standard deviation ``noise_hu``); returns int16 HU clipped to [-1024, 3071]."""
    sigma_z = slice_thickness / 2.355 / spacing[0]
    out = ndimage.gaussian_filter1d(hu, sigma_z, axis=0, mode="nearest", truncate=3.0) if sigma_z > 0.2 else hu.copy()
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_hu / _blurred_noise_std(_INPLANE_SIGMA))
    out += noise
    del noise
    ndimage.gaussian_filter(out, sigma=(0, _INPLANE_SIGMA, _INPLANE_SIGMA), mode="nearest", truncate=3.0, output=out)
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


_INPLANE_SIGMA = 0.7  # pixels


def _blurred_noise_std(sigma: float) -> float:
    """Standard deviation of unit white noise after the in-plane Gaussian blur of `finish` (exact for the
    discrete kernel: the square root of the sum of the squared 2D weights)."""
    delta = np.zeros(31)
    delta[15] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma, truncate=3.0)
    return float(np.sum(k ** 2))  # sqrt((sum k^2)^2) for the separable 2D kernel
