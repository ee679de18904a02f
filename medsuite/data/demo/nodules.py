"""Real LIDC-IDRI nodules for the demo cohort: choose them, rasterise a reader's outline, render in HU.

Each inserted nodule is one real nodule of the LIDC database: its 3D shape is one reader's outline
(inclusion and exclusion contours, slice by slice, at the source scan's spacing), resampled to the demo
scan's grid; its appearance follows that reader's texture and calcification ratings; its label is the
nodule's real consensus malignancy under the default rule. No label-dependent signal is added.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsuite.data.lidc import LidcDatabase, annotation_mask


def nodule_occupancy(db: LidcDatabase, annotation_id: int, spacing: tuple[float, float, float],
                     slice_thickness: float) -> np.ndarray:
    """Occupancy (0..1, float32, ``(z, y, x)``) of one reader's outline on a grid of ``spacing``, centred.

    The source mask is sampled with linear interpolation; along z each output slice averages the mask
    over a Gaussian slice profile (FWHM = ``slice_thickness``), i.e. the partial-volume effect."""
    mask, src_spacing, _ = annotation_mask(db, annotation_id)
    src = np.pad(mask.astype(np.float32), 2)
    com = np.array(ndimage.center_of_mass(src))
    src_sp = np.asarray(src_spacing)
    extent = np.asarray(src.shape) * src_sp + 2 * slice_thickness
    half = np.ceil(extent / 2 / np.asarray(spacing)).astype(int)
    grids = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    sigma = slice_thickness / 2.355
    offsets = np.linspace(-1.5 * sigma, 1.5 * sigma, 5) if sigma > 0.3 * src_sp[0] else np.zeros(1)
    weights = np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    weights /= weights.sum()
    zz, yy, xx = np.meshgrid(*grids, indexing="ij")
    occ = np.zeros(zz.shape, dtype=np.float32)
    for off, w in zip(offsets, weights, strict=True):
        coords = np.stack([com[0] + (zz + off) / src_sp[0], com[1] + yy / src_sp[1], com[2] + xx / src_sp[2]])
        occ += w * ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0)
    return occ


def nodule_hu(occ: np.ndarray, spacing: tuple[float, float, float], texture: int, calcification: int,
              rng: np.random.Generator) -> np.ndarray:
    """HU inside the nodule (same shape as ``occ``) from the LIDC texture (1-5) and calcification (1-6) ratings.

    texture 1-2: ground glass (-650..-400 HU); 3: part-solid (ground glass with a solid core); 4-5: solid
    (+20..+60; 4 slightly lower). calcification 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central
    (+200..+600 HU), 6 absent."""
    inside = occ > 0.5
    depth = ndimage.distance_transform_edt(inside, sampling=spacing) if inside.any() else np.zeros(occ.shape)
    rel = depth / (depth.max() + 1e-6)  # 0 at the edge, 1 at the core
    fine = ndimage.gaussian_filter(rng.standard_normal(occ.shape).astype(np.float32), 1.0)
    fine /= fine.std() + 1e-6
    if texture <= 2:
        base = rng.uniform(-650, -400) + 35 * fine
    elif texture == 3:
        ggo = rng.uniform(-600, -420)
        solid = rng.uniform(0, 40)
        core = rel > rng.uniform(0.35, 0.6)
        base = np.where(core, solid, ggo) + 30 * fine
    else:
        base = (rng.uniform(20, 60) if texture == 5 else rng.uniform(-10, 40)) + 15 * fine
        base = base - 80 * np.clip(0.25 - rel, 0, None) / 0.25 * (texture == 4)  # softer rim
    hu = np.asarray(base, dtype=np.float32)
    calc_hu = rng.uniform(200, 600)
    calc = np.zeros(occ.shape, dtype=bool)
    if calcification == 3:
        calc = rel > 0.15
    elif calcification == 5:
        calc = rel > 0.55
    elif calcification == 2:
        calc = (np.abs(rel - 0.35) < 0.08) | (np.abs(rel - 0.7) < 0.08)
    elif calcification in (1, 4):
        idx = np.argwhere(rel > 0.3)
        n_blobs = int(rng.integers(3, 7)) if calcification == 1 else 1
        radius = (0.18 if calcification == 1 else 0.3) * depth.max()
        zz, yy, xx = np.indices(occ.shape)
        for k in (rng.choice(len(idx), size=min(n_blobs, len(idx)), replace=False) if len(idx) else []):
            c = idx[k]
            d2 = ((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((xx - c[2]) * spacing[2]) ** 2
            calc |= d2 < max(radius, 1.0) ** 2
    hu = np.where(calc & inside, np.float32(calc_hu), hu)
    return hu.astype(np.float32)


def place_nodules(lung: np.ndarray, spacing: tuple[float, float, float], radii_mm: list[float],
                  rng: np.random.Generator, margin_mm: float = 2.0) -> list[np.ndarray | None]:
    """Centres (index ``z, y, x``) inside the lung for nodules of the given radii, not touching each other.

    A centre must lie deeper inside the lung than the nodule's radius (falling back to half the radius,
    i.e. juxta-pleural, when the lung is too thin), and as far from the edge of the field of view so that
    the nodule is wholly in the image (a last fallback, as before, lets it touch that edge); ``None`` for
    a nodule that cannot be placed. Depths come from a distance transform on a grid of about 2.4 mm; a
    centre is drawn uniformly inside a coarse cell whose grid point is deep enough for the nodule plus
    that cell's extent."""
    sp = np.asarray(spacing, dtype=float)
    step = np.array([max(1, int(round(1.2 / sp[0]))), *[max(2, int(round(2.4 / s))) for s in sp[1:]]])
    coarse = lung[::step[0], ::step[1], ::step[2]]
    csp = sp * step
    framed = np.pad(coarse, ((0, 0), (1, 1), (1, 1)))  # the edge of the field of view counts as a boundary
    depth = ndimage.distance_transform_edt(framed, sampling=csp)[:, 1:-1, 1:-1]
    slack = float(np.linalg.norm((step - 1) * sp))  # farthest a drawn centre can be from its grid point
    old_step = np.array([1, 2, 2])
    unframed: list[np.ndarray] = []  # the previous rule's finer grid, computed only when needed

    def depth_to_edge() -> np.ndarray:
        if not unframed:
            fine = lung[::old_step[0], ::old_step[1], ::old_step[2]]
            unframed.append(ndimage.distance_transform_edt(fine, sampling=sp * old_step))
        return unframed[0]

    limit = np.asarray(lung.shape) - 1
    placed: list[tuple[np.ndarray, float]] = []
    out: list[np.ndarray | None] = []
    for r in radii_mm:
        found = None
        levels = ((lambda: depth, step, r + margin_mm + slack, True),
                  (lambda: depth, step, 0.5 * r + margin_mm + slack, True),
                  (depth_to_edge, old_step, 0.5 * r + margin_mm, False))
        for get_depth, st, need, jitter in levels:
            ok = get_depth() >= need
            zr = int(np.ceil(r / (sp[0] * st[0])))
            ok[:zr] = False
            ok[max(ok.shape[0] - zr, 0):] = False
            cand = np.argwhere(ok)
            if len(cand) == 0:
                continue
            for _ in range(50):
                c = cand[rng.integers(len(cand))] * st
                c = np.minimum(c + rng.integers(0, st), limit) if jitter else c
                if all(np.linalg.norm((c - p) * sp) > r + q + 3 for p, q in placed):
                    found = c.astype(float)
                    break
            if found is not None:
                break
        if found is not None:
            placed.append((found, r))
        out.append(found)
    return out


def insert(hu: np.ndarray, occ: np.ndarray, values: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Blend a nodule into ``hu`` in place at index ``centre`` (clipped at the borders); returns the
    centroid (index ``z, y, x``, float) of the occupancy placed on the grid (for the nodule's world centre)."""
    c = np.round(centre).astype(int)
    half = np.asarray(occ.shape) // 2
    lo = c - half
    src = [slice(max(0, -lo[a]), occ.shape[a] - max(0, lo[a] + occ.shape[a] - hu.shape[a])) for a in range(3)]
    dst = [slice(max(0, lo[a]), min(hu.shape[a], lo[a] + occ.shape[a])) for a in range(3)]
    o = occ[tuple(src)]
    region = hu[tuple(dst)]
    region[...] = region * (1 - o) + values[tuple(src)] * o
    total = float(o.sum())
    if total <= 0:
        return np.asarray(centre, dtype=float)
    com = [float((o.sum(axis=tuple(b for b in range(3) if b != a)) * np.arange(o.shape[a])).sum()) / total
           for a in range(3)]
    return np.array([d.start for d in dst], dtype=float) + np.array(com)
