"""``backup PATH``: a consistent copy of the database while the daemon runs.

SQLite: the online backup API, in one step under one read snapshot (the copy is one moment of
the database however many writes go on; WAL lets them go on), then ``PRAGMA integrity_check``
on the copy, which is readable by its owner only.
PostgreSQL: use ``pg_dump`` (a consistent snapshot by design); this command says so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy import make_url

from gateway.store.files import sync_folder


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
    # Reporter data: readable by the owner only, from the first byte.
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        source_uri = Path(source_path).resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(source_uri, uri=True, timeout=30)) as source, \
                contextlib.closing(sqlite3.connect(partial)) as copy:
            # One step: every page under one read snapshot (WAL lets writers go on meanwhile).
            # Copying in steps would restart whenever a write comes between two of them.
            source.backup(copy)
            result = copy.execute("PRAGMA integrity_check").fetchone()
            if result is None or result[0] != "ok":
                raise BackupError(f"the copy fails its integrity check: {result}")
            count = copy.execute("SELECT count(*) FROM submissions").fetchone()[0]
            copy.commit()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sync_folder(target.parent)
    return int(count)
