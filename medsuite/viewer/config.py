"""Viewer options: parsed from the arguments after ``--`` (``streamlit run .../medsuite/viewer/app.py -- --db ...``, as `medsuite view` starts it),
the same options ``medsuite view`` passes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DEFAULT_IDLE_MIN = 15.0


@dataclass(frozen=True)
class ViewerConfig:
    """Where the database and bundle are, how users log in, and where volumes are cached."""

    db: Path
    bundle: Path | None = None
    auth_users: Path | None = None
    oidc: bool = False
    idle_minutes: float = DEFAULT_IDLE_MIN
    cache: Path | None = None

    @property
    def auth_mode(self) -> str:
        """``'oidc'``, ``'local'`` or ``'none'`` (loopback only)."""
        return "oidc" if self.oidc else "local" if self.auth_users else "none"

    @property
    def cache_root(self) -> Path:
        return self.cache or self.db.parent / "viewer-cache"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsuite viewer", description="medsuite clinician viewer")
    p.add_argument("--db", type=Path, required=True, help="scoring database (DIR/medsuite.db)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the run's bundle)")
    p.add_argument("--auth-users", type=Path, default=None, help="local users file (JSON, scrypt hashes)")
    p.add_argument("--oidc", action="store_true", help="log in with the OIDC provider of secrets.toml [auth]")
    p.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MIN, help="log out after this idle time")
    p.add_argument("--cache", type=Path, default=None, help="volume cache folder (default: DB folder/viewer-cache)")
    return p


def parse(argv: list[str]) -> ViewerConfig:
    """Options from ``argv``; a clear error (SystemExit with usage) for a bad one."""
    ns = parser().parse_args(argv)
    if ns.oidc and ns.auth_users:
        parser().error("choose one of --oidc and --auth-users")
    if not ns.idle_minutes > 0:
        parser().error("--idle-minutes must be > 0")
    return ViewerConfig(ns.db, ns.bundle, ns.auth_users, ns.oidc, ns.idle_minutes, ns.cache)
