"""`medsuite view --db DIR/medsuite.db`: start the clinician viewer (Streamlit) on this computer.

Binds to 127.0.0.1 unless ``--address`` says otherwise; any other address needs ``--auth-users FILE`` or
``--oidc``. ``--add-user NAME`` creates or updates an account in the users file and exits.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

APP = Path(__file__).resolve().parents[1] / "viewer" / "app.py"


def streamlit_argv(db: Path, *, address: str, port: int, bundle: Path | None, auth_users: Path | None, oidc: bool,
                   idle_minutes: float, cache: Path | None) -> list[str]:
    """The ``python -m streamlit run`` command line for these options."""
    argv = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--theme.base", "dark",
            "--", "--db", str(db), "--idle-minutes", str(idle_minutes)]
    if bundle:
        argv += ["--bundle", str(bundle)]
    if auth_users:
        argv += ["--auth-users", str(auth_users)]
    if oidc:
        argv.append("--oidc")
    if cache:
        argv += ["--cache", str(cache)]
    return argv


def command(
    db: Annotated[Path | None, typer.Option("--db", help="Scoring database written by `medsuite score` (DIR/medsuite.db).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Model bundle (default: the one each run recorded).")] = None,
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8501,
    address: Annotated[str, typer.Option("--address", help="Address to listen on; non-loopback needs authentication.")] = "127.0.0.1",
    auth_users: Annotated[Path | None, typer.Option("--auth-users", help="Local users file (JSON, salted scrypt hashes).")] = None,
    oidc: Annotated[bool, typer.Option("--oidc", help="Log in through the OIDC provider in .streamlit/secrets.toml [auth].")] = False,
    idle_minutes: Annotated[float, typer.Option("--idle-minutes", help="Log a session out after this idle time.")] = 15.0,
    cache: Annotated[Path | None, typer.Option("--cache", help="Volume cache folder (default: next to the database).")] = None,
    add_user: Annotated[str | None, typer.Option("--add-user", help="Create/update NAME in --auth-users (asks for the password) and exit.")] = None,
) -> None:
    """Start the clinician viewer: worklist, case view, why, similar cases, reviews and audit trail."""
    from medsuite.records import access, store

    if add_user is not None:
        if auth_users is None:
            raise typer.BadParameter("--add-user needs --auth-users FILE (the users file to write)")
        password = os.environ.get("MEDSUITE_NEW_PASSWORD") or getpass.getpass(f"Password for {add_user}: ")
        try:
            access.set_password(auth_users, add_user, password)
        except access.UsersError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"user {add_user} saved in {auth_users}")
        return
    if db is None:
        raise typer.BadParameter("give the scoring database with --db DIR/medsuite.db")
    if oidc and auth_users:
        raise typer.BadParameter("choose one of --oidc and --auth-users")
    try:
        access.check_binding(address, auth_configured=bool(oidc or auth_users))
        store.connect(db, create=False).close()
        if auth_users:
            access.load_users(auth_users)
    except (access.UsersError, store.StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not APP.is_file():
        typer.echo(f"error: the viewer app is not installed at {APP}", err=True)
        raise typer.Exit(2)
    host = f"[{address}]" if ":" in address else address
    typer.echo(f"medsuite viewer: http://{host}:{port}  (Ctrl+C stops it)", err=True)
    argv = streamlit_argv(db, address=address, port=port, bundle=bundle, auth_users=auth_users, oidc=oidc,
                          idle_minutes=idle_minutes, cache=cache)
    raise typer.Exit(run_viewer(argv))


def run_viewer(argv: list[str]) -> int:
    """Run the Streamlit server as a child that ends with this process; returns its exit status (Ctrl+C,
    which reaches both processes, is the normal way to stop it: 0)."""
    import functools
    import signal

    from medsuite.io.workers import parent_death_signal

    # In the viewer's process, before Streamlit starts: the kernel sends it SIGTERM when `medsuite view` ends in
    # any way (SIGTERM, kill -9), so that no server is left listening without its parent.
    preexec = functools.partial(parent_death_signal, signal.SIGTERM) if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(argv, preexec_fn=preexec)  # noqa: PLW1509 - no threads yet
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        return 0
