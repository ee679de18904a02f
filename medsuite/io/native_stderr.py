"""Keep the text a native decoder prints on the process's stderr (a Rust panic's "thread ... panicked at
src/lib.rs ..." and its backtrace) off the user's terminal while it decodes one file.

Decoder plugins written in Rust (pylibjpeg-rle) report corrupt data by panicking: pyo3 turns the panic into a
Python ``PanicException`` (which `medsuite.io.decode` turns into one `PixelDataError` naming the file), but
Rust's panic hook has already written the panic text straight to file descriptor 2, beside our one clean
line. No setting silences that hook, so while a decoder runs, descriptor 2 points at a temporary file; when
the last concurrent decode ends it is restored, the panic blocks are dropped (their message is in the
exception) and anything else written meanwhile (another thread's log line) is passed on to the real stderr.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["drop_panic_text", "native_stderr_captured"]

_PANIC_START = re.compile(r"^thread '.*' panicked at ")
_PANIC_TAIL = re.compile(r"^(stack backtrace:|note: |\s+\d+: |\s+at )")


class _Redirect:
    """Descriptor 2 redirected to a temporary file while at least one ``enter`` is not matched by ``leave``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: int | None = None
        self.capture = None

    def enter(self) -> None:
        with self.lock:
            self.depth += 1
            if self.depth > 1:
                return
            try:
                _flush()
                self.capture = tempfile.TemporaryFile()
                self.saved = os.dup(2)
                os.dup2(self.capture.fileno(), 2)
            except OSError:  # no descriptor 2, or none to spare: decode without capturing
                self._close()

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth > 0 or self.saved is None or self.capture is None:
                if self.depth == 0:
                    self._close()
                return
            _flush()
            os.dup2(self.saved, 2)
            self.capture.seek(0)
            text = self.capture.read().decode("utf-8", "replace")
            self._close()
        rest = drop_panic_text(text)
        if rest:
            try:
                os.write(2, rest.encode("utf-8", "replace"))
            except OSError:  # stderr closed meanwhile: nothing to pass on to
                pass

    def _close(self) -> None:
        if self.saved is not None:
            os.close(self.saved)
        if self.capture is not None:
            self.capture.close()
        self.saved = self.capture = None


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


_REDIRECT = _Redirect()


def drop_panic_text(text: str) -> str:
    """``text`` without Rust panic blocks (the "panicked at" line, its message line, backtrace and notes)."""
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if _PANIC_START.match(lines[i]):
            i += 2  # the "panicked at" line and the panic message
            while i < len(lines) and _PANIC_TAIL.match(lines[i]):
                i += 1
            continue
        if lines[i].strip() or not (i + 1 < len(lines) and _PANIC_START.match(lines[i + 1])):
            out.append(lines[i])  # (the blank line Rust writes before a panic goes with it)
        i += 1
    return "".join(out)


@contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Around a native decoder call: its panic text never reaches the terminal (other text is passed on)."""
    _REDIRECT.enter()
    try:
        yield
    finally:
        _REDIRECT.leave()
