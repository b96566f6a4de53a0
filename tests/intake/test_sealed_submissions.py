"""Submissions at rest: ciphertext in the database, plaintext to every reader, and a value moved
or altered is refused naming its record while the others are served; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.case_view import get_case, list_cases
from gateway.store.references import ReferenceAllocator
from gateway.store.sealed import bind_sealer, sealer_of
from gateway.store.sealing import Keyring, LookupKey, Sealer
from gateway.store.tables import case_reports, submissions
from gateway.store.writer import NewSubmission, Receipt, SubmissionWriter
from intake.normalise import NormaliseStage
from tests.submissions import opened_submission, opened_submissions

SUBJECT = "Quokka-zanzibar sübject"
TEXT = "marmalade-ocelot wörds from the reporter"
SENDER = "xylo.reporter@example.org"
HELO = "helo-narwhal.example.org"
MESSAGE_ID = "<msgid-pangolin@example.org>"
FILENAME = "aardvark-evidence.png"


def message(n: int, encoding: str) -> bytes:
    """A report whose body travels in ``encoding`` (base64, quoted-printable)."""
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = "report@hotline.test"
    mail["Subject"] = f"{SUBJECT} {n}"
    mail["Message-ID"] = f"<msgid-pangolin-{n}@example.org>"
    mail.set_content(f"{TEXT} {n}\nhttp://example.com/sealed/{n}\n", cte=encoding)
    mail.add_attachment(b"\x89PNG\r\n\x1a\nnot an image", maintype="image", subtype="png",
                        filename=FILENAME)
    return mail.as_bytes().replace(b"\n", b"\r\n")


def new(raw: bytes, message_id: str | None = MESSAGE_ID) -> NewSubmission:
    return NewSubmission(channel="smtp", received_at=datetime.now(UTC), raw=raw,
                         body_sha256=hashlib.sha256(raw).hexdigest(), mail_from=SENDER,
                         rcpt_tos=("report@hotline.test",), helo=HELO, peer_ip="192.0.2.77",
                         message_id=message_id)


@pytest.fixture
async def backend(engine: AsyncEngine) -> AsyncIterator[WriteBackend]:
    b = await open_write_backend(engine, busy_timeout=30)
    yield b
    await b.close()


async def store(backend: WriteBackend, subs: list[NewSubmission]) -> list[Receipt]:
    writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
    task = asyncio.create_task(writer.run())
    try:
        return list(await asyncio.gather(*(writer.submit(s) for s in subs)))
    finally:
        await writer.stop()
        await task


async def normalise(backend: WriteBackend) -> NormaliseStage:
    stage = NormaliseStage(backend, None, worker="w1", legal_window=timedelta(days=180))
    while await stage.run_once():
        pass
    return stage


def needles(raws: list[bytes]) -> list[bytes]:
    """What must not be found at rest: each distinctive string in UTF-8 and UTF-16, and the
    encoded forms the raw messages carried them in (base64 and quoted-printable body lines,
    RFC 2047 subjects)."""
    words = [SUBJECT, TEXT, SENDER, HELO, MESSAGE_ID, FILENAME, "msgid-pangolin",
             "marmalade-ocelot", "Quokka-zanzibar"]
    found = [w.encode(codec) for w in words for codec in ("utf-8", "utf-16-le", "utf-16-be")]
    for raw in raws:
        for line in raw.split(b"\r\n"):
            if (b"=C3=B6" in line or b"Subject:" in line
                    or (len(line) >= 40 and line.isascii() and b" " not in line)):
                found.append(line.removeprefix(b"Subject: ")[:60])
    found.append(base64.b64encode(f"{TEXT} 0".encode())[:24])
    return found


async def at_rest(engine: AsyncEngine) -> bytes:
    """Every byte the database holds of submissions: the SQLite file with its WAL and SHM, or
    every value of a raw SELECT on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        database = Path(str(engine.url.database))

        def read() -> bytes:
            return b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))

        return await asyncio.to_thread(read)
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT * FROM submissions")).all()
    return b"\0".join(v if isinstance(v, bytes) else str(v).encode()
                      for row in rows for v in row)


async def test_what_a_report_says_is_ciphertext_at_rest_and_reads_as_before(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """A report's sender, HELO, Message-ID, raw message, subject, text and attachment names are
    not in the database in any form it carried them in; the case view shows them as written."""
    raws = [message(0, "base64"), message(1, "quoted-printable")]
    receipts = await store(backend, [new(raws[0]), new(raws[1], message_id=None)])
    await normalise(backend)
    stored = await at_rest(engine)
    for needle in needles(raws):
        assert needle not in stored, needle
    async with engine.connect() as conn:
        plain = (await conn.execute(select(submissions.c.mail_from, submissions.c.subject,
                                           submissions.c.raw, submissions.c.dedup_key))).all()
    for mail_from, subject, raw, dedup_key in plain:
        assert mail_from.startswith(b"\x01") and subject.startswith(b"\x01")
        assert raw[0] == 1 and len(raw) > len(raws[0]) - 100
        assert dedup_key.startswith("k1:")  # a keyed hash, not SHA-256 of what it names
    async with engine.connect() as conn:
        cases = await list_cases(conn)
        assert all(c["report_flags"] == [] for c in cases)
        case_id = (await conn.execute(
            select(case_reports.c.case_id).where(
                case_reports.c.submission_id == receipts[0].submission_id))).scalar_one()
        detail = await get_case(conn, case_id)
    assert detail is not None
    [report] = detail["reports"]
    assert report["subject"] == f"{SUBJECT} 0" and f"{TEXT} 0" in report["text"]
    assert [a["filename"] for a in report["attachments"]] == [FILENAME]
    row = await opened_submission(engine, filter_by=submissions.c.id == receipts[0].submission_id)
    assert (row.mail_from, row.helo, row.peer_ip, row.message_id, row.raw) == (
        SENDER, HELO, "192.0.2.77", MESSAGE_ID, raws[0])


async def test_a_moved_or_altered_raw_message_fails_only_its_own_submission(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """A raw message copied from another row, and one altered by one byte, become parse_failed
    naming their record; the stage files the rest."""
    ids = [r.submission_id for r in await store(backend, [
        new(message(n, "base64"), message_id=f"<m{n}@example.org>") for n in range(4)])]
    async with engine.begin() as conn:
        await conn.execute(update(submissions).where(submissions.c.id == ids[1]).values(
            raw=select(submissions.c.raw).where(submissions.c.id == ids[0]).scalar_subquery()))
        sealed = (await conn.execute(select(submissions.c.raw)
                                     .where(submissions.c.id == ids[2]))).scalar_one()
        altered = sealed[:40] + bytes([sealed[40] ^ 1]) + sealed[41:]
        await conn.execute(update(submissions).where(submissions.c.id == ids[2])
                           .values(raw=altered))
    stage = await normalise(backend)
    assert (stage.processed, stage.failed) == (4, 2)
    rows = {r.id: r for r in await opened_submissions(
        engine, submissions.c.status, submissions.c.parse_error)}
    assert [rows[i].status for i in ids] == ["parsed", "parse_failed", "parse_failed", "parsed"]
    for broken in ids[1:3]:
        assert f"submissions.raw of record {broken}" in rows[broken].parse_error
    async with engine.connect() as conn:
        unread = [c for c in await list_cases(conn) if c["kind"] == "no_url"]
    assert len(unread) == 2 and all("parse_failed" in c["flags"] for c in unread)
    messages = [c["report_flags"][0]["message"] for c in unread]
    for broken in ids[1:3]:
        assert sum(str(broken) in m for m in messages) == 1


async def test_a_moved_text_shows_as_unreadable_on_its_report_only(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """A subject copied into another submission, and flags moved into another row, are
    refused naming the record: the queue and the case still show, with the report flagged."""
    ids = [r.submission_id for r in await store(backend, [
        new(message(n, "quoted-printable"), message_id=f"<t{n}@example.org>")
        for n in range(3)])]
    await normalise(backend)
    async with engine.begin() as conn:
        subject = (await conn.execute(select(submissions.c.subject)
                                      .where(submissions.c.id == ids[0]))).scalar_one()
        await conn.execute(update(submissions).where(submissions.c.id == ids[1])
                           .values(subject=subject))
        await conn.execute(update(submissions).where(submissions.c.id == ids[2])
                           .values(flags=subject))
    async with engine.connect() as conn:
        cases = {c["references"][0]: c for c in await list_cases(conn)}
        by_id = {r.id: r.reference for r in await opened_submissions(conn, submissions.c.id,
                                                                       submissions.c.reference)}
        broken_list = cases[by_id[ids[2]]]
        assert "parse_failed" in broken_list["flags"]
        assert f"submissions.flags of record {ids[2]}" in broken_list["report_flags"][0]["error"]
        assert cases[by_id[ids[0]]]["report_flags"] == []
        detail = await get_case(conn, uuid.UUID(cases[by_id[ids[1]]]["id"]))
        fine = await get_case(conn, uuid.UUID(cases[by_id[ids[0]]]["id"]))
    assert detail is not None and fine is not None
    [report] = detail["reports"]
    assert report["subject"] is None and report["text"] is None
    assert "parse_failed" in detail["flags"]
    assert f"submissions.subject of record {ids[1]}" in detail["report_flags"][0]["message"]
    assert fine["reports"][0]["subject"] == f"{SUBJECT} 0"


async def test_a_resent_report_is_found_across_a_rotation_of_the_lookup_key(
    engine: AsyncEngine,
) -> None:
    """A retransmission stored before the lookup key was rotated gets its first reference
    back; one sent afterwards is found under the new key."""
    old = sealer_of(engine).keyring
    lookup = old.current_lookup
    rotated = Keyring(old.data_keys, (
        replace(lookup, state="retired"),
        LookupKey(lookup.version + 1, bytes(reversed(lookup.secret)), datetime.now(UTC),
                  "current")))
    raw = message(9, "base64")
    before = await open_write_backend(engine)
    try:
        [first] = await store(before, [new(raw)])
    finally:
        await before.close()
    bind_sealer(engine, Sealer(rotated))
    after = await open_write_backend(engine)
    try:
        [again] = await store(after, [new(raw)])
        [other] = await store(after, [new(raw, message_id="<other@example.org>")])
        [other_again] = await store(after, [new(raw, message_id="<other@example.org>")])
    finally:
        await after.close()
    assert again.duplicate and again.reference == first.reference
    assert not other.duplicate
    assert other_again.duplicate and other_again.reference == other.reference
    keys = sorted(r.dedup_key for r in await opened_submissions(engine, submissions.c.dedup_key))
    assert [k[:3] for k in keys] == ["k1:", f"k{lookup.version + 1}:"]
