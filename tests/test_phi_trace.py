"""PHI trace (issue 17 item 8): distinctive patient markers planted in the inputs (PatientName, PatientID,
folder names, file names, patient ids inside nodule ids) must appear in no output of the demo-like path
cohort -> train -> export (bundle with its case index) -> score (Parquet, CSV, database, its log) -> evaluate
(report.html, metrics, scores) -> explain (one case, and the sanity checks) -> viewer review, nor in what the
commands print or log, unless the user asks for them (``--include-phi``), and pseudonymised ids stay joinable
with the key."""

from __future__ import annotations

import logging
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from phi_trace_support import add_broken_patient, find_markers, make_marked_cohort
from process_support import env


def _medsuite(out: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """``medsuite ARGS`` with what it prints (and its error log folder) kept under ``out/logs`` for the grep."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "medsuite", *args], capture_output=True, text=True, timeout=900,
                         env={**env(), "MEDSUITE_LOG_DIR": str(logs / "errors")})
    (logs / f"{name}.log").write_text(f"{res.stdout}\n{res.stderr}")  # (the command line holds input paths)
    return res


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from medsuite.pipelines.config import config_from_dict
    from medsuite.pipelines.scoring import ScoreConfig, score
    from medsuite.pipelines.train import run_training
    from medsuite.records import reviews, store

    root = tmp_path_factory.mktemp("phi")
    inputs, out = root / "inputs", root / "out"
    table = make_marked_cohort(inputs / "dicom")
    table_path = inputs / "nodules.csv"
    table.to_csv(table_path, index=False)
    cfg = config_from_dict({
        "task": "nodule", "name": "malignancy", "out": str(out / "run"),
        "data": {"table": str(table_path), "dicom_root": str(inputs / "dicom"), "cache_dir": str(out / "cache"),
                 "split": {"column": "split"}, "bs": 4, "num_workers": 0},
        "block": {"type": "SliceStack", "k": 3, "size": 16, "spacing_mm": 2.0, "pixel_mm": 0.8, "window": "lung"},
        "model": {"arch": "slice_cnn", "kwargs": {"width": 4, "depth": 2, "subunits": 1}},
        "train": {"epochs": 2, "lr": 0.003, "seed": 0, "device": "cpu", "amp": False},
        "report": {"baselines": ["diameter", "radiomics"], "n_boot": 100, "top_losses": 4},
    }, source="phi trace")
    result = run_training(cfg, bundle_path=out / "malignancy.bundle")
    broken = add_broken_patient(inputs / "dicom")  # after training: only scoring meets it
    test = pd.concat([table[table["split"] == "test"], broken], ignore_index=True)
    held_out = inputs / "held_out_nodules.csv"  # an input, as the demo keeps it with its cohort
    test.to_csv(held_out, index=False)
    (out / "logs").mkdir(parents=True)
    handler = logging.FileHandler(out / "logs" / "score.log")
    handler.setLevel(logging.DEBUG)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:  # everything scoring logs, at every level, goes to a file the trace greps
        summary = score(ScoreConfig(bundle=out / "malignancy.bundle", inputs=[inputs / "dicom"],
                                    out=out / "scores", nodules=held_out, workers=1, progress=False))
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        handler.close()
    bundle = str(out / "malignancy.bundle")
    labelled = inputs / "test_nodules.csv"  # evaluate refuses a table whose series it cannot find: readable ones
    table[table["split"] == "test"].to_csv(labelled, index=False)
    evaluated = _medsuite(out, "evaluate", "evaluate", bundle, str(labelled), "--dicom-root", str(inputs / "dicom"),
                          "--out", str(out / "evaluation"), "--n-boot", "20")
    case = table[table["split"] == "test"].iloc[0]
    folder = next(p for p in (inputs / "dicom").iterdir() if p.name.endswith(case["patient_id"]))
    explained = _medsuite(out, "explain", "explain", bundle, "--series", str(folder), "--nodule",
                          f"{case['x_mm']},{case['y_mm']},{case['z_mm']}", "--methods", "ig,occlusion",
                          "--steps", "4", "--out", str(out / "explain"))
    sanity = _medsuite(out, "sanity", "explain", bundle, str(labelled), "--sanity", "--data", str(inputs / "dicom"),
                       "--methods", "ig", "--steps", "4", "--max-cases", "3", "--max-layers", "2",
                       "--curve-steps", "3", "--out", str(out / "sanity"))
    with closing(store.connect(out / "scores" / "medsuite.db", create=False)) as conn:
        top = reviews.next_unreviewed(conn)
        reviews.append_audit(conn, "dr a", "open", series_uid=reviews.prediction(conn, top)["series_uid"])
        reviews.add_review(conn, top, reviewer="dr a", verdict="agree")
    return {"root": root, "out": out, "inputs": inputs, "table": table, "summary": summary, "result": result,
            "evaluate": evaluated, "explain": explained, "sanity": sanity}


def test_the_inputs_do_carry_the_markers(trace):
    assert len(find_markers(trace["inputs"])) > 50  # the trace would find them if they were copied


def test_no_marker_in_any_output(trace):
    summary = trace["summary"]
    assert summary.exit_code == 1 and summary.n_scored == 2 and summary.n_error_series == 1, summary.lines()
    for name in ("evaluate", "explain", "sanity"):  # they ran, so their outputs are there to be searched
        res = trace[name]
        assert res.returncode == 0, f"{name}: {res.stdout}\n{res.stderr}"
    out = trace["out"]
    assert (out / "evaluation" / "report.html").is_file() and (out / "explain" / "summary.json").is_file()
    assert (out / "sanity" / "sanity.json").is_file() and (out / "logs" / "score.log").stat().st_size > 0
    hits = find_markers(trace["out"])
    assert hits == [], "\n".join(hits[:40])


def test_errors_and_skipped_files_are_described_with_pseudonyms(trace):
    import sqlite3

    conn = sqlite3.connect(trace["out"] / "scores" / "medsuite.db")
    errors = conn.execute("SELECT error, source FROM errors").fetchall()
    assert errors and all(src.startswith("path-") for _, src in errors)
    assert any("<path-" in err or "<name-" in err for err, _ in errors), errors  # the file, by its pseudonym
    reasons = [r for (r,) in conn.execute("SELECT reason FROM series WHERE status != 'scored'")]
    assert any(r.startswith("not an image instance") for r in reasons), reasons
    sealed = [s for (s,) in conn.execute("SELECT source FROM series WHERE status='scored'")]
    conn.close()
    from medsuite.io.phi import Pseudonymizer

    pz = Pseudonymizer.from_key_file()
    assert sealed and all(Path(pz.unseal(s)).is_dir() for s in sealed)  # the viewer (holding the key) opens them


def test_pseudonyms_join_across_outputs_for_the_key_holder(trace):
    import json

    from medsuite.io.phi import Pseudonymizer

    table = trace["table"]
    pz = Pseudonymizer.from_key_file(patient_ids=table["patient_id"])
    expected = {pz.id(n): n for n in table["nodule_id"]}
    assert all(k.startswith("id-") for k in expected)
    cases = json.loads((trace["out"] / "malignancy.bundle" / "index" / "cases.json").read_text())["case_ids"]
    assert set(cases) <= set(expected) and len(cases) == (table["split"] == "train").sum()
    scored = pd.read_csv(trace["out"] / "scores" / "scores.csv")
    assert set(scored["nodule_id"]) == {pz.id(n) for n in table.loc[table["split"] == "test", "nodule_id"]}
    run_scores = pd.read_csv(trace["out"] / "run" / "scores.csv")  # the training report's held-out scores
    assert set(run_scores["nodule_id"]) == set(scored["nodule_id"])


def test_include_phi_keeps_identifiers(trace, tmp_path):
    from medsuite.pipelines.scoring import ScoreConfig, score

    held_out = trace["inputs"] / "held_out_nodules.csv"
    out = tmp_path / "phi"
    summary = score(ScoreConfig(bundle=trace["out"] / "malignancy.bundle", inputs=[trace["inputs"] / "dicom"],
                                out=out, nodules=held_out, workers=1, progress=False, include_phi=True))
    assert summary.n_scored == 2
    df = pd.read_csv(out / "scores.csv")
    assert df["nodule_id"].str.startswith("QXWZID").all() and df["patient_id"].str.startswith("QXWZID").all()


def test_explain_sanity_pseudonymises_case_ids_unless_include_phi(trace, tmp_path):
    import json

    from medsuite.io.phi import Pseudonymizer

    table = trace["table"]
    pz = Pseudonymizer.from_key_file(patient_ids=table["patient_id"])
    test_ids = set(table.loc[table["split"] == "test", "nodule_id"])
    default = json.loads((trace["out"] / "sanity" / "sanity.json").read_text())
    text = json.dumps(default)
    assert any(pz.id(n) in text for n in test_ids) and not any(n in text for n in test_ids)
    res = _medsuite(tmp_path, "sanity", "explain", str(trace["out"] / "malignancy.bundle"),
                    str(trace["inputs"] / "test_nodules.csv"), "--sanity", "--include-phi", "--data",
                    str(trace["inputs"] / "dicom"), "--methods", "ig", "--steps", "2", "--max-cases", "2",
                    "--max-layers", "1", "--curve-steps", "2", "--out", str(tmp_path / "sanity"))
    assert res.returncode == 0, res.stdout + res.stderr
    kept = (tmp_path / "sanity" / "sanity.json").read_text()
    assert any(n in kept for n in test_ids), kept[:400]
