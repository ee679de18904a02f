"""Patient identifiers out of outputs: keyed pseudonyms for ids and paths, sealed locations, scrubbed text.

Everything medsuite writes (score tables, the scoring database, bundles and their case index, reports)
goes through a `Pseudonymizer` unless the user asks for identifiers (``--include-phi``):

- an **id that contains a patient identifier** (the demo's nodule id ``DEMO-0001-n1`` holds the patient id
  ``DEMO-0001``) becomes ``id-<12 hex>``; a patient id becomes ``pid-<12 hex>``; other ids (``n0a``, series
  UIDs) are kept: they are the user's own keys;
- a **path** (a file or folder under the inputs: folder and file names often hold patient names) becomes
  ``path-<12 hex>`` wherever it appears in a message, and the database's ``errors.source`` holds that
  pseudonym;
- a **location the viewer must open** (``series.source``) is *sealed*: encrypted (AES-GCM) with a key
  derived from the same secret, so only whoever holds the key can open it.

The pseudonyms are ``HMAC-SHA256(secret, kind + value)``: stable (the same id gets the same pseudonym in
every output, run and machine that uses the same secret, so the outputs stay joinable) and meaningless
without the secret. The secret is a random 32-byte key file, created readable by its owner only, at
``$MEDSUITE_PHI_KEY`` or else ``<user config dir>/medsuite/phi.key``; share outputs without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["KEY_ENV", "PhiKeyError", "Pseudonymizer", "default_key_file", "load_or_create_key"]

KEY_ENV = "MEDSUITE_PHI_KEY"
SEAL_PREFIX = "phi1:"
MIN_ID = 3  # shorter patient ids are not searched for inside other text (they would match everywhere)
MIN_NAME = 4  # nor shorter folder or file names
_DELIMS = " \t\n'\"()[]{}<>,;=|"


class PhiKeyError(ValueError):
    """The pseudonymisation key cannot be read or created, or a sealed value cannot be opened."""


def default_key_file() -> Path:
    """``$MEDSUITE_PHI_KEY``, else ``phi.key`` in the user's medsuite config folder."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("medsuite")) / "phi.key"


def load_or_create_key(path: str | os.PathLike[str] | None = None) -> bytes:
    """The secret in ``path`` (default `default_key_file`), created (32 random bytes, hex, mode 600) when
    missing. Creation is atomic (a complete file is linked into place), so concurrent processes agree."""
    path = Path(path) if path is not None else default_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if another process created it first: then theirs is used
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise PhiKeyError(f"{path}: cannot read the pseudonymisation key ({exc.strerror or exc})") from None
    if len(key) < 16:
        raise PhiKeyError(f"{path}: the pseudonymisation key is too short ({len(key)} bytes; at least 16)")
    return key


class Pseudonymizer:
    """Keyed pseudonyms for one run's patient ids and paths (see the module docstring).

    ``patient_ids``: the patient identifiers of the data (tables' ``patient_id``, DICOM PatientID);
    ``paths``: the inputs and every file read (their folders are registered too, up to the inputs).
    """

    def __init__(self, key: bytes, patient_ids: Iterable[Any] = (), paths: Iterable[str | os.PathLike[str]] = (),
                 roots: Iterable[str | os.PathLike[str]] = ()) -> None:
        self._key = bytes(key)
        self._seal_key = hmac.new(self._key, b"medsuite-phi-seal", hashlib.sha256).digest()
        self.patient_ids = sorted({str(p) for p in patient_ids if _real(p) and len(str(p)) >= MIN_ID},
                                  key=len, reverse=True)
        self._ids_lower = [p.lower() for p in self.patient_ids]
        self._id_re = (re.compile("|".join(re.escape(p) for p in self.patient_ids), re.IGNORECASE)
                       if self.patient_ids else None)
        self._paths: set[str] = set()
        self._roots: set[str] = set()
        self._names: set[str] = set()
        self._firsts: set[str] = set()
        self._longest = 0
        self.add_paths(roots, roots=True)
        self.add_paths(paths)

    @classmethod
    def from_key_file(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Pseudonymizer:
        """With the secret of `load_or_create_key` (``path`` or the default key file)."""
        return cls(load_or_create_key(path), **kwargs)

    @classmethod
    def pseudonymize_table(cls, frame: Any, *, key_file: str | os.PathLike[str] | None = None) -> Any:
        """A copy of a nodule or series table whose ``patient_id`` and the ids that contain one are pseudonymised
        (what training and evaluation use, so their outputs match `medsuite score`'s)."""
        ids = frame["patient_id"] if "patient_id" in getattr(frame, "columns", ()) else ()
        return cls.from_key_file(key_file, patient_ids=ids).table(frame)

    # ---------------------------------------------------------------------------------- registration
    def add_paths(self, paths: Iterable[str | os.PathLike[str]], *, roots: bool = False,
                  siblings: bool = False) -> None:
        """Register paths; for a path under a registered root, its folders up to the root are registered too.
        ``roots``: the inputs themselves (their own names are replaced only as part of a path: an input
        folder named ``dicom`` must not turn every word "dicom" of a message into a pseudonym).
        ``siblings``: also every entry of the paths' folders (a message may name a file that no list held,
        such as a broken file left out of its series)."""
        listed: set[str] = set()
        for p in paths:
            if p is None or not str(p):
                continue
            for form in {str(p).rstrip("/") or str(p), os.path.abspath(str(p))}:
                self._register(form, name=not roots)
                if roots:
                    self._roots.add(form)
                    continue
                chain, parent = [], os.path.dirname(form)
                while parent and parent != os.path.dirname(parent) and parent not in self._roots:
                    chain.append(parent)
                    parent = os.path.dirname(parent)
                if parent in self._roots:  # folders between the path and its root
                    for folder in chain:
                        self._register(folder)
                folder = os.path.dirname(form)
                if siblings and folder not in listed:
                    listed.add(folder)
                    try:
                        entries = os.listdir(folder)
                    except OSError:
                        entries = []
                    for entry in entries:
                        self._register(os.path.join(folder, entry))

    def _register(self, path: str, *, name: bool = True) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        self._firsts.add(path[0])
        self._longest = max(self._longest, len(path))
        base = os.path.basename(path)
        if name and len(base) >= MIN_NAME:
            self._names.add(base)

    # ---------------------------------------------------------------------------------- pseudonyms
    def pseudonym(self, value: Any, kind: str = "id") -> str:
        """``<kind>-<12 hex>``: HMAC-SHA256 of ``kind`` and ``value`` under the secret."""
        digest = hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
        return f"{kind}-{digest[:12]}"

    def patient(self, value: Any) -> str:
        """A patient id's pseudonym (``pid-...``); empty or missing stays as it is."""
        return self.pseudonym(value, "pid") if _real(value) else value

    def contains_patient(self, value: Any) -> bool:
        text = str(value).lower()
        return any(p in text for p in self._ids_lower)

    def id(self, value: Any) -> Any:
        """An item id: its pseudonym (``id-...``) if it contains a patient id, else unchanged."""
        return self.pseudonym(value, "id") if _real(value) and self.contains_patient(value) else value

    def path(self, value: Any) -> str | None:
        """A path's pseudonym (``path-...``) (None stays None)."""
        if value is None or not str(value):
            return value
        return self.pseudonym(os.path.abspath(str(value)), "path")

    def table(self, frame: Any, columns: Mapping[str, str] | None = None) -> Any:
        """A copy of a DataFrame with ``patient_id`` pseudonymised and every id column (default ``nodule_id``)
        pseudonymised where it contains a patient id."""
        columns = dict(columns or {"patient_id": "patient", "nodule_id": "id"})
        out = frame.copy()
        for col, kind in columns.items():
            if col in out.columns:
                fn = self.patient if kind == "patient" else self.id
                out[col] = out[col].map(lambda v, f=fn: f(v) if _real(v) else v)
        return out

    # ---------------------------------------------------------------------------------- text
    def text(self, message: Any) -> Any:
        """A message with every registered path (and file or folder name) replaced by its pseudonym and every
        patient id by its ``pid-`` pseudonym. None stays None."""
        if message is None:
            return None
        msg = str(message)
        if self._paths:
            msg = self._replace_paths(msg)
            msg = self._replace_names(msg)
        if self._id_re is not None:
            by_lower = {p.lower(): p for p in self.patient_ids}
            msg = self._id_re.sub(lambda m: f"<{self.patient(by_lower.get(m.group(0).lower(), m.group(0)))}>", msg)
        return msg

    def _replace_paths(self, msg: str) -> str:
        out, i, n = [], 0, len(msg)
        while i < n:
            if msg[i] in self._firsts and (i == 0 or msg[i - 1] in _DELIMS or msg[i - 1] == ":"):
                best = 0
                for j in range(min(n, i + self._longest), i, -1):
                    if (j == n or msg[j] in _DELIMS or msg[j] in ":/\\") and msg[i:j].rstrip("/") in self._paths:
                        best = j
                        break
                if best:
                    out.append(f"<{self.path(msg[i:best].rstrip('/'))}>")
                    i = best
                    continue
            out.append(msg[i])
            i += 1
        return "".join(out)

    def _replace_names(self, msg: str) -> str:
        for name in sorted((nm for nm in self._names if nm in msg), key=len, reverse=True):
            pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(name) + r"(?![A-Za-z0-9])")
            msg = pattern.sub(f"<{self.pseudonym(name, 'name')}>", msg)
        return msg

    # ---------------------------------------------------------------------------------- sealing
    def seal(self, value: Any) -> Any:
        """``phi1:<token>``: ``value`` encrypted (AES-GCM) for whoever holds the secret (None stays None)."""
        if value is None or not str(value):
            return value
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        token = nonce + AESGCM(self._seal_key).encrypt(nonce, str(value).encode("utf-8"), b"medsuite")
        return SEAL_PREFIX + base64.urlsafe_b64encode(token).decode("ascii")

    def unseal(self, value: Any) -> Any:
        """The plain value of `seal` (values that were not sealed are returned as they are)."""
        if value is None or not str(value).startswith(SEAL_PREFIX):
            return value
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            token = base64.urlsafe_b64decode(str(value)[len(SEAL_PREFIX):].encode("ascii"))
            return AESGCM(self._seal_key).decrypt(token[:12], token[12:], b"medsuite").decode("utf-8")
        except (InvalidTag, ValueError) as exc:
            raise PhiKeyError("a sealed location cannot be opened with this key (written with another "
                              f"pseudonymisation key, or altered): {type(exc).__name__}") from None


def _real(value: Any) -> bool:
    if value is None:
        return False
    text = str(value)
    return bool(text) and text.lower() not in ("nan", "none", "<na>")
