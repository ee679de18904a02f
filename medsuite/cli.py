"""The `medsuite` command. Each sub-command lives in `medsuite.commands.<name>` as a function `command`;
heavy libraries are imported inside those functions so that `medsuite --help` stays fast."""

from __future__ import annotations

from importlib import import_module

import typer

# (sub-command, module under medsuite.commands, one-line purpose shown by --help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("inspect", "inspect", "List the image stacks in DICOM folders (size, spacing, orientation, problems) and skipped files."),
    ("convert", "convert", "Convert a DICOM series (folder or file) or NRRD/MHA to NIfTI with correct geometry."),
    ("demo", "demo", "Run the whole demo offline: generate the cohort, train, report, score held-out scans."),
    ("train", "train", "Train a nodule or series model from a YAML config; writes a bundle and an HTML report."),
    ("evaluate", "evaluate", "Evaluate a model bundle on a labelled table: metrics with confidence intervals and plots."),
    ("score", "score", "Batch-score series with a model bundle (local processes or Ray); resumable."),
    ("explain", "explain", "Explain a case (attributions on the scan) or sanity-check attribution methods."),
    ("view", "view", "Start the clinician viewer (Streamlit) on a scoring database; loopback unless logins are configured."),
    ("demo-data", "demo_data", "Generate the offline demo cohort: synthetic chest CT series with real LIDC-IDRI nodules."),
)

app = typer.Typer(
    name="medsuite",
    help="Medical imaging suite: read DICOM correctly, train 2.5D models, explain, score in batch, review.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, _module, _help in COMMANDS:
    app.command(_name, help=_help)(import_module(f"medsuite.commands.{_module}").command)
# command groups: (name, module under medsuite.commands holding a Typer `app`, one-line purpose)
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("audit", "audit", "Verify (or anchor) the tamper-evident audit trail of a scoring database."),
)
for _name, _module, _help in GROUPS:
    app.add_typer(import_module(f"medsuite.commands.{_module}").app, name=_name, help=_help)


def main() -> None:
    app()
