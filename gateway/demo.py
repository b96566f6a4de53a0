"""``setup-demo``: make what a local install needs to run, and say what was made.

Idempotent: a second run finds everything in place and says so. Keys and staff accounts are
made here by the referral and console stages once those exist.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config
from gateway.store import migrate
from gateway.store.engine import open_engine


def _make_dir(path: Path | None, mode: int, lines: list[str], what: str) -> None:
    if path is None:
        return
    if path.is_dir():
        lines.append(f"exists   {what}: {path}")
        return
    path.mkdir(parents=True, mode=mode)
    path.chmod(mode)
    lines.append(f"created  {what}: {path}")


async def setup_demo(config: Config) -> list[str]:
    """Create the data directories and the database at the newest schema."""
    lines: list[str] = []
    _make_dir(config.gateway.data_dir, 0o750, lines, "data directory")
    _make_dir(config.gpg.home, 0o700, lines, "gpg home")
    if config.outbound.transport == "file":
        _make_dir(config.outbound.file_dir, 0o750, lines, "file outbox")
    engine = await open_engine(config.database)
    try:
        before = await migrate.current(engine)
        await migrate.upgrade(engine)
        after = await migrate.current(engine)
    finally:
        await engine.dispose()
    state = "exists  " if before == after else "migrated"
    lines.append(f"{state} database at revision {after}")
    return lines
