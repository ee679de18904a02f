"""The Streamlit viewer's page logic through streamlit.testing (AppTest): binding rule, login gate, worklist
filters, opening a case, saving reviews, idle logout."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest
import streamlit  # noqa: E402,F401  (the [viewer] extra; installed by .ci/run)
import viewer_support as V
from streamlit import config as st_config  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import medsuite.viewer

APP = str(Path(medsuite.viewer.__file__).resolve().parent / "app.py")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    return V.make_scored_db(root)


@pytest.fixture
def app(world, tmp_path, monkeypatch):
    """An AppTest factory on a fresh copy of the database (reviews are append-only)."""
    db = tmp_path / "medsuite.db"
    with sqlite3.connect(world["db"]) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    st_config.set_option("server.address", "127.0.0.1")

    def make(*extra: str, address: str = "127.0.0.1") -> AppTest:
        st_config.set_option("server.address", address)
        monkeypatch.setattr(sys, "argv", ["app.py", "--db", str(db), "--cache", str(tmp_path / "cache"), *extra])
        at = AppTest.from_file(APP, default_timeout=180)
        at.db = db
        return at.run()

    yield make
    st_config.set_option("server.address", "127.0.0.1")


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    return "\n".join(str(p) for p in parts)


def test_refuses_non_loopback_without_auth(app):
    at = app(address="0.0.0.0")
    assert at.error and "without authentication" in at.error[0].value
    assert not at.dataframe and not at.button and not at.sidebar.radio


def test_login_gate_renders_nothing_before_login(app, tmp_path):
    from medsuite.records.access import set_password

    users = tmp_path / "users.json"
    set_password(users, "dr.ada", "long password")
    at = app("--auth-users", str(users), address="0.0.0.0")  # auth configured: any address allowed
    assert not at.exception and not at.error
    assert not at.dataframe and not at.sidebar.radio and not at.selectbox  # only the login form
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    at.text_input[0].input("dr.ada")
    at.text_input[1].input("wrong password")
    at.button[0].click().run()
    assert at.error and "wrong password" in at.error[0].value and not at.dataframe
    at.text_input[0].input("dr.ada")
    at.text_input[1].input("long password")
    at.button[0].click().run()
    assert not at.exception and at.dataframe and "Logged in as **dr.ada**" in _texts(at)
    assert _rows(at.db, "SELECT actor, action FROM audit") == [("dr.ada", "login")]

    # the reviewer identity comes from the login
    at.button(key="wl_next").click().run()
    pid = at.session_state["prediction_id"]
    at.radio(key=f"verdict_{pid}").set_value("uncertain")
    at.button(key=f"save_{pid}").click().run()
    assert at.success and not at.exception
    assert _rows(at.db, "SELECT reviewer, verdict FROM reviews") == [("dr.ada", "uncertain")]

    # idle timeout logs the session out
    at.session_state["viewer_last_seen"] = time.time() - 16 * 60
    at.run()
    assert at.warning and "logged out" in at.warning[0].value
    assert not at.dataframe and [t.label for t in at.text_input] == ["User name", "Password"]
    assert [a for (a,) in _rows(at.db, "SELECT action FROM audit ORDER BY audit_id")][-1] == "logout"


def test_worklist_filters_open_case_and_review(app, world):
    at = app()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == world["n_predictions"]
    assert list(table["probability"]) == sorted(table["probability"], reverse=True)
    at.multiselect(key="wl_status").set_value(["agreed"]).run()
    assert at.dataframe[0].value.empty
    at.multiselect(key="wl_status").set_value(["unreviewed"]).run()
    top = int(at.dataframe[0].value["prediction_id"].iloc[0])

    at.button(key="wl_next").click().run()  # one click to the highest-scoring unreviewed case
    assert not at.exception, at.exception
    assert at.session_state["prediction_id"] == top
    assert len(at.image) >= 3  # axial, coronal, sagittal (+ similar-case thumbnails)
    text = _texts(at)
    assert "Slice" in text and "world (x, y, z)" in text and "version 1.2.0" in text
    assert "similar cases were malignant" in text
    assert _rows(at.db, "SELECT action, series_uid IS NOT NULL FROM audit") == [("open", 1)]

    z0 = at.slider(key=f"slice_{top}").value
    at.button(key="slice_down").click().run()
    assert at.slider(key=f"slice_{top}").value == z0 + 1
    at.button(key="win_3").click().run()
    assert at.session_state["viewer_window"] == (2000.0, 500.0)

    form_radio = at.radio(key=f"verdict_{top}")
    form_radio.set_value("agree")
    at.button(key=f"save_{top}").click().run()
    assert at.error and "name" in at.error[0].value  # no login: a name is required
    assert _rows(at.db, "SELECT COUNT(*) FROM reviews") == [(0,)]
    at.sidebar.text_input(key="reviewer_name").input("Dr Who")
    at.radio(key=f"verdict_{top}").set_value("agree")
    at.text_area(key=f"note_{top}").input("round, smooth")
    at.button(key=f"save_{top}").click().run()
    at.radio(key=f"verdict_{top}").set_value("disagree")
    at.button(key=f"save_{top}").click().run()
    rows = _rows(at.db, "SELECT prediction_id, reviewer, verdict, note, model_version, bundle_sha256 FROM reviews ORDER BY review_id")
    assert [(r[0], r[1], r[2]) for r in rows] == [(top, "Dr Who", "agree"), (top, "Dr Who", "disagree")]
    assert rows[0][3] == "round, smooth" and rows[0][4] == "1.2.0" and len(rows[0][5]) == 64
    hist = [d.value for d in at.dataframe if "verdict" in d.value.columns]
    assert hist and list(hist[0]["verdict"]) == ["agree", "disagree"]  # history kept and shown

    at.button(key="back").click().run()
    at.sidebar.radio(key="page").set_value("Audit trail").run()
    assert at.success and "Hash chain intact" in at.success[0].value
