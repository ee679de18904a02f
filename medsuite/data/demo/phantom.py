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


def _smooth_field(shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance correlated Gaussian noise, computed on a coarse grid and upsampled (fast)."""
    step = [max(1, int(s // 2)) for s in sigma_vox]
    coarse_shape = [max(2, -(-n // st) + 1) for n, st in zip(shape, step, strict=True)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32),
                                     [max(s / st, 0.5) for s, st in zip(sigma_vox, step, strict=True)])
    coarse /= coarse.std() + 1e-6
    zoom = [n / c for n, c in zip(shape, coarse_shape, strict=True)]
    out = ndimage.zoom(coarse, zoom, order=1)
    return out[tuple(slice(0, n) for n in shape)]


# --------------------------------------------------------------------------------------------- trees
def _cross(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    n = (v[0] ** 2 + v[1] ** 2 + v[2] ** 2) ** 0.5 + 1e-9
    return (v[0] / n, v[1] / n, v[2] / n)


def _tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float, length: float,
          min_radius: float, max_depth: int, z_range: tuple[float, float] | None = None,
          ) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """A random bifurcating tube tree: ``(start, end, radius, generation)`` segments.

    Each child turns 20-45 degrees about a random axis and narrows by 15-32 %; branches that leave
    ``z_range`` (mm) are not grown further (they could not re-enter the slab in a few generations)."""
    segments = []
    stack = [(tuple(float(v) for v in root), _unit(tuple(float(v) for v in direction)), radius, length, 0)]
    while stack:
        p, d, r, seg_len, gen = stack.pop()
        end = (p[0] + d[0] * seg_len, p[1] + d[1] * seg_len, p[2] + d[2] * seg_len)
        segments.append((np.array(p), np.array(end), r, gen))
        if gen >= max_depth or r * 0.75 < min_radius:
            continue
        if z_range is not None and not (z_range[0] - 40 < end[2] < z_range[1] + 40):
            continue
        draws = rng.standard_normal((2, 3))
        angles = rng.uniform(0.35, 0.8, size=2)
        jitter = rng.normal(0, 0.1, size=(2, 3))
        ratios = rng.uniform(0.68, 0.85, size=2)
        shrink = rng.uniform(0.7, 0.95, size=2)
        for i, sign in enumerate((1.0, -1.0)):
            axis = _unit(_cross(d, tuple(draws[i])))
            ang = sign * float(angles[i])
            c, s_ = np.cos(ang), np.sin(ang)
            axd = _cross(axis, d)
            dot = axis[0] * d[0] + axis[1] * d[1] + axis[2] * d[2]
            nd = tuple(d[k] * c + axd[k] * s_ + axis[k] * dot * (1 - c) + float(jitter[i, k]) for k in range(3))
            stack.append((end, _unit(nd), r * float(ratios[i]), seg_len * float(shrink[i]), gen + 1))
    return segments


def _render_tubes(occupancy: np.ndarray, segments: list, grid: tuple[np.ndarray, np.ndarray, np.ndarray],
                  spacing: np.ndarray, *, wall: float = 0.0) -> None:
    """Max-accumulate soft tube occupancy (1 inside, linear 1-voxel edge) into ``occupancy`` (z, y, x).

    With ``wall > 0`` it draws the hollow wall of thickness ``wall`` x radius instead of a solid tube."""
    zs, ys, xs = grid
    lo_world = np.array([xs[0], ys[0], zs[0]])
    step = np.array([spacing[2], spacing[1], spacing[0]])
    shape_xyz = np.array([len(xs), len(ys), len(zs)])
    edge = float(spacing[1])
    for p0, p1, r, _ in segments:
        reach = r + 2 * edge
        lo = np.floor((np.minimum(p0, p1) - reach - lo_world) / step).astype(int)
        hi = np.ceil((np.maximum(p0, p1) + reach - lo_world) / step).astype(int) + 1
        lo, hi = np.clip(lo, 0, shape_xyz), np.clip(hi, 0, shape_xyz)
        if np.any(hi <= lo):
            continue
        X = xs[lo[0]:hi[0]][None, None, :]
        Y = ys[lo[1]:hi[1]][None, :, None]
        Z = zs[lo[2]:hi[2]][:, None, None]
        d = p1 - p0
        dd = float(d @ d) + 1e-9
        t = np.clip(((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / dd, 0, 1)
        dist = np.sqrt((X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2)
        occ = np.clip((r - dist) / edge + 0.5, 0, 1)
        if wall > 0:
            occ = occ * np.clip((dist - r * (1 - wall)) / edge + 0.5, 0, 1)
        view = occupancy[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        np.maximum(view, occ.astype(np.float32), out=view)


# ------------------------------------------------------------------------------------------- render
def render_thorax(t: Thorax, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray, spacing: tuple[float, float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sharp HU image ``(z, y, x)`` float32 and the lung mask, sampled at world coordinates ``zs, ys, xs``."""
    Z = zs[:, None, None].astype(np.float32)
    Y = ys[None, :, None].astype(np.float32)
    X = xs[None, None, :].astype(np.float32)
    shape = (len(zs), len(ys), len(xs))
    sp = np.asarray(spacing, dtype=float)
    theta, outline = _polar(X, Y, t)
    # slow change of the body outline with height (the chest widens caudally)
    r = np.sqrt(X ** 2 + Y ** 2)
    scale = 1.0 + 0.0015 * (zs.mean() - Z)
    depth = outline * scale - r  # mm inside the skin along the ray from the body centre
    body = depth > 0
    hu = np.full(shape, AIR_HU, dtype=np.float32)

    # table under the patient: a curved carbon-fibre shell
    table_y = t.body_b + 10
    table = (np.abs(Y - table_y + 0.0004 * X ** 2) < 2.5) & (np.abs(X) < 210)
    hu = np.where(table & ~body, np.float32(-150), hu)

    hu = np.where(body, np.float32(t.fat_hu), hu)
    hu = np.where(body & (depth < 1.5), np.float32(20.0), hu)  # skin
    wall_in = t.fat + t.muscle
    muscle = (depth > t.fat) & (depth <= wall_in + 3)
    hu = np.where(muscle, np.float32(t.muscle_hu), hu)

    # thoracic cavity, spine and mediastinum
    cavity = depth > wall_in + 3
    cav_b = t.body_b - wall_in
    spine_y = cav_b - t.spine_r - 4
    vb = ((X / t.spine_r) ** 2 + ((Y - spine_y) / (t.spine_r * 0.9)) ** 2)
    canal_y = spine_y + t.spine_r + 6
    canal = (X ** 2 + (Y - canal_y) ** 2) < 7.5 ** 2
    arch = ((X ** 2 + (Y - canal_y) ** 2) < 12 ** 2) & ~canal
    spinous = (np.abs(X) < 3.5) & (Y > canal_y) & (Y < canal_y + 30)
    mid_vertebra = np.abs(((Z - t.disc_phase) % t.disc_pitch) - t.disc_pitch / 2) < 5
    transverse = mid_vertebra & (np.abs(Y - canal_y + 2) < 2.5) & (np.abs(X) < 30) & (np.abs(X) > 8)
    paraspinal = (_ellipse(X, Y, 28, canal_y + 10, 22, 16) < 1) | (_ellipse(X, Y, -28, canal_y + 10, 22, 16) < 1)
    hu = np.where(paraspinal & body, np.float32(t.muscle_hu), hu)

    hx, hy, ha, hb, hang = t.heart
    heart = _ellipse(X, Y, hx, hy, ha, hb, hang)
    med_half = t.mediastinum_half + 8 * np.clip(-Y / 60, 0, 1)  # wider anteriorly
    mediastinum = cavity & ((np.abs(X - 3) < med_half) | (heart < 1.25))
    hu = np.where(mediastinum, np.float32(t.fat_hu + 10), hu)
    hu = np.where(heart < 1.0, np.float32(t.muscle_hu + 5), hu)  # myocardium
    hu = np.where(heart < 0.6, np.float32(t.blood_hu), hu)  # chambers
    aorta_asc = ((X - 8) ** 2 + (Y + 5) ** 2) < 14 ** 2
    aorta_desc = ((X - 24) ** 2 + (Y - spine_y + 18) ** 2) < 12 ** 2
    pa_trunk = ((X - 26) ** 2 + (Y + 18) ** 2) < 13 ** 2
    esophagus = ((X - 6) ** 2 + (Y - spine_y + 30) ** 2) < 7 ** 2
    for vessel in (aorta_asc, aorta_desc, pa_trunk):
        hu = np.where(vessel & cavity, np.float32(t.blood_hu), hu)
    hu = np.where(esophagus & cavity, np.float32(t.muscle_hu - 10), hu)

    # lungs: the cavity minus mediastinum, heart, spine, with rounded edges
    lung_raw = cavity & ~mediastinum & (vb > 1.6) & ~paraspinal & (depth > wall_in + 6)
    lung = ndimage.gaussian_filter(lung_raw.astype(np.float32), sigma=(0, 3.0 / sp[1], 3.0 / sp[2])) > 0.5
    ypos = np.clip((Y + t.body_b) / (2 * t.body_b), 0, 1)
    texture = 18 * _smooth_field(shape, (6 / sp[0], 6 / sp[1], 6 / sp[2]), rng) + \
        10 * _smooth_field(shape, (1.2 / sp[0], 1.2 / sp[1], 1.2 / sp[2]), rng)
    lung_hu = t.lung_hu + t.lung_gradient * ypos ** 2 + texture
    hu = np.where(lung, lung_hu.astype(np.float32), hu)

    # bones: vertebra (cortex, marrow, discs), ribs, sternum
    disc = np.abs(((Z - t.disc_phase) % t.disc_pitch) - t.disc_pitch / 2) > t.disc_pitch / 2 - 2.5
    marrow_hu = rng.uniform(180, 300)
    vert = vb < 1.0
    hu = np.where(vert, np.where(disc, np.float32(85.0), np.float32(marrow_hu)), hu)
    hu = np.where(vert & (vb > 0.8) & ~disc, np.float32(750.0), hu)
    hu = np.where(canal, np.float32(18.0), hu)
    hu = np.where((arch | spinous | (transverse & ~disc)) & body, np.float32(650.0), hu)

    phi = np.abs(theta)  # 0 at the spine, pi at the sternum
    rib_depth = depth - (wall_in + 0.5)  # 0 at the inner chest-wall surface
    z_rel = Z + t.rib_slope * phi - t.rib_phase
    dz = ((z_rel + t.rib_pitch / 2) % t.rib_pitch) - t.rib_pitch / 2
    rib_shape = (dz / 4.5) ** 2 + (rib_depth / 4.0) ** 2
    rib_zone = (phi > 0.35) & (phi < 2.75)
    rib = rib_zone & (rib_shape < 1.0) & (phi < 2.3)
    cartilage = rib_zone & (rib_shape < 1.0) & (phi >= 2.3)
    hu = np.where(rib, np.where(rib_shape > 0.55, np.float32(820.0), np.float32(260.0)), hu)
    hu = np.where(cartilage, np.float32(110.0), hu)
    sternum_shape = (X / 15) ** 2 + ((rib_depth - 1) / 5) ** 2
    sternum = (sternum_shape < 1) & (phi > 2.6)
    hu = np.where(sternum, np.where(sternum_shape > 0.6, np.float32(700.0), np.float32(230.0)), hu)

    # vessels and airways: trees rooted at the hila; trachea and main bronchi from the carina
    zc = float(zs.mean())
    z_range = (float(zs.min()), float(zs.max()))
    vessel_occ = np.zeros(shape, dtype=np.float32)
    airway_wall = np.zeros(shape, dtype=np.float32)
    airway_lumen = np.zeros(shape, dtype=np.float32)
    grid = (zs.astype(float), ys.astype(float), xs.astype(float))
    carina = np.array([3.0, spine_y - 40, zc + rng.uniform(0, 25)])
    trachea = [(carina + [0, 0, 80], carina, 8.5, 0)]
    for side in (-1.0, 1.0):
        hilum = np.array([side * (t.mediastinum_half + 14), spine_y - 45 + rng.normal(0, 5), zc + rng.normal(0, 8)])
        main = [(carina, hilum, 6.0, 0)]
        bronchi = main + _tree(rng, hilum, np.array([side * 1.0, rng.normal(0, .3), rng.normal(-.4, .3)]), 4.5, 22,
                               min_radius=1.0, max_depth=4, z_range=z_range)
        _render_tubes(airway_lumen, bronchi + trachea, grid, sp)
        _render_tubes(airway_wall, bronchi + trachea, grid, sp, wall=0.25)
        for _ in range(7):  # pulmonary arteries and veins
            d = np.array([side * 1.0, rng.normal(0, 0.7), rng.normal(0, 0.5)])
            root = hilum + np.array([side * rng.uniform(0, 15), rng.normal(0, 15), rng.uniform(-1, 1) * (np.ptp(zs) / 2 + 10)])
            vessels = _tree(rng, root, d, rng.uniform(3.5, 5.5), rng.uniform(14, 22), min_radius=0.45, max_depth=7,
                            z_range=z_range)
            _render_tubes(vessel_occ, vessels, grid, sp)
    in_lung_or_med = (lung | mediastinum).astype(np.float32)
    vessel_occ *= in_lung_or_med
    vessel_hu = t.blood_hu if t.contrast else t.blood_hu + 0.0
    hu = hu * (1 - vessel_occ) + np.float32(vessel_hu) * vessel_occ
    airway_lumen *= in_lung_or_med
    airway_wall *= in_lung_or_med
    hu = hu * (1 - airway_lumen) + np.float32(-990.0) * airway_lumen
    hu = hu * (1 - airway_wall) + np.float32(20.0) * airway_wall
    lung_mask = lung & (vessel_occ < 0.5) & (airway_lumen < 0.5)
    return hu.astype(np.float32), lung_mask


def finish(hu: np.ndarray, spacing: tuple[float, float, float], slice_thickness: float, noise_hu: float,
           rng: np.random.Generator) -> np.ndarray:
    """Scanner effects: slice-thickness partial volume (Gaussian, FWHM = thickness), in-plane blur, and
    spatially correlated noise; returns int16 HU clipped to [-1024, 3071]."""
    sigma_z = slice_thickness / 2.355 / spacing[0]
    out = ndimage.gaussian_filter(hu, sigma=(sigma_z, 0.6, 0.6), mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), sigma=(0, 0.8, 0.8))
    noise *= noise_hu / (noise.std() + 1e-6)
    out += noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)
