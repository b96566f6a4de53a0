"""The gateway's database as every command opens it: the engine, with the keyring bound.

What the database holds of reports is sealed (``gateway.store.sealed``) with the keyring that
``[data]`` names; an engine is never handed out without it, so no code path can read or write a
sealed column in clear.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.store.engine import open_engine
from gateway.store.sealed import bind_sealer
from gateway.store.sealing import Sealer, keyring_path, load_keyring
from gateway.store.sealing_state import verify_keyring


async def load_sealer(config: Config) -> Sealer:
    """The sealer of ``[data]``'s keyring (the systemd credential when one was passed);
    ``KeyringError`` saying what is wrong with it otherwise."""
    path = keyring_path(config.data.keyring, config.data.credential, os.environ)
    return Sealer(await asyncio.to_thread(load_keyring, path))


async def open_database(config: Config, *, sealer: Sealer | None = None,
                        verify: bool = True, **connect_args: Any) -> AsyncEngine:
    """An engine on ``[database]`` with ``[data]``'s keyring (or ``sealer``) bound to it,
    checked against the database's check value (written on the first open): a keyring that
    is not the database's is ``WrongKeyring`` here, before anything is read or sealed.
    ``verify=False`` leaves the check to the caller (``doctor`` reports it on a line of its
    own)."""
    if sealer is None:
        sealer = await load_sealer(config)
    engine = await open_engine(config.database.settings(), **connect_args)
    bind_sealer(engine, sealer)
    if verify:
        try:
            await verify_keyring(engine, sealer)
        except BaseException:
            await engine.dispose()
            raise
    return engine
