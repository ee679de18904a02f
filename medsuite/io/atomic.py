"""Atomic outputs: every file or folder medsuite writes appears whole or not at all.

Content is written under a temporary name beside the target and renamed into place (``os.replace`` is
atomic on one file system), so a reader never sees a half-written file and a process killed at any moment
leaves the previous version intact. Temporary names follow one pattern,
``.<target name>.<host>-<pid>-<token>.tmp<target suffixes>``, so that the next writer of the same target can
recognise what a killed process left behind and remove it (`remove_stale_temps`); the target's own suffixes
are kept at the end because some writers (SimpleITK, matplotlib) choose the format from the name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_dir",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "remove_stale_temps",
    "temp_path_for",
]

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})\.tmp")


def _suffixes(target: Path) -> str:
    return "".join(s for s in target.suffixes if len(s) <= 8)


def temp_path_for(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``target`` that `remove_stale_temps` recognises."""
    target = Path(target)
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{token}.tmp{_suffixes(target)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files or folders of ``target`` left by dead processes on this host.

    Temporaries of live processes (another writer at work) and of other hosts (shared storage) are kept.
    Returns what was removed.
    """
    target = Path(target)
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        m = _TEMP.match(path.name)
        if not m or m["name"] != target.name or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, mode: int | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name; on success it replaces ``target``.

    The temporary file is created empty (permissions ``0o666`` less the umask, or ``mode``) so that its
    name is reserved; on any exception it is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path_for(target)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 if mode is None else mode)
    os.close(fd)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(target.parent)


@contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None, file_mode: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``mode`` 'w' or 'wb'); it replaces ``target`` when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(target, mode=file_mode) as tmp:
        if "b" in mode:
            with open(tmp, "wb") as handle:
                yield handle
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as handle:
                yield handle


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``target`` atomically; returns the target path."""
    with atomic_open(target, "wb", file_mode=mode) as handle:
        handle.write(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      mode: int | None = None) -> Path:
    """Write ``text`` to ``target`` atomically; returns the target path."""
    with atomic_open(target, "w", encoding=encoding, file_mode=mode) as handle:
        handle.write(text)
    return Path(target)


def atomic_write_json(target: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False, mode: int | None = None) -> Path:
    """Write ``obj`` as strict JSON (no NaN) to ``target`` atomically; returns the target path."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False)
    return atomic_write_text(target, text + "\n", mode=mode)


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target``.

    With ``overwrite`` an existing ``target`` is moved aside and removed only after the new folder is in
    place; without it an existing ``target`` raises `FileExistsError` (before or after the block, whichever
    finds it first: a concurrent writer that finished first wins and this one's folder is discarded).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    tmp = temp_path_for(target)
    tmp.mkdir()
    try:
        yield tmp
        if overwrite and target.exists():
            old = temp_path_for(target)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            try:
                os.rename(tmp, target)  # fails if a non-empty target appeared meanwhile
            except OSError as exc:
                raise FileExistsError(f"{target} was written by another process meanwhile") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
