"""Review records: the scoring database (SQLite), clinicians' reviews, logins and the hash-chained audit trail.

A layer of its own beside the pipelines: batch scoring writes predictions into the store, the viewer reads them
and appends reviews, and both record what they did in the audit trail.
"""
