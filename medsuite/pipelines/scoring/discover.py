"""Find the series to score and decide which are eligible for a bundle.

Inputs are folders, single DICOM files, or a CSV/Parquet table with a ``path`` column (and optionally a
``series_uid`` and/or ``stack_id`` column restricting which series or stacks of those paths to keep: a stack
id picks one stack of a series, e.g. the magnitude images or one echo). Eligibility rules come from the
bundle (its ``eligibility`` entry, or safe CT defaults) and the user may override any of them with
``key=value`` strings; every series that is not scored gets a reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from medsuite.io.sitk_io import is_image_file

TABLE_SUFFIXES = (".csv", ".parquet")
DEFAULT_EXCLUDED_IMAGE_TYPES = ("LOCALIZER", "DERIVED", "SECONDARY")


class DiscoveryError(ValueError):
    """An input that cannot be used at all (missing path, table without a path column)."""


class RuleError(ValueError):
    """A ``--rule key=value`` that names an unknown rule or has an unreadable value."""


@dataclass(frozen=True)
class Rules:
    """Which series a bundle may score. ``None``/empty means "no constraint"."""

    modality: tuple[str, ...] = ("CT",)
    min_slices: int | None = 10
    max_slice_thickness: float | None = 5.0
    orientation: tuple[str, ...] = ()
    exclude_image_type: tuple[str, ...] = DEFAULT_EXCLUDED_IMAGE_TYPES

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def reason_to_skip(self, row: pd.Series | dict[str, Any]) -> str | None:
        """The plain-words reason this series table row is not eligible, or None if it is."""
        modality = str(row.get("modality") or "").upper()
        if self.modality and modality not in self.modality:
            files = row.get("files")
            if not modality and files is not None and len(files) == 1 and is_image_file(str(files[0])):
                return (f"modality unknown, not in {list(self.modality)} (image files do not record it: give a "
                        "'modality' column in an input table, or --rule modality=any)")
            return f"modality {modality or 'unknown'} not in {list(self.modality)}"
        excluded = sorted(set(image_type_tokens(row.get("image_type"))) & set(self.exclude_image_type))
        if excluded:
            return f"image type {'/'.join(excluded)} is excluded"
        n = _int_or_none(row.get("n_instances"))
        if self.min_slices is not None and n is not None and n < self.min_slices:
            return f"{n} slices, fewer than min_slices={self.min_slices}"
        thickness = _float_or_none(row.get("slice_thickness"))
        if thickness is None:
            thickness = _float_or_none(row.get("spacing_z"))
        if self.max_slice_thickness is not None and thickness is not None and thickness > self.max_slice_thickness + 1e-6:
            return f"slice thickness {thickness:g} mm above max_slice_thickness={self.max_slice_thickness:g}"
        orientation = str(row.get("orientation") or "").lower()
        if self.orientation and orientation not in self.orientation:
            return f"orientation {orientation or 'unknown'} not in {list(self.orientation)}"
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or pd.isna(value) else float(value)
    except (TypeError, ValueError):
        return None


def image_type_tokens(value: Any) -> list[str]:
    """ImageType as upper-case tokens whether the scanner gave a list or a backslash-joined string."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = str(value).replace("\\", ",").replace("/", ",").split(",")
    return [t.strip().strip("[]'\" ").upper() for t in items if t.strip().strip("[]'\" ")]


def _list(value: str, *, upper: bool) -> tuple[str, ...]:
    if value.strip().lower() in ("", "any", "none", "*"):
        return ()
    return tuple((v.strip().upper() if upper else v.strip().lower()) for v in value.split(",") if v.strip())


def _number(key: str, value: str, kind: type) -> Any:
    if value.strip().lower() in ("", "any", "none"):
        return None
    try:
        number = kind(value)
    except ValueError as exc:
        raise RuleError(f"--rule {key}={value}: {key} must be a {kind.__name__} (or 'none')") from exc
    if number < 0:
        raise RuleError(f"--rule {key}={value}: {key} must not be negative")
    return number


RULE_PARSERS = {
    "modality": lambda k, v: _list(v, upper=True),
    "min_slices": lambda k, v: _number(k, v, int),
    "max_slice_thickness": lambda k, v: _number(k, v, float),
    "orientation": lambda k, v: _list(v, upper=False),
    "exclude_image_type": lambda k, v: _list(v, upper=True),
}


def rules_from_bundle(meta: dict[str, Any]) -> Rules:
    """Default rules for a bundle: its ``eligibility`` dict where present, else CT defaults."""
    rules = Rules()
    given = dict(meta.get("eligibility") or {})
    if "modality" in meta and "modality" not in given:
        given["modality"] = meta["modality"]
    values = {}
    for key, value in given.items():
        if key not in RULE_PARSERS:
            continue  # a newer bundle may carry rules this version does not know; they stay unenforced
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else ("none" if value is None else str(value))
        try:
            values[key] = RULE_PARSERS[key](key, text)
        except RuleError as exc:  # the parsers speak of --rule; here the bundle's own rule is at fault
            raise RuleError(f"the bundle's eligibility rule {key}={text[:80]!r} is invalid: "
                            f"{str(exc).split(': ', 1)[-1]}") from None
    return replace(rules, **values)


def apply_overrides(rules: Rules, overrides: list[str] | tuple[str, ...]) -> Rules:
    """Rules with the user's ``key=value`` overrides (lists comma-separated; 'any'/'none' lifts a rule)."""
    values: dict[str, Any] = {}
    for text in overrides:
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise RuleError(f"--rule {text!r}: expected key=value, e.g. min_slices=20")
        if key not in RULE_PARSERS:
            raise RuleError(f"--rule {text!r}: unknown rule {key!r}; known rules: {sorted(RULE_PARSERS)}")
        values[key] = RULE_PARSERS[key](key, value)
    return replace(rules, **values)


@dataclass
class Discovery:
    """The series table of everything found, plus files that are not image instances."""

    series: pd.DataFrame
    skipped_files: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    notes: list[str] = field(default_factory=list)  # warnings seen while scanning


@dataclass(frozen=True)
class Inputs:
    """What to scan: paths, and the series / stacks a series table restricts them to (None: all); image
    files (MetaImage, NRRD, NIfTI: one series each, not DICOM-scanned) and what input tables say of them."""

    paths: list[Path]
    series: frozenset[str] | None = None
    stacks: frozenset[str] | None = None
    images: tuple[Path, ...] = ()
    image_names: dict[Path, dict[str, str]] = field(default_factory=dict)


def _paths_from_table(path: Path) -> tuple[list[Path], set[str] | None, set[str] | None]:
    from medsuite.data.tables import read_table

    table = read_table(path)
    if "path" not in table.columns:
        raise DiscoveryError(f"{path}: a series table given as input needs a 'path' column (found {list(table.columns)})")
    base = path.parent
    paths = []
    for i, value in enumerate(table["path"]):
        if value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip():
            raise DiscoveryError(f"{path}: empty 'path' in row {i}")
        p = Path(str(value))
        paths.append(p if p.is_absolute() else base / p)
    uids = {str(u) for u in table["series_uid"].dropna()} if "series_uid" in table.columns else None
    stacks = {str(u) for u in table["stack_id"].dropna()} if "stack_id" in table.columns else None
    return paths, uids, stacks


def read_inputs(inputs: list[str | Path], *, stacks: Sequence[str] = ()) -> Inputs:
    """Folders and files to scan, and the series / stacks a series table (or ``stacks``, the ids given on
    the command line) restricts them to."""
    paths: list[Path] = []
    series: set[str] | None = None
    chosen: set[str] | None = {str(s) for s in stacks} or None
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise DiscoveryError(f"{p}: input not found")
        if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES:
            table_paths, uids, stack_ids = _paths_from_table(p)
            missing = [str(t) for t in table_paths if not t.exists()]
            if missing:
                raise DiscoveryError(f"{p}: {len(missing)} path(s) in the table do not exist, e.g. {missing[0]}")
            paths.extend(table_paths)
            if uids is not None:
                series = (series or set()) | uids
            if stack_ids is not None:
                chosen = (chosen or set()) | stack_ids
        else:
            paths.append(p)
    from medsuite.pipelines.scoring import images

    paths = list(dict.fromkeys(paths))  # a nodule table lists a series once per nodule
    image_files, _ = images.split_image_inputs(paths)
    return Inputs(paths, None if series is None else frozenset(series), None if chosen is None else frozenset(chosen),
                  tuple(image_files), images.table_image_names(inputs) if image_files else {})


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], set[str] | None]:
    """Folders and files to scan, and the series UIDs a series table restricts them to (None: all)."""
    found = read_inputs(inputs)
    return found.paths, None if found.series is None else set(found.series)


def list_files(inputs: Inputs) -> tuple[list[str], list[tuple]]:
    """The regular files to scan and the ``(path, code, reason)`` of what the walk passed over (pure)."""
    from medsuite.io.files import walk

    found = walk([str(p) for p in inputs.paths])
    if not inputs.images:
        return found.files, list(found.skipped)
    from medsuite.pipelines.scoring.images import image_parts

    parts = image_parts(inputs.images)  # image files and their .raw: `assemble` adds them, not the DICOM scan
    return ([f for f in found.files if os.path.abspath(f) not in parts],
            [s for s in found.skipped if os.path.abspath(str(s[0])) not in parts])


def scan_chunk(files: list[str]) -> list[Any]:
    """Header scan of some files, in this process: picklable results for `assemble` (a Ray task's body)."""
    from medsuite.io.dicom import scan_headers

    return scan_headers(files, workers=1)


def assemble(items: list[Any], inputs: Inputs) -> Discovery:
    """The `Discovery` from every chunk's `scan_chunk` items plus the walk's skipped entries (pure)."""
    from medsuite.io.dicom import build_scan

    result = build_scan(items)
    series = result.series.copy()
    if inputs.images:
        from medsuite.pipelines.scoring.images import image_series_table

        extra = image_series_table(list(inputs.images), inputs.image_names, list(series.columns))
        series = pd.concat([series, extra], ignore_index=True) if len(series) else extra
    if inputs.series is not None:
        series = series[series["series_uid"].astype(str).isin(inputs.series)]
    if inputs.stacks is not None:
        series = series[series["stack_id"].astype(str).isin(inputs.stacks)]
    series = series.reset_index(drop=True)
    if len(series):
        series["series_uid"] = series["series_uid"].astype(str)
    return Discovery(series=series, skipped_files=result.skipped.reset_index(drop=True))


def discover(inputs: list[str | Path], *, workers: int | None = None, stacks: Sequence[str] = ()) -> Discovery:
    """Scan the inputs' DICOM headers (in parallel) into the series table; keep one stack per series.

    The same as ``assemble(walk skipped + scan_chunk(chunk) for each chunk, inputs)``: callers that
    distribute the header scan (Ray) use those three pure steps.
    """
    from medsuite.io.dicom import scan_headers

    found = read_inputs(inputs, stacks=stacks)
    files, skipped = list_files(found)
    return assemble([*skipped, *scan_headers(files, workers)], found)


def file_key(path: str) -> str:
    """A stable placeholder id for a non-image file (its path is not an identifier we want to spread)."""
    return "file:" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    """One discovered series and what to do with it: ``score``, ``skip`` (rules) or ``error`` (scan)."""

    series_uid: str
    action: str
    reason: str | None
    row: dict[str, Any]


def decide(series: pd.DataFrame, rules: Rules) -> list[Decision]:
    """Apply the rules to every stack; pick one eligible stack per series (the one with most instances)."""
    decisions: list[Decision] = []
    if len(series) == 0:
        return decisions
    for uid, group in series.groupby("series_uid", sort=False):
        rows = [r for _, r in group.sort_values("n_instances", ascending=False).iterrows()]
        candidates = []
        first_reason = None
        for row in rows:
            status = str(row.get("status") or "ok")
            if status == "error":
                first_reason = first_reason or ("error", f"scan found a problem: {row.get('problems') or 'unreadable'}")
                continue
            reason = rules.reason_to_skip(row)
            if reason is None:
                candidates.append(row)
            else:
                first_reason = first_reason or ("skip", reason)
        if candidates:
            row = candidates[0]
            note = f"{len(rows)} stacks; scored the largest eligible one" if len(rows) > 1 else None
            decisions.append(Decision(str(uid), "score", note, row.to_dict()))
        else:
            action, reason = first_reason  # type: ignore[misc]
            decisions.append(Decision(str(uid), action, reason, rows[0].to_dict()))
    return decisions
