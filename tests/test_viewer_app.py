"""The Streamlit viewer's page logic through streamlit.testing (AppTest): binding rule, login gate with lockout and
audit, worklist, the reading view's arguments (the scan sent once, re-sent on request), the URL (case, slice,
window), leases for concurrent reviewers, missing images, interpolated slices, reviews and flags.

What only a browser shows (WebGL drawing, keys and wheel handled client-side) is in tests/test_browser_viewer.py.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import viewer_support as V
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

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

    def make(*extra: str, address: str = "127.0.0.1", query: dict[str, str] | None = None, run: bool = True) -> AppTest:
        st_config.set_option("server.address", address)
        monkeypatch.setattr(sys, "argv", ["app.py", "--db", str(db), "--cache", str(tmp_path / "cache"), *extra])
        at = AppTest.from_file(APP, default_timeout=180)
        at.db, at.cache = db, tmp_path / "cache"
        for k, v in (query or {}).items():
            at.query_params[k] = v
        return at.run() if run else at

    yield make
    st_config.set_option("server.address", "127.0.0.1")


def _rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def _texts(at: AppTest) -> str:
    parts = ([m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
             + [e.value for e in at.error] + [w.value for w in at.warning])
    return "\n".join(str(p) for p in parts)


def _view(at: AppTest) -> tuple[dict, dict[str, int]]:
    """The reading view's spec and the byte payloads sent with this run (slot -> size)."""
    comps = at.get("component_instance")
    assert len(comps) == 1, "exactly one reading view on a case page"
    proto = comps[0].proto
    assert proto.component_name.endswith("reading_view")
    spec = json.loads(json.loads(proto.json_args)["spec"])
    return spec, {a.key: len(a.bytes) for a in proto.special_args if a.WhichOneof("value") == "bytes" and a.bytes}


def _report(at: AppTest, spec: dict, seq: int, *, have: bool = True, state: dict | None = None, need: list | None = None) -> None:
    """What the page sends back after loading / reading (the component's value)."""
    held = {"volume": spec["volume"]["id"], **{k: v["id"] for k, v in spec["overlays"].items()}} if have else {}
    at.session_state["reading_view"] = {"seq": seq, "have": held, "need": need or [], "case": spec["case"]["id"],
                                        "state": state}


def test_refuses_non_loopback_without_auth(app):
    at = app(address="0.0.0.0")
    assert at.error and "without authentication" in at.error[0].value
    assert not at.dataframe and not at.button and not at.radio


def _login(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    return at.button[0].click().run()


def test_login_gate_lockout_and_audit(app, tmp_path):
    from medsuite.records.access import LOCK_AFTER, name_key, set_password

    users = tmp_path / "users.json"
    set_password(users, "dr.ada", "long password")
    set_password(users, "dr.bob", "other password")
    at = app("--auth-users", str(users), address="0.0.0.0")  # auth configured: any address allowed
    assert not at.exception and not at.error
    assert not at.dataframe and not at.radio and not at.selectbox and not at.get("component_instance")
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    _login(at, "dr.ada", "wrong password")
    assert at.error and "wrong password" in at.error[0].value and not at.dataframe
    _login(at, "mallory-typed-her-password", "x")
    audit = _rows(at.db, "SELECT actor, action, detail FROM audit ORDER BY audit_id")
    assert [(a, b) for a, b, _ in audit] == [("dr.ada", "login_failed"), ("(unknown user)", "login_failed")]
    assert "mallory" not in audit[1][2] and name_key("mallory-typed-her-password")[:12] in audit[1][2]

    for _ in range(LOCK_AFTER - 1):  # dr.ada reaches the limit ...
        _login(at, "dr.ada", "guess")
    _login(at, "dr.ada", "long password")  # ... and then even the right password is refused
    assert at.error and "Too many failed log-ins" in at.error[0].value and not at.dataframe
    actions = [a for (a,) in _rows(at.db, "SELECT action FROM audit WHERE actor = 'dr.ada' ORDER BY audit_id")]
    assert actions.count("login_failed") == LOCK_AFTER and "login_locked" in actions and actions[-1] == "login_refused"
    assert "login" not in actions

    _login(at, "dr.bob", "other password")  # another account is not affected
    assert not at.exception and at.dataframe and "Logged in as **dr.bob**" in _texts(at)
    assert _rows(at.db, "SELECT actor, action FROM audit ORDER BY audit_id DESC LIMIT 1") == [("dr.bob", "login")]

    # the reviewer identity comes from the login
    at.button(key="wl_next").click().run()
    pid = at.session_state["prediction_id"]
    at.radio(key=f"verdict_{pid}").set_value("uncertain")
    at.button(key=f"save_{pid}").click().run()
    assert at.success and not at.exception
    assert _rows(at.db, "SELECT reviewer, verdict FROM reviews") == [("dr.bob", "uncertain")]

    # idle timeout logs the session out
    at.session_state["viewer_last_seen"] = time.time() - 16 * 60
    at.run()
    assert at.warning and "logged out" in at.warning[0].value
    assert not at.dataframe and [t.label for t in at.text_input] == ["User name", "Password"]
    assert [a for (a,) in _rows(at.db, "SELECT action FROM audit ORDER BY audit_id")][-1] == "logout"


def test_open_case_sends_the_scan_once_and_the_url_follows(app, world):
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
    assert at.session_state["prediction_id"] == top and at.query_params["case"] == str(top)
    spec, sent = _view(at)
    assert set(sent) == {"volume", "nodules"}  # the scan and the nodule rings travel with the first render
    assert spec["case"]["id"] == str(top) and [p["key"] for p in spec["presets"]] == ["1", "2", "3", "4", "5"]
    assert spec["presets"][0] == {"key": "1", "name": "lung", "width": 1500.0, "level": -600.0}
    pred = _rows(at.db, "SELECT x_mm, y_mm, z_mm, nodule_id, series_uid FROM predictions WHERE prediction_id = ?", (top,))[0]
    from medsuite.io.cache import VolumeCache
    from medsuite.viewer.resources import VOLUME_PARAMS

    vol = VolumeCache(at.cache).get(pred[4], VOLUME_PARAMS, lambda: pytest.fail("the viewer cached the volume"))
    nod = vol.world_to_index(np.array(pred[:3]))
    assert spec["init"]["zyx"] == [int(v) for v in np.rint(nod)]  # the view opens at the nodule
    current = [n for n in spec["nodules"] if n["current"]]
    assert len(current) == 1 and pred[3] in current[0]["name"]
    assert "version 1.2.0" in _texts(at) and "similar cases were malignant" in _texts(at)
    assert not at.get("imgs")  # no st.image: nothing of the scan is served by URL
    assert _rows(at.db, "SELECT action, series_uid IS NOT NULL FROM audit") == [("open", 1)]

    # the page reports what it holds and where the reader is: no bytes any more, the URL follows
    _report(at, spec, 1, state={"zyx": [3, 10, 11], "window": [350.0, 50.0], "layout": "axial"})
    at.run()
    assert not at.exception
    spec2, sent2 = _view(at)
    assert sent2 == {} and spec2["init"] == spec["init"]  # same start, nothing re-sent
    assert {k: at.query_params[k] for k in ("case", "z", "y", "x", "w", "l", "layout")} == {
        "case": str(top), "z": "3", "y": "10", "x": "11", "w": "350", "l": "50", "layout": "axial"}
    # a re-created frame asks again: the scan is sent again, once
    _report(at, spec, 2, have=False, need=[spec["volume"]["id"], spec["overlays"]["nodules"]["id"]])
    at.run()
    assert _view(at)[1] == {"volume": sent["volume"], "nodules": sent["nodules"]}
    at.run()
    assert _view(at)[1] == {}
    assert _rows(at.db, "SELECT COUNT(*) FROM audit WHERE action = 'open'") == [(1,)]  # re-runs are not openings

    at.radio(key=f"verdict_{top}").set_value("agree")
    at.button(key=f"save_{top}").click().run()
    assert at.error and "name" in at.error[0].value  # no login: a name is required
    assert _rows(at.db, "SELECT COUNT(*) FROM reviews") == [(0,)]
    at.text_input(key="reviewer_name").input("Dr Who")
    at.radio(key=f"verdict_{top}").set_value("agree")
    at.text_area(key=f"note_{top}").input("round, smooth")
    at.button(key=f"save_{top}").click().run()
    at.radio(key=f"verdict_{top}").set_value("disagree")
    at.button(key=f"save_{top}").click().run()
    rows = _rows(at.db, "SELECT prediction_id, reviewer, verdict, note, model_version, bundle_sha256 FROM reviews ORDER BY review_id")
    assert [(r[0], r[1], r[2]) for r in rows] == [(top, "Dr Who", "agree"), (top, "Dr Who", "disagree")]
    assert rows[0][3] == "round, smooth" and rows[0][4] == "1.2.0" and len(rows[0][5]) == 64
    hist = [d.value for d in at.dataframe if "verdict" in d.value.columns]
    assert hist and list(hist[0]["verdict"]) == ["agree", "disagree"]

    at.button(key="back").click().run()
    assert "case" not in at.query_params and at.dataframe  # back on the worklist
    at.radio(key="page").set_value("Audit trail").run()
    assert at.success and "Hash chain intact" in at.success[0].value
    assert "medsuite.db.anchor.json" in at.success[0].value and str(at.db.parent) not in at.success[0].value


def test_url_restores_case_slice_and_window(app):
    at = app(query={"case": "2", "z": "5", "y": "6", "x": "7", "w": "400", "l": "40", "layout": "coronal"})
    assert not at.exception
    assert at.session_state["prediction_id"] == 2
    spec, sent = _view(at)
    assert spec["init"]["zyx"] == [5, 6, 7] and spec["init"]["window"] == [400.0, 40.0]
    assert spec["init"]["layout"] == "coronal" and "volume" in sent
    # nonsense is ignored (the view starts at the nodule), an unknown case is refused with a clear message
    at = app(query={"case": "2", "z": "-3", "y": "x", "x": "1e9", "w": "-5", "l": "0", "layout": "<script>"})
    spec, _ = _view(at)
    assert spec["init"]["window"] is None and spec["init"]["layout"] == "3up"
    assert all(0 <= v < n for v, n in zip(spec["init"]["zyx"], spec["volume"]["shape"], strict=True))
    at = app(query={"case": "99999"})
    assert at.error and "99999" in at.error[0].value and not at.get("component_instance")


def test_two_reviewers_get_different_cases(app):
    ann, ben = app(), app()
    ann.button(key="wl_next").click().run()
    ben.button(key="wl_next").click().run()
    a, b = ann.session_state["prediction_id"], ben.session_state["prediction_id"]
    assert a != b
    ben.button(key="case_next").click().run()  # ben moves on: never to ann's case
    c = ben.session_state["prediction_id"]
    assert c not in (a, b)
    # opening a case someone holds says so (and does not take it from them)
    ben.session_state["prediction_id"] = a
    ben.run()
    assert any("anonymous** is reviewing this case" in w.value for w in ben.warning)
    ben.session_state["prediction_id"] = c
    ben.run()
    # ann's worklist shows who else is reviewing what
    ann.button(key="back").click().run()
    table = ann.dataframe[0].value.set_index("prediction_id")
    assert table.loc[c, "in_review_by"] == "anonymous"
    assert table.loc[b, "in_review_by"] == "" and table.loc[a, "in_review_by"] == ""  # left: free again


def test_missing_images_clear_message_flag_and_audit(app):
    at = app(run=False)
    with sqlite3.connect(at.db) as conn:
        conn.execute("UPDATE series SET source = '/data/PATIENT-SMITH-JOHN/ct' WHERE series_uid = "
                     "(SELECT series_uid FROM predictions WHERE prediction_id = 1)")
    at.query_params["case"] = "1"
    at.run()
    assert not at.exception
    text = _texts(at)
    assert "cannot be shown" in text and "missing" in text
    assert "/data" not in text and "SMITH" not in text  # no server path, no name in it
    assert not at.get("component_instance")
    actions = _rows(at.db, "SELECT action, detail FROM audit")
    assert [a for a, _ in actions] == ["open_failed"] and "SMITH" not in actions[0][1]
    at.text_input(key="reviewer_name").input("Dr Flag")
    at.selectbox(key="flag_reason_1").set_value("images missing or unreadable")
    at.button(key="flag_save_1").click().run()
    assert any("Flagged" in s.value for s in at.success)
    assert _rows(at.db, "SELECT actor, action FROM audit ORDER BY audit_id DESC LIMIT 1") == [("Dr Flag", "flag")]
    at.button(key="back").click().run()
    table = at.dataframe[0].value.set_index("prediction_id")
    assert table.loc[1, "flagged"] == 1


def test_interpolated_slices_are_marked(app, world):
    """A volume whose reader interpolated slices 3-4: the page warns, and the marks travel as an overlay."""
    import scoring_support as S

    from medsuite.io.cache import VolumeCache
    from medsuite.viewer.resources import VOLUME_PARAMS

    at = app(run=False)
    uid = _rows(at.db, "SELECT series_uid FROM predictions WHERE prediction_id = 1")[0][0]
    vol = S.make_volume(world["cohort"]["good"].index(uid))
    marked = vol.with_array(np.asarray(vol.array), meta={"interpolated_slices": [3, 4], "resampled": "2 slices filled"})
    VolumeCache(at.cache).get(uid, VOLUME_PARAMS, lambda: marked)
    at.query_params["case"] = "1"
    at.run()
    assert not at.exception
    spec, sent = _view(at)
    assert spec["interpolated"] == [3, 4] and "marks" in spec["overlays"] and "marks" in sent
    assert any("2 of 12 slices were interpolated" in w.value and "axial slices 4–5" in w.value for w in at.warning)


def test_score_interval_threshold_words_and_similar_cases(app):
    at = app(query={"case": "1"})
    assert not at.exception
    text = _texts(at)
    # the score: the bundle's predictor re-run over flips and 1 mm shifts, labelled for what it is
    m = [x for x in text.splitlines() if "Stability range" in x]
    assert m and "4 test-time flips" in m[0] and "7 positions" in m[0] and "Not a confidence interval" in m[0]
    low, high = (float(v) for v in m[0].split("**")[1].split(" – "))
    p = _rows(at.db, "SELECT probability FROM predictions WHERE prediction_id = 1")[0][0]
    assert low <= p + 1e-6 and high >= p - 1e-6 and not any("Recomputed now" in w.value for w in at.warning)
    # the threshold in words, from the bundle's predictor settings and stored test metrics
    assert "chosen on the validation split (40 cases) to balance sensitivity and specificity" in text
    assert "sensitivity 0.80 and specificity 0.75" in text and "test split (50 cases): sensitivity **0.70**" in text
    # similar cases: k of n with the base rate; cards with id, diameter, label; inline pictures only
    assert "of 10 similar cases were malignant — base rate: 67% of all reference cases are" in text
    cards = "".join(h.proto.body for h in at.get("html"))
    assert "this case" in cards and cards.count("data:image/png;base64,") == 11 and "src=\"/media" not in cards
    assert "ref0" in cards and " mm" in cards and "closer than" in cards
    spec, _ = _view(at)
    scan_id = spec["volume"]["id"]
    # a click opens the neighbour (its stored input patch) in the reading view; back returns to the case
    opens = [b for b in at.button if (b.key or "").startswith("sim_open_")]
    assert len(opens) == 10
    opens[0].click().run()
    assert not at.exception
    ref, sent = _view(at)
    assert ref["volume"]["id"] != scan_id and ref["window"] == {"width": 255.0, "level": 127.5} and "volume" in sent
    assert ref["volume"]["shape"] == [3, 16, 16] and any("Similar case #1" in i.value for i in at.info)
    at.button(key="ref_back").click().run()
    assert _view(at)[0]["volume"]["id"] == scan_id


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_background_warmer_thread_runs_at_lower_priority():
    """Preparing the next case must not compete with the pages being read: the warmer's thread is niced, the
    server's other threads are not."""
    import os
    import threading

    from medsuite.viewer import resources

    seen: dict[str, int] = {}

    def warmer_thread() -> None:
        tid = threading.get_native_id()
        seen["before"] = os.getpriority(os.PRIO_PROCESS, tid)
        resources._lower_priority()
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=warmer_thread)
    t.start()
    t.join()
    assert seen["after"] == min(19, seen["before"] + resources.WARMER_NICE)  # relative to the server's own nice value
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before  # this thread is untouched
