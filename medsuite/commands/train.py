"""`medsuite train CONFIG [--set key=value ...] [--resume]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    config: Annotated[Path, typer.Argument(help="A pipeline YAML (see configs/ and docs/config-reference.md).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.epochs=5 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the config's out folder from its last checkpoint.")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Where to write the model bundle (default <out>/<name>.bundle).")] = None,
) -> None:
    """Train a pipeline from a YAML config: lr_find, one-cycle, bundle, held-out report with baselines."""
    from medsuite.pipelines.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from medsuite.learn.distributed import distrib_ctx
    from medsuite.pipelines.train import run_training

    with distrib_ctx():  # under torchrun: one process group for the run (DDP = one process), left at the end
        result = run_training(cfg, resume=resume, bundle_path=bundle)
    if result.report is None:  # a rank other than 0 of a distributed run
        return
    auc = result.metrics["report"]["roc_auc"]
    typer.echo(f"{result.metrics['split']} ROC AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
    for name, comp in result.metrics["comparisons"].items():
        b = comp["bootstrap"]
        typer.echo(f"  vs {name}: AUC difference {comp['difference']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}], p={b['p_value']:.3g}")
    typer.echo(f"bundle: {result.bundle}")
    typer.echo(f"report: {result.report}")
