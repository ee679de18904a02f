"""Which files medsuite reads: regular files only, found by a walk that never hangs and never loops.

Policy (documented in docs/reading-dicom.md):
- Only regular files are read. FIFOs, devices (``/dev/zero``), sockets and broken symbolic links are listed
  as skipped (`Code.NOT_REGULAR_FILE`) and never opened for reading by the walk.
- Inputs named by the user are followed when they are symbolic links (to a file or a folder).
- Inside a folder, a symbolic link to a regular file is read; a symbolic link to a folder is not entered
  (no loops, no escaping the tree): it is listed as skipped with the reason, pass it as an input to scan it.
- Names starting with ``.`` (including medsuite's own temporary files) and OS clutter are ignored.
- A folder that cannot be listed is reported (`Code.UNREADABLE_FOLDER`), never silently passed over.
- Every read goes through `open_regular`, which opens without blocking and checks the opened file again, so
  a file swapped for a FIFO or a device after the walk is refused instead of hanging.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from medsuite.io.errors import NotRegularFileError
from medsuite.io.problems import Code

__all__ = ["Walk", "open_regular", "walk"]

IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass
class Walk:
    """Regular files found (stable order) and ``(path, code, reason)`` for what was passed over."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, Code, str]] = field(default_factory=list)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (symbolic links followed); never blocks.

    Raises `NotRegularFileError` naming the file for FIFOs, devices, sockets and folders, `OSError` when the
    operating system refuses (missing file, permissions).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path}: {_kind(mode)}, not a regular file: not read", code=Code.NOT_REGULAR_FILE)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _entry(entry: os.DirEntry, out: Walk, folders: list[str]) -> None:
    path = entry.path
    if entry.is_symlink():
        try:
            mode = os.stat(path).st_mode
        except OSError:
            out.skipped.append((path, Code.NOT_REGULAR_FILE, "broken symbolic link"))
            return
        if stat.S_ISREG(mode):
            out.files.append(path)
        elif stat.S_ISDIR(mode):
            out.skipped.append(
                (path, Code.NOT_REGULAR_FILE, "symbolic link to a folder: not entered (pass it as an input to scan it)")
            )
        else:
            out.skipped.append((path, Code.NOT_REGULAR_FILE, f"symbolic link to {_kind(mode)}, not a regular file: not read"))
        return
    try:
        if entry.is_dir(follow_symlinks=False):
            folders.append(path)
        elif entry.is_file(follow_symlinks=False):
            out.files.append(path)
        else:
            kind = _kind(entry.stat(follow_symlinks=False).st_mode)
            out.skipped.append((path, Code.NOT_REGULAR_FILE, f"{kind}, not a regular file: not read"))
    except OSError as exc:
        out.skipped.append((path, Code.UNREADABLE, f"cannot access it: {exc.strerror or exc}"))


def _walk_folder(root: str, out: Walk) -> None:
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not _ignored(e.name)), key=lambda e: e.name)
        except OSError as exc:
            out.skipped.append((folder, Code.UNREADABLE_FOLDER, f"folder cannot be listed: {exc.strerror or exc}"))
            continue
        subfolders: list[str] = []
        for entry in entries:
            _entry(entry, out, subfolders)
        pending.extend(reversed(subfolders))  # depth first, in name order


def walk(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Walk:
    """Every regular file under ``paths`` (files and/or folders) in a stable order, and what was passed over.

    A path that does not exist raises `FileNotFoundError` (a usage error, not a bad file).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = Walk()
    for root in paths:
        root = os.fspath(root)
        try:
            mode = os.stat(root).st_mode
        except FileNotFoundError:
            if os.path.lexists(root):
                out.skipped.append((root, Code.NOT_REGULAR_FILE, "broken symbolic link"))
                continue
            raise FileNotFoundError(f"{root}: no such file or folder") from None
        except OSError as exc:
            out.skipped.append((root, Code.UNREADABLE, f"cannot access it: {exc.strerror or exc}"))
            continue
        if stat.S_ISREG(mode):
            out.files.append(root)
        elif stat.S_ISDIR(mode):
            _walk_folder(root, out)
        else:
            out.skipped.append((root, Code.NOT_REGULAR_FILE, f"{_kind(mode)}, not a regular file: not read"))
    return out


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (after following symbolic links)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def folder_of(path: str) -> str:
    return str(Path(path).parent)
