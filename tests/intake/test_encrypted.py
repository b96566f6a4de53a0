"""Reports encrypted to the hotline's key are decrypted when normalised."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gnupg  # type: ignore[import-untyped]
import pytest

from gateway.app import Gateway
from gateway.store.case_view import list_cases
from gateway.store.tables import submissions
from intake.normalise import normalise_message
from outbound.gpg import Gpg
from outbound.partner_referrals import PartnerReferrals
from outbound.pgpmime import encrypted_message
from tests.conftest import Start
from tests.smtp_client import deliver
from tests.submissions import opened_submission


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """The hotline's home (a key for report@hotline.test), and a stranger's home."""
    ours, theirs = tmp_path / "hotline", tmp_path / "stranger"
    with ThreadPoolExecutor(1) as pool:
        async def make() -> tuple[str, str]:
            first = await Gpg(ours, executor=pool).generate("Intake <report@hotline.test>")
            second = await Gpg(theirs, executor=pool).generate("Other <other@x.test>")
            return first, second

        fingerprint, _ = asyncio.run(make())
    yield ours, fingerprint, theirs
    kill_agent(ours)
    kill_agent(theirs)


@pytest.fixture
async def gateway(start: Start, homes: tuple[Path, str, Path]) -> AsyncIterator[Gateway]:
    home, fingerprint, _ = homes
    yield await start(gpg={"home": str(home), "signing_key": fingerprint})


def encrypt(home: Path, fingerprint: str | None, text: bytes) -> bytes:
    """What a reporter's mail client sends: encrypted to the key (``None``: the only one)."""
    client = gnupg.GPG(gnupghome=str(home))
    recipient = fingerprint or client.list_keys()[0]["fingerprint"]
    result = client.encrypt(text, recipient, always_trust=True, armor=True)
    assert result.ok, result.status
    data: bytes = result.data
    return data


async def filed(gw: Gateway, fragment: str) -> list[str]:
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                found = [c["canonical_url"] for c in await list_cases(conn)
                         if fragment in (c["canonical_url"] or "")]
            if found:
                return found
            await asyncio.sleep(0.05)


async def test_pgp_mime_reports_are_decrypted_and_filed(
    gateway: Gateway, homes: tuple[Path, str, Path]
) -> None:
    home, fingerprint, _ = homes
    inner = (b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
             b"I found this: hxxp://secret[.]example.com/pgp-mime\r\n")
    armored = await asyncio.to_thread(encrypt, home, fingerprint, inner)
    raw = encrypted_message(armored, from_address="someone@example.org",
                            to_address="report@hotline.test", reference="x",
                            msg_id="<pgp-1@example.org>", date=datetime.now(UTC))
    code, _ = await deliver(gateway.smtp.addresses[0][1], raw)
    assert code == 250
    assert await filed(gateway, "pgp-mime") == ["http://secret.example.com/pgp-mime"]
    stored = (await opened_submission(gateway.engine, submissions.c.raw)).raw
    assert b"secret" not in stored  # what was received stays stored as it was: encrypted


async def test_inline_pgp_reports_are_decrypted_too(
    gateway: Gateway, homes: tuple[Path, str, Path]
) -> None:
    home, fingerprint, _ = homes
    armored = await asyncio.to_thread(encrypt, home, fingerprint,
                                      b"see www.example.com/inline-pgp please")
    raw = (b"From: a@example.org\r\nTo: report@hotline.test\r\nSubject: hi\r\n"
           b"Message-ID: <pgp-2@example.org>\r\n\r\n" + armored)
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    assert await filed(gateway, "inline-pgp") == ["http://www.example.com/inline-pgp"]


async def test_a_report_encrypted_to_another_key_is_marked_not_dropped(
    gateway: Gateway, homes: tuple[Path, str, Path]
) -> None:
    """PGP/MIME the gateway cannot decrypt is parse_failed with the reason, and kept."""
    _, _, stranger = homes
    armored = await asyncio.to_thread(encrypt, stranger, None,
                                      b"Content-Type: text/plain\r\n\r\nwww.example.com/lost")
    raw = encrypted_message(armored, from_address="a@example.org",
                            to_address="report@hotline.test", reference="x",
                            msg_id="<pgp-3@example.org>", date=datetime.now(UTC))
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    async with asyncio.timeout(20):
        while True:
            row = await opened_submission(gateway.engine, submissions.c.status,
                                          submissions.c.parse_error)
            if row.status != "received":
                break
            await asyncio.sleep(0.05)
    assert row.status == "parse_failed" and row.parse_error.startswith("pgp: cannot decrypt")


async def test_a_quoted_pgp_block_not_for_us_does_not_hide_the_rest(
    gateway: Gateway, homes: tuple[Path, str, Path]
) -> None:
    """An inline block for someone else (quoted, forwarded): the plain URLs are still filed."""
    _, _, stranger = homes
    armored = await asyncio.to_thread(encrypt, stranger, None, b"not for the hotline")
    raw = (b"From: a@example.org\r\nTo: report@hotline.test\r\nSubject: fwd\r\n"
           b"Message-ID: <pgp-4@example.org>\r\n\r\nSee www.example.com/visible\r\n\r\n"
           + armored)
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    assert await filed(gateway, "visible") == ["http://www.example.com/visible"]


class CountedGpg:
    """The hotline's gpg, counting how often it is asked to decrypt (a spy, not a mock:
    every call goes to the real gpg)."""

    def __init__(self, gpg: Gpg) -> None:
        self.gpg = gpg
        self.calls = 0

    def open_blocking(self, data: bytes, *, max_output: int) -> Any:
        self.calls += 1
        return self.gpg.open_blocking(data, max_output=max_output)

    def decrypt_blocking(self, data: bytes) -> bytes:
        self.calls += 1
        return self.gpg.decrypt_blocking(data)


def test_a_report_gpg_cannot_decrypt_is_decrypted_once(
        homes: tuple[Path, str, Path]) -> None:
    """The partner-referral reader and the older decrypt path share one decryption: a
    PGP/MIME report for another key costs one gpg call, and says why it failed."""
    home, _, stranger = homes
    armored = encrypt(stranger, None, b"Content-Type: text/plain\r\n\r\nwww.example.com/once")
    raw = encrypted_message(armored, from_address="a@example.org",
                            to_address="report@hotline.test", reference="x",
                            msg_id="<pgp-once@example.org>", date=datetime.now(UTC))
    with ThreadPoolExecutor(1) as pool:
        counted = CountedGpg(Gpg(home, executor=pool))
        result = normalise_message(raw, decrypt=counted.decrypt_blocking,
                                   read_referral=PartnerReferrals(counted, {}, home="BE"))
    assert result.error is not None and result.error.startswith("pgp: cannot decrypt")
    assert counted.calls == 1
