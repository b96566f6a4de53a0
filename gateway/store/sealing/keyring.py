"""The keyring: the data keys that seal values, and the lookup key that hashes them.

One JSON file, readable by its owner only (mode 0600; anything more is refused, whatever the
content), written atomically. Under systemd it may instead be a credential the unit decrypts
for the service (``LoadCredentialEncrypted=NAME:FILE``), read from ``$CREDENTIALS_DIRECTORY``::

    {"hotline_gateway_keyring": 1,
     "note": "...",
     "data_keys": [{"id": "3fa2c9e1", "state": "current", "created_at": "...", "key": "<b64>"}],
     "lookup_keys": [{"version": 1, "state": "current", "created_at": "...", "key": "<b64>"}]}

A data key is ``current`` (seals new values; exactly one is), ``retiring`` (opens what it
sealed while rotation moves that to the current key) or ``retired`` (nothing in the database
uses it any more; kept so that older backups still open). Key ids are random, so a keyring
from another install names keys this database never saw instead of failing later on a tag.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gateway.store.errors import Damaged
from gateway.store.files import sync_folder
from gateway.store.times import iso

FORMAT_VERSION = 1
KEY_BYTES = 32  # AES-256; HMAC-SHA256 keys of the hash's block-size-safe length
KEY_ID_BYTES = 4
#: The largest keyring file read (a keyring is a few hundred bytes per key).
MAX_FILE_BYTES = 1 << 20
NOTE = ("hotline-gateway data keys. Back this file up apart from the database and its "
        "backups: without it the sealed reports, URLs and reporters cannot be read by anyone.")

DataKeyState = Literal["current", "retiring", "retired"]
LookupKeyState = Literal["current", "retired"]
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


class KeyringError(Damaged):
    """The keyring cannot be used: missing, unreadable, readable by others, or malformed."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """An AES-256-GCM key; ``id`` (4 random bytes) is written into every ciphertext it seals."""

    id: bytes
    secret: bytes = field(repr=False)
    created_at: datetime
    state: DataKeyState

    @property
    def name(self) -> str:
        """The id as operators see it: eight hex digits."""
        return self.id.hex()


@dataclass(frozen=True, slots=True)
class LookupKey:
    """An HMAC-SHA256 key for lookup hashes; ``version`` prefixes every hash it makes."""

    version: int
    secret: bytes = field(repr=False)
    created_at: datetime
    state: LookupKeyState


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every key, checked on construction: one current data key, one current lookup key."""

    data_keys: tuple[DataKey, ...]
    lookup_keys: tuple[LookupKey, ...]
    #: Where it was read from, for messages ("" when made in memory).
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "keyring"
        ids = [k.id for k in self.data_keys]
        if len(set(ids)) != len(ids):
            raise KeyringError(f"{where}: two data keys have the same id")
        if sum(k.state == "current" for k in self.data_keys) != 1:
            raise KeyringError(f"{where}: exactly one data key must be current")
        versions = [k.version for k in self.lookup_keys]
        if len(set(versions)) != len(versions):
            raise KeyringError(f"{where}: two lookup keys have the same version")
        if sum(k.state == "current" for k in self.lookup_keys) != 1:
            raise KeyringError(f"{where}: exactly one lookup key must be current")
        for secret in (*(k.secret for k in self.data_keys), *(k.secret for k in self.lookup_keys)):
            if len(secret) != KEY_BYTES:
                raise KeyringError(f"{where}: a key is not {KEY_BYTES} bytes long")

    @property
    def current(self) -> DataKey:
        return next(k for k in self.data_keys if k.state == "current")

    @property
    def current_lookup(self) -> LookupKey:
        return next(k for k in self.lookup_keys if k.state == "current")

    def data_key(self, key_id: bytes) -> DataKey | None:
        return next((k for k in self.data_keys if k.id == key_id), None)

    @classmethod
    def generate(cls, now: datetime) -> Keyring:
        """A new keyring: one current data key and one current lookup key, from the OS's
        random source."""
        return cls(
            (DataKey(secrets.token_bytes(KEY_ID_BYTES), secrets.token_bytes(KEY_BYTES), now,
                     "current"),),
            (LookupKey(1, secrets.token_bytes(KEY_BYTES), now, "current"),),
        )

    def with_new_data_key(self, now: datetime) -> tuple[Keyring, DataKey]:
        """This keyring with a new current data key; the one before becomes ``retiring``."""
        taken = {k.id for k in self.data_keys}
        key_id = secrets.token_bytes(KEY_ID_BYTES)
        while key_id in taken:
            key_id = secrets.token_bytes(KEY_ID_BYTES)
        new = DataKey(key_id, secrets.token_bytes(KEY_BYTES), now, "current")
        older = tuple(replace(k, state="retiring") if k.state == "current" else k
                      for k in self.data_keys)
        return replace(self, data_keys=(*older, new)), new

    def to_json(self) -> bytes:
        document = {
            "hotline_gateway_keyring": FORMAT_VERSION,
            "note": NOTE,
            "data_keys": [
                {"id": k.name, "state": k.state, "created_at": iso(k.created_at),
                 "key": base64.b64encode(k.secret).decode("ascii")}
                for k in self.data_keys
            ],
            "lookup_keys": [
                {"version": k.version, "state": k.state, "created_at": iso(k.created_at),
                 "key": base64.b64encode(k.secret).decode("ascii")}
                for k in self.lookup_keys
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Keyring:
        """Parse a keyring file's bytes; anything unexpected is a ``KeyringError`` naming
        ``source`` and the member (never the key material)."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise KeyringError(f"{source}: not a keyring (not JSON: {exc})") from None
        if not isinstance(document, dict) or \
                document.get("hotline_gateway_keyring") != FORMAT_VERSION:
            raise KeyringError(f"{source}: not a hotline-gateway keyring of format "
                               f"{FORMAT_VERSION}")
        _only(document, {"hotline_gateway_keyring", "note", "data_keys", "lookup_keys"}, source)
        data_keys = tuple(
            DataKey(_key_id(entry, f"{source}: data_keys[{i}]"),
                    _secret(entry, f"{source}: data_keys[{i}]"),
                    _when(entry, f"{source}: data_keys[{i}]"),
                    _state(entry, ("current", "retiring", "retired"),
                           f"{source}: data_keys[{i}]"))
            for i, entry in enumerate(_entries(document, "data_keys", source,
                                               {"id", "state", "created_at", "key"}))
        )
        lookup_keys = tuple(
            LookupKey(_version(entry, f"{source}: lookup_keys[{i}]"),
                      _secret(entry, f"{source}: lookup_keys[{i}]"),
                      _when(entry, f"{source}: lookup_keys[{i}]"),
                      _state(entry, ("current", "retired"), f"{source}: lookup_keys[{i}]"))
            for i, entry in enumerate(_entries(document, "lookup_keys", source,
                                               {"version", "state", "created_at", "key"}))
        )
        return cls(data_keys, lookup_keys, source)


# --- parsing members -----------------------------------------------------------------------


def _only(document: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise KeyringError(f"{where}: unknown member {unknown[0]!r}")


def _entries(document: Mapping[str, Any], name: str, source: str,
             members: set[str]) -> list[Mapping[str, Any]]:
    entries = document.get(name)
    if not isinstance(entries, list) or not entries:
        raise KeyringError(f"{source}: {name} is not a non-empty list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyringError(f"{source}: {name}[{i}] is not an object")
        _only(entry, members, f"{source}: {name}[{i}]")
    return entries


def _key_id(entry: Mapping[str, Any], where: str) -> bytes:
    value = entry.get("id")
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{8}", value):
        raise KeyringError(f"{where}: id is not eight lowercase hex digits")
    return bytes.fromhex(value)


def _version(entry: Mapping[str, Any], where: str) -> int:
    value = entry.get("version")
    if type(value) is not int or not 1 <= value <= 999:
        raise KeyringError(f"{where}: version is not a number from 1 to 999")
    return value


def _secret(entry: Mapping[str, Any], where: str) -> bytes:
    value = entry.get("key")
    try:
        secret = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise KeyringError(f"{where}: key is not {KEY_BYTES} bytes in base64")
    return secret


def _when(entry: Mapping[str, Any], where: str) -> datetime:
    value = entry.get("created_at")
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise KeyringError(f"{where}: created_at is not a time with its zone")
    return when


def _state(entry: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> Any:
    """The entry's state, one of ``allowed`` (the caller's Literal type)."""
    value = entry.get("state")
    if value not in allowed:
        raise KeyringError(f"{where}: state is not one of {', '.join(allowed)}")
    return value


# --- files -----------------------------------------------------------------------------------


def keyring_path(keyring: Path | None, credential: str | None,
                 environ: Mapping[str, str]) -> Path:
    """Where to read the keyring: the systemd credential when the service manager passed
    credentials (``$CREDENTIALS_DIRECTORY``), else the configured file. Admin commands run
    outside the unit (``sudo -u``) get no credentials and read the file if one is named."""
    if credential:
        if not _CREDENTIAL_NAME.fullmatch(credential) or credential in (".", ".."):
            raise KeyringError(f"data.credential: {credential!r} is not a credential name")
        folder = environ.get("CREDENTIALS_DIRECTORY")
        if folder:
            return Path(folder) / credential
        if keyring is None:
            raise KeyringError(
                f"data.credential = {credential!r}, but no credentials were passed "
                "($CREDENTIALS_DIRECTORY is not set): run under the unit, or with systemd-run "
                f"-p LoadCredentialEncrypted={credential}:FILE, or set data.keyring")
    if keyring is None:
        raise KeyringError("no keyring configured: set data.keyring (a file) or "
                           "data.credential (a systemd credential)")
    return keyring


def load_keyring(path: Path) -> Keyring:
    """Read a keyring file. Refused, with a message that says what to do, when it is missing,
    not a regular file, readable or writable by group or others, or malformed."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the start.
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyringError(f"{path}: no keyring there (restore it from its backup; a new "
                           "install makes one with `data-keys create`)") from None
    except OSError as exc:
        raise KeyringError(f"{path}: the keyring cannot be opened: "
                           f"{exc.strerror or exc}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"{path}: the keyring is not a regular file")
        if info.st_mode & 0o077:
            raise KeyringError(
                f"{path}: the keyring is open to group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); refusing to use keys others may have "
                f"read. Make it the owner's only (chmod 600 {path}) and consider them exposed")
        if info.st_size > MAX_FILE_BYTES:
            raise KeyringError(f"{path}: too large for a keyring")
        data = os.read(descriptor, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyringError(f"{path}: the keyring cannot be read: "
                           f"{exc.strerror or exc}") from None
    finally:
        os.close(descriptor)
    return Keyring.from_json(data, str(path))


def create_keyring(path: Path, now: datetime | None = None) -> Keyring:
    """Write a new keyring to ``path`` (mode 0600, atomically); refused if it exists, since
    replacing a keyring would make everything sealed with it unreadable."""
    keyring = Keyring.generate(now or datetime.now(UTC))
    temporary = _write_temporary(path, keyring.to_json())
    try:
        os.link(temporary, path)  # atomic, and fails if the name is taken
    except FileExistsError:
        raise KeyringError(f"{path}: a keyring exists there already; it is kept") from None
    finally:
        temporary.unlink(missing_ok=True)
    sync_folder(path.parent)
    return replace(keyring, source=str(path))


def add_data_key(path: Path, now: datetime | None = None) -> DataKey:
    """Add a new current data key to the keyring at ``path`` (the previous one becomes
    ``retiring``); the file is replaced atomically, under a lock so that two rotations at
    once cannot lose a key."""
    when = now or datetime.now(UTC)
    updated = _change(path, lambda keyring: keyring.with_new_data_key(when)[0])
    return updated.current


def retire_data_key(path: Path, key_id: bytes) -> DataKey:
    """Mark the ``retiring`` data key ``key_id`` of the keyring at ``path`` as ``retired``
    (the caller has found that nothing in the database uses it). The key stays in the file, so
    that backups made before still open; the file keeps its mode 0600 and its owner."""

    def retire(keyring: Keyring) -> Keyring:
        key = keyring.data_key(key_id)
        if key is None:
            raise KeyringError(f"{path}: no data key {key_id.hex()}")
        if key.state != "retiring":
            raise KeyringError(f"{path}: data key {key_id.hex()} is {key.state}, not retiring")
        return replace(keyring, data_keys=tuple(
            replace(k, state="retired") if k.id == key_id else k for k in keyring.data_keys))

    updated = _change(path, retire)
    retired = updated.data_key(key_id)
    assert retired is not None
    return retired


def _change(path: Path, change: Callable[[Keyring], Keyring]) -> Keyring:
    """Replace the keyring at ``path`` by ``change`` of it, atomically and under a lock, with
    the file's owner kept (a rotation run as root must leave the service user's file its
    own)."""
    while True:
        with _locked(path) as (locked_inode, owner):
            keyring = load_keyring(path)
            if os.stat(path).st_ino != locked_inode:
                continue  # replaced between open and lock: lock the new file
            updated = change(keyring)
            temporary = _write_temporary(path, updated.to_json(), owner=owner)
            try:
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            sync_folder(path.parent)
            return replace(updated, source=str(path))


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyringError(f"{path}: no keyring there to add a key to") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        info = os.fstat(descriptor)
        yield info.st_ino, (info.st_uid, info.st_gid)
    finally:
        os.close(descriptor)


def _write_temporary(path: Path, data: bytes, *, owner: tuple[int, int] | None = None) -> Path:
    """``data`` in a new file beside ``path``, mode 0600 from its creation (and owned by
    ``owner``, uid and gid, when given), synced."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            os.fchown(descriptor, *owner)
        os.fchmod(descriptor, 0o600)  # exactly: an odd umask may have taken the owner's bits
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary

