"""`medsuite train CONFIG [--set key=value ...] [--resume | --force] [--quiet]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    config: Annotated[Path, typer.Argument(help="A pipeline YAML (see configs/ and docs/config-reference.md).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.epochs=5 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the config's out folder from its last checkpoint (same config).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier run in the out folder (its volume cache is kept).")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Where to write the model bundle (default <out>/<name>.bundle).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress: neither bars nor the per-epoch table (train.log still has them).")] = False,
) -> None:
    """Train a pipeline from a YAML config: lr_find, one-cycle, bundle, held-out report with baselines.

    Every key and its value (against the table and the scans) is checked before anything is written; a
    problem exits with status 2. Progress bars are drawn on a terminal only; the run folder's train.log
    gets one line per epoch."""
    if resume and force:
        typer.echo("error: --resume continues the run in the out folder and --force replaces it; choose one", err=True)
        raise typer.Exit(2)
    from medsuite.pipelines.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from medsuite.learn.distributed import distrib_ctx
    from medsuite.pipelines.train import RunFolderError, run_training

    try:
        with distrib_ctx():  # under torchrun: one process group for the run (DDP = one process), left at the end
            result = run_training(cfg, resume=resume, bundle_path=bundle, force=force, progress=not quiet)
    except (ConfigError, RunFolderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if result.report is None:  # a rank other than 0 of a distributed run
        return
    auc = result.metrics["report"]["roc_auc"]
    typer.echo(f"{result.metrics['split']} ROC AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
    for name, comp in result.metrics["comparisons"].items():
        b = comp["bootstrap"]
        typer.echo(f"  vs {name}: AUC difference {comp['difference']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}], p={b['p_value']:.3g}")
    if result.metrics.get("baselines_skipped"):
        typer.echo(f"  baselines skipped: {result.metrics['baselines_skipped']}")
    typer.echo(f"bundle: {result.bundle}")
    typer.echo(f"report: {result.report}")
    typer.echo(f"log:    {result.run_dir / 'train.log'}")
