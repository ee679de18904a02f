"""`medsuite audit verify|anchor|init --db DB`: check and anchor the tamper-evident audit trail.

``verify`` exit codes: 0 intact (chain, every review and the anchored head check); 1 tampering detected;
2 consistent but not vouched for by an anchor (no anchor, rows after it, or its signature not checked);
3 usage error (database, anchor or key file unusable). docs/guarantees.md (section 4) says what is and is not
detected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Check and anchor the tamper-evident audit trail of a scoring database.",
                  no_args_is_help=True)

EXIT_INTACT, EXIT_TAMPERED, EXIT_UNANCHORED, EXIT_USAGE = 0, 1, 2, 3

DbOpt = Annotated[Path, typer.Option("--db", help="The scoring database (medsuite.db).")]
AnchorOpt = Annotated[Path | None, typer.Option(
    "--anchor", help="Anchor file to check against (default: the one the database's writers use).")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key", help="HMAC key file that signs the anchor (default: the database's configured key, if any).")]


def _open(db: Path, *, readonly: bool = False):  # noqa: ANN202 - sqlite3.Connection, imported lazily
    from medsuite.records import store

    try:
        return store.open_readonly(db) if readonly else store.connect(db, create=False)
    except store.StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _key(path: Path | None) -> bytes | None:
    from medsuite.records.audit import AnchorError, load_key

    if path is None:
        return None
    try:
        return load_key(path)
    except AnchorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _report(report, quiet: bool = False) -> None:  # noqa: ANN001
    typer.echo(report.summary)
    if quiet:
        return
    for p in report.problems:
        typer.echo(f"  problem: {p}")
    for n in report.notes:
        typer.echo(f"  note: {n}")


@app.command("verify")
def verify(db: DbOpt, anchor: AnchorOpt = None, key: KeyOpt = None) -> None:
    """Check the hash chain, every review against its audit row, and the head against the anchor."""
    from contextlib import closing

    from medsuite.records.audit import verify_records

    if anchor is not None and not anchor.is_file():
        typer.echo(f"error: {anchor}: anchor file not found", err=True)
        raise typer.Exit(EXIT_USAGE)
    secret = _key(key)
    with closing(_open(db, readonly=True)) as conn:  # looking never changes the evidence (no upgrade, no writes)
        report = verify_records(conn, anchor=anchor, key=secret)
    _report(report)
    if anchor is None or key is None:
        typer.echo("  (settings not given on the command line were read from the database itself; pass --anchor "
                   "and --key for a check that does not trust it)")
    raise typer.Exit({"intact": EXIT_INTACT, "tampered": EXIT_TAMPERED}.get(report.status, EXIT_UNANCHORED))


def _refuse_if_tampered(conn) -> None:  # noqa: ANN001
    """Anchoring vouches for the trail: never over one that the current anchor (or the chain) says was altered."""
    from medsuite.records.audit import verify_records

    report = verify_records(conn)
    if report.status == "tampered":
        _report(report)
        typer.echo("error: refusing to anchor a tampered audit trail (if you have checked it and trust it as it is, "
                   "move the anchor file away and run this again)", err=True)
        raise typer.Exit(EXIT_TAMPERED)


@app.command("anchor")
def anchor_now(db: DbOpt, anchor: AnchorOpt = None, key: KeyOpt = None) -> None:
    """Write the current head to the anchor, after checking that nothing was tampered with (vouches for rows
    written after the last anchor; --anchor writes a copy elsewhere, e.g. on another host)."""
    from contextlib import closing

    from medsuite.records.audit import anchor_settings, load_key, write_anchor

    secret = _key(key)
    with closing(_open(db)) as conn:
        _refuse_if_tampered(conn)
        path, key_file = anchor_settings(conn)
        if secret is None and key_file is not None and anchor is None:
            secret = load_key(key_file)
        written = write_anchor(conn, anchor or path, key=secret)
    typer.echo(f"anchored audit row {written['audit_id']} ({written['hash'][:16]}…) in {anchor or path}"
               f"{' (signed)' if 'hmac' in written else ''}")


@app.command("init")
def init(
    db: DbOpt,
    anchor: Annotated[Path | None, typer.Option(
        "--anchor", help="Where writers keep the anchor (default: DB.anchor.json beside the database).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Sign anchors with this HMAC key file.")] = None,
    new_key: Annotated[bool, typer.Option("--new-key", help="Create the --key file (32 random bytes, mode 600).")] = False,
) -> None:
    """Set where this database's anchor is kept and which key signs it, then anchor the current head."""
    from contextlib import closing

    from medsuite.records.audit import (
        AnchorError,
        configure_anchor,
        new_key_file,
        update_anchor,
    )

    if new_key:
        if key is None:
            typer.echo("error: --new-key needs --key FILE (where to create it)", err=True)
            raise typer.Exit(EXIT_USAGE)
        try:
            new_key_file(key)
        except AnchorError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
    _key(key)
    with closing(_open(db)) as conn:
        _refuse_if_tampered(conn)
        configure_anchor(conn, anchor, key)
        path = update_anchor(conn, start=True)
    if path is None:
        typer.echo("error: the anchor could not be written (see the warning above)", err=True)
        raise typer.Exit(EXIT_USAGE)
    typer.echo(f"anchor: {path}{' (signed with ' + str(key) + ')' if key else ' (unsigned)'}")
