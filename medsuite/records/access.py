"""Who may use the viewer: local accounts (a JSON users file of salted scrypt hashes) and the binding rule.

Format: ``{"format": 1, "users": {"name": {"salt": hex, "hash": hex, "n": 16384, "r": 8, "p": 1,
"created_at": iso}}}``. Each user has their own random 16-byte salt; verification is constant-time. Writes are
atomic (`medsuite.io.atomic`) and the file is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsuite.io.atomic import atomic_write_json

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8


class UsersError(ValueError):
    """A users file that cannot be read or written, or a bad user name / password."""


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def load_users(path: str | Path) -> dict[str, dict[str, Any]]:
    """The users of ``path`` (name -> entry); a clear error for a missing or malformed file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsersError(f"{path}: users file not found (create it with `medsuite view --add-user NAME --auth-users {path}`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsersError(f"{path}: cannot read the users file ({exc})") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise UsersError(f"{path}: not a medsuite users file (no 'users' object)")
    for name, entry in users.items():
        if not isinstance(entry, dict) or not {"salt", "hash", "n", "r", "p"} <= set(entry):
            raise UsersError(f"{path}: user {name!r} has no salted password hash (salt, hash, n, r, p)")
    return users


def set_password(path: str | Path, name: str, password: str) -> None:
    """Create or update user ``name`` in the users file with a fresh salt; the file is replaced atomically."""
    path = Path(path)
    if not NAME_RE.match(name or ""):
        raise UsersError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    if len(password or "") < MIN_PASSWORD:
        raise UsersError(f"password for {name!r} is too short (at least {MIN_PASSWORD} characters)")
    users = load_users(path) if path.exists() else {}
    salt = secrets.token_bytes(16)
    users[name] = {"salt": salt.hex(), "hash": _hash(password, salt, **SCRYPT).hex(), **SCRYPT,
                   "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_json(path, {"format": 1, "users": users}, indent=1, sort_keys=True, mode=0o600)


def verify_password(users: dict[str, dict[str, Any]], name: str, password: str) -> bool:
    """True when ``name`` exists and ``password`` matches its hash (constant-time compare; unknown users cost
    the same work as known ones)."""
    entry = users.get(name)
    if entry is None:
        _hash(password or "", b"\0" * 16, **SCRYPT)
        return False
    try:
        digest = _hash(password or "", bytes.fromhex(entry["salt"]), int(entry["n"]), int(entry["r"]), int(entry["p"]))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), str(entry["hash"]))


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(address: str) -> bool:
    """True for an address that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    address = (address or "").strip()
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(address: str, *, auth_configured: bool) -> None:
    """Refuse a non-loopback address when no authentication is configured (anyone on the network could read
    and review cases)."""
    if not is_loopback(address) and not auth_configured:
        raise UsersError(
            f"refusing to listen on {address!r} without authentication: the viewer serves patient images. "
            "Configure --auth-users FILE or --oidc, or keep the default loopback address 127.0.0.1."
        )


# ------------------------------------------------------------------------------------------ login throttling
LOCK_AFTER = 5            # failed log-ins of one user name ...
LOCK_WINDOW_S = 15 * 60   # ... within this window lock that name ...
LOCK_S = 15 * 60          # ... for this long (the right password is refused too)
CLIENT_LOCK_AFTER = 20    # failed log-ins from one client address within the window lock that client
_THROTTLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_failures (
    failure_id INTEGER PRIMARY KEY,
    name_key TEXT NOT NULL,
    client TEXT NOT NULL,
    at REAL NOT NULL
)
"""


def name_key(name: str) -> str:
    """The key a user name is throttled under: a hash, so that a password typed into the name field is never
    stored; unknown and known names are treated alike (a lockout does not reveal whether an account exists)."""
    return hashlib.sha256((name or "").strip().lower().encode("utf-8")).hexdigest()[:24]


def login_wait_s(conn: Any, name: str, client: str, *, now: float) -> float:
    """Seconds until ``name`` (or ``client``) may try to log in again; 0 when a try is allowed now."""
    conn.execute(_THROTTLE_SCHEMA)
    since = now - LOCK_WINDOW_S - LOCK_S
    waits = [0.0]
    for column, value, limit in (("name_key", name_key(name), LOCK_AFTER), ("client", client or "?", CLIENT_LOCK_AFTER)):
        times = [float(t) for (t,) in conn.execute(
            f"SELECT at FROM login_failures WHERE {column} = ? AND at > ? ORDER BY at", (value, since))]
        # locked when `limit` failures fall within one window; the lock runs from the last of them
        for i in range(len(times) - limit + 1):
            if times[i + limit - 1] - times[i] <= LOCK_WINDOW_S:
                waits.append(times[i + limit - 1] + LOCK_S - now)
    return max(waits)


def record_login_failure(conn: Any, name: str, client: str, *, now: float) -> None:
    """Remember one failed log-in (hashed name, client address, time); old rows are pruned."""
    conn.execute(_THROTTLE_SCHEMA)
    conn.execute("INSERT INTO login_failures(name_key, client, at) VALUES (?, ?, ?)", (name_key(name), client or "?", now))
    conn.execute("DELETE FROM login_failures WHERE at < ?", (now - 4 * (LOCK_WINDOW_S + LOCK_S),))


def clear_login_failures(conn: Any, name: str) -> None:
    """Forget the failures of ``name`` after a successful log-in."""
    conn.execute(_THROTTLE_SCHEMA)
    conn.execute("DELETE FROM login_failures WHERE name_key = ?", (name_key(name),))
