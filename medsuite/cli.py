"""The `medsuite` command. Each sub-command lives in `medsuite.commands.<name>` as a function `command`;
those modules import only Typer at module level (heavy libraries inside the function), so that
`medsuite --help`, `--version` and argument errors answer without loading torch or pandas.

Every sub-command runs inside `guarded`: a user never sees a Python traceback. An input problem
(``ValueError``/``OSError``, which is what medsuite's own errors derive from) prints ``error: <message>``
and exits with the command's usage code; anything else is a bug and exits 70; both write the traceback to
a log file whose path is printed. ``Ctrl+C`` exits 130.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from importlib import import_module
from typing import Annotated, Any

import typer

from medsuite.commands.errors import log_dir, one_line, write_error_log

__all__ = ["COMMANDS", "EPILOG", "EXIT_BROKEN_PIPE", "EXIT_INTERNAL", "GROUPS", "EXIT_INTERRUPTED", "INTERNAL_EXIT", "SHORT_HELP", "USAGE_EXIT", "app", "guarded",
           "guarded_group", "log_dir", "main"]

EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: an unexpected error inside medsuite (a bug): see the log
EXIT_INTERRUPTED = 130  # Ctrl+C, as shells report SIGINT
EXIT_BROKEN_PIPE = 141  # the output's reader closed the pipe (`| head`), as shells report SIGPIPE

# (sub-command, module under medsuite.commands, purpose shown by its --help)
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
# the one-line listing of `medsuite --help`
SHORT_HELP = {
    "inspect": "List the image stacks in DICOM folders.", "convert": "Convert DICOM, NRRD or MHA to NIfTI.",
    "demo": "Run the whole demo offline, start to finish.", "train": "Train a model from a YAML config.",
    "evaluate": "Evaluate a bundle on a labelled table.", "score": "Batch-score series with a bundle; resumable.",
    "explain": "Explain a case, or sanity-check attributions.", "view": "Start the clinician viewer on a scoring database.",
    "demo-data": "Generate the offline demo cohort.",
}
# exit code of a bad input, where it is not 2 (docs/scoring.md: 3; docs/converting.md: 1), and of an
# unexpected error, where it is not EXIT_INTERNAL (docs/scoring.md: 4)
USAGE_EXIT = {"score": 3, "convert": 1}
INTERNAL_EXIT = {"score": 4}

EPILOG = ("Exit codes: 0 done; 1 some items failed (convert, inspect, score); 2 bad input or configuration "
          "(score: 2 nothing scored, 3 bad input); 70 an unexpected error, a bug (score: 4), with the path of a "
          "log holding the details; 130 interrupted; 141 the reader of the output closed it (| head).")


def guarded(function: Callable[..., Any], *, command: str, usage_code: int = 2,
            internal_code: int = EXIT_INTERNAL) -> Callable[..., Any]:
    """``function`` with a top-level handler: one line instead of a traceback, documented exit codes."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        import click

        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # typer.Exit, usage errors: already what the user should see
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # the reader of the output went away (`medsuite ... | head`): nothing to tell
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except Exception as exc:  # the last line of defence: never a traceback on the terminal
            log = write_error_log(command, exc)
            where = f" (details: {log})" if log else ""
            if isinstance(exc, ValueError | OSError):
                typer.echo(f"error: {one_line(exc)}{where}", err=True)
                raise typer.Exit(usage_code) from None
            typer.echo(f"error: unexpected {type(exc).__name__} in 'medsuite {command}': {one_line(exc)}. This is a bug; please "
                       f"report it with the traceback{' in ' + str(log) if log else ''}", err=True)
            raise typer.Exit(internal_code) from None

    return run


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again on the closed pipe."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests capture stdout)
        pass


def _show_version(value: bool) -> None:
    if value:
        from medsuite import __version__

        typer.echo(f"medsuite {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="medsuite",
    help="Medical imaging suite: read DICOM correctly, train 2.5D models, explain, score in batch, review.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    epilog=EPILOG,
)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the medsuite version and exit.")] = False,
) -> None:
    """Options of `medsuite` itself (the sub-commands have their own)."""


for _name, _module, _help in COMMANDS:
    _function = import_module(f"medsuite.commands.{_module}").command
    app.command(_name, help=_help, short_help=SHORT_HELP[_name])(
        guarded(_function, command=_name, usage_code=USAGE_EXIT.get(_name, 2),
                internal_code=INTERNAL_EXIT.get(_name, EXIT_INTERNAL)))
# command groups: (name, module under medsuite.commands holding a Typer `app`, one-line purpose, exit code
# of a bad input: `medsuite audit` keeps 1 and 2 for what it finds, docs/guarantees.md)
GROUPS: tuple[tuple[str, str, str, int], ...] = (
    ("audit", "audit", "Verify (or anchor) the tamper-evident audit trail of a scoring database.", 3),
)


def guarded_group(group: typer.Typer, *, name: str, help: str, usage_code: int) -> typer.Typer:
    """A copy of the command group ``group`` whose every command runs inside `guarded` (the group's own
    Typer object is left as it is)."""
    wrapped = typer.Typer(help=help, no_args_is_help=True)
    for info in group.registered_commands:
        entry = copy.copy(info)
        command = info.name or info.callback.__name__.replace("_", "-")
        entry.name = command
        entry.callback = guarded(info.callback, command=f"{name}-{command}", usage_code=usage_code)
        wrapped.registered_commands.append(entry)
    return wrapped


for _name, _module, _help, _usage in GROUPS:
    app.add_typer(guarded_group(import_module(f"medsuite.commands.{_module}").app, name=_name, help=_help,
                                usage_code=_usage), name=_name, help=_help)


def main() -> None:
    """Console-script entry point; a last handler for what the sub-command handlers cannot catch (Typer itself)."""
    import sys

    try:
        app(prog_name="medsuite")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "medsuite")
        log = write_error_log(command, exc)
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)}. This is a bug; please report it"
              + (f" with the traceback in {log}" if log else ""), file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
