"""``setup-demo``: make what a local install needs to run, and say what was made.

Idempotent: a second run finds everything in place and says so. Keys are made here by the
referral stage once it exists.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from gateway.config import Config
from gateway.console.accounts import add_user, utcnow
from gateway.store import migrate
from gateway.store.backend import open_write_backend
from gateway.store.engine import open_engine
from gateway.store.tables import users

DEMO_ANALYST = "analyst"


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
        state = "exists  " if before == after else "migrated"
        lines.append(f"{state} database at revision {after}")
        async with engine.connect() as conn:
            anyone = (await conn.execute(select(users.c.id).limit(1))).first()
        if anyone is not None:
            lines.append("exists   staff accounts (add more with `users add`)")
        else:
            backend = await open_write_backend(engine)
            try:
                new = await add_user(backend, DEMO_ANALYST, "supervisor", now=utcnow())
            finally:
                await backend.close()
            lines += [
                f"created  console account {new.name!r} (role {new.role}); log in at "
                f"http://{_first(config.console.listen)}/",
                f"           one-time password: {new.password}",
                f"           TOTP secret:       {new.totp_secret}",
                f"           authenticator URI: {new.otpauth_uri}",
            ]
    finally:
        await engine.dispose()
    return lines


def _first(listen: list[tuple[str, int]]) -> str:
    host, port = listen[0] if listen else ("127.0.0.1", 8081)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
