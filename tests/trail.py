"""The audit trail as tests read it: its details are sealed at rest, so rows read with a raw
SELECT (which must include ``seq``, the record the details are sealed for) are opened here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.sealed import OpenedRow, open_row, sealer_of
from gateway.store.tables import audit_log


def opened(conn: AsyncConnection | Connection, rows: Iterable[Any]) -> list[OpenedRow]:
    """Each audit row with its details open."""
    sealer = sealer_of(conn)
    return [open_row(sealer, audit_log, row, id_key="seq") for row in rows]
