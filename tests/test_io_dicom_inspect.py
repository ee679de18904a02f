"""`medsuite inspect`: table per stack, skipped files, PHI hidden by default, CSV/JSON output, exit status."""

from __future__ import annotations

import json

import pandas as pd
import typer
from dicom_factory import add_localizer, edit_files, make_volume, write_ct, write_garbage
from typer.testing import CliRunner

from medsuite.commands.inspect import command

# The sub-command alone (as medsuite.cli registers it), so that this test does not depend on other commands.
app = typer.Typer()
app.command("inspect")(command)
app.command("noop")(lambda: None)  # two commands keep the "inspect" name on the command line
runner = CliRunner()


def test_inspect_table_hides_patient_id_by_default(tmp_path):
    paths = write_ct(
        tmp_path / "ct", make_volume(shape=(5, 8, 8)), patient_id="SECRET-ID", SeriesDescription="chest"
    )
    add_localizer(tmp_path / "ct", paths)
    write_garbage(tmp_path / "junk")
    result = runner.invoke(app, ["inspect", str(tmp_path), "--csv", str(tmp_path / "out" / "series.csv")])
    assert result.exit_code == 0, result.output
    assert "chest" in result.output and "localizer" in result.output and "axial" in result.output
    assert "skipped 4 file(s)" in result.output and "notes.txt" in result.output
    assert "SECRET-ID" not in result.output
    table = pd.read_csv(tmp_path / "out" / "series.csv")
    assert len(table) == 2 and "patient_id" not in table.columns
    assert json.loads(table.loc[table.n_instances == 5, "files"].iloc[0]) == [str(p) for p in paths]


def test_inspect_json_with_phi_and_error_status(tmp_path):
    paths = write_ct(tmp_path, make_volume(shape=(3, 8, 8)), patient_id="PID-7", shuffle_names=False)
    edit_files(paths[:1], lambda ds, k: delattr(ds, "ImagePositionPatient"))
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json", "--include-phi"])
    assert result.exit_code == 1, "a stack with status 'error' makes the exit status 1"
    payload = json.loads(result.stdout)
    row = payload["series"][0]
    assert row["patient_id"] == "PID-7" and row["status"] == "error"
    assert "ImagePositionPatient" in row["problems"]


def test_inspect_missing_path_and_empty_folder(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no DICOM image stacks" in result.output
