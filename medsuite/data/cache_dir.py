"""Where decoded volumes are cached when no cache folder is given: never next to the scans.

A read-only PACS export or a shared archive must not be written to, so the default is the user's cache
folder (``platformdirs.user_cache_dir('medsuite')/volumes``, e.g. ``~/.cache/medsuite/volumes`` on Linux),
or ``$MEDSUITE_CACHE_DIR`` when set. Pipelines that have a run folder pass ``<run>/cache`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "default_cache_dir"]

CACHE_ENV = "MEDSUITE_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$MEDSUITE_CACHE_DIR`` if set, else ``<user cache folder>/medsuite/volumes`` (not created here)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medsuite", appauthor=False)) / "volumes"
