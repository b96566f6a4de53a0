"""``doctor``: an end-to-end check of an install, each line ``ok`` or ``FAIL`` with the reason.

It checks the config and the files it names, the database (reachable, at the newest schema,
writable), the data keys (the keyring is there, usable, and the database's by its check
value), every pinned key, the resolver, the way out (the SMTP relay with the configured TLS
and EHLO name, asked MAIL and RCPT as a referral would be, or the outbox folder) and, when the
daemon runs, its ``/readyz``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import aiosmtplib
from sqlalchemy import text

from gateway.checks import file_problems
from gateway.config import Config
from gateway.database import load_sealer, open_database
from gateway.store import migrate
from gateway.store.sealing import KeyringError, WrongKeyring, keyring_path
from gateway.store.sealing_state import inspect_keyring

Check = Callable[[], Awaitable[str]]


class Failed(Exception):
    """The check failed; the message says why."""


async def _database(config: Config) -> str:
    engine = await open_database(config, verify=False)  # the keyring has a line of its own
    try:
        current, head = await migrate.current(engine), migrate.head()
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
        if current != head:
            raise Failed(f"schema at {current}, the code wants {head}: run `db upgrade`")
        return f"reachable, schema {current}"
    finally:
        await engine.dispose()


async def _data_keys(config: Config) -> str:
    """The keyring: where, its current key, and whether it is the database's (check value),
    read without writing: a missing check value is a finding, not something doctor fixes."""
    try:
        path = keyring_path(config.data.keyring, config.data.credential, os.environ)
        sealer = await load_sealer(config)
    except KeyringError as exc:
        raise Failed(str(exc)) from exc
    where = f"{path}: current key {sealer.keyring.current.name}"
    engine = await open_database(config, sealer=sealer, verify=False)
    try:
        found = await inspect_keyring(engine, sealer)  # doctor only reads
    except WrongKeyring as exc:
        raise Failed(f"{where}: WRONG: {exc}") from exc
    finally:
        await engine.dispose()
    if found in ("absent", "missing"):
        raise Failed(f"{where}: the database has no check value yet: run `db upgrade`")
    if found == "newer":
        return f"{where}, check value ok (it does not name the keyring's newest keys yet)"
    return f"{where}, check value ok"


async def _keys(config: Config) -> str:
    from gateway.compose import make_gpg, pinned_keys

    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg")
    try:
        gpg = await make_gpg(config, executor)
        bad = []
        for what, fingerprint, purpose in pinned_keys(config):
            if not fingerprint:
                bad.append(f"{what} not set")
                continue
            status = await gpg.check(fingerprint, purpose=purpose,
                                     warn_days=config.gpg.warn_days)
            bad += [f"{what}: {p}" for p in status.problems + status.warnings]
        if bad:
            raise Failed("; ".join(bad))
        return f"{len(pinned_keys(config))} pinned keys usable"
    finally:
        await asyncio.to_thread(executor.shutdown, wait=True)


async def _dns(config: Config) -> str:
    from routing.resolve import HostResolver

    resolver = await HostResolver.create(config.locate.nameservers,
                                         timeout=min(config.locate.timeout, 5.0))
    probe = "example.com"
    try:
        found = await resolver.resolve(probe, fresh=True)
    finally:
        await resolver.close()
    if found.outcome == "failed":
        raise Failed(f"{resolver.description}: {found.error}")
    return f"{resolver.description} answers ({probe}: {found.outcome})"


async def _outbound(config: Config) -> str:
    out = config.outbound
    if out.transport == "file":
        folder = out.file_dir
        assert folder is not None
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise Failed(f"{folder} is not writable")
        return f"file outbox {folder} writable"
    context = None
    if out.tls != "none":
        context = ssl.create_default_context(
            cafile=str(out.tls_ca_file) if out.tls_ca_file else None)
    # Greeted as referrals will greet it, and asked what a referral asks (MAIL and RCPT, then
    # RSET: nothing is sent): a relay that refuses our EHLO name does so at RCPT (Postfix
    # applies smtpd_helo_restrictions there by default), so a bare connect would not show it.
    client = aiosmtplib.SMTP(hostname=out.smtp_host, port=out.smtp_port,
                             local_hostname=out.helo_name, timeout=min(out.timeout, 10.0),
                             use_tls=out.tls == "implicit", start_tls=out.tls == "starttls",
                             tls_context=context, validate_certs=out.tls != "none")
    destinations = [*config.routing.destinations.values(), *config.routing.hotlines.values()]
    recipient = destinations[0].email if destinations else None
    where = f"{out.smtp_host}:{out.smtp_port} ({out.tls}, as {out.helo_name})"
    try:
        async with client:
            await client.mail(out.from_address)
            if recipient is not None:
                await client.rcpt(recipient)
            await client.rset()
    except aiosmtplib.SMTPResponseException as exc:
        raise Failed(f"{where}: refused: {exc.code} {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise Failed(f"{where}: {type(exc).__name__}: {exc}") from exc
    tried = f"MAIL and RCPT <{recipient}>" if recipient else "MAIL"
    return f"{where}: {tried} accepted"


async def _daemon(config: Config) -> str:
    parts = ", ".join(config.gateway.parts)
    if not config.gateway.runs("admin"):
        return f"not asked: this instance runs no admin listener ([gateway] parts: {parts})"
    if not config.admin.listen:
        raise Failed("no [admin] listen: cannot ask the daemon")
    host, port = config.admin.listen[0]
    if port == 0:
        raise Failed("[admin] listens on port 0: cannot find the daemon")
    # A listener on every address is asked on the loopback one.
    wildcard = {"", "0.0.0.0", "::"}  # noqa: S104 (addresses compared, not bound)
    target = "127.0.0.1" if host in wildcard else f"[{host}]" if ":" in host else host
    url = f"http://{target}:{port}/readyz"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(url) as response:
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Failed(f"{url}: {type(exc).__name__} (is the daemon running?)") from exc
    if response.status != 200:
        problems = [f"{k}: {v}" for k, v in (body.get("checks") or {}).items()]
        raise Failed("not ready: " + "; ".join(problems))
    return f"running and ready ({parts})"


async def run(config: Config) -> list[tuple[str, bool, str]]:
    """Every check: (name, passed, what it found)."""
    results: list[tuple[str, bool, str]] = []
    problems = await asyncio.to_thread(file_problems, config)
    results.append(("config", not problems,
                    "; ".join(problems) if problems else f"{config.path or 'defaults'} valid"))
    checks: list[tuple[str, Check]] = [
        ("database", lambda: _database(config)), ("data-keys", lambda: _data_keys(config)),
        ("keys", lambda: _keys(config)),
        ("dns", lambda: _dns(config)), ("outbound", lambda: _outbound(config)),
        ("daemon", lambda: _daemon(config)),
    ]
    for name, check in checks:
        try:
            async with asyncio.timeout(30):  # an unreachable host must not hang the doctor
                results.append((name, True, await check()))
        except TimeoutError:
            results.append((name, False, "no answer within 30 s"))
        except Failed as exc:
            results.append((name, False, str(exc)))
        except Exception as exc:  # an unexpected failure is a finding too
            results.append((name, False, f"{type(exc).__name__}: {exc}"))
    return results


def report(results: list[tuple[str, bool, str]]) -> str:
    return "\n".join(f"{'ok  ' if passed else 'FAIL'} {name:<9} {found}"
                     for name, passed, found in results)

