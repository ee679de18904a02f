"""Where the commands put what a user should not see on the terminal: the traceback of an error, in a log
file whose path the one-line message gives."""

from __future__ import annotations

import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["log_dir", "one_line", "write_error_log"]


def log_dir() -> Path:
    """Where error reports go: ``$MEDSUITE_LOG_DIR``, else the user's log folder (platformdirs)."""
    env = os.environ.get("MEDSUITE_LOG_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_log_path("medsuite", appauthor=False)


def write_error_log(command: str, exc: BaseException) -> Path | None:
    """The traceback and the command line in a new log file; None if no log folder is writable."""
    from medsuite import __version__
    from medsuite.io.atomic import atomic_write_text

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = log_dir() / f"{command}-{stamp}-{os.getpid()}.log"
    text = (f"medsuite {__version__} {command}\nargv: {sys.argv!r}\npython {sys.version.split()[0]}\n\n"
            + "".join(traceback.format_exception(exc)))
    try:
        return atomic_write_text(path, text)
    except OSError:
        return None


def one_line(exc: BaseException) -> str:
    """The exception's message without a traceback that some carry inside it (an error re-raised from a
    DataLoader worker quotes the worker's whole traceback): then its last line, the original error."""
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    return text
