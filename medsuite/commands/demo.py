"""`medsuite demo [--out DIR]`: the full demo on the embedded default data."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer


def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the cohort, run, bundle, report and scores.")] = Path("demo_out"),
    patients: Annotated[int, typer.Option("--patients", help="Demo patients to generate (one CT series each).")] = 700,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cohort and the training run.")] = 0,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the demo config's epochs.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes for generation and scoring (default: all cores).")] = None,
) -> None:
    """Generate the demo cohort, train the 2.5D nodule model, write the report, score held-out scans."""
    from medsuite.pipelines.demo import run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    overrides = {"train.seed": seed, **({"train.epochs": epochs} if epochs else {})}
    result = run_demo(out, patients=patients, seed=seed, workers=workers, overrides=overrides)
    auc = result.metrics["report"]["roc_auc"]
    typer.echo("")
    typer.echo(f"held-out ROC AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] on {result.metrics['report']['n']} nodules")
    for name, comp in result.metrics["comparisons"].items():
        b = comp["bootstrap"]
        typer.echo(f"  vs {name}: AUC difference {comp['difference']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}] (paired bootstrap), "
                   f"DeLong p={comp['delong']['p_value']:.3g}")
    typer.echo(f"bundle:  {result.bundle}")
    typer.echo(f"report:  {result.report}")
    typer.echo(f"scores:  {result.scores / 'scores.csv'} (scoring exit code {result.score_exit_code})")
    typer.echo(f"viewer:  medsuite view --db {result.scores / 'medsuite.db'} --bundle {result.bundle}")
    typer.echo(f"done in {time.perf_counter() - start:.0f} s")
