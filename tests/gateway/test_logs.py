"""Log output: one JSON line per event, library records included, no exception text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway import logs


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    yield out
    root.handlers[:], root.level = saved
    structlog.reset_defaults()


def test_library_records_become_json_lines_without_exception_text(
    json_logs: io.StringIO,
) -> None:
    """A library's warning is a JSON line; an exception contributes its type only."""
    try:
        raise ValueError("http://reported.example/secret")
    except ValueError:
        logging.getLogger("sqlalchemy.pool").exception("connection failed")
        structlog.get_logger("gateway.test").exception("ours")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert [(e["event"], e["error_type"]) for e in lines] == [
        ("connection failed", "ValueError"), ("ours", "ValueError")]
    assert lines[0]["logger"] == "sqlalchemy.pool" and lines[0]["level"] == "error"
    assert "reported.example" not in repr(lines)


def test_library_info_records_are_not_shown(json_logs: io.StringIO) -> None:
    """Libraries speak at warning and above; their info chatter stays out."""
    logging.getLogger("asyncio").info("chatter")
    assert json_logs.getvalue() == ""
