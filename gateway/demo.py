"""``setup-demo``: make what a local install needs to run, and say what was made.

Idempotent: a second run finds everything in place and says so. The demo keys (public
knowledge, in ``demo/keys/`` of the repository) are imported only where the config pins them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from gateway.config import Config
from gateway.console.accounts import add_user, utcnow
from gateway.console.passwords import passwords_for
from gateway.database import open_database
from gateway.store.backend import open_write_backend
from gateway.store.sealed import sealer_of
from gateway.store.sealing import create_keyring
from gateway.store.tables import users
from gateway.store.upgrade import upgrade_database

DEMO_ANALYST = "analyst"
DEMO_KEYS = Path(__file__).resolve().parents[1] / "demo" / "keys"
#: The demo keys' fingerprints, and the file of ours that holds each.
DEMO_FINGERPRINTS = {
    "C43BF0D756F87F3E16B27BC11ACDB04D10546F87": "hotline-secret.asc",
    "F4E1B55EAF3C780CFEAEEAEC65BC69DAC54E310D": "recipients-public.asc",
    "EA49CC3FA07038B6E462C5D3DB8A384EABB1AAFC": "recipients-public.asc",
    "4DFEC3D880142F2211EFBF4A08EDA2FDDCFF1F3A": "recipients-public.asc",
}


async def _demo_keys(config: Config, lines: list[str]) -> None:
    """Import the demo keys the config pins and the keyring lacks; say which keys are missing."""
    from gateway.compose import pinned_keys  # the one list of pinned keys
    from outbound.gpg import Gpg

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpg")
    try:
        assert config.gpg.home is not None
        gpg = Gpg(config.gpg.home, executor=executor)
        for what, fingerprint, purpose in pinned_keys(config):
            if not fingerprint:
                lines.append(f"missing  {what}: not set in the config")
                continue
            status = await gpg.check(fingerprint, purpose=purpose, warn_days=0)
            if status.usable:
                lines.append(f"exists   {what}: key {fingerprint}")
                continue
            source = DEMO_FINGERPRINTS.get(fingerprint)
            if source is None or not (DEMO_KEYS / source).is_file():
                lines.append(f"missing  {what}: key {fingerprint} ({'; '.join(status.problems)})"
                             " - import it with `keys import`")
                continue
            await gpg.import_keys((DEMO_KEYS / source).read_bytes())
            lines.append(f"imported {what}: DEMO key {fingerprint} from demo/keys/{source}")
    finally:
        executor.shutdown(wait=True)


def _make_dir(path: Path | None, mode: int, lines: list[str], what: str) -> None:
    if path is None:
        return
    if path.is_dir():
        lines.append(f"exists   {what}: {path}")
        return
    path.mkdir(parents=True, mode=mode)
    path.chmod(mode)
    lines.append(f"created  {what}: {path}")


def _data_keys(path: Path | None, lines: list[str]) -> None:
    """A new keyring (random keys, mode 0600) where ``data.keyring`` names one and none is."""
    if path is None:
        lines.append("missing  data keys: data.keyring is not set")
        return
    if path.exists():
        lines.append(f"exists   data keys: {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    keyring = create_keyring(path)
    lines.append(f"created  data keys: {path} (key {keyring.current.name}, mode 0600); "
                 "back it up apart from the database")


async def setup_demo(config: Config) -> list[str]:
    """Create the data directories and the database at the newest schema."""
    lines: list[str] = []
    _make_dir(config.gateway.data_dir, 0o750, lines, "data directory")
    await asyncio.to_thread(_data_keys, config.data.keyring, lines)
    _make_dir(config.gpg.home, 0o700, lines, "gpg home")
    if config.outbound.transport == "file":
        _make_dir(config.outbound.file_dir, 0o750, lines, "file outbox")
    engine = await open_database(config)
    try:
        # Like db upgrade: an older release's database is sealed too (and marked sealed).
        done = await upgrade_database(engine, sealer_of(engine))
        before, after = done.before, done.after
        state = "exists  " if before == after else "migrated"
        lines.append(f"{state} database at revision {after}")
        async with engine.connect() as conn:
            anyone = (await conn.execute(select(users.c.id).limit(1))).first()
        if anyone is not None:
            lines.append("exists   staff accounts (add more with `users add`)")
        else:
            backend = await open_write_backend(engine)
            try:
                new = await add_user(backend, DEMO_ANALYST, "supervisor", now=utcnow(),
                                     passwords=passwords_for(config.console.password_hashing))
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
    await _demo_keys(config, lines)
    return lines


def _first(listen: list[tuple[str, int]]) -> str:
    host, port = listen[0] if listen else ("127.0.0.1", 8081)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
