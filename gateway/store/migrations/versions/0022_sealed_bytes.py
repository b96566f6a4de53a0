"""Sealed values as bytes: every sealed Text and JSON column becomes LargeBinary (BLOB, bytea).

A sealed value was kept in those columns in its text form, ``hgs:`` and base64: a third bigger
than its bytes, and encoding and decoding it was most of what sealing cost the normalise stage
beyond the cipher itself. From here on every sealed column holds the sealed bytes
(``gateway.store.sealed``). The values are converted in place:

- ``hgs:`` text (or a JSON string of it) whose base64 gives a version-1 sealed value becomes
  those bytes;
- a value in clear (a database an older release wrote, not sealed yet: ``db upgrade`` seals it
  after the migrations) becomes a zero byte followed by its text as it was (UTF-8; the JSON
  document's text in a JSON column), which no sealed value starts with;
- anything else (``hgs:`` that is not base64 of a sealed value: damaged) keeps its bytes, so
  that it is still refused as damaged, never read as clear.

The downgrade converts each back to the form the older code reads.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

#: The sealed-value version byte, and the mark of a value in clear.
SEALED = b"\x01"
CLEAR = b"\x00"
PREFIX = b"hgs:"
CHUNK = 500

#: table -> (primary key, {column: ("text" | "json", nullable)}): the sealed Text and JSON
#: columns as 0021 left them (the LargeBinary ones, ``raw``, already hold bytes).
COLUMNS: dict[str, tuple[str, dict[str, tuple[str, bool]]]] = {
    "submissions": ("id", {
        "mail_from": ("text", True), "helo": ("text", True), "peer_ip": ("text", True),
        "message_id": ("text", True), "parse_error": ("text", True),
        "subject": ("text", True), "report_text": ("text", True),
        "attachments": ("json", True), "flags": ("json", True)}),
    "cases": ("id", {"url": ("text", True), "canonical_url": ("text", True),
                     "locate_error": ("text", True)}),
    "hosting_evidence": ("id", {
        "host": ("text", False), "ips": ("json", False), "records": ("json", False),
        "addresses": ("json", False), "databases": ("json", False), "error": ("text", True)}),
    "case_reports": ("id", {"written_as": ("text", True), "url": ("text", True)}),
    "partner_referrals": ("id", {"document": ("json", False)}),
    "users": ("id", {"totp_secret": ("text", False)}),
    "assessments": ("id", {"note": ("text", True)}),
    "routing_changes": ("id", {"facts": ("json", False)}),
    "audit_log": ("seq", {"details": ("json", False)}),
    "routing_decisions": ("id", {"facts": ("json", False), "explanation": ("text", False)}),
    "referrals": ("id", {"error": ("text", True)}),
    "referral_outcomes": ("id", {"note": ("text", True)}),
    "replies": ("id", {
        "mail_from": ("text", True), "message_id": ("text", True), "detail": ("text", True),
        "document": ("json", True), "handled_note": ("text", True)}),
    "outbox": ("id", {"last_error": ("text", True)}),
    "outbox_attempts": ("id", {"detail": ("text", True)}),
}


# --- one value -------------------------------------------------------------------------------


def _unarmored(text: bytes) -> bytes | None:
    """The sealed bytes of ``hgs:`` text, or None when it is not the text of a sealed value."""
    if not text.startswith(PREFIX):
        return None
    try:
        sealed = binascii.a2b_base64(text[len(PREFIX):], strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return sealed if sealed.startswith(SEALED) else None


def to_bytes(kind: str, old: bytes) -> bytes:
    """A value of a ``kind`` column as 0022 stores it, from the UTF-8 of its old text form."""
    if kind == "json":
        try:
            document = json.loads(old)
        except ValueError:
            return old  # not JSON: damaged, kept so that it stays refused
        if not isinstance(document, str) or not document.startswith(PREFIX.decode()):
            return CLEAR + old
        armored = document.encode()
    else:
        if not old.startswith(PREFIX):
            return CLEAR + old
        armored = old
    sealed = _unarmored(armored)
    return old if sealed is None else sealed


def to_text(kind: str, new: bytes) -> bytes:
    """The UTF-8 of the text form 0021 reads of a value 0022 stored (``to_bytes`` undone)."""
    if new.startswith(CLEAR):
        return new[len(CLEAR):]
    if new.startswith(SEALED):
        armored = PREFIX + binascii.b2a_base64(new, newline=False)
        return json.dumps(armored.decode()).encode() if kind == "json" else armored
    # Damaged: given back as it came when 0021 refuses it as damaged too (``hgs:`` text that
    # is not a sealed value), else in the text form of its bytes, which 0021 refuses as well:
    # never as something 0021 would take for a value in clear.
    if kind == "json":
        try:
            document = json.loads(new)
        except ValueError:
            document = None
        if isinstance(document, str) and document.startswith(PREFIX.decode()):
            return new
    elif new.startswith(PREFIX):
        return new
    armored = PREFIX + binascii.b2a_base64(new, newline=False)
    return json.dumps(armored.decode()).encode() if kind == "json" else armored


# --- the rows --------------------------------------------------------------------------------


def _rows(table: sa.TableClause, key: str, names: list[str]
          ) -> Iterator[list[sa.Row[tuple[object, ...]]]]:
    """The rows' keys and columns, in chunks in key order (read before each chunk is written)."""
    bind = op.get_bind()
    primary = table.c[key]
    query = sa.select(primary, *(table.c[name] for name in names)).order_by(primary).limit(CHUNK)
    after: object = None
    while True:
        rows = list(bind.execute(query if after is None else query.where(primary > after)))
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _as_bytes(value: str | bytes | memoryview) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _rewrite(table: str, key: str, kinds: dict[str, str], *, up: bool, as_text: bool) -> None:
    """Each value of ``kinds``'s columns converted (``to_bytes`` up, ``to_text`` down); down,
    stored as text (``as_text``: SQLite, whose column is then re-declared) or bytes."""
    names = list(kinds)
    clause = sa.table(table, sa.column(key), *(sa.column(name) for name in names))
    statement = (sa.update(clause).where(clause.c[key] == sa.bindparam("k"))
                 .values({name: sa.bindparam(f"v_{name}") for name in names}))
    for rows in _rows(clause, key, names):
        params = []
        for row in rows:
            values: dict[str, object] = {"k": row[0]}
            value: Any
            for name, value in zip(names, row[1:], strict=True):
                if value is None:
                    values[f"v_{name}"] = None
                elif up:
                    values[f"v_{name}"] = to_bytes(kinds[name], _as_bytes(value))
                else:
                    old = to_text(kinds[name], _as_bytes(value))
                    values[f"v_{name}"] = old.decode("utf-8", "surrogatepass") if as_text else old
            params.append(values)
        op.get_bind().execute(statement, params)


# --- the columns -----------------------------------------------------------------------------


def _old_type(kind: str) -> sa.types.TypeEngine[Any]:
    return sa.JSON() if kind == "json" else sa.Text()


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, (key, columns) in COLUMNS.items():
        if postgresql:
            for name, (kind, nullable) in columns.items():
                old = f"{name}::text" if kind == "json" else name
                op.alter_column(table, name, type_=sa.LargeBinary(),
                                existing_type=_old_type(kind), existing_nullable=nullable,
                                postgresql_using=f"convert_to({old}, 'UTF8')")
        else:  # SQLite keeps the text in the re-declared column: the rewrite makes it bytes
            with op.batch_alter_table(table) as batch:
                for name, (kind, nullable) in columns.items():
                    batch.alter_column(name, type_=sa.LargeBinary(),
                                       existing_type=_old_type(kind),
                                       existing_nullable=nullable)
        _rewrite(table, key, {name: kind for name, (kind, _) in columns.items()},
                 up=True, as_text=False)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, (key, columns) in COLUMNS.items():
        _rewrite(table, key, {name: kind for name, (kind, _) in columns.items()},
                 up=False, as_text=not postgresql)
        if postgresql:
            for name, (kind, nullable) in columns.items():
                new = f"convert_from({name}, 'UTF8')"
                op.alter_column(table, name, type_=_old_type(kind),
                                existing_type=sa.LargeBinary(), existing_nullable=nullable,
                                postgresql_using=f"{new}::json" if kind == "json" else new)
        else:
            with op.batch_alter_table(table) as batch:
                for name, (kind, nullable) in columns.items():
                    batch.alter_column(name, type_=_old_type(kind),
                                       existing_type=sa.LargeBinary(),
                                       existing_nullable=nullable)
