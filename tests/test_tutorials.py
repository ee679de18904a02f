"""The tutorials run as written: every command of docs/tutorial-luna16.md and docs/tutorial-lidc-idri.md, on
LUNA16- and TCIA-shaped folders built from real LIDC-IDRI rows (tests/lidc_shapes.py), ends in its outputs.

Commands are read from the pages themselves (```bash blocks; files from the blocks marked
``<!-- file: NAME -->``), with ``/data`` pointing at a temporary folder and ``~/medsuite`` at this checkout;
only ``medsuite train`` gets extra ``--set`` options that make the model tiny.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lidc_shapes import make_luna16, make_tcia
from typer.testing import CliRunner

from medsuite.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ["block.k=3", "block.size=32", "data.bs=8", "data.num_workers=0", "train.epochs=2", "train.lr=0.003",
        "report.n_boot=200", "report.top_losses=2"]

pytestmark = pytest.mark.slow


def tutorial(page: str) -> list[tuple[str, str]]:
    """``[("file", name + "\\n" + text) | ("run", command)]`` in page order."""
    steps, pending_file, block, kind = [], None, None, None
    for line in (ROOT / "docs" / page).read_text().splitlines():
        marker = re.match(r"<!-- file: (\S+) -->", line.strip())
        if marker:
            pending_file = marker.group(1)
        elif line.startswith("```") and block is None:
            block, kind = [], line[3:].strip()
        elif line.startswith("```"):
            if pending_file is not None:
                steps.append(("file", pending_file + "\n" + "\n".join(block) + "\n"))
                pending_file = None
            elif kind == "bash":
                text = "\n".join(block).replace("\\\n", " ")
                steps += [("run", c.strip()) for c in text.splitlines() if c.strip() and not c.strip().startswith("#")]
            block = None
        elif block is not None:
            block.append(line)
    return steps


def run_tutorial(page: str, data: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Run every step of ``page``; returns the results by sub-command (prepare scripts: by output file)."""
    results: dict[str, object] = {}
    for kind, text in tutorial(page):
        text = re.sub(r"(?<![\w.])/data(?!\w)", str(data), text).replace("~/medsuite", str(ROOT))
        if kind == "file":
            name, _, content = text.partition("\n")
            Path(name).write_text(content)
            continue
        for command in (c.strip() for c in text.split("&&")):
            args = shlex.split(command)
            if args[0] == "mkdir":
                Path(args[-1]).mkdir(parents=True, exist_ok=True)
            elif args[0] == "cd":
                monkeypatch.chdir(args[1])
            elif args[0] == "python":
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                done = subprocess.run([sys.executable, *args[1:]], env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                results[args[args.index("--out") + 1]] = done
            else:
                assert args[0] == "medsuite", command
                extra = [a for item in TINY for a in ("--set", item)] if args[1] == "train" else []
                result = CliRunner().invoke(app, args[1:] + extra)
                assert result.exit_code == 0, f"{command}\n{result.output}"
                results[args[1]] = result
    return results


def test_luna16_tutorial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = make_luna16(tmp_path / "LUNA16")
    results = run_tutorial("tutorial-luna16.md", tmp_path, monkeypatch)
    work = tmp_path / "work"

    prepared = results["luna16_nodules.csv"].stdout
    assert "found 10 of 11 series" in prepared and "labels from the LIDC readers (rule luna16)" in prepared
    table = pd.read_csv(work / "luna16_nodules.csv")
    assert set(table["label"]) == {"benign", "malignant"}
    assert len(table) < len(annotations)  # the series not downloaded, and mean-3 nodules, are left out
    assert {"malignancy_r1", "malignancy_r4", "n_readers", "path", "modality"} <= set(table.columns)
    assert all((work / p).is_file() for p in table["path"])
    candidates = pd.read_csv(work / "luna16_candidates.csv")
    assert set(candidates["label"]) == {"nodule", "non_nodule"}

    assert (work / "runs/luna16/report.html").is_file() and (work / "runs/luna16/train.log").is_file()
    assert json.loads((work / "evaluation/metrics.json").read_text())["n"] == len(table)
    scores = pd.read_csv(work / "scores/scores.csv")
    assert len(scores) == len(table) and scores["probability"].between(0, 1).all()
    with sqlite3.connect(work / "scores/medsuite.db") as db:
        sealed = [r[0] for r in db.execute("SELECT source FROM series")]
    from medsuite.io.phi import Pseudonymizer

    sources = [Pseudonymizer.from_key_file().unseal(s) for s in sealed]  # stored sealed: folder names are PHI
    assert all(s.startswith("phi1:") for s in sealed)
    assert len(sources) == table["series_uid"].nunique() and all(s.endswith(".mhd") for s in sources)
    assert (work / "sanity/sanity.html").is_file()

    # the viewer reads a scored series from its database row; explain finds a series by uid in the folder
    from medsuite.data.source import read_path

    row = table[table["label"] == "malignant"].iloc[0]
    assert read_path(work / sources[0], None).shape[1:] == (512, 512)
    why = CliRunner().invoke(app, ["explain", "runs/luna16/luna16.bundle", "--series", row["series_uid"], "--data",
                                   str(tmp_path / "LUNA16"), f"--nodule={row.x_mm},{row.y_mm},{row.z_mm}",
                                   "--out", "why", "--methods", "gradcam"])
    assert why.exit_code == 0, why.output
    assert (work / "why/summary.json").is_file()

    # a folder of .mhd scans: skipped with a reason until the user vouches for the modality
    unknown = CliRunner().invoke(app, ["score", "runs/luna16/luna16.bundle", str(tmp_path / "LUNA16"), "--nodules",
                                       "luna16_nodules.csv", "--out", "by_folder", "--quiet"])
    assert unknown.exit_code == 2 and "modality unknown" in unknown.output and "--rule modality=any" in unknown.output
    vouched = CliRunner().invoke(app, ["score", "runs/luna16/luna16.bundle", str(tmp_path / "LUNA16"), "--nodules",
                                       "luna16_nodules.csv", "--out", "by_folder", "--quiet", "--rule", "modality=any"])
    assert vouched.exit_code == 0, vouched.output
    again = pd.read_csv(work / "by_folder/scores.csv").set_index("nodule_id")["probability"]
    np.testing.assert_allclose(again.loc[scores["nodule_id"]].to_numpy(), scores["probability"].to_numpy(), atol=1e-6)


def test_lidc_tutorial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = make_tcia(tmp_path)
    results = run_tutorial("tutorial-lidc-idri.md", tmp_path, monkeypatch)
    work = tmp_path / "work"

    assert "found 10 of 1018 LIDC-IDRI series" in results["lidc_nodules.csv"].stdout
    table = pd.read_csv(work / "lidc_nodules.csv")
    labelled = written[written["label"] != "excluded"]
    assert len(table) == len(labelled) and (table["xy_frame"] == "patient").all()
    # world x/y from the DICOM headers land where the nodules were painted
    merged = table.merge(labelled[["nodule_id", "x_mm", "y_mm", "z_mm"]], on="nodule_id", suffixes=("", "_painted"))
    assert len(merged) == len(table)
    for axis in ("x_mm", "y_mm", "z_mm"):
        np.testing.assert_allclose(merged[axis], merged[f"{axis}_painted"], atol=1e-3)
    readers = table[[f"malignancy_r{i}" for i in range(1, 5)]]
    assert (readers.notna().sum(axis=1) == table["n_readers"]).all()

    assert (work / "runs/lidc/report.html").is_file()
    scores = pd.read_csv(work / "scores/scores.csv")
    from medsuite.io.phi import Pseudonymizer

    # LIDC nodule ids hold the patient id (LIDC-IDRI-0001/...): scoring writes their keyed pseudonyms
    assert set(scores["nodule_id"]) == set(Pseudonymizer.pseudonymize_table(table)["nodule_id"])
    assert scores["nodule_id"].str.startswith("id-").all()
    assert (work / "evaluation/report.html").is_file() and (work / "sanity/sanity.html").is_file()


def test_lidc_missing_scans_and_pixel_coordinates_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tcia(tmp_path, scan_ids=(101, 160, 250, 148))
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    prepare = [sys.executable, str(ROOT / "datasets/lidc-idri/prepare.py")]
    subprocess.run([*prepare, "--dicom", "LIDC-IDRI", "--out", "have.csv"], env=env, check=True, capture_output=True)
    subprocess.run([*prepare, "--out", "pixels.csv"], env=env, check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run([*prepare, "--dicom", str(empty), "--out", "none.csv"], env=env, capture_output=True, text=True)
    assert none.returncode == 2 and "found 0 of 1018" in none.stderr and not (tmp_path / "none.csv").exists()

    config = ["train", str(ROOT / "configs/nodule_malignancy.yaml"), "--set", "out=run"]
    pixels = CliRunner().invoke(app, [*config, "--set", "data.table=pixels.csv", "--set", "data.dicom_root=LIDC-IDRI"])
    assert pixels.exit_code == 2 and "xy_frame ['image_corner']" in pixels.output and "--dicom" in pixels.output
    gone = pd.read_csv("have.csv")["path"].iloc[0]
    for f in Path(gone).iterdir():
        f.unlink()
    missing = CliRunner().invoke(app, [*config, "--set", "data.table=have.csv", "--set", "data.dicom_root=null"])
    assert missing.exit_code == 2, missing.output
    assert "1 series of the table not found" in missing.output and "(3 of 4 found)" in missing.output
    assert "Train on the series you have" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "run").exists()
