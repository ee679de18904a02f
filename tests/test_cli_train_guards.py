"""`medsuite train` protects the user's work: every key and value checked before anything is written, an
earlier run never overwritten unless asked, one run per folder at a time, resume only of the same run;
and the CLI itself: one-line errors with documented exit codes, --version, shell completion."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from pipeline_cohort import make_cohort
from typer.testing import CliRunner

from medsuite.cli import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, app, guarded

TINY = ["block.k=3", "block.size=24", "block.pixel_mm=1.0", "data.bs=8", "data.num_workers=0", "train.epochs=1",
        "train.lr=0.003", "report.n_boot=200", "report.top_losses=2", "report.baselines=[diameter]"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, patients=10, nodules_per_patient=2)
    return root


def train(cohort: Path, out: Path, *extra: str, table: Path | None = None) -> object:
    args = ["train", str(ROOT / "configs/nodule_malignancy.yaml"), "--set", f"data.table={table or cohort / 'nodules.csv'}",
            "--set", f"data.dicom_root={cohort}", "--set", f"out={out}"]
    for item in TINY:
        args += ["--set", item]
    for item in extra:
        args += ["--set", item] if "=" in item and not item.startswith("--") else [item]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def finished(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = train(cohort, out)
    assert result.exit_code == 0, result.output
    return out, result


def test_progress_is_for_terminals_and_the_log_gets_the_epochs(finished: tuple[Path, object]) -> None:
    out, result = finished
    assert "\r" not in result.output  # not a terminal: no per-batch bar updates
    assert "train_loss" in result.output  # the epoch table still
    log = (out / "train.log").read_text()
    assert "epoch 1/1: epoch 0, train_loss" in log and "\r" not in log
    assert f"log:    {out / 'train.log'}" in result.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.split.column=splt", "data.split.column: column 'splt' not in"),
        ("block.window=[lung,mediastinal]", "block: unknown window 'mediastinal'"),
        ("data.positive=Malignant", "data.positive: 'Malignant' is not one of the labels in 'label': ['benign', 'malignant']"),
        ("data.label_column=manufacturer", "data.positive: 'malignant' is not one of the labels in 'manufacturer'"),
        ("data.label_column=lable", "data.label_column: column 'lable' not in"),
        ("model.arch=cnn3d", "model.arch: 'cnn3d' does not fit block SliceStack"),
        ("model.kwargs={widht: 8}", "model: cannot build 'slice_cnn'"),
    ],
)
def test_values_are_checked_against_the_table_before_anything_is_written(
        cohort: Path, tmp_path: Path, override: str, message: str) -> None:
    out = tmp_path / "run"
    result = train(cohort, out, override)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_split_column_whose_sets_lack_a_class_is_refused(cohort: Path, tmp_path: Path) -> None:
    table = pd.read_csv(cohort / "nodules.csv")
    table.loc[table["split"] == "valid", "label"] = "benign"
    path = tmp_path / "nodules.csv"
    table.to_csv(path, index=False)
    result = train(cohort, tmp_path / "run", table=path)
    assert result.exit_code == 2
    assert "data.split.column: column 'split' leaves no ['malignant'] item in 'valid'" in result.output


def test_series_missing_from_the_scans_are_counted_and_nothing_is_written(cohort: Path, tmp_path: Path) -> None:
    table = pd.read_csv(cohort / "nodules.csv")
    extra = table.iloc[[0, 1]].assign(series_uid=["1.2.3.999", "1.2.3.998"], patient_id="PT900",
                                      nodule_id=["x1", "x2"])
    path = tmp_path / "nodules.csv"
    pd.concat([table, extra]).to_csv(path, index=False)
    out = tmp_path / "run"
    result = train(cohort, out, table=path)
    assert result.exit_code == 2
    assert "2 series of the table not found: 1.2.3.998, 1.2.3.999 (10 of 12 found)" in result.output
    assert "Train on the series you have" in result.output
    assert not out.exists()


def test_an_earlier_run_is_refused_then_replaced_with_force(finished: tuple[Path, object], cohort: Path) -> None:
    out, _ = finished
    bundle = out / "malignancy.bundle" / "bundle.json"
    before = bundle.stat().st_mtime_ns
    again = train(cohort, out)
    assert again.exit_code == 2
    assert "holds an earlier run" in again.output and "--force" in again.output and "--resume" in again.output
    assert bundle.stat().st_mtime_ns == before
    (out / "stale.txt").write_text("from the earlier run")
    forced = train(cohort, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert bundle.stat().st_mtime_ns != before
    assert not (out / "stale.txt").exists()
    assert (out / "cache").is_dir()  # the volume cache survives a --force


def test_resume_needs_a_checkpoint_and_the_same_schedule(finished: tuple[Path, object], cohort: Path,
                                                         tmp_path: Path) -> None:
    out, _ = finished
    nothing = train(cohort, tmp_path / "fresh", "--resume")
    assert nothing.exit_code == 2
    assert "holds no checkpoint to resume" in nothing.output
    assert not (tmp_path / "fresh").exists()  # a refused run leaves nothing behind, not even its lock
    changed = train(cohort, out, "--resume", "train.epochs=2")
    assert changed.exit_code == 2
    assert "--resume: train.epochs is 2 now but 1 in the run being resumed" in changed.output
    assert "Traceback" not in changed.output
    both = train(cohort, out, "--resume", "--force")
    assert both.exit_code == 2 and "choose one" in both.output
    # what does not change the fit (the report, the predictor) may change: the finished run is re-exported
    again = train(cohort, out, "--resume", "report.n_boot=300")
    assert again.exit_code == 0, again.output
    assert "(resumed)" in (out / "train.log").read_text()


def test_a_second_run_into_a_locked_folder_stops_at_once(finished: tuple[Path, object], cohort: Path) -> None:
    out, _ = finished
    fd = os.open(out / ".medsuite-train.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a first run holds it while it trains
        os.pwrite(fd, b"4242\n", 0)
        second = train(cohort, out, "--force")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert second.exit_code == 2
    assert "another 'medsuite train' run (pid 4242) is using this folder" in second.output
    assert (out / "malignancy.bundle" / "bundle.json").is_file()


def test_quiet_prints_no_progress(cohort: Path, tmp_path: Path) -> None:
    result = train(cohort, tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert "train_loss" not in result.output
    assert "epoch 1/1" in (tmp_path / "run" / "train.log").read_text()


def test_guarded_commands_never_show_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSUITE_LOG_DIR", str(tmp_path / "logs"))
    demo = typer.Typer()

    def bug() -> None:
        {}["missing"]  # noqa: B018 - an unforeseen error inside medsuite

    def bad_input() -> None:
        raise ValueError("table.csv: column 'x_mm' must be numeric")

    def interrupted() -> None:
        raise KeyboardInterrupt

    def in_worker() -> None:  # how torch re-raises an error of a DataLoader worker: its traceback in the message
        raise ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in f\nValueError: scans/a: no DICOM image series found")

    for name, fn in (("bug", bug), ("bad", bad_input), ("stop", interrupted), ("worker", in_worker)):
        demo.command(name)(guarded(fn, command=name, usage_code=3))
    runner = CliRunner()
    crash = runner.invoke(demo, ["bug"])
    assert crash.exit_code == EXIT_INTERNAL
    assert "unexpected KeyError in 'medsuite bug'" in crash.output and "Traceback" not in crash.output
    logs = list((tmp_path / "logs").glob("bug-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in crash.output
    bad = runner.invoke(demo, ["bad"])
    assert bad.exit_code == 3
    assert bad.output.startswith("error: table.csv: column 'x_mm' must be numeric (details: ")
    assert runner.invoke(demo, ["stop"]).exit_code == EXIT_INTERRUPTED
    worker = runner.invoke(demo, ["worker"])
    assert worker.output.startswith("error: ValueError: scans/a: no DICOM image series found (details: ")
    assert "Traceback" not in worker.output and worker.output.count("\n") == 1


def test_version_and_shell_completion() -> None:
    from medsuite import __version__

    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"medsuite {__version__}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_MEDSUITE_COMPLETE": "complete_bash",
           "COMP_WORDS": "medsuite train --re", "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-m", "medsuite"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["--resume"]
    script = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0 and "_MEDSUITE_COMPLETE=complete_bash" in script.output


def test_demo_data_names_the_overwrite_flag(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    result = CliRunner().invoke(app, ["demo-data", str(tmp_path), "--patients", "2"])
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "Traceback" not in result.output


def test_progress_bars_only_on_a_terminal(tmp_path: Path) -> None:
    import io

    from learn_core_helpers import TinyNet, tiny_dls

    from medsuite.learn.callbacks import ProgressCallback
    from medsuite.learn.learner import Learner

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    outputs = {}
    for name, stream in (("log", io.StringIO()), ("tty", Terminal())):
        Learner(tiny_dls(), TinyNet(), path=tmp_path / name, progress=False, checkpoint=False,
                cbs=[ProgressCallback(stream=stream)]).fit(1)
        outputs[name] = stream.getvalue()
    assert "\r" not in outputs["log"] and "train_loss" in outputs["log"]  # the epoch row, no bar updates
    assert "\r" in outputs["tty"] and "train_loss" in outputs["tty"]


def test_audit_commands_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medsuite.records import store

    monkeypatch.setenv("MEDSUITE_LOG_DIR", str(tmp_path / "logs"))
    store.connect(tmp_path / "medsuite.db").close()
    (tmp_path / "a_file").write_text("x")
    result = CliRunner().invoke(app, ["audit", "anchor", "--db", str(tmp_path / "medsuite.db"),
                                      "--anchor", str(tmp_path / "a_file" / "anchor.json")])
    assert result.exit_code == 3, result.output  # the audit commands' usage code (docs/guarantees.md)
    assert result.output.startswith("error: ") and "a_file" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert list((tmp_path / "logs").glob("audit-anchor-*.log"))


def test_score_answers_a_mistyped_path_before_loading_heavy_libraries(tmp_path: Path) -> None:
    code = ("import sys\nfrom medsuite.cli import app\n"
            "try:\n    app(['score', 'nope.bundle', '.', '--out', 'o'], prog_name='medsuite')\n"
            "except SystemExit as exc:\n    print(exc.code, [m for m in ('torch', 'pandas', 'numpy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "3 []", done.stdout + done.stderr
    assert done.stderr.strip() == "error: nope.bundle: bundle not found"
    assert not (tmp_path / "o").exists()


def test_a_closed_output_pipe_ends_quietly() -> None:
    demo = typer.Typer()

    def talk() -> None:
        raise BrokenPipeError(32, "Broken pipe")  # what print() raises once `| head` has gone

    demo.command("talk")(guarded(talk, command="talk"))
    demo.command("other")(lambda: None)
    result = CliRunner().invoke(demo, ["talk"])
    assert result.exit_code == EXIT_BROKEN_PIPE and result.output == ""


def test_a_numeric_positive_class_means_that_label(cohort: Path, tmp_path: Path) -> None:
    from medsuite.pipelines.config import load_config

    table = pd.read_csv(cohort / "nodules.csv")
    table["label"] = (table["label"] == "malignant").astype(int)  # a 0/1 label column
    table.to_csv(tmp_path / "01.csv", index=False)
    cfg = load_config(ROOT / "configs/nodule_malignancy.yaml", [f"data.table={tmp_path / '01.csv'}",
                                                                 f"data.dicom_root={cohort}", "data.positive=1"])
    assert cfg.data.positive == "1"
    wrong = train(cohort, tmp_path / "run", "data.positive=2", table=tmp_path / "01.csv")
    assert wrong.exit_code == 2 and "data.positive: '2' is not one of the labels in 'label': ['0', '1']" in wrong.output


def test_a_boolean_label_column_beside_a_label_column_trains(cohort: Path, tmp_path: Path) -> None:
    """``label_column`` naming a True/False column of a table that also has a ``label`` column: the run uses
    that column (as text, like ``data.positive``), not two columns called ``label``."""
    import html
    import json

    table = pd.read_csv(cohort / "nodules.csv")
    table["suspicious"] = table["label"] == "malignant"  # written as True/False, read back as booleans
    table["label"] = "ignored"
    table.to_csv(tmp_path / "bool.csv", index=False)
    result = train(cohort, tmp_path / "run", "data.label_column=suspicious", "data.positive=True",
                   "report.baselines=[]", table=tmp_path / "bool.csv")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "malignancy.bundle" / "bundle.json").read_text())
    assert meta["labels"] == ["False", "True"] and meta["predictor"]["positive"] == "True"
    # evaluating the bundle on that table reads the column it was trained on, and says so
    evaluated = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "malignancy.bundle"), str(tmp_path / "bool.csv"),
                                         "--dicom-root", str(cohort), "--out", str(tmp_path / "eval"), "--n-boot", "50"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "(column 'suspicious')" in html.unescape((tmp_path / "eval" / "report.html").read_text())


def test_an_unstratifiable_split_names_its_fixes_and_stratify_false_is_used(cohort: Path, tmp_path: Path) -> None:
    from medsuite.data.splitters import PatientSplitter
    from medsuite.pipelines.config import load_config, splitter

    table = pd.read_csv(cohort / "nodules.csv").drop(columns=["split"])
    first = table["patient_id"].iloc[0]
    table["label"] = ["malignant" if p == first else "benign" for p in table["patient_id"]]  # one malignant patient
    table.to_csv(tmp_path / "one.csv", index=False)
    refused = train(cohort, tmp_path / "run", table=tmp_path / "one.csv")
    assert refused.exit_code == 2 and "cannot stratify" in refused.output
    assert "set data.split.stratify to false" in refused.output and not (tmp_path / "run").exists()
    cfg = load_config(ROOT / "configs/nodule_malignancy.yaml", [f"data.table={cohort / 'nodules.csv'}",
                                                                 f"data.dicom_root={cohort}", "data.split.column=null",
                                                                 "data.split.stratify=false"])
    assert isinstance(splitter(cfg, table), PatientSplitter)


def test_default_diameters_rule_out_the_size_baselines() -> None:
    from medsuite.pipelines.train import baseline_problem

    measured = pd.DataFrame({"diameter_mm": [4.0, 9.0], "label": ["benign", "malignant"]})
    assert baseline_problem(measured) is None
    assert baseline_problem(measured.assign(diameter_source=["annotation", "annotation"])) is None
    candidates = measured.assign(diameter_source=["default", "annotation"])  # LUNA16 candidates.csv rows
    assert "1 of 2 rows have a default diameter" in baseline_problem(candidates)
