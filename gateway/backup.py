"""``backup PATH``: a consistent copy of the database while the daemon runs.

SQLite: the online backup API (pages copied under a read transaction, so the copy is one
moment of the database however many writes go on), then ``PRAGMA integrity_check`` on the copy.
PostgreSQL: use ``pg_dump`` (a consistent snapshot by design); this command says so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy import make_url


class BackupError(Exception):
    pass


def backup(database_url: str, target: Path) -> int:
    """Copy the database to ``target`` (which must not exist); the number of submissions in
    the copy."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError("for PostgreSQL, use pg_dump (for example: pg_dump -Fc -f FILE "
                          f"{url.set(drivername='postgresql').render_as_string(False)})")
    if target.exists():
        raise BackupError(f"{target} exists already: choose a new file")
    source_path = url.database
    assert source_path is not None
    partial = target.with_name(target.name + ".partial")
    with contextlib.closing(sqlite3.connect(f"file:{source_path}?mode=ro", uri=True,
                                            timeout=30)) as source, \
            contextlib.closing(sqlite3.connect(partial)) as copy:
        source.backup(copy, pages=1024)
        result = copy.execute("PRAGMA integrity_check").fetchone()
        if result is None or result[0] != "ok":
            raise BackupError(f"the copy fails its integrity check: {result}")
        count = copy.execute("SELECT count(*) FROM submissions").fetchone()[0]
        copy.commit()
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return int(count)
