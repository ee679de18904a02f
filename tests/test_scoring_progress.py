"""The scoring progress: a bar on a terminal, plain lines (never carriage returns) in a log or a pipe."""

from __future__ import annotations

import io
import sys

import pytest

from medsuite.pipelines.scoring import runner


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()], ids=["log", "terminal"])
def test_bars_on_a_terminal_lines_in_a_log(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    with runner._progress(3, True) as bar:
        if isinstance(bar, runner._LineProgress):
            bar.every_s = 0.0  # a line at every update, as after a minute
        for _ in range(3):
            bar.update(1)
            bar.set_postfix(scored=1, failed=0, refresh=False)
    text = stream.getvalue()
    if stream.isatty():
        assert "\r" in text and "scoring" in text
    else:
        assert "\r" not in text
        assert text.splitlines()[0].startswith("scoring: 1/3 series (") and "scored 1, failed 0" in text.splitlines()[1]


def test_no_progress_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    with runner._progress(3, False) as bar:
        assert bar is None
    assert stream.getvalue() == ""
