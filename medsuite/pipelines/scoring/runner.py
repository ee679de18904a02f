"""Batch scoring, end to end: load the bundle, discover, apply the rules, resume, run an engine, write.

Exit codes (also `Summary.exit_code`):
0  every eligible series was scored (others skipped by the rules, or already scored by an earlier run);
1  some series or nodules failed (error rows), others were scored;
2  nothing was scored: no series found, all skipped by the rules, or every attempt failed;
3  usage, bundle or cluster error (bad option, unreadable bundle or nodule table, database busy, Ray cluster
   unreachable or unfit); nothing was run;
4  the run stopped on an unexpected error (set by the command line; the run row is marked 'failed' and a
   rerun resumes it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medsuite.io.phi import KEY_ENV, PhiKeyError, Pseudonymizer
from medsuite.pipelines.scoring.discover import (
    Discovery,
    DiscoveryError,
    RuleError,
    Rules,
    apply_overrides,
    decide,
    discover,
    file_key,
    rules_from_bundle,
)
from medsuite.pipelines.scoring.stages import Point, SeriesResult, WorkItem, run_in_worker, spec_json
from medsuite.pipelines.scoring.writer import ScoreStore
from medsuite.records.store import StoreError

if TYPE_CHECKING:
    from medsuite.learn.predict import Predictor

log = logging.getLogger("medsuite.scoring")

EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_SCORED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3, 4
ENGINES = ("local", "ray")
DEVICES = ("auto", "cpu", "cuda")


class UsageError(ValueError):
    """A bad option, bundle, nodule table or database: the run cannot start (exit code 3)."""


@dataclass
class ScoreConfig:
    """Everything `score` needs; the CLI fills it from its options."""

    bundle: Path
    inputs: list[Path]
    out: Path
    nodules: Path | None = None
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    device: str = "auto"
    engine: str = "local"
    ray_address: str | None = None      # HOST:PORT or 'auto'; None starts a local Ray on loopback
    ray_actors: str | None = None        # 'MIN:MAX' inference actors (default: from the cluster's resources)
    ray_ship_inputs: bool = False        # send files and bundle through Ray's object store (no shared storage)
    ray_timeout_s: float = 30.0          # connecting to the cluster, and each node's preflight answer
    ray_stall_s: float = 120.0           # no result for this long: re-submit the work in flight
    db: Path | None = None
    include_phi: bool = False
    phi_key: Path | None = None  # the pseudonymisation key file (default: medsuite.io.phi.default_key_file)
    batch_size: int = 16
    rules: list[str] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)  # score only these stack ids (`medsuite inspect` lists them)
    export_every_s: float = 60.0
    progress: bool = True
    read_options: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db else Path(self.out) / "medsuite.db"


@dataclass
class Summary:
    """What a run did, and its exit code."""

    run_id: str
    exit_code: int
    n_found: int = 0
    n_scored: int = 0
    n_already: int = 0
    n_skipped: int = 0
    n_error_series: int = 0
    n_errors: int = 0
    n_predictions: int = 0
    elapsed_s: float = 0.0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    error_stages: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    engine_lines: list[str] = field(default_factory=list)  # Ray: which node did what

    def lines(self) -> list[str]:
        rate = 60.0 * (self.n_scored + self.n_error_series) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        out = [
            f"run {self.run_id}: {self.n_found} series found, {self.n_scored} scored ({self.n_predictions} predictions), "
            f"{self.n_already} already scored earlier, {self.n_skipped} skipped, {self.n_error_series} series failed, "
            f"{self.n_errors} error rows, in {self.elapsed_s:.1f} s ({rate:.1f} series/min)",
        ]
        out += [f"  skipped: {n} x {reason}" for reason, n in sorted(self.skip_reasons.items(), key=lambda t: -t[1])[:8]]
        out += [f"  errors at stage {stage}: {n}" for stage, n in sorted(self.error_stages.items())]
        out += self.engine_lines
        out += [f"  wrote {p}" for p in self.outputs]
        out.append(f"  exit code {self.exit_code}")
        return out


def exit_code(n_found: int, n_scored: int, n_already: int, n_errors: int) -> int:
    """The documented exit code from a run's counts."""
    if n_found == 0 or n_scored + n_already == 0:
        return EXIT_NOTHING_SCORED
    return EXIT_SOME_FAILED if n_errors else EXIT_OK


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: choose one of {list(DEVICES)}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available on this machine")
    return device


def _check(cfg: ScoreConfig) -> None:
    if cfg.engine not in ENGINES:
        raise UsageError(f"--engine {cfg.engine!r}: choose one of {list(ENGINES)}")
    if cfg.workers < 1:
        raise UsageError(f"--workers {cfg.workers}: must be at least 1")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size {cfg.batch_size}: must be at least 1")
    if not cfg.inputs:
        raise UsageError("give at least one INPUT (a folder, a DICOM file, or a series table with a 'path' column)")
    if cfg.engine != "ray" and (cfg.ray_address or cfg.ray_actors or cfg.ray_ship_inputs):
        raise UsageError("--ray-address, --ray-actors and --ray-ship-inputs need --engine ray")
    if cfg.ray_timeout_s <= 0 or cfg.ray_stall_s <= 0:
        raise UsageError("--ray-timeout and the stall timeout must be positive")
    if not Path(cfg.bundle).exists():
        raise UsageError(f"{cfg.bundle}: bundle not found")


def _load_bundle(path: Path, device: str) -> Any:
    from medsuite.learn.bundle import load_bundle

    try:
        bundle = load_bundle(path, device=device)
    except Exception as exc:  # any failure to load is the user's bundle problem: exit 3 with the reason
        raise UsageError(f"{path}: cannot load the model bundle ({exc})") from exc
    if bundle.task not in ("nodule", "series"):
        raise UsageError(f"{path}: bundle task {bundle.task!r} is not 'nodule' or 'series'")
    return bundle


def _load_nodules(path: Path | None, task: str) -> pd.DataFrame | None:
    from medsuite.data.tables import TableError, read_table, validate_nodule_table

    if task == "series":
        if path is not None:
            raise UsageError(f"--nodules {path}: this is a series bundle; a nodule table is only for nodule bundles")
        return None
    if path is None:
        raise UsageError("this is a nodule bundle: give the nodule table with --nodules TABLE")
    try:
        return validate_nodule_table(read_table(path))
    except TableError as exc:
        raise UsageError(str(exc)) from exc


def _fused_columns(bundle: Any) -> tuple[str, ...]:
    """The nodule-table columns the bundle's predictor fuses with the image (none for most bundles)."""
    from medsuite.learn.predict import PredictorError, PredictorSettings

    try:
        fusion = PredictorSettings.from_bundle_meta(bundle.meta).fusion
    except PredictorError as exc:
        raise UsageError(f"{bundle.path}: bundle.json {exc}") from exc
    return () if fusion is None else fusion.covariates


class _DbLock:
    """An exclusive lock beside the database so two runs never write one out dir; freed even on SIGKILL."""

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + ".lock")

    def __enter__(self) -> _DbLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UsageError(f"{self.path.parent}: another 'medsuite score' run is writing this database") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _pseudonymizer(cfg: ScoreConfig, found: Discovery, nodules: pd.DataFrame | None) -> Pseudonymizer:
    """Keyed pseudonyms for this run's patient ids (headers and nodule table) and every path it reads
    (`medsuite.io.phi`): what replaces identifiers in the outputs unless ``include_phi``."""
    series = found.series
    patient_ids = set(series["patient_id"].astype(str)) if "patient_id" in series.columns else set()
    if nodules is not None:
        patient_ids |= set(nodules["patient_id"].astype(str))
    paths: list[str] = []
    if "files" in series.columns:
        for files in series["files"]:
            paths.extend(str(f) for f in (files if files is not None else ()))
    if len(found.skipped_files):
        paths.extend(str(p) for p in found.skipped_files["path"])
    try:
        pz = Pseudonymizer.from_key_file(cfg.phi_key, patient_ids=patient_ids, roots=cfg.inputs)
        pz.add_paths(paths, siblings=True)
        return pz
    except PhiKeyError as exc:
        raise UsageError(f"{exc} (set {KEY_ENV}, or pass --include-phi to keep identifiers)") from exc


def _work_items(decisions: list, nodules: pd.DataFrame | None,
                covariates: tuple[str, ...] = ()) -> tuple[list[WorkItem], list[tuple]]:
    """Work items for the series to score, and (uid, row, 'skipped', reason) for those without nodules.
    ``covariates``: the nodule-table columns the bundle's predictor fuses with the image, carried per point."""
    by_series: dict[str, list[Point]] = {}
    if nodules is not None:
        cov = {c: pd.to_numeric(nodules[c], errors="coerce").to_numpy(dtype=float) for c in covariates}
        for i, r in enumerate(nodules.itertuples(index=False)):
            by_series.setdefault(str(r.series_uid), []).append(
                Point(str(r.nodule_id), float(r.x_mm), float(r.y_mm), float(r.z_mm), float(r.diameter_mm),
                      tuple((c, float(v[i])) for c, v in cov.items())))
    items, unscored = [], []
    for d in decisions:
        files = tuple(str(f) for f in d.row.get("files") or ())
        stack = d.row.get("stack_id")
        stack = str(stack) if isinstance(stack, str) and stack else None
        if nodules is None:
            items.append(WorkItem(d.series_uid, files, None, stack))
        elif d.series_uid in by_series:
            items.append(WorkItem(d.series_uid, files, tuple(by_series[d.series_uid]), stack))
        else:
            unscored.append((d.series_uid, d.row, "skipped", "no nodule of the nodule table is in this series"))
    return items, unscored


def _ray_actors(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition(":")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        raise UsageError(f"--ray-actors {text!r}: expected MIN:MAX (e.g. 1:4) or N") from None
    if pair[0] < 1 or pair[1] < pair[0]:
        raise UsageError(f"--ray-actors {text!r}: need 1 <= MIN <= MAX")
    return pair


def score(cfg: ScoreConfig) -> Summary:
    """Run batch scoring as configured; returns the summary (raises `UsageError` for exit code 3).

    Paths are made absolute here, on the driver: with the Ray engine every node opens them as they are.
    """
    t0 = time.perf_counter()
    _check(cfg)
    actors = _ray_actors(cfg.ray_actors)
    if cfg.engine == "ray" and cfg.ray_address:  # before anything slow: a wrong address fails in seconds
        from medsuite.pipelines.scoring.ray_cluster import ClusterError, check_address

        try:
            check_address(cfg.ray_address, cfg.ray_timeout_s)
        except ClusterError as exc:
            raise UsageError(str(exc)) from exc
    bundle_path = Path(os.path.abspath(cfg.bundle))
    inputs = [Path(os.path.abspath(p)) for p in cfg.inputs]
    if cfg.engine == "ray":  # the actors infer, on the cluster's GPUs if it has any; the driver only reads meta
        if cfg.device not in DEVICES:
            raise UsageError(f"--device {cfg.device!r}: choose one of {list(DEVICES)}")
        device = cfg.device
        bundle = _load_bundle(bundle_path, "cpu")
    else:
        device = resolve_device(cfg.device)
        bundle = _load_bundle(bundle_path, device)
    nodules = _load_nodules(Path(cfg.nodules) if cfg.nodules else None, bundle.task)
    fused = _fused_columns(bundle)
    missing = [c for c in fused if nodules is not None and c not in nodules.columns]
    if missing:
        raise UsageError(f"--nodules {cfg.nodules}: the bundle's predictor fuses the image with the nodule table's "
                         f"{missing}, which this table lacks")
    try:
        rules = apply_overrides(rules_from_bundle(bundle.meta), cfg.rules)
    except RuleError as exc:
        raise UsageError(str(exc)) from exc
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with _DbLock(cfg.db_path):  # before anything slow: a second run on this database stops at once
        session = ray_engine = None
        try:
            on_ray = False
            if cfg.engine == "ray":
                session, ray_engine = _ray_session(cfg, bundle, bundle_path, inputs, device, actors)
                on_ray = not cfg.ray_ship_inputs  # shipped files are only known to be here: scan them here
            try:
                if on_ray:  # the headers are read in Ray tasks; their notes come back with the results
                    from medsuite.pipelines.scoring.ray_engine import discover_on_ray

                    found, scan_notes = discover_on_ray(inputs, session, stats=session.discover_stats,
                                                        stacks=cfg.stacks), []
                else:  # in a worker process: header warnings name files; they are logged (scrubbed) in _run
                    found, scan_notes = run_in_worker(discover, inputs, workers=cfg.workers, stacks=cfg.stacks)
            except DiscoveryError as exc:
                raise UsageError(str(exc)) from exc
            found.notes = list(found.notes) + scan_notes
            try:
                db = ScoreStore(cfg.db_path)
            except StoreError as exc:
                raise UsageError(str(exc)) from exc
            try:
                return _run(cfg, bundle, nodules, rules, found, db, _Engine(cfg, bundle, device, ray_engine), t0)
            finally:
                db.close()
        finally:
            if ray_engine is not None:
                ray_engine.close()
            if session is not None:
                session.close()


def _ray_session(cfg: ScoreConfig, bundle: Any, bundle_path: Path, inputs: list[Path], device: str,
                 actors: tuple[int, int] | None) -> tuple[Any, Any]:
    """Connect to Ray (exit 3 when it cannot be used) and start the engine's inference actors (loading a
    model takes seconds: it overlaps the preflight and discovery)."""
    from medsuite.pipelines.scoring.ray_cluster import ClusterError, connect, preflight
    from medsuite.pipelines.scoring.ray_engine import RayEngine, RayOptions

    try:
        session = connect(cfg.ray_address, num_cpus=cfg.workers + 1, timeout_s=cfg.ray_timeout_s)
    except ClusterError as exc:
        raise UsageError(str(exc)) from exc
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray: pip install 'medsuite[ray]' ({exc})") from exc
    engine = None
    try:
        options = RayOptions(actors=actors, ship_inputs=cfg.ray_ship_inputs, stall_s=cfg.ray_stall_s)
        engine = RayEngine(session, bundle_path=str(bundle_path), block_spec_json=spec_json(bundle.block.spec()),
                           device=device, batch_size=cfg.batch_size, read_options=cfg.read_options,
                           options=options)
        engine.start()
        if not cfg.ray_ship_inputs:
            preflight(session, [str(bundle_path), *map(str, inputs)], timeout_s=cfg.ray_timeout_s)
    except BaseException as exc:
        if engine is not None:
            engine.close()
        session.close()
        if isinstance(exc, ClusterError | ValueError):
            raise UsageError(str(exc)) from exc
        raise
    return session, engine


def _run(cfg: ScoreConfig, bundle: Any, nodules: pd.DataFrame | None, rules: Rules, found: Discovery,
         db: ScoreStore, engine: _Engine, t0: float) -> Summary:
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    series = found.series
    pz = None if cfg.include_phi else _pseudonymizer(cfg, found, nodules)
    scrub = (lambda text: text) if pz is None else pz.text
    db.use_pseudonyms(pz)
    if pz is not None and nodules is not None:  # ids holding a patient id (the demo's DEMO-0001-n1) are replaced
        nodules = pz.table(nodules, {"nodule_id": "id"})
    args = {k: (scrub(str(v)) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    args["inputs"] = [scrub(str(p)) for p in cfg.inputs]
    args["rules_applied"] = rules.as_dict()
    decisions = decide(series, rules)
    db.start_run(run_id, bundle_name=bundle.name, bundle_sha256=bundle.sha256, bundle_path=str(Path(cfg.bundle).resolve()),
                 task=bundle.task, engine=cfg.engine, args=args)
    n_scored = n_failed = 0
    status = "failed"
    unscored: list[tuple] = []
    already: list = []
    try:  # from here on the run row is closed whatever happens: 'finished', or 'failed' with the exception
        done = db.scored_series(bundle.sha256)
        already = [d for d in decisions if d.action == "score" and d.series_uid in done]
        to_score = [d for d in decisions if d.action == "score" and d.series_uid not in done]
        items, no_nodules = _work_items(to_score, nodules, _fused_columns(bundle))
        unscored = [(d.series_uid, d.row, "skipped" if d.action == "skip" else "error", scrub(d.reason))
                    for d in decisions if d.action != "score"] + no_nodules
        for r in found.skipped_files.itertuples(index=False):
            unscored.append((file_key(r.path), {"path": str(r.path)}, "skipped",
                             f"not an image instance: {scrub(r.reason)}"))
        db.record_unscored(run_id, unscored)
        for note in found.notes:
            log.debug("scan: %s", scrub(note))
        if nodules is not None:
            discovered = set(series["series_uid"].astype(str)) if len(series) else set()
            orphans = int((~nodules["series_uid"].isin(discovered)).sum())
            if orphans:
                log.warning("%d nodule(s) of the nodule table belong to no series found under the input", orphans)
        rows = {d.series_uid: d.row for d in to_score}
        log.info("run %s: %d series found, %d to score, %d already scored, %d not eligible",
                 run_id, len(decisions), len(items), len(already), len(unscored))

        last_export = time.monotonic()
        predictor = engine.predictor()  # the bundle's; with Ray each actor loads its own on its device
        with _progress(len(items), cfg.progress) as bar:
            for result in engine.results(items, predictor):
                db.commit_series(run_id, bundle.sha256, predictor.threshold, result, rows[result.series_uid],
                                 scrub=scrub)
                for note in result.notes:
                    log.debug("series %s: %s", result.series_uid, scrub(note))
                if result.status == "scored":
                    n_scored += 1
                else:
                    n_failed += 1
                    log.debug("series failed: %s", scrub(result.errors[0][1]))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(scored=n_scored, failed=n_failed, refresh=False)
                if time.monotonic() - last_export > cfg.export_every_s:
                    _export(db, cfg, series, nodules)
                    last_export = time.monotonic()
        status = "finished"
    finally:
        counts = db.counts(run_id)
        db.finish_run(run_id, status=status, counts={"series": len(decisions), "scored": counts["scored"],
                                                     "skipped": counts["skipped"], "errors": counts["errors"]})
        try:
            outputs = _export(db, cfg, series, nodules)
        except Exception:
            if status == "finished":
                raise
            log.exception("could not rewrite the score files after the failure; the database is complete")
    stages = Counter(r[0] for r in db.conn.execute("SELECT stage FROM errors WHERE run_id=?", (run_id,)))
    skip_reasons = Counter(_reason_kind(u[3]) for u in unscored if u[2] == "skipped")
    summary = Summary(
        run_id=run_id,
        exit_code=exit_code(len(decisions) + len(found.skipped_files), counts["scored"], len(already),
                            counts["errors"]),
        n_found=len(decisions), n_scored=counts["scored"], n_already=len(already), n_skipped=counts["skipped"],
        n_error_series=counts["error_series"], n_errors=counts["errors"], n_predictions=counts["predictions"],
        elapsed_s=time.perf_counter() - t0, skip_reasons=dict(skip_reasons), error_stages=dict(stages),
        outputs=[str(p) for p in outputs] + [str(cfg.db_path)], engine_lines=engine.summary_lines(),
    )
    return summary


def _reason_kind(reason: str) -> str:
    """Group skip reasons by their wording without numbers (so the summary stays short)."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)


def _export(db: ScoreStore, cfg: ScoreConfig, series: pd.DataFrame, nodules: pd.DataFrame | None) -> tuple[Path, Path]:
    patient_map = None
    if cfg.include_phi:
        patient_map = {}
        if nodules is not None:
            patient_map.update(dict(zip(nodules["series_uid"].astype(str), nodules["patient_id"].astype(str), strict=True)))
        if len(series) and "patient_id" in series.columns:
            patient_map.update(dict(zip(series["series_uid"].astype(str), series["patient_id"].astype(str), strict=True)))
    return db.export(cfg.out, patient_map)


class _Engine:
    """The chosen engine behind one call: `results(items)` yields a `SeriesResult` per item."""

    def __init__(self, cfg: ScoreConfig, bundle: Any, device: str, ray_engine: Any) -> None:
        self.cfg, self.bundle, self.device, self.ray = cfg, bundle, device, ray_engine

    def predictor(self) -> Predictor:
        from medsuite.learn.predict import Predictor

        return Predictor.from_bundle(self.bundle)

    def results(self, items: list[WorkItem], predictor: Predictor) -> Iterator[SeriesResult]:
        if self.ray is not None:  # each actor loads the bundle's predictor on its own device
            self.ray.stats.discover.update(self.ray.session.discover_stats)
            return self.ray.run(items)
        from medsuite.pipelines.scoring.local import run_local

        cfg = self.cfg
        return run_local(items, predictor=predictor, block_spec_json=spec_json(self.bundle.block.spec()),
                         workers=cfg.workers, batch_size=cfg.batch_size, read_options=cfg.read_options)

    def summary_lines(self) -> list[str]:
        return self.ray.stats.lines() if self.ray is not None else []


class _LineProgress:
    """Progress where stderr is a log, not a terminal (a scheduler's file, a pipe): a plain line at most
    every ``every_s`` seconds, never a carriage-return bar update."""

    def __init__(self, total: int, every_s: float = 60.0) -> None:
        self.total, self.every_s, self.done = total, every_s, 0
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9) * 60
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            print(f"scoring: {self.done}/{self.total} series ({rate:.1f}/min{extra})", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


class _progress:
    """A tqdm bar on stderr (counts, rate, ETA) when it is a terminal, else a line a minute; or nothing when
    disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self) -> Any:
        if not self.enabled:
            self.bar = None
            return None
        if not sys.stderr.isatty():
            self.bar = _LineProgress(self.total)
            return self.bar
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="series", file=sys.stderr, dynamic_ncols=True, desc="scoring",
                        mininterval=1.0)
        return self.bar

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
