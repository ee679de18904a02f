"""DICOM discovery: walk folders, read headers only, and build the series table (one row per stack).

A *stack* is a set of image planes that can become one `Volume` (or a 4D series of volumes): same series,
orientation, image size, image type and echo, not a localizer (see `medsuite.io.stacks`). Files that are
not images (SR, SEG, RTSTRUCT, presentation states, KOS, DICOMDIR, colour, video, non-DICOM, special
files, unreadable) are listed in ``ScanResult.skipped`` with a reason and a `Code`. Nothing here raises for
a bad file: a scan of thousands of series carries on and reports.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medsuite.io.decode import NATIVE_SYNTAXES, check_encapsulated, pixel_element_length, syntax_name
from medsuite.io.errors import NotRegularFileError
from medsuite.io.files import open_regular, walk
from medsuite.io.header import FileHeader, MosaicInfo, header_from_dataset, header_from_raw
from medsuite.io.problems import Code, Problem, codes_of
from medsuite.io.rawheader import RawHeader, read_raw_header
from medsuite.io.stacks import Stack, describe_stack, group_stacks, image_type_of

__all__ = [
    "SERIES_COLUMNS",
    "SKIPPED_COLUMNS",
    "FileHeader",
    "build_scan",
    "MosaicInfo",
    "ScanResult",
    "Stack",
    "group_stacks",
    "iter_files",
    "scan_file",
    "scan_folder",
    "scan_headers",
    "unread_neighbours",
]

SERIES_COLUMNS = [
    "stack_id", "series_uid", "study_uid", "patient_id", "study_date", "modality", "description",
    "series_number", "n_instances", "n_slices", "n_volumes", "rows", "cols", "spacing_z", "spacing_y",
    "spacing_x", "orientation", "transfer_syntax", "manufacturer", "slice_thickness", "image_type", "status",
    "problems", "codes", "files", "frames",
]  # fmt: skip
SKIPPED_COLUMNS = ["path", "reason", "code"]

# SOP classes whose name contains one of these are never image slices (checked before pixel data).
_NON_IMAGE_NAME_PARTS = (
    "Structured Report", "SR Storage", "Segmentation", "Structure Set", "Presentation State",
    "Key Object Selection", "Encapsulated", "Directory", "Registration", "RT Plan", "RT Dose",
    "RT Treatment", "RT Beams", "Waveform", "ECG", "Raw Data", "Fiducials", "Surface", "Real World Value",
    "Measurement Report", "Parametric Map", "Stereometric", "Content Assessment", "Deformable",
)  # fmt: skip
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Skipped files that may be slices of a series nearby: their folder's stacks get a warning.
_MAYBE_SLICES = frozenset({Code.UNREADABLE, Code.UNPARSABLE, Code.TRUNCATED})
# Below this many files the scan runs in the calling thread; below _PROCESSES_FROM it uses threads (they
# overlap file I/O, e.g. on network shares); from there on processes (header parsing holds the GIL, and
# starting a worker that imports pydicom/pandas costs about a second).
_SERIAL_BELOW = 200
_PROCESSES_FROM = 1000
_CHUNK = 128

Skip = tuple[str, Code, str]


@dataclass
class ScanResult:
    """``series``: the series table (one row per stack); ``skipped``: ``path, reason, code`` per file passed over."""

    series: pd.DataFrame
    skipped: pd.DataFrame

    def row(self, key: str) -> pd.Series:
        """The row whose ``stack_id`` (or else ``series_uid``, first stack) is ``key``."""
        hit = self.series[self.series["stack_id"] == key]
        if hit.empty:
            hit = self.series[self.series["series_uid"] == key]
        if hit.empty:
            raise KeyError(f"no stack or series {key!r} in this scan ({len(self.series)} stacks)")
        return hit.iloc[0]


# ----------------------------------------------------------------------------------------- one file
def open_header(fp: BinaryIO, path: str) -> Dataset:
    """Read the header of an open file, leaving ``fp`` at the Pixel Data element (raises for non-DICOM)."""
    try:
        return dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        fp.seek(0)
        ds = dcmread(fp, stop_before_pixels=True, force=True)  # old files without the DICM preamble
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise
        return ds


def sop_class_of(ds: Dataset) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID (DICOMDIR has only the latter)."""
    value = ds.get("SOPClassUID")
    if not value and hasattr(ds, "file_meta"):
        value = ds.file_meta.get("MediaStorageSOPClassUID")
    return str(value or "")


@lru_cache(maxsize=512)
def non_image_reason(sop_class: str) -> str | None:
    """Why instances of this SOP class are not image slices (None for image storage classes)."""
    if not sop_class:
        return None
    if sop_class == uids.MediaStorageDirectoryStorage:
        return "DICOMDIR (media directory), not an image"
    name = uids.UID(sop_class).name
    if any(part in name for part in _NON_IMAGE_NAME_PARTS):
        return f"not an image: {name}"
    return None


def colour_reason(header: FileHeader) -> str | None:
    """Why a header is not a grey-level image (RGB, YBR, PALETTE COLOR ...), or None."""
    if header.samples_per_pixel != 1 or header.photometric not in _MONOCHROME:
        return f"colour image ({header.photometric or 'unknown photometric'}), not a grey-level slice"
    return None


def video_reason(syntax: str) -> str | None:
    if syntax.startswith("1.2.840.10008.1.2.4.10") or "MPEG" in syntax_name(syntax):
        return f"video ({syntax_name(syntax)}), not a slice"
    return None


def _looks_like_image(sop_class: str, has_series: bool) -> bool:
    return has_series and (not sop_class or "Image Storage" in uids.UID(sop_class).name)


def scan_file(path: str) -> FileHeader | Skip:
    """Header of one file, or ``(path, code, reason)`` when it is not an image slice; never raises.

    Broken image files (truncated, invalid header values) come back as headers carrying fatal problems,
    so that their series is flagged instead of silently losing a slice.
    """
    try:
        with open_regular(path) as fp:
            raw = read_raw_header(fp)
            if raw is not None:  # uncompressed little endian: the fast path
                return _scan_raw(raw, path, fp)
            bomb = _inflation_problem(fp)
            if bomb:
                return path, Code.UNPARSABLE, bomb
            fp.seek(0)
            return _scan_pydicom(fp, path)
    except NotRegularFileError as exc:
        return path, Code.NOT_REGULAR_FILE, str(exc).split(": ", 1)[-1]
    except OSError as exc:
        return path, Code.UNREADABLE, f"cannot read the file: {exc.strerror or exc}"
    except RecursionError:
        return path, Code.UNPARSABLE, "unreadable DICOM header: sequences nested too deeply"
    except MemoryError:
        return path, Code.UNPARSABLE, "unreadable DICOM header: too large to parse in memory"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken file must never stop a scan (even a Rust panic)
        return path, Code.UNPARSABLE, f"unreadable DICOM header: {type(exc).__name__}: {exc}"


_DEFLATED_UID = uids.DeflatedExplicitVRLittleEndian.encode()


def _inflation_problem(fp: BinaryIO) -> str | None:
    """For a Deflated Explicit VR file: why it must not be inflated whole (pydicom would), else None.

    The dataset after the file meta is one deflate stream; it is inflated here in bounded chunks, counting,
    so a deflate bomb is refused before anything holds its inflated size.
    """
    import struct
    import zlib

    from medsuite.io.header import MAX_DECOMPRESSION_RATIO, MIN_DECODE_BUDGET

    fp.seek(0)
    head = fp.read(8192)
    if len(head) < 132 or head[128:132] != b"DICM" or _DEFLATED_UID not in head:
        return None
    pos = 132
    while pos + 8 <= len(head) and struct.unpack_from("<H", head, pos)[0] == 0x0002:
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<I", head, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
    size = os.fstat(fp.fileno()).st_size
    budget = max(MIN_DECODE_BUDGET, MAX_DECOMPRESSION_RATIO * size)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    fp.seek(pos)
    total = 0
    try:
        while True:
            chunk = inflater.unconsumed_tail or fp.read(1 << 16)
            if not chunk:
                return None
            total += len(inflater.decompress(chunk, 1 << 20))
            if total > budget:
                return (f"its deflated dataset inflates to more than {budget} bytes from a {size}-byte file "
                        f"(over {MAX_DECOMPRESSION_RATIO}x): not inflated")
            if inflater.eof:
                return None
    except zlib.error as exc:
        return f"its deflated dataset is corrupt: {exc}"


def _scan_pydicom(fp: BinaryIO, path: str) -> FileHeader | Skip:
    size = os.fstat(fp.fileno()).st_size
    try:
        ds = open_header(fp, path)
    except InvalidDicomError:
        return path, Code.NOT_DICOM, "not a DICOM file"
    sop_class = sop_class_of(ds)
    reason = non_image_reason(sop_class)
    if reason:
        return path, Code.NON_IMAGE, reason
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    deflated = syntax == uids.DeflatedExplicitVRLittleEndian  # the whole dataset was inflated: no offsets
    at_end = fp.tell() >= size and not deflated
    if "Rows" not in ds or "Columns" not in ds:
        if at_end and _looks_like_image(sop_class, "SeriesInstanceUID" in ds):
            header = header_from_dataset(ds, path, size)
            header.problems = [Problem(Code.TRUNCATED, f"the file ends inside its header at {size} bytes, before the image attributes (truncated)")]
            return header
        if at_end and "SeriesInstanceUID" not in ds and sop_class and "Image Storage" in uids.UID(sop_class).name:
            return path, Code.TRUNCATED, f"incomplete image file: it ends at {size} bytes without SeriesInstanceUID, Rows/Columns or pixel data (truncated?)"
        return path, Code.NO_IMAGE, "no image (no Rows/Columns)"
    video = video_reason(syntax) if syntax else None
    if video:
        return path, Code.VIDEO, video
    pixel: tuple[int, int] | None = None
    offset: int | None = None
    pixel_problem: Problem | None = None
    start = fp.tell()
    native = (syntax or _implicit_syntax(ds)) in NATIVE_SYNTAXES and not deflated
    if native and not at_end:
        try:
            declared = pixel_element_length(fp, syntax or _implicit_syntax(ds), path)
            pixel = (declared, max(0, size - fp.tell()))
            offset = fp.tell()
        except ValueError as exc:
            pixel_problem = Problem(Code.PIXEL_LENGTH, str(exc).split(": ", 1)[-1])
        fp.seek(start)
    header = header_from_dataset(ds, path, size, pixel)
    header.pixel_offset = offset
    colour = colour_reason(header)
    if colour:
        return path, Code.COLOUR, colour
    if at_end:
        header.add(Code.TRUNCATED, f"no pixel data: the file ends at {size} bytes, before its Pixel Data (truncated?)")
    elif pixel_problem is not None:
        header.problems.append(pixel_problem)
    elif pixel is not None:
        _check_excess(fp, header, pixel[0])
    elif not native and not deflated:
        for kind, reason in check_encapsulated(fp, size, max(1, header.n_frames)):
            code = {"truncated": Code.TRUNCATED, "missing": Code.NO_PIXEL_DATA}.get(kind, Code.PIXEL_LENGTH)
            header.add(code, reason)
    return header


def _check_excess(fp: BinaryIO, h: FileHeader, declared: int) -> None:
    """Pixel Data longer than Rows x Columns x frames: accepted only as zero padding shorter than a frame.

    More (or non-zero) bytes mean the header does not describe the data (e.g. BitsAllocated or Columns
    changed), and reading it would give plausible-looking garbage.
    """
    needed = h.n_frames * h.frame_bytes
    excess = declared - needed
    if excess <= 1 or h.fatal or h.pixel_offset is None:
        return
    if excess < h.frame_bytes:
        fp.seek(h.pixel_offset + needed)
        tail = fp.read(excess)
        if len(tail) == excess and not any(tail):
            return
    h.add(
        Code.PIXEL_LENGTH,
        f"Pixel Data holds {declared} bytes but {h.n_frames} frame(s) of {h.rows}x{h.cols} at {h.bits_allocated} "
        f"bits need {needed}: {excess} bytes too many (Rows, Columns, BitsAllocated or NumberOfFrames disagree "
        "with the data)",
    )


def _implicit_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit:
        return uids.ImplicitVRLittleEndian
    return uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian


def _scan_raw(raw: RawHeader, path: str, fp: BinaryIO) -> FileHeader | Skip:
    """`scan_file` for a header read by `read_raw_header` (same results as the pydicom path)."""
    sop_class = raw.sop_class()
    reason = non_image_reason(sop_class)
    if reason:
        return path, Code.NON_IMAGE, reason
    if 0x00280010 not in raw.elements or 0x00280011 not in raw.elements:
        return path, Code.NO_IMAGE, "no image (no Rows/Columns)"
    header = header_from_raw(raw, path)
    colour = colour_reason(header)
    if colour:
        return path, Code.COLOUR, colour
    if raw.pixel_offset is None:
        header.add(Code.TRUNCATED, f"no pixel data: the file ends at {raw.file_size} bytes, before its Pixel Data (truncated?)")
    else:
        _check_excess(fp, header, raw.pixel_length)
    return header


# ----------------------------------------------------------------------------------------- walking
def iter_files(paths: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Every regular file under ``paths`` (files or folders), in a stable order (see `medsuite.io.files`)."""
    yield from walk(paths).files


def _scan_chunk(paths: Sequence[str]) -> list[FileHeader | Skip]:
    return [scan_file(p) for p in paths]


def scan_headers(
    files: Sequence[str], workers: int | None = None, executor: str = "auto"
) -> list[FileHeader | Skip]:
    """`scan_file` over ``files`` in parallel; ``executor`` is 'auto', 'thread', 'process' or 'serial'."""
    if executor not in ("auto", "thread", "process", "serial"):
        raise ValueError(f"executor must be 'auto', 'thread', 'process' or 'serial', got {executor!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if executor == "auto":
        many = len(files) >= _PROCESSES_FROM and workers >= 4  # on 2 busy cores threads measured faster
        executor = "serial" if len(files) < _SERIAL_BELOW else "process" if many else "thread"
    if workers <= 1 or executor == "serial" or not files:
        return _scan_chunk(files)
    chunks = [files[i : i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    if executor == "thread":
        pool: Any = ThreadPoolExecutor(workers)
    else:
        from medsuite.io.workers import worker_pool

        pool = worker_pool(workers, context="forkserver")  # workers die with this process (no orphans)
    with pool:
        return [item for chunk in pool.map(_scan_chunk, chunks) for item in chunk]


# -------------------------------------------------------------------------------------------- rows
def stack_row(stack_id: str, stack: Stack, extra: Sequence[Problem] = ()) -> dict[str, Any]:
    """One series-table row (see docs/contracts.md) for a stack; ``extra`` problems are appended."""
    first = stack.planes[0][0]
    geometry = describe_stack(stack)
    if extra:
        problems = [geometry["problems"]] if geometry["problems"] else []
        problems += [p.message for p in extra]
        geometry["problems"] = "; ".join(problems)
        geometry["codes"] = list(dict.fromkeys([*geometry["codes"], *codes_of(list(extra))]))
        if geometry["status"] == "ok":
            geometry["status"] = "error" if any(p.fatal for p in extra) else "warning"
    return {
        "stack_id": stack_id,
        "series_uid": stack.series_uid,
        "study_uid": first.study_uid,
        "patient_id": first.patient_id,
        "study_date": first.study_date,
        "modality": first.modality,
        "description": first.description,
        "series_number": first.series_number,
        "rows": first.plane_rows,
        "cols": first.plane_cols,
        "transfer_syntax": syntax_name(first.transfer_syntax) if first.transfer_syntax else "",
        "manufacturer": first.manufacturer,
        "slice_thickness": first.slice_thickness,
        "image_type": image_type_of(stack.planes[0]),  # an enhanced object's FrameType where frames differ
        **geometry,
    }


# The warning's text carries its count (a Problem is a code and a message): one phrase writes and reads it.
_NEIGHBOUR_PHRASE = " file(s) in this folder could not be read"
_NEIGHBOUR_COUNT = re.compile(r"(\d+)" + re.escape(_NEIGHBOUR_PHRASE))


def unread_neighbours(row: Any) -> int:
    """How many files in a series-table row's folder(s) could not be read and may be slices of its stack
    (the ``unreadable_neighbour`` warning; 0 when there is none)."""
    codes = row.get("codes")
    if codes is None or Code.UNREADABLE_NEIGHBOUR not in [str(c) for c in codes]:
        return 0
    return sum(int(n) for n in _NEIGHBOUR_COUNT.findall(str(row.get("problems") or ""))) or 1


def _neighbour_problems(skipped: list[Skip]) -> dict[str, list[Problem]]:
    """Per folder, a warning for each skipped file there that may be a slice (unreadable, unparsable, cut)."""
    by_folder: dict[str, list[Skip]] = defaultdict(list)
    for path, code, reason in skipped:
        if code in _MAYBE_SLICES:
            by_folder[str(Path(path).parent)].append((path, code, reason))
    out: dict[str, list[Problem]] = {}
    for folder, items in by_folder.items():
        shown = "; ".join(f"{Path(p).name}: {r}" for p, _, r in items[:3]) + (" ..." if len(items) > 3 else "")
        out[folder] = [Problem(Code.UNREADABLE_NEIGHBOUR, f"{len(items)}{_NEIGHBOUR_PHRASE} and may be slices of it ({shown})")]
    return out


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Series by study, series number (missing last) and UID; each series' stacks together, main first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["series_uid"], []).append(row)

    def key(uid: str) -> tuple:
        first = groups[uid][0]
        number = first["series_number"]
        return (str(first["study_uid"] or ""), number is None, number if number is not None else 0, uid)

    return [row for uid in sorted(groups, key=key) for row in groups[uid]]


def build_scan(items: Iterable[FileHeader | Skip]) -> ScanResult:
    """The series table and skipped files from `scan_file` results (any order, any chunking).

    Pure: the same items give the same tables, so header scanning can run anywhere (threads, processes,
    Ray tasks) and only this step needs all of them together (a series may span folders).
    """
    headers: list[FileHeader] = []
    skipped: list[Skip] = []
    for item in items:
        if isinstance(item, FileHeader):
            headers.append(item)
        else:
            skipped.append(item)
    neighbours = _neighbour_problems(skipped)
    rows = []
    for stack_id, stack in group_stacks(sorted(headers, key=lambda h: h.path)):
        folders = {str(Path(h.path).parent) for h in stack.headers}
        extra = [p for f in sorted(folders) for p in neighbours.get(f, [])]
        rows.append(stack_row(stack_id, stack, extra))
    series = pd.DataFrame(_sorted_rows(rows), columns=SERIES_COLUMNS)
    table = pd.DataFrame([(p, r, c.value) for p, c, r in skipped], columns=SKIPPED_COLUMNS)
    return ScanResult(series=series, skipped=table)


def scan_folder(paths: str | Path | Iterable[str | Path], workers: int | None = None) -> ScanResult:
    """Discover every image stack under ``paths`` (files and/or folders, any names, no DICOMDIR needed).

    Headers only, in parallel over ``workers`` (default: all cores): in-process below 200 files, else
    threads, or processes from 1000 files when there are at least 4 workers. Never raises for a bad file:
    it goes to ``skipped`` or makes its stack's status 'error'. A path that does not exist raises
    `FileNotFoundError`.
    """
    found = walk(paths)
    return build_scan([*found.skipped, *scan_headers(found.files, workers)])
