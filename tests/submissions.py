"""Reading stored submissions in tests as the gateway reads them: sealed columns opened."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.sealed import OpenedRow, open_row, sealer_of
from gateway.store.tables import submissions


async def opened_submissions(
    where: AsyncEngine | AsyncConnection, *columns: ColumnElement[Any],
    filter_by: ColumnElement[bool] | None = None,
    order_by: ColumnElement[Any] | None = None,
) -> list[OpenedRow]:
    """The ``columns`` of the submissions (all of them when none is named), opened, in
    ``order_by``'s order (the reference's by default)."""
    if isinstance(where, AsyncEngine):
        async with where.connect() as conn:
            return await opened_submissions(conn, *columns, filter_by=filter_by,
                                            order_by=order_by)
    extra = [] if any(c is submissions.c.id for c in columns) else [submissions.c.id]
    query = select(*columns, *extra) if columns else select(submissions)
    if filter_by is not None:
        query = query.where(filter_by)
    query = query.order_by(order_by if order_by is not None else submissions.c.reference)
    sealer = sealer_of(where)
    return [open_row(sealer, submissions, row) for row in await where.execute(query)]


async def opened_submission(where: AsyncEngine | AsyncConnection, *columns: ColumnElement[Any],
                            filter_by: ColumnElement[bool] | None = None) -> OpenedRow:
    """The one submission there is (or that ``filter_by`` picks), opened."""
    [row] = await opened_submissions(where, *columns, filter_by=filter_by)
    return row
