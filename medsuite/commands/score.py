"""`medsuite score BUNDLE INPUT... --out DIR`: batch scoring with a model bundle (local processes or Ray).

Exit codes: 0 all eligible series scored; 1 some failed; 2 nothing scored; 3 usage, bundle or cluster
error (nothing was run); 4 the run stopped on an unexpected error (run marked failed; rerun to resume);
130 interrupted (Ctrl-C or SIGTERM; rerun to resume).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

EXIT_USAGE = 3  # = medsuite.pipelines.scoring.EXIT_USAGE (not imported here: it loads pandas)

def command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle: a folder or a .zip made by export_bundle.")],
    inputs: Annotated[list[Path], typer.Argument(
        help="Folders, DICOM files, or a series table (CSV/Parquet) with a 'path' column.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: scores.parquet, scores.csv, medsuite.db.")],
    nodules: Annotated[Path | None, typer.Option(
        "--nodules", help="Nodule table (CSV/Parquet, world mm) for a nodule bundle.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Processes reading and preprocessing series (default: all CPU cores); with "
        "--engine ray and no --ray-address, the local Ray's CPUs (plus one for inference).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (inference).")] = "auto",
    engine: Annotated[str, typer.Option("--engine", help="local | ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="HEAD:PORT of a running Ray cluster's GCS, or 'auto' on a cluster node (default: "
        "start a local Ray on loopback). ray:// (Ray Client) is refused: submit a Ray job instead.")] = None,
    ray_actors: Annotated[str | None, typer.Option(
        "--ray-actors", help="MIN:MAX inference actors (default: 1 to one per GPU, or to a quarter of the "
        "CPUs on a CPU-only cluster).")] = None,
    ray_ship_inputs: Annotated[bool, typer.Option(
        "--ray-ship-inputs", help="Send the files and the bundle through Ray's object store (for nodes without "
        "shared storage; the driver's disk and network become the limit).")] = False,
    ray_timeout: Annotated[float, typer.Option(
        "--ray-timeout", help="Seconds to wait for the cluster to answer when connecting.")] = 30.0,
    ray_stall_timeout: Annotated[float, typer.Option(
        "--ray-stall-timeout", help="Seconds without any result before the work in flight is re-submitted.")
    ] = 120.0,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite database (default: OUT/medsuite.db).")] = None,
    include_phi: Annotated[bool, typer.Option(
        "--include-phi", help="Add patient_id to the outputs and keep it in messages (off by default).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per inference batch.")] = 16,
    rule: Annotated[list[str] | None, typer.Option(
        "--rule", help="Override an eligibility rule, key=value (repeatable): modality=CT,MR  min_slices=20  "
        "max_slice_thickness=2.5  orientation=axial  exclude_image_type=LOCALIZER,DERIVED; 'any'/'none' lifts it.")
    ] = None,
    stack: Annotated[list[str] | None, typer.Option(
        "--stack", help="Score only this stack id (repeatable; `medsuite inspect` lists a series' stacks, e.g. "
                        "magnitude and phase, or two echoes).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Score every eligible series under INPUT with BUNDLE; resumable (rerun with the same --out)."""
    import os

    missing = _missing(bundle, inputs, nodules)
    if missing:  # before the heavy imports: a mistyped path answers at once (runner.score checks the same)
        typer.echo(f"error: {missing}", err=True)
        raise typer.Exit(EXIT_USAGE)
    from medsuite.pipelines.scoring import EXIT_FAILED, ScoreConfig, UsageError, score

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ScoreConfig(
        bundle=bundle, inputs=list(inputs), out=out, nodules=nodules,
        workers=workers if workers is not None else max(1, os.cpu_count() or 1),
        device=device, engine=engine, ray_address=ray_address, ray_actors=ray_actors,
        ray_ship_inputs=ray_ship_inputs, ray_timeout_s=ray_timeout, ray_stall_s=ray_stall_timeout, db=db,
        include_phi=include_phi, batch_size=batch_size, rules=list(rule or []), stacks=list(stack or []),
        progress=not quiet,
    )
    main = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C, so the run row is closed (only the main thread may set a handler)
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        summary = score(cfg)
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the run is marked failed; run the same command again to carry on", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or a lost cluster: not "some series failed" (1), which is a result
        from medsuite.commands.errors import one_line, write_error_log

        log = write_error_log("score", exc)  # the traceback goes to the log, not the terminal
        typer.echo(f"error: the run stopped: {type(exc).__name__}: {one_line(exc)}\n"
                   "(the run is marked failed; run the same command again to carry on"
                   + (f"; details: {log})" if log else ")"), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    for line in summary.lines():
        typer.echo(line, err=True)
    raise typer.Exit(summary.exit_code)


def _missing(bundle: Path, inputs: list[Path], nodules: Path | None) -> str | None:
    """The first path given that does not exist, said as the scoring runner says it; None if all exist."""
    if not bundle.exists():
        return f"{bundle}: bundle not found"
    for path in inputs:
        if not path.exists():
            return f"{path.absolute()}: input not found"
    if nodules is not None and not nodules.exists():
        return f"{nodules}: table file not found"
    return None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
