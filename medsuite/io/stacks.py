"""Group image planes into series, stacks and volumes (shared by the folder scan and the reader).

- **Series**: files sharing a SeriesInstanceUID. Files without one are grouped by a documented fallback key
  (StudyInstanceUID, SeriesNumber, FrameOfReferenceUID, orientation, Rows x Columns; plus the folder when
  the file has neither a StudyInstanceUID nor a FrameOfReferenceUID), under a derived ``2.25.`` UID and
  with a warning.
- **Stack**: planes that can become one `Volume`: same orientation and plane size, not a localizer, one
  enhanced object at most. When planes of a partition share positions, they are split by ImageType (or the
  enhanced FrameType: magnitude/phase/real/imaginary, B0 maps), then by echo (EchoNumbers, EchoTime,
  EffectiveEchoTime).
- **Volumes**: planes still sharing positions after that, told apart by TemporalPositionIdentifier,
  AcquisitionNumber, TriggerTime, diffusion b-value / gradient (or, for mosaics, the file), form a 4D stack
  when every group covers the same positions (fMRI, DTI, perfusion), else separate stacks.

Every split, duplicate and fallback is recorded as a `Problem`; nothing here raises for a bad file.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.io.header import FileHeader
from medsuite.io.orientation import SAME_POSITION_MM, analyse_positions, orientation_label, plane_axes
from medsuite.io.problems import Code, Problem, codes_of

__all__ = ["Plane", "Stack", "describe_stack", "group_stacks", "series_key"]

Plane = tuple[FileHeader, int]  # a file's header and the index of one of its planes (frame or mosaic tile)

# Positions of volumes of a 4D stack must agree within this (mm).
SAME_GRID_MM = 0.01
_VOLUME_LABELS = (
    "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "DiffusionBValue",
    "DiffusionGradientOrientation", "file",
)  # fmt: skip
_ENHANCED_VOLUME_LABELS = ("TemporalPositionIndex", "DiffusionBValue", "FrameAcquisitionNumber")


@dataclass
class Stack:
    """Planes that form one volume (or, when ``volumes`` is set, one 4D series of volumes)."""

    series_uid: str
    planes: list[Plane]
    volumes: list[list[Plane]] | None = None
    problems: list[Problem] = field(default_factory=list)
    broken: list[FileHeader] = field(default_factory=list)  # damaged files that belong here (not in planes)

    @property
    def headers(self) -> list[FileHeader]:
        """Distinct files, in plane order."""
        seen: dict[int, FileHeader] = {}
        for h, _ in self.planes:
            seen.setdefault(id(h), h)
        return list(seen.values())

    @property
    def n_volumes(self) -> int:
        return len(self.volumes) if self.volumes else 1

    def volume(self, index: int) -> list[Plane]:
        """The planes of volume ``index`` (0-based)."""
        return self.volumes[index] if self.volumes else self.planes

    @property
    def is_localizer(self) -> bool:
        return self.planes[0][0].is_localizer

    @property
    def all_problems(self) -> list[Problem]:
        """The stack's problems, then its files' own (each naming the file)."""
        out = list(self.problems)
        for h in self.headers:
            out.extend(Problem(p.code, f"{Path(h.path).name}: {p.message}") for p in h.problems)
        return out

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems) or any(h.fatal for h in self.headers)


# ------------------------------------------------------------------------------------------ series
def _rounded(values: Any, digits: int = 3) -> tuple | None:
    return None if values is None else tuple(round(float(v), digits) + 0.0 for v in values)


def series_key(h: FileHeader) -> tuple[str, bool]:
    """``(series uid, derived)``: the SeriesInstanceUID, or a ``2.25.`` UID derived from the fallback key."""
    if h.series_uid:
        return h.series_uid, False
    key: list[Any] = [
        "fallback-v1", h.study_uid, h.series_number, h.frame_of_reference, _rounded(h.orientation), h.rows, h.cols,
    ]  # fmt: skip
    if not h.study_uid and not h.frame_of_reference:
        key.append(str(Path(h.path).parent))
    digest = hashlib.sha256(repr(key).encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest).int}", True


# ---------------------------------------------------------------------------------------- geometry
def _normal(h: FileHeader, plane: int) -> np.ndarray | None:
    iop = h.orientation_of(plane)
    if iop is None:
        return None
    try:
        return plane_axes(iop, h.path)[2]
    except ValueError:
        return None


def _distances(planes: list[Plane]) -> np.ndarray | None:
    """Positions along the first plane's normal; None when a position or the orientation is missing."""
    if not planes:
        return None
    normal = _normal(*planes[0])
    if normal is None:
        return None
    positions = [h.positions[i] if i < len(h.positions) else None for h, i in planes]
    if any(p is None for p in positions):
        return None
    return np.asarray(positions, dtype=np.float64) @ normal


def _has_duplicates(planes: list[Plane]) -> bool:
    d = _distances(planes)
    if d is None or len(d) < 2:
        return False
    return bool(np.any(np.diff(np.sort(d)) < SAME_POSITION_MM))


def _same_positions(groups: list[list[Plane]]) -> bool:
    ref = _distances(groups[0])
    if ref is None:
        return False
    ref = np.sort(ref)
    for g in groups[1:]:
        d = _distances(g)
        if d is None or len(d) != len(ref) or np.max(np.abs(np.sort(d) - ref)) > SAME_GRID_MM:
            return False
    return True


# -------------------------------------------------------------------------------------- splitting
def image_type_of(plane: Plane) -> str:
    """ImageType of a plane: the enhanced FrameType where an object's frames differ, else the file's."""
    h, i = plane
    return h.frame_types[i] if h.frame_types is not None else h.image_type


_image_type = image_type_of


def _echo(plane: Plane) -> str:
    h, i = plane
    if h.frame_echoes is not None:
        return h.frame_echoes[i]
    return f"{h.echo}/{h.echo_time}" if h.echo or h.echo_time else ""


def _volume_key(plane: Plane) -> tuple:
    h, i = plane
    if h.frame_volumes is not None:
        return h.frame_volumes[i]
    return (h.temporal, h.acquisition, h.trigger_time, h.b_value, h.gradient, h.path if h.mosaic else "")


def _natural(value: Any) -> tuple:
    """Sort numbers as numbers and text as text (volume order 2 before 10)."""
    if isinstance(value, tuple):
        return tuple(_natural(v) for v in value)
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _group(planes: list[Plane], key: Callable[[Plane], Any]) -> dict[Any, list[Plane]]:
    groups: dict[Any, list[Plane]] = defaultdict(list)
    for plane in planes:
        groups[key(plane)].append(plane)
    return groups


def _first_instance(planes: list[Plane]) -> tuple:
    h = planes[0][0]
    return (h.instance_number if h.instance_number is not None else 0, h.path)


def _resolve(series_uid: str, planes: list[Plane]) -> list[Stack]:
    """Split one partition (same orientation and size) into stacks and 4D volumes where positions repeat."""
    if not _has_duplicates(planes):
        return [Stack(series_uid, planes)]
    for label, key in (("ImageType", _image_type), ("echo", _echo)):
        groups = _group(planes, key)
        if len(groups) > 1:
            out = []
            for value in sorted(groups, key=_natural):
                for stack in _resolve(series_uid, groups[value]):
                    note = f"series split by {label} (slices at the same positions): {label}={value or '(none)'}"
                    stack.problems.insert(0, Problem(Code.SPLIT, note))
                    out.append(stack)
            return out
    groups = _group(planes, _volume_key)
    if len(groups) > 1 and not any(_has_duplicates(g) for g in groups.values()):
        keys = sorted(groups, key=lambda k: (_natural(k), _first_instance(groups[k])))
        labels = _ENHANCED_VOLUME_LABELS if planes[0][0].frame_volumes is not None else _VOLUME_LABELS
        varying = [labels[j] for j in range(len(keys[0])) if len({k[j] for k in keys}) > 1]
        by = ", ".join(varying) or "file"
        ordered = [groups[k] for k in keys]
        if _same_positions(ordered):
            note = f"{len(ordered)} volumes at the same {len(ordered[0])} positions (4D, told apart by {by})"
            flat = [p for g in ordered for p in g]
            return [Stack(series_uid, flat, ordered, [Problem(Code.MULTI_VOLUME, note)])]
        return [
            Stack(series_uid, g, problems=[Problem(Code.SPLIT, f"series split by {by} (slices at the same positions): {by}={k}")])
            for k, g in zip(keys, ordered, strict=True)
        ]
    note = (
        "different instances at the same position (not separable by ImageType, echo, temporal position, "
        "acquisition, trigger time or b-value)"
    )
    return [Stack(series_uid, planes, problems=[Problem(Code.DUPLICATE_POSITIONS, note)])]


def _partition_key(plane: Plane) -> tuple:
    h, i = plane
    return (h.path if h.enhanced else "", h.is_localizer, _rounded(h.orientation_of(i)), h.plane_rows, h.plane_cols)


def _broken(h: FileHeader) -> bool:
    """A file with a fatal problem of its own (truncated, invalid values ...): it flags the stack it belongs to."""
    return h.fatal


def _attach_broken(series_uid: str, stacks: list[Stack], broken: list[FileHeader]) -> list[Stack]:
    """Put each broken file's problems on the stack it belongs to, so that stack cannot be read without it.

    The stack is the largest one with the file's orientation (its size may be what is broken); a file of
    unknown orientation flags every stack of the series; one whose orientation matches none is a stack
    of its own (e.g. a broken localizer).
    """
    for h in broken:
        fatal = [p for p in h.problems if p.fatal]
        message = f"{Path(h.path).name} (a file of this series) is broken: {'; '.join(p.message for p in fatal)}"
        problem = Problem(fatal[0].code, message)
        iop = _rounded(h.orientation)
        if iop is None or not stacks:
            targets = stacks
        else:
            targets = [s for s in stacks if _rounded(s.planes[0][0].orientation_of(s.planes[0][1])) == iop][:1]
        if targets:
            for stack in targets:
                stack.problems.append(problem)
                stack.broken.append(h)
        else:
            stacks.append(Stack(series_uid, [(h, i) for i in range(max(1, min(h.n_planes, len(h.positions) or 1)))]))
    return stacks


def _series_stacks(
    series_uid: str, derived: bool, members: list[FileHeader], select: Mapping[str, Sequence[int] | None]
) -> list[Stack]:
    kept: dict[str, FileHeader] = {}
    dropped: list[str] = []
    for h in sorted(members, key=lambda h: h.path):
        if h.sop_uid and h.sop_uid in kept:
            dropped.append(h.path)
        else:
            kept[h.sop_uid or h.path] = h
    headers = list(kept.values())
    broken = [h for h in headers if _broken(h)]
    usable = [h for h in headers if not _broken(h)]
    partitions: dict[tuple, list[Plane]] = defaultdict(list)
    for h in usable:
        chosen = select.get(h.path)
        for i in range(h.n_planes) if chosen is None else [i for i in chosen if 0 <= i < h.n_planes]:
            partitions[_partition_key((h, i))].append((h, i))
    if usable and not partitions:
        raise ValueError("none of the selected frames exist in its files")
    stacks = [s for planes in partitions.values() for s in _resolve(series_uid, planes)]
    stacks.sort(key=lambda s: (s.is_localizer, -len(s.planes), _image_type(s.planes[0]).upper().startswith("DERIVED")))
    stacks = _attach_broken(series_uid, stacks, broken)
    main = stacks[0]
    if dropped:
        shown = ", ".join(Path(p).name for p in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
        main.problems.append(Problem(Code.DUPLICATE_FILES, f"{len(dropped)} duplicate file(s) (same SOPInstanceUID) dropped: {shown}"))
    images = [s for s in stacks if not s.is_localizer]
    if len(images) > 1 and not any(p.code == Code.SPLIT for s in images for p in s.problems):
        for stack in images:  # split by orientation or size: say so on every stack of the series
            stack.problems.append(Problem(Code.SPLIT, f"the series holds {len(stacks)} stacks (different orientation or image size)"))
    main_orientation = _rounded(main.planes[0][0].orientation_of(main.planes[0][1]))
    for k, stack in enumerate(stacks):
        h, i = stack.planes[0]
        if derived:
            stack.problems.insert(0, Problem(
                Code.NO_SERIES_UID,
                "no SeriesInstanceUID: grouped by StudyInstanceUID, SeriesNumber, FrameOfReferenceUID, orientation "
                f"and image size under the derived id {series_uid}",
            ))  # fmt: skip
        if h.is_localizer:
            stack.problems.append(Problem(Code.LOCALIZER, "localizer (scout) image(s)"))
        elif k > 0 and _rounded(h.orientation_of(i)) != main_orientation and len(stack.planes) <= 2:
            stack.problems.append(Problem(Code.ORIENTATION_DIFFERS, "orientation differs from the rest of the series (localizer?)"))
    return stacks


def group_stacks(
    headers: Iterable[FileHeader], select: Mapping[str, Sequence[int] | None] | None = None
) -> list[tuple[str, Stack]]:
    """Group headers into stacks; returns ``(stack_id, stack)`` with each series' main stack first.

    The main stack (most planes, not a localizer) has ``stack_id == series uid``; the others
    ``uid.s1``, ``uid.s2`` ... ``select`` maps a path to the plane indices to use (all when absent).
    A series whose grouping fails still yields one stack, flagged with the reason.
    """
    by_series: dict[str, list[FileHeader]] = defaultdict(list)
    derived: dict[str, bool] = {}
    for h in headers:
        uid, is_derived = series_key(h)
        by_series[uid].append(h)
        derived[uid] = is_derived
    out: list[tuple[str, Stack]] = []
    for uid, members in by_series.items():
        try:
            stacks = _series_stacks(uid, derived[uid], members, select or {})
        except Exception as exc:  # noqa: BLE001 - one odd series must never stop a scan of thousands
            planes = [(h, 0) for h in members]
            stacks = [Stack(uid, planes, problems=[Problem(Code.UNSUPPORTED, f"cannot group its files: {type(exc).__name__}: {exc}")])]
        out.extend((uid if k == 0 else f"{uid}.s{k}", s) for k, s in enumerate(stacks))
    return out


# -------------------------------------------------------------------------------------- describing
def _missing_tags(planes: list[Plane]) -> list[Problem]:
    """Missing geometry tags of files that have no fatal problem of their own (those already say why)."""
    missing: dict[Code, list[str]] = defaultdict(list)
    for h in {id(h): h for h, _ in planes}.values():
        if h.fatal:
            continue
        if any(p is None for p in h.positions):
            missing[Code.MISSING_POSITION].append(h.path)
        if h.orientation is None and h.orientations is None or (h.orientations is not None and None in h.orientations):
            missing[Code.MISSING_ORIENTATION].append(h.path)
        if h.pixel_spacing is None:
            missing[Code.MISSING_PIXEL_SPACING].append(h.path)
    names = {
        Code.MISSING_POSITION: "ImagePositionPatient",
        Code.MISSING_ORIENTATION: "ImageOrientationPatient",
        Code.MISSING_PIXEL_SPACING: "PixelSpacing",
    }
    return [
        Problem(code, f"missing {names[code]} in {len(paths)} file(s), e.g. {Path(paths[0]).name} (needed for geometry)")
        for code, paths in missing.items()
    ]


def _pixel_consistency(stack: Stack) -> list[Problem]:
    headers = [h for h in stack.headers if not h.fatal]
    out = []
    spacings = {h.pixel_spacing for h in headers if h.pixel_spacing is not None}
    if len(spacings) > 1:
        ref = np.asarray(next(iter(spacings)))
        if any(np.max(np.abs(np.asarray(s) - ref)) > 1e-4 * max(1.0, float(ref.max())) for s in spacings):
            shown = ", ".join(f"{s[0]:g}x{s[1]:g}" for s in sorted(spacings)[:4])
            out.append(Problem(Code.MIXED_PIXEL_SPACING, f"PixelSpacing differs between slices ({shown} mm): no single grid"))
    formats = {(h.bits_allocated, h.bits_stored, h.signed) for h in headers}
    if len(formats) > 1:
        shown = ", ".join(f"{a}/{s} bits{' signed' if sg else ''}" for a, s, sg in sorted(formats))
        out.append(Problem(Code.MIXED_PIXEL_FORMAT, f"slices store pixels differently ({shown}); each is decoded by its own header"))
    return out


def describe_stack(stack: Stack) -> dict[str, Any]:
    """The geometry columns, problems, codes and status of a stack (first volume for 4D stacks)."""
    problems = stack.all_problems
    planes = stack.volume(0)
    h0, i0 = planes[0]
    problems.extend(_missing_tags(stack.planes))
    problems.extend(_pixel_consistency(stack))
    row: dict[str, Any] = {"spacing_z": np.nan, "orientation": "", "spacing_y": np.nan, "spacing_x": np.nan}
    if h0.pixel_spacing is not None:
        row["spacing_y"], row["spacing_x"] = h0.pixel_spacing
    order = None
    iop = h0.orientation_of(i0)
    positions = [h.positions[i] if i < len(h.positions) else None for h, i in planes]
    if iop is not None:
        try:
            axes = plane_axes(iop, h0.path)
        except ValueError as exc:
            problems.append(Problem(Code.BAD_ORIENTATION, str(exc)))
            axes = None
        if axes is not None:
            row["orientation"] = orientation_label(axes[2])
            if all(p is not None for p in positions):
                geometry = analyse_positions(np.array(positions, dtype=np.float64), axes[0], axes[1], h0.pixel_spacing or (1.0, 1.0))
                row["spacing_z"] = geometry.spacing if geometry.spacing is not None else np.nan
                already = any(p.code == Code.DUPLICATE_POSITIONS for p in problems)
                problems.extend(p for p in geometry.problem_list() if not (already and p.code == Code.DUPLICATE_POSITIONS))
                order = geometry.order
    n = len(planes)
    if n == 1 and not h0.is_localizer:
        problems.append(Problem(Code.SINGLE_SLICE, "single slice"))
    fatal = any(p.fatal for p in problems)
    status = "error" if fatal else ("warning" if problems else "ok")
    files, frames = files_and_frames(stack, order)
    row.update(
        status=status, problems="; ".join(p.message for p in problems), codes=codes_of(problems),
        n_instances=len(stack.planes), n_slices=n, n_volumes=stack.n_volumes, files=files, frames=frames,
    )  # fmt: skip
    return row


def files_and_frames(stack: Stack, order: np.ndarray | None) -> tuple[list[str], list[list[int] | None] | None]:
    """Files in position order (volume by volume) and, where a file gives only some of its planes, which."""
    sequence: list[Plane] = []
    for v in range(stack.n_volumes):
        planes = stack.volume(v)
        if order is not None and len(order) == len(planes) and stack.n_volumes == 1:
            planes = [planes[k] for k in order]
        elif order is not None and stack.n_volumes > 1:
            d = _distances(planes)
            planes = [planes[k] for k in np.argsort(d, kind="stable")] if d is not None else planes
        sequence.extend(planes)
    by_file: dict[str, list[int]] = {}
    header_of: dict[str, FileHeader] = {}
    for h, i in sequence:
        by_file.setdefault(h.path, []).append(i)
        header_of[h.path] = h
    files = list(by_file)
    frames: list[list[int] | None] = [
        None if sorted(idx) == list(range(header_of[f].n_planes)) else sorted(idx) for f, idx in by_file.items()
    ]
    return files, (None if all(f is None for f in frames) else frames)
