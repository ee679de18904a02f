"""Review records: the scoring database (SQLite), clinicians' reviews, logins and the hash-chained audit trail.

A layer of its own beside the pipelines: batch scoring writes predictions into the store, the viewer reads them
and appends reviews, and both record what they did in the audit trail.

The names below are the public API of this layer; they load on first use."""

from typing import TYPE_CHECKING

from medsuite._exports import lazy_exports

_EXPORTS = {
    "connect": "medsuite.records.store",
    "StoreError": "medsuite.records.store",
    "add_review": "medsuite.records.reviews",
    "review_history": "medsuite.records.reviews",
    "worklist": "medsuite.records.reviews",
    "next_unreviewed": "medsuite.records.reviews",
    "verify_audit": "medsuite.records.reviews",
    "audit_rows": "medsuite.records.reviews",
    "ReviewError": "medsuite.records.reviews",
    "VERDICTS": "medsuite.records.reviews",
    "load_users": "medsuite.records.access",
    "set_password": "medsuite.records.access",
    "verify_password": "medsuite.records.access",
    "check_binding": "medsuite.records.access",
    "UsersError": "medsuite.records.access",
}
__all__ = [
    "ReviewError",
    "StoreError",
    "UsersError",
    "VERDICTS",
    "add_review",
    "audit_rows",
    "check_binding",
    "connect",
    "load_users",
    "next_unreviewed",
    "review_history",
    "set_password",
    "verify_audit",
    "verify_password",
    "worklist",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medsuite.records.access import UsersError, check_binding, load_users, set_password, verify_password
    from medsuite.records.reviews import (
        VERDICTS,
        ReviewError,
        add_review,
        audit_rows,
        next_unreviewed,
        review_history,
        verify_audit,
        worklist,
    )
    from medsuite.records.store import StoreError, connect
