"""Sealed values: AES-256-GCM bound to their record, and keyed lookup hashes.

A sealed value is, as bytes (33 bytes more than the plaintext)::

    version (1 byte, 0x01) | key id (4 bytes) | nonce (12 random bytes) | ciphertext | tag (16)

Its associated data is the header (version and key id) followed by the context (table, column
and record id: ``SealContext``), so a ciphertext copied into another row or column, or put
under another key id, fails its tag. The database's sealed columns hold these bytes as they
are (``gateway.store.sealed``); the text form, ``hgs:`` and the same bytes in base64, is for
text documents (the keyring check value) and was the form of Text and JSON columns before
migration 0020.

AES-256-GCM rather than ChaCha20-Poly1305: both come from OpenSSL through ``cryptography``, and
both allow about 2**32 random nonces per key; AES-GCM runs in hardware (AES-NI/PCLMULQDQ, ARMv8
crypto extensions) on the servers this runs on (2.5 times ChaCha's speed here: bench/seal.py),
and is the one FIPS 140 and audit checklists name.
Rotation (``data-keys rotate``) keeps each key far below that many values.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import json
import re
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.store.errors import Damaged
from gateway.store.sealing.keyring import KEY_ID_BYTES, DataKey, Keyring
from gateway.store.sealing.nonces import NONCE_BYTES, NONCES

VERSION = 1
_take_nonce = NONCES.take
TAG_BYTES = 16
HEADER_BYTES = 1 + KEY_ID_BYTES
OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
TEXT_PREFIX = "hgs:"

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_CHECK_PLAINTEXT = b"hotline-gateway keyring check"


class SealBroken(Damaged):
    """A sealed value does not open; the message names the record and column, never the
    value. ``context`` is what it was opened as; ``key_id`` the key it names, when known."""

    def __init__(self, context: SealContext | None, reason: str,
                 key_id: str | None = None) -> None:
        where = f"cannot open {context}" if context is not None else "cannot open a value"
        super().__init__(f"{where}: {reason}")
        self.context = context
        self.key_id = key_id


class FormatBroken(SealBroken):
    """Not a sealed value of a format this code knows (truncated, another version, not
    base64)."""


class UnknownKey(SealBroken):
    """Sealed with a key this keyring does not hold."""


class TagMismatch(SealBroken):
    """The tag fails: altered, or copied from another record, column or key."""


class WrongKeyring(Damaged):
    """The keyring is not the one the database was sealed with (its check value says so)."""


class SealContext:
    """Where a sealed value lives: table, column and the record's id. A UUID is the same
    record however it was written (object, hex, upper case), so equal records give equal
    associated data: ``table.column|`` then ``u`` and the UUID's 16 bytes, or ``t`` and the
    id as text (an integer, or another string)."""

    __slots__ = ("_ad", "_record", "column", "table")

    def __init__(self, table: str, column: str, record: uuid.UUID | int | str) -> None:
        prefix = _prefix(table, column)
        if isinstance(record, str):
            text = record
            try:
                record = uuid.UUID(text)
            except ValueError:
                if not text or not text.isprintable() or len(text) > 200:
                    raise ValueError("a record id is printable text of 1 to 200 "
                                     "characters") from None
        if isinstance(record, uuid.UUID):
            ad = prefix + b"u" + record.bytes
        elif isinstance(record, int) and not isinstance(record, bool):
            ad = prefix + b"t" + str(record).encode()
        elif isinstance(record, str):
            ad = prefix + b"t" + record.encode("utf-8", "surrogatepass")
        else:
            raise ValueError(f"a record id is a UUID, an integer or text, not {record!r}")
        self.table = table
        self.column = column
        self._record = record
        self._ad = ad

    @property
    def record(self) -> str:
        """The record's id as messages show it (a UUID in its usual hyphenated form)."""
        return str(self._record)

    def associated_data(self) -> bytes:
        return self._ad

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SealContext) and other._ad == self._ad

    def __hash__(self) -> int:
        return hash(self._ad)

    def __repr__(self) -> str:
        return f"SealContext({self.table!r}, {self.column!r}, {self.record!r})"

    def __str__(self) -> str:
        return f"{self.table}.{self.column} of record {self.record}"


@functools.lru_cache(maxsize=512)
def _prefix(table: str, column: str) -> bytes:
    """``table.column|``, once each pair is checked (the tables have a few dozen columns)."""
    if not _IDENTIFIER.fullmatch(table) or not _IDENTIFIER.fullmatch(column):
        raise ValueError(f"{table}.{column}: not a table and column name")
    return f"{table}.{column}|".encode()


def armor(sealed: bytes) -> str:
    """The text-safe form of a sealed value."""
    return TEXT_PREFIX + binascii.b2a_base64(sealed, newline=False).decode("ascii")


def unarmor(text: str, context: SealContext | None = None) -> bytes:
    """The bytes of a text-form sealed value; ``FormatBroken`` if it is not one."""
    if not text.startswith(TEXT_PREFIX):
        raise FormatBroken(context, f"not sealed text (no {TEXT_PREFIX!r} prefix)")
    try:
        return binascii.a2b_base64(text[len(TEXT_PREFIX):], strict_mode=True)
    except (binascii.Error, ValueError):
        raise FormatBroken(context, "sealed text that is not base64") from None


class Sealer:
    """Seals and opens values with a keyring's keys, and makes lookup hashes.

    Thread-safe: one per process, passed in (and held by whoever needs it); ``reload`` gives
    it a rotated keyring in place, so every holder seals under the new key from then on."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._current = keyring.current
        self._lookup = keyring.current_lookup
        self._ciphers = {key.id: AESGCM(key.secret) for key in keyring.data_keys}
        # The header and cipher of the current key, swapped as one (``seal_for``).
        self._sealing = (_header(keyring.current), self._ciphers[keyring.current.id])

    def reload(self, keyring: Keyring) -> None:
        """Take ``keyring``'s keys in place of this one's (a rotation added a key). The caller
        has checked that it holds every key this one does. The ciphers are replaced first, so
        a seal on another thread that already sees the new current key finds its cipher."""
        self._ciphers = {key.id: AESGCM(key.secret) for key in keyring.data_keys}
        self._keyring = keyring
        self._lookup = keyring.current_lookup
        self._current = keyring.current
        self._sealing = (_header(keyring.current), self._ciphers[keyring.current.id])

    def __repr__(self) -> str:
        return f"Sealer(current key {self._current.name})"

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    # --- sealing --------------------------------------------------------------------------

    def seal(self, context: SealContext, plaintext: bytes | str) -> bytes:
        """``plaintext`` sealed under the current key for ``context``. A ``str`` is sealed as
        UTF-8 (lone surrogates kept, so that any Python string comes back equal)."""
        if isinstance(plaintext, str):
            plaintext = plaintext.encode("utf-8", "surrogatepass")
        return self._seal_with(self._current, context, plaintext)

    def seal_for(self, associated: bytes, plaintext: bytes) -> bytes:
        """``seal`` of bytes for the context whose associated data is ``associated``
        (``context_data``): the door's hot path, a few microseconds less per value."""
        header, cipher = self._sealing
        nonce = _take_nonce()
        return header + nonce + cipher.encrypt(nonce, plaintext, header + associated)

    def _seal_with(self, key: DataKey, context: SealContext, plaintext: bytes) -> bytes:
        header = _header(key)
        nonce = _take_nonce()
        body = self._ciphers[key.id].encrypt(nonce, plaintext,
                                             header + context.associated_data())
        return header + nonce + body

    def seal_text(self, context: SealContext, plaintext: bytes | str) -> str:
        """``seal``, in the text-safe form."""
        return armor(self.seal(context, plaintext))

    def seal_json(self, context: SealContext, value: Any) -> bytes:
        """A JSON value sealed (compact JSON, UTF-8); ``open_json`` gives it back."""
        return self.seal(context, json_plaintext(value))

    # --- opening --------------------------------------------------------------------------

    def open(self, context: SealContext, sealed: bytes | str) -> bytes:
        """The plaintext of ``sealed`` (bytes, or the text form), or ``SealBroken`` naming
        ``context``: never anything else, whatever the input."""
        if isinstance(sealed, str):
            sealed = unarmor(sealed, context)
        sealed = bytes(sealed)
        if len(sealed) < OVERHEAD:
            raise FormatBroken(context, f"too short to be sealed ({len(sealed)} bytes)")
        if sealed[0] != VERSION:
            raise FormatBroken(context, f"unknown format version {sealed[0]}")
        key_id = sealed[1:HEADER_BYTES]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKey(context, f"sealed with key {key_id.hex()}, which this keyring "
                             "does not hold", key_id.hex())
        nonce = sealed[HEADER_BYTES:HEADER_BYTES + NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, sealed[HEADER_BYTES + NONCE_BYTES:],
                                  sealed[:HEADER_BYTES] + context.associated_data())
        except InvalidTag:
            raise TagMismatch(context, f"it fails authentication under key {key_id.hex()} "
                              "(altered, or copied from another record or column)",
                              key_id.hex()) from None

    def open_text(self, context: SealContext, sealed: bytes | str) -> str:
        """``open``, decoded as ``seal`` encoded a ``str``."""
        plaintext = self.open(context, sealed)
        try:
            return plaintext.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise FormatBroken(context, "its plaintext is not text") from None

    def open_json(self, context: SealContext, sealed: bytes | str) -> Any:
        try:
            return json.loads(self.open_text(context, sealed))
        except (json.JSONDecodeError, RecursionError):
            raise FormatBroken(context, "its plaintext is not JSON") from None

    def key_of(self, sealed: bytes | str) -> str:
        """The id of the key a sealed value names (for rotation and status), unopened."""
        raw = unarmor(sealed) if isinstance(sealed, str) else bytes(sealed)
        if len(raw) < OVERHEAD or raw[0] != VERSION:
            raise FormatBroken(None, "not a sealed value")
        return raw[1:HEADER_BYTES].hex()

    # --- lookups --------------------------------------------------------------------------

    def lookup_key(self, purpose: str, value: bytes | str) -> str:
        """An HMAC-SHA256 of ``value`` under the current lookup key, for finding equal values
        without storing them: ``k<version>:<64 hex>`` (at most 69 characters). ``purpose``
        (``case``, ``host``) separates the uses, so equal inputs of two kinds never meet."""
        return _lookup(self._lookup.version, self._lookup.secret, purpose, value)

    def lookup_keys(self, purpose: str, value: bytes | str) -> list[str]:
        """``value``'s hash under every lookup key, current first (for finding rows while a
        rotation of the lookup key is under way)."""
        keys = sorted(self._keyring.lookup_keys, key=lambda k: k.state != "current")
        return [_lookup(k.version, k.secret, purpose, value) for k in keys]

    # --- the check value ------------------------------------------------------------------

    def check_value(self) -> str:
        """A value to keep in the database that tells this keyring from another: a fixed text
        sealed with each data key, and each lookup key's hash of a fixed text. It holds
        nothing secret; ``verify_check_value`` reads it back."""
        data = {key.name: armor(self._seal_with(key, _check_context(key.name),
                                                _CHECK_PLAINTEXT))
                for key in self._keyring.data_keys}
        lookup = {str(key.version): _lookup(key.version, key.secret, "check", _CHECK_PLAINTEXT)
                  for key in self._keyring.lookup_keys}
        return json.dumps({"v": 1, "data": data, "lookup": lookup}, separators=(",", ":"))

    def verify_check_value(self, stored: str) -> None:
        """``WrongKeyring`` unless every key the stored check value names is in this keyring
        and is the same key. Keys added since (a rotation) are not in it and pass."""
        try:
            document = json.loads(stored)
            data, lookup = document["data"], document["lookup"]
            if document["v"] != 1 or not isinstance(data, dict) or not isinstance(lookup, dict):
                raise TypeError
        except (json.JSONDecodeError, TypeError, KeyError):
            raise WrongKeyring("the database's keyring check value is not readable") from None
        problems: list[str] = []
        for name, sealed in sorted(data.items()):
            try:
                key_id = bytes.fromhex(name)
                if not isinstance(sealed, str):
                    raise TypeError
            except (ValueError, TypeError):
                problems.append(f"the check value names a malformed key id {name[:16]!r}")
                continue
            if self._keyring.data_key(key_id) is None:
                problems.append(f"the database uses data key {name}, which this keyring "
                                "does not hold")
                continue
            try:
                self.open(_check_context(name), sealed)
            except SealBroken:
                problems.append(f"data key {name} of this keyring is not the key of that id "
                                "the database was sealed with")
        versions = {str(k.version): k for k in self._keyring.lookup_keys}
        for version, expected in sorted(lookup.items()):
            key = versions.get(version)
            if key is None:
                problems.append(f"the database uses lookup key {version}, which this keyring "
                                "does not hold")
            elif not isinstance(expected, str) or not hmac.compare_digest(
                    expected, _lookup(key.version, key.secret, "check", _CHECK_PLAINTEXT)):
                problems.append(f"lookup key {version} of this keyring is not the one the "
                                "database was made with")
        if problems:
            source = self._keyring.source or "this keyring"
            raise WrongKeyring(f"{source} is not the keyring of this database: "
                               + "; ".join(problems))


def _header(key: DataKey) -> bytes:
    return bytes((VERSION,)) + key.id


def json_plaintext(value: Any) -> bytes:
    """What ``seal_json`` seals of ``value``: compact JSON, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "surrogatepass")


def context_data(table: str, column: str, record: uuid.UUID | int | str) -> bytes:
    """``SealContext(table, column, record).associated_data()``, without the object when the
    record is a UUID (every table's id but the audit trail's)."""
    if type(record) is uuid.UUID:
        return _prefix(table, column) + b"u" + record.bytes
    return SealContext(table, column, record).associated_data()


def _check_context(key_name: str) -> SealContext:
    return SealContext("keyring", "check", key_name)


def _lookup(version: int, secret: bytes, purpose: str, value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    mac = _keyed(secret, purpose).copy()
    mac.update(value)
    return f"k{version}:{mac.hexdigest()}"


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes, purpose: str) -> hmac.HMAC:
    """HMAC-SHA256 under ``secret`` that has taken in ``purpose``'s prefix, copied for each
    value: the key's padding is hashed once per key rather than once per value, as
    ``hmac.digest`` would (28% fewer instructions a lookup). Equal to
    ``hmac.digest(secret, prefix + value, "sha256")``, which the tests check."""
    return hmac.new(secret, _purpose_prefix(purpose), "sha256")


@functools.lru_cache(maxsize=64)
def _purpose_prefix(purpose: str) -> bytes:
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError(f"{purpose!r} is not a lookup purpose")
    return b"hotline-gateway lookup|" + purpose.encode() + b"|"
