"""Local accounts (salted scrypt), the loopback-only rule without authentication, and log-in throttling."""

from __future__ import annotations

import json

import pytest

from medsuite.records import access, store


def test_users_file_salted_hashes(tmp_path):
    path = tmp_path / "users.json"
    access.set_password(path, "alice", "correct horse")
    access.set_password(path, "bob", "correct horse")
    raw = json.loads(path.read_text())["users"]
    assert "correct horse" not in path.read_text()
    assert raw["alice"]["salt"] != raw["bob"]["salt"] and raw["alice"]["hash"] != raw["bob"]["hash"]
    users = access.load_users(path)
    assert access.verify_password(users, "alice", "correct horse")
    assert not access.verify_password(users, "alice", "wrong horse")
    assert not access.verify_password(users, "carol", "correct horse")
    assert (path.stat().st_mode & 0o077) == 0
    with pytest.raises(access.UsersError, match="too short"):
        access.set_password(path, "alice", "short")
    with pytest.raises(access.UsersError, match="user name"):
        access.set_password(path, "../x", "long enough pw")
    (tmp_path / "bad.json").write_text('{"users": {"x": {"hash": "00"}}}')
    with pytest.raises(access.UsersError, match="bad.json: user 'x'"):
        access.load_users(tmp_path / "bad.json")
    with pytest.raises(access.UsersError, match="not found"):
        access.load_users(tmp_path / "missing.json")


def test_binding_rule():
    for ok in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        access.check_binding(ok, auth_configured=False)
    for bad in ("0.0.0.0", "192.168.1.4", "::", ""):
        with pytest.raises(access.UsersError, match="without authentication"):
            access.check_binding(bad, auth_configured=False)
    access.check_binding("0.0.0.0", auth_configured=True)


def test_login_throttle_locks_a_name_then_frees_it(tmp_path):
    conn = store.connect(tmp_path / "m.db")
    t = 1_000_000.0
    for i in range(access.LOCK_AFTER - 1):
        assert access.login_wait_s(conn, "alice", "10.0.0.1", now=t + i) == 0
        access.record_login_failure(conn, "alice", "10.0.0.1", now=t + i)
    assert access.login_wait_s(conn, "alice", "10.0.0.1", now=t + 10) == 0  # 4 failures: still allowed
    access.record_login_failure(conn, "Alice ", "10.0.0.2", now=t + 10)  # same name (case, spaces), another client
    wait = access.login_wait_s(conn, "alice", "10.0.0.3", now=t + 11)
    assert wait == pytest.approx(access.LOCK_S - 1)  # locked from the 5th failure, whatever the client
    assert access.login_wait_s(conn, "bob", "10.0.0.3", now=t + 11) == 0  # other names are not affected
    assert access.login_wait_s(conn, "alice", "10.0.0.3", now=t + 10 + access.LOCK_S + 1) == 0  # lock over
    # failures spread wider than the window do not add up
    for i in range(access.LOCK_AFTER):
        access.record_login_failure(conn, "carol", "c", now=t + i * (access.LOCK_WINDOW_S / 2 + 1))
    assert access.login_wait_s(conn, "carol", "c2", now=t + 5 * access.LOCK_WINDOW_S) == 0
    # a success clears the name's failures
    for i in range(access.LOCK_AFTER - 1):
        access.record_login_failure(conn, "dave", "d", now=t + i)
    access.clear_login_failures(conn, "dave")
    access.record_login_failure(conn, "dave", "d", now=t + 5)
    assert access.login_wait_s(conn, "dave", "d", now=t + 6) == 0
    # the name is stored hashed (a password typed as user name never lands in the database)
    names = [r[0] for r in conn.execute("SELECT name_key FROM login_failures")]
    assert "alice" not in names and access.name_key("alice") in names
    conn.close()


def test_login_throttle_locks_a_client_trying_many_names(tmp_path):
    conn = store.connect(tmp_path / "m.db")
    t = 2_000_000.0
    for i in range(access.CLIENT_LOCK_AFTER):
        access.record_login_failure(conn, f"user{i}", "203.0.113.9", now=t + i)
    assert access.login_wait_s(conn, "someone", "203.0.113.9", now=t + 30) > 0
    assert access.login_wait_s(conn, "someone", "203.0.113.10", now=t + 30) == 0
    conn.close()
