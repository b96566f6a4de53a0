"""A case's URLs at rest: the case key that makes equal URLs one case, and the door to the
sealed URLs of ``cases`` (``url``, ``canonical_url``, ``locate_error``) and ``case_reports``
(``written_as``, ``url``).

The case key (``cases.url_key``, unique) is an HMAC of the canonical URL under the keyring's
lookup key (``Sealer.lookup_key``, purpose ``case``), so equal URLs still meet in one case, on
the unique index, while a database alone does not let anyone test a guessed URL. A lookup key
rotation adds a new version: ``case_lookup_keys`` gives the URL's key under each, current first,
so filing finds a case still keyed under an older one (``gateway.store.lifecycle``).

Readers that serve many cases (the queue, lists, the locate stage) open with
``open_case_marked``/``open_report_marked``: a value that does not open leaves that column
None and says why (naming the record, never the value), and the others are served. Readers of
one case (``get_case``, routing, a referral) use ``open_case_urls``, which raises
``SealBroken``: that case is refused, naming the record.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Table

from gateway.store.sealed import SEALED, OpenedRow, open_row, open_value, seal_values
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import case_reports, cases

#: The lookup purpose of case keys: no other kind of value hashes to one.
CASE_PURPOSE = "case"


def case_lookup_key(sealer: Sealer, canonical: str) -> str:
    """The key that makes every report of ``canonical`` one case (under the current lookup
    key)."""
    return sealer.lookup_key(CASE_PURPOSE, canonical)


def case_lookup_keys(sealer: Sealer, canonical: str) -> list[str]:
    """``canonical``'s case key under every lookup key, current first (a case filed before a
    rotation of the lookup key is still keyed under an older one until it is re-keyed)."""
    if len(sealer.keyring.lookup_keys) == 1:  # no rotation: the hot path of filing
        return [sealer.lookup_key(CASE_PURPOSE, canonical)]
    return sealer.lookup_keys(CASE_PURPOSE, canonical)


def seal_case_urls(sealer: Sealer, case_id: uuid.UUID, *, url: str | None,
                   canonical_url: str | None) -> dict[str, Any]:
    """``url`` and ``canonical_url`` as case ``case_id`` stores them."""
    return seal_values(sealer, cases, case_id, {"url": url, "canonical_url": canonical_url})


def seal_report_urls(sealer: Sealer, report_id: uuid.UUID, *, written_as: str | None,
                     url: str | None) -> dict[str, Any]:
    """How a reporter wrote a URL, and the URL it means, as case report ``report_id`` stores
    them. Most reporters write the URL as it is meant (no brackets, no ``hxxp``, no wrapper);
    then ``written_as`` is stored as NULL and read as the URL (``written_as_of``): one value
    sealed per report instead of two, on the intake's busiest insert."""
    if written_as is not None and written_as == url:
        written_as = None
    return seal_values(sealer, case_reports, report_id, {"written_as": written_as, "url": url})


def written_as_of(stored: Any, opened: Any) -> str | None:
    """How the reporter wrote the URL of a ``case_reports`` row, from the row as stored and
    the same row opened (``written_as`` and ``url`` each): the written form where one was
    stored, else the URL itself (``seal_report_urls``). None for a report without a URL, one
    anonymised, or one whose written form does not open (marked damaged by the reader)."""
    written: str | None = opened.url if stored.written_as is None else opened.written_as
    return written


def open_case_urls(sealer: Sealer, row: Any) -> OpenedRow:
    """A row of ``cases`` (all of it or some columns, with ``id``) with its sealed columns
    opened; ``SealBroken`` naming the record if one does not open."""
    return open_row(sealer, cases, row)


def _open_marked(sealer: Sealer, table: Table, row: Any) -> tuple[OpenedRow, list[str]]:
    values = dict(row._mapping if hasattr(row, "_mapping") else row)
    record = values["id"]
    broken: list[str] = []
    for name in SEALED[table.name].keys() & values.keys():
        try:
            values[name] = open_value(sealer, table.c[name], record, values[name])
        except SealBroken as exc:
            values[name] = None
            broken.append(str(exc))
    return OpenedRow(values), sorted(broken)


def open_case_marked(sealer: Sealer, row: Any) -> tuple[OpenedRow, list[str]]:
    """``open_case_urls`` for a reader of many cases: a column that does not open is None, and
    the list says which and why (naming the record, never the value)."""
    return _open_marked(sealer, cases, row)


def open_report_marked(sealer: Sealer, row: Any) -> tuple[OpenedRow, list[str]]:
    """A row of ``case_reports`` (with ``id``) opened as ``open_case_marked`` opens a case."""
    return _open_marked(sealer, case_reports, row)
