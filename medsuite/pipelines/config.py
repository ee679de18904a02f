"""Pipeline configuration: YAML validated at the boundary, with one clear message per mistake.

Every key and value is checked before anything runs or is written: an unknown key, a wrong type, a missing
file or folder, an empty table, and the values that must agree with the table (label column and labels,
positive class, split column and its sets, the input block's arguments such as window names, where the
scans are) are reported as ``<file>: <dotted.key>: <what was expected> (got <value>)``, one line per
problem. ``--set a.b=value`` overrides parse the value as YAML, so numbers, booleans and lists work on the
command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, the key and the expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Strict):
    """Patient-level split: from a table column when the table has one, else random by patient."""

    column: str | None = "split"
    valid_pct: float = Field(0.2, ge=0.0, lt=1.0)
    test_pct: float = Field(0.2, ge=0.0, lt=1.0)
    stratify: bool = True
    seed: int = 0


class DataConfig(_Strict):
    table: Path
    dicom_root: Path | None = None  # where the scans are; not needed when the table has a 'path' column
    cache_dir: Path | None = None
    label_column: str = "label"
    positive: str = "malignant"
    split: SplitConfig = SplitConfig()
    bs: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    include_phi: bool = False  # keep patient ids (and ids holding them) in the run's outputs; default: keyed pseudonyms
    # nodule task: learn from the readers' ratings where the table has them ('auto'), a named mean-rating
    # column, or 'none' (hard labels only); see medsuite.pipelines.nodule.ReaderSoftTargets
    soft_targets: str | None = "auto"

    @field_validator("soft_targets")
    @classmethod
    def _none_is_off(cls, value: str | None) -> str | None:
        return None if value is None or value.strip().lower() in ("", "none", "off", "false") else value

    @field_validator("positive", mode="before")
    @classmethod
    def _label_as_text(cls, value: Any) -> Any:
        """Labels are compared as text: ``positive: 1`` (a 0/1 label column) means the label ``'1'``, and
        ``positive: true`` (a True/False column, as pandas writes one) the label ``'True'``."""
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int | float) and float(value).is_integer():
            return str(int(value))
        return value


class BlockConfig(_Strict):
    """The model's input; `type` names a block of `medsuite.data.blocks`, the rest are its arguments."""

    model_config = ConfigDict(extra="allow")
    type: Literal["SliceStack", "MultiView", "SeriesSlices", "Patch3D"] = "SliceStack"


class ModelConfig(_Strict):
    arch: Literal["slice_cnn", "multiview_cnn", "series_encoder", "cnn3d"] | None = None  # None: the block's own
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init_from: Path | None = None


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float | Literal["auto"] = "auto"
    lr_suggestion: Literal["valley", "steep", "minimum", "edge"] = "edge"  # edge: the stable one (lr_find.edge)
    wd: float = Field(0.01, ge=0.0)
    mixup: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    balanced: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True


class PredictorConfig(_Strict):
    """How the exported bundle's predictor scores (fitted on the validation split; scoring, the report,
    explain and the viewer all use it): test-time flips, calibration, and the rule choosing the threshold."""

    tta: bool = False
    calibration: Literal["none", "temperature", "isotonic"] = "none"
    threshold: str = "youden"  # youden | sensitivity>=X | specificity>=X | fixed:X
    # nodule task: table columns fused late with the image's score (log), e.g. [diameter_mm]; scoring then
    # needs them in its nodule table too
    fuse: list[str] = Field(default_factory=list)

    @field_validator("threshold")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        from medsuite.learn.predict import PredictorError, check_threshold_rule

        try:
            check_threshold_rule(value)
        except PredictorError as exc:
            raise ValueError(str(exc)) from None
        return value


class ReportConfig(_Strict):
    # nodule task: diameter, radiomics, patch3d (a 3D CNN trained on the same items: minutes more);
    # series task: largest_diameter (needs a max_diameter_mm column)
    baselines: list[Literal["diameter", "radiomics", "patch3d", "largest_diameter"]] = Field(
        default_factory=lambda: ["diameter", "radiomics"])
    n_boot: int = Field(1000, ge=100)
    top_losses: int = Field(12, ge=0)
    tta: bool = False  # kept for older configs: the same as predictor.tta (the report measures the bundle's predictor)


class PipelineConfig(_Strict):
    task: Literal["nodule", "series"]
    name: str = "model"
    out: Path = Path("runs/model")
    data: DataConfig
    block: BlockConfig = BlockConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predictor: PredictorConfig = PredictorConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("a plain name without '/' (it names the bundle)")
        return value

    @model_validator(mode="after")
    def _series_task_needs_series_input(self) -> PipelineConfig:
        if self.task == "series" and self.block.type != "SeriesSlices":
            raise ValueError("task 'series' needs block.type 'SeriesSlices'")
        if self.task == "nodule" and self.block.type == "SeriesSlices":
            raise ValueError("task 'nodule' samples around each nodule: block.type SliceStack, MultiView or Patch3D")
        if self.task == "series" and self.report.baselines:  # size and radiomics baselines describe nodules only
            self.report.baselines = [b for b in self.report.baselines if b == "largest_diameter"]
        if self.task == "series" and self.predictor.fuse:
            raise ValueError("predictor.fuse: late fusion takes nodule-table columns (task 'nodule'); scoring a series has no table")
        if self.task == "nodule" and "largest_diameter" in self.report.baselines:
            raise ValueError("report.baselines: 'largest_diameter' is a series-task baseline; nodules have 'diameter'")
        if self.report.tta:  # the report measures the bundle's predictor, so TTA is the predictor's
            self.predictor.tta = True
        self.report.tta = self.predictor.tta
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "block.k=7"]`` → ``[("train.epochs", 3), ("block.k", 7)]``."""
    pairs = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        else:
            lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _where(given: Path | None, base: Path) -> str:
    """How a relative path was read, for a 'not found' message (the user may have meant the config's folder)."""
    if given is None or given.expanduser().is_absolute():
        return ""
    return f" ({str(given)!r} is taken from the folder the command runs in, {base}; give an absolute path, or run it from the folder the path is relative to)"


def _check_inputs(cfg: PipelineConfig, source: str, given: dict[str, Path | None] | None = None,
                  base: Path | None = None) -> None:
    from medsuite.data.tables import TableError, read_table

    given, base = given or {}, base or Path.cwd()
    if not cfg.data.table.is_file():
        raise ConfigError(f"{source}: data.table: file not found: {cfg.data.table}{_where(given.get('table'), base)}")
    if cfg.data.dicom_root is not None and not cfg.data.dicom_root.exists():
        raise ConfigError(f"{source}: data.dicom_root: folder not found: {cfg.data.dicom_root}"
                          f"{_where(given.get('dicom_root'), base)}")
    if cfg.model.init_from is not None and not cfg.model.init_from.exists():
        raise ConfigError(f"{source}: model.init_from: bundle not found: {cfg.model.init_from}"
                          f"{_where(given.get('init_from'), base)}")
    try:
        table = read_table(cfg.data.table)
    except TableError as exc:
        raise ConfigError(f"{source}: data.table: {exc}") from exc
    if len(table) == 0:
        raise ConfigError(f"{source}: data.table: the table {cfg.data.table} is empty")
    problems = table_problems(cfg, table)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))


def _columns(table: Any) -> str:
    names = [str(c) for c in table.columns]
    return ", ".join(names[:15]) + (f" ... ({len(names)} columns)" if len(names) > 15 else "")


def labelled_table(table: Any, column: str) -> Any:
    """``table`` with ``column`` as its ``label`` column, as text (``True``/``1`` read from a CSV become ``'True'``/
    ``'1'``, matching ``data.positive``); a ``label`` column it already has is dropped, not duplicated (a series
    table may carry several label columns, e.g. ``label`` and ``contrast``)."""
    if column != "label":
        table = table.drop(columns=["label"], errors="ignore").rename(columns={column: "label"})
    labels = table["label"]
    return table.assign(label=labels.where(labels.isna(), labels.astype(str)))


def table_problems(cfg: PipelineConfig, table: Any) -> list[str]:
    """What in ``cfg`` disagrees with the table (one ``dotted.key: reason`` string per problem)."""
    from medsuite.data.tables import TableError, validate_nodule_table, validate_series_table

    problems: list[str] = []
    name = cfg.data.table
    column = cfg.data.label_column
    if column not in table.columns:
        problems.append(f"data.label_column: column {column!r} not in {name} (columns: {_columns(table)})")
    else:
        missing = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if missing.any():
            problems.append(f"data.label_column: {int(missing.sum())} row(s) of {name} have no {column!r} "
                            f"(e.g. row {int(table.index[missing][0])}); label or remove them")
        labels = sorted({str(v) for v in table.loc[~missing, column]})
        if len(labels) < 2:
            problems.append(f"data.label_column: column {column!r} holds a single label {labels}; a classifier "
                            "needs two or more (is it the right column?)")
        elif cfg.data.positive not in labels:
            problems.append(f"data.positive: {cfg.data.positive!r} is not one of the labels in {column!r}: {labels}")
        else:
            labelled = labelled_table(table, column)
            try:
                (validate_nodule_table if cfg.task == "nodule" else validate_series_table)(labelled)
            except TableError as exc:
                problems.append(f"data.table: {exc}")
            else:
                problems += _split_problems(cfg, labelled, labels)
    if cfg.data.dicom_root is None and "path" not in table.columns:
        problems.append(f"data.dicom_root: required: {name} has no 'path' column, so give the folder with the scans")
    try:
        from medsuite.data.blocks import block_from_spec

        block_from_spec(cfg.block.model_dump())
    except (ValueError, TypeError, KeyError) as exc:
        problems.append(f"block: {exc}")
    return problems


# The sets a run drew on the table's real patient ids, carried through pseudonymisation (`train._table`).
DRAWN_SPLIT_COLUMN = "_drawn_split"


def splitter(cfg: PipelineConfig, table: Any) -> Any:
    """The splitter the run uses (the one the check before it uses too): the table's split column when it has
    it, else the seeded split by patient, stratified by label unless ``data.split.stratify`` is false. A table
    carrying the sets already drawn (``DRAWN_SPLIT_COLUMN``) keeps them."""
    from medsuite.data.splitters import ColumnSplitter
    from medsuite.pipelines.nodule import splitter_for

    if DRAWN_SPLIT_COLUMN in table.columns:
        return ColumnSplitter(DRAWN_SPLIT_COLUMN)
    split = cfg.data.split
    return splitter_for(table, column=split.column, valid_pct=split.valid_pct, test_pct=split.test_pct, seed=split.seed,
                        positive=cfg.data.positive, stratify=split.stratify)


def _split_problems(cfg: PipelineConfig, table: Any, labels: list[str]) -> list[str]:
    """The split the run will use (the table's column, or the seeded random split by patient), checked:
    every class in train, in valid (it picks the operating threshold) and in test (the held-out report)."""
    from medsuite.data.splitters import SPLITS

    split = cfg.data.split
    column = split.column
    if column and column not in table.columns:
        lookalikes = [str(c) for c in table.columns
                      if table[c].dtype == object and table[c].notna().any()
                      and set(table[c].dropna().astype(str).str.strip().str.lower()) <= set(SPLITS)]
        if column != "split" or lookalikes:
            hint = f"; did you mean {lookalikes[0]!r}?" if lookalikes else (
                "; set data.split.column to null for a random split by patient")
            return [f"data.split.column: column {column!r} not in {cfg.data.table} (columns: {_columns(table)}){hint}"]
    by_column = bool(column) and column in table.columns
    key = "data.split.column" if by_column else "data.split"
    how = (f"column {column!r}" if by_column else
           f"the random split by patient (valid_pct {split.valid_pct}, test_pct {split.test_pct}, seed {split.seed})")
    fix = ("move patients between the sets" if by_column else
           "change data.split.seed or the percentages, or give the table a split column")
    try:
        sets = splitter(cfg, table)(table)
    except ValueError as exc:
        unstratified = "" if by_column or not split.stratify else ", set data.split.stratify to false"
        return [f"{key}: {exc}; {fix}{unstratified}"]
    problems = []
    for part in SPLITS:
        rows = sets.get(part, [])
        if len(rows) == 0:
            if part != "test":
                problems.append(f"{key}: {how} leaves no {part!r} rows; the run needs train and valid")
            continue
        present = set(table["label"].iloc[rows].astype(str))
        lacking = [lab for lab in labels if lab not in present]
        if lacking:
            patients = table["patient_id"].iloc[rows].nunique() if "patient_id" in table.columns else "?"
            problems.append(f"{key}: {how} leaves no {lacking} item in {part!r} ({len(rows)} rows of {patients} "
                            f"patients); every class must be in train, in valid (it picks the operating threshold) "
                            f"and in test (the held-out report): {fix}")
    return problems


def config_from_dict(raw: dict[str, Any], *, source: str = "config", base_dir: Path | None = None, check_inputs: bool = True) -> PipelineConfig:
    """Validate a configuration tree; relative paths are taken from `base_dir` (default: the working folder)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    base = base_dir or Path.cwd()
    given = {"table": cfg.data.table, "dicom_root": cfg.data.dicom_root, "init_from": cfg.model.init_from}
    cfg.data.table = _resolve(cfg.data.table, base)
    cfg.data.dicom_root = _resolve(cfg.data.dicom_root, base)
    cfg.data.cache_dir = _resolve(cfg.data.cache_dir, base)
    cfg.model.init_from = _resolve(cfg.model.init_from, base)
    if check_inputs:
        _check_inputs(cfg, source, given, base)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_inputs: bool = True) -> PipelineConfig:
    """Read a YAML config, apply ``key=value`` overrides, and validate it against its table (relative
    paths: from the working folder). The scans themselves are checked by `run_training`, before it writes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    return config_from_dict(raw, source=str(path), check_inputs=check_inputs)
