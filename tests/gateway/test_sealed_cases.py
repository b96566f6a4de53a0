"""Case URLs sealed at rest (issue 16), on real SQLite files and a real PostgreSQL: ciphertext
in the database, one case per URL under a keyed hash, the same to every reader, and a case whose
values do not open refused or marked as damaged (naming it) while the others are served and
located."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cli import main
from gateway.console.accounts import create_token, utcnow
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.case_urls import case_lookup_key
from gateway.store.case_view import get_case, list_cases, queue_cases
from gateway.store.ids import uuid7
from gateway.store.sealed import bind_sealer, sealer_of
from gateway.store.sealing import Keyring, LookupKey, SealBroken, Sealer, TagMismatch
from gateway.store.tables import assessments, case_reports, cases, submissions
from intake.cases import Filing, ReportedUrl
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides
from routing.resolve import HostResolver
from routing.stage import LocateStage, relocate
from tests.conftest import Start
from tests.console_client import LEGAL_DETAILS, StaffClient, base, file_case, ready_user
from tests.dns_server import DnsServer
from tests.gateway.test_cli import write_config
from tests.sealed_cases import (
    altered,
    case_rows,
    database_bytes,
    report_rows,
    store_raw,
    stored_value,
)

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
WINDOW = timedelta(days=180)
SECRET_HOST = "sealed-7f3a9c.nl.test"
GALLERY = ReportedUrl(f"hxxp://{SECRET_HOST}/gallery?id=4242",
                      f"http://{SECRET_HOST}/gallery?id=4242",
                      f"http://{SECRET_HOST}/gallery?id=4242")
ARCHIVE = ReportedUrl("be.test/archive-q8w2e4", "http://be.test/archive-q8w2e4",
                      "http://be.test/archive-q8w2e4")
OTHER = ReportedUrl("hxxp://be[.]test/other-z3x5", "http://be.test/other-z3x5",
                    "http://be.test/other-z3x5")
PLAIN = [SECRET_HOST, "gallery?id=4242", "archive-q8w2e4", "other-z3x5"]


def report(conn: Connection, n: int, urls: list[ReportedUrl], at: datetime = T0) -> list[
        uuid.UUID]:
    """One submission reporting ``urls``, filed as the normaliser files it; its case ids."""
    submission_id = uuid7()
    conn.execute(insert(submissions).values(
        id=submission_id, reference=f"CF-2026-{n:06d}", channel="smtp", status="parsed",
        received_at=at, rcpt_tos=[], body_sha256=hashlib.sha256(b"%d" % n).hexdigest(),
        raw_size=0))
    filing = Filing(conn, now=at, legal_window=WINDOW)
    filing.attach(submission_id, at, urls)
    return filing.flush()[submission_id]


async def file_three(backend: WriteBackend) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """The gallery reported twice, the archive once, and a report without a URL."""
    (gallery,) = await backend.transaction(partial(report, n=1, urls=[GALLERY]))
    await backend.transaction(partial(report, n=2, urls=[GALLERY]))
    (archive,) = await backend.transaction(partial(report, n=3, urls=[ARCHIVE]))
    (no_url,) = await backend.transaction(partial(report, n=4, urls=[]))
    return gallery, archive, no_url


def plaintext_in(blob: bytes) -> list[str]:
    """Which of the reported strings ``blob`` holds, in UTF-8 or UTF-16."""
    return [s for s in PLAIN for encoding in ("utf-8", "utf-16-le", "utf-16-be")
            if s.encode(encoding) in blob]


async def test_case_urls_are_ciphertext_at_rest(engine: AsyncEngine, backend: WriteBackend
                                                ) -> None:
    """Every URL of cases and case reports is stored sealed, the case key is a keyed hash,
    and (SQLite) the database file and its WAL hold none of the reported strings."""
    await file_three(backend)
    async with engine.connect() as conn:
        stored = [dict(row._mapping) for table in (cases, case_reports)
                  for row in await conn.execute(select(table))]
    assert not plaintext_in(repr(stored).encode())
    for row in stored:
        for column in ("url", "canonical_url", "written_as"):
            if row.get(column) is not None:
                assert row[column].startswith(b"\x01")
    url_keys = [row["url_key"] for row in stored if "url_key" in row]
    assert sorted(key.partition(":")[0] for key in url_keys) == ["k1", "k1", "no_url"]
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        blob = database_bytes(Path(engine.url.database))
        assert b"CF-2026-000004" in blob  # the scan sees what was written
        assert plaintext_in(blob) == []


async def test_equal_urls_meet_in_one_case_under_a_keyed_hash(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Two reports of one URL are one case, keyed by the URL's HMAC under this database's
    lookup key: not its plain SHA-256, nor what another keyring would make of it."""
    gallery, _, _ = await file_three(backend)
    [row] = [r for r in await case_rows(engine) if r["id"] == gallery]
    assert row["report_count"] == 2 and row["canonical_url"] == GALLERY.canonical
    sealer = sealer_of(engine)
    assert row["url_key"] == case_lookup_key(sealer, GALLERY.canonical)
    assert row["url_key"] != hashlib.sha256(GALLERY.canonical.encode()).hexdigest()
    stranger = Sealer(Keyring.generate(T0))
    assert case_lookup_key(stranger, GALLERY.canonical) != row["url_key"]


async def test_a_rotated_lookup_key_still_finds_the_case(engine: AsyncEngine,
                                                         backend: WriteBackend) -> None:
    """After a new lookup key is made current, a report of a URL whose case is still keyed
    under the older one joins that case; a new URL is keyed under the new lookup key."""
    (gallery,) = await backend.transaction(partial(report, n=1, urls=[GALLERY]))
    old = sealer_of(engine).keyring
    rotated = Keyring(old.data_keys, (
        *(LookupKey(k.version, k.secret, k.created_at, "retired") for k in old.lookup_keys),
        LookupKey(2, b"\x42" * 32, T0, "current")))
    bind_sealer(engine, Sealer(rotated))
    after = await open_write_backend(engine)
    try:
        again = await after.transaction(partial(report, n=2, urls=[GALLERY, ARCHIVE]))
    finally:
        await after.close()
    rows = {r["canonical_url"]: r for r in await case_rows(engine)}
    assert gallery in again and rows[GALLERY.canonical]["report_count"] == 2
    assert rows[GALLERY.canonical]["url_key"].startswith("k1:")
    assert rows[ARCHIVE.canonical]["url_key"].startswith("k2:")


async def test_every_reader_sees_the_urls_as_reported(engine: AsyncEngine,
                                                      backend: WriteBackend) -> None:
    """The list, the case and its reports give the URLs and the text as reporters wrote it."""
    gallery, archive, no_url = await file_three(backend)
    async with engine.connect() as conn:
        listed = {c["id"]: c for c in await list_cases(conn)}
        shown = await get_case(conn, gallery)
    assert (listed[str(archive)]["url"], listed[str(archive)]["canonical_url"]) == (
        ARCHIVE.url, ARCHIVE.canonical)
    assert (listed[str(no_url)]["url"], listed[str(no_url)]["kind"]) == (None, "no_url")
    assert shown is not None and shown["url"] == GALLERY.url
    assert [r["written_as"] for r in shown["reports"]] == [GALLERY.written_as] * 2
    assert not any("damaged" in c for c in [*listed.values(), shown])
    assert {(r["written_as"], r["url"]) for r in await report_rows(engine)} == {
        (GALLERY.written_as, GALLERY.url), (ARCHIVE.written_as, ARCHIVE.url), (None, None)}


async def test_a_url_written_as_it_is_meant_is_sealed_once_and_read_as_written(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A reporter who wrote the URL exactly as it is meant: the report stores the URL sealed
    and no second copy of it, and every reader still gives it as written, beside a report of
    the same case that wrote it otherwise."""
    plain = ReportedUrl(GALLERY.url, GALLERY.url, GALLERY.canonical)
    (gallery,) = await backend.transaction(partial(report, n=1, urls=[plain]))
    await backend.transaction(partial(report, n=2, urls=[GALLERY]))
    first, second = await report_ids(engine, gallery)
    assert await stored_value(engine, case_reports, "written_as", first) is None
    assert (await stored_value(engine, case_reports, "url", first)).startswith(b"\x01")
    assert (await stored_value(engine, case_reports, "written_as", second)).startswith(b"\x01")
    async with engine.connect() as conn:
        shown = await get_case(conn, gallery)
    assert shown is not None
    assert [r["written_as"] for r in shown["reports"]] == [GALLERY.url, GALLERY.written_as]
    assert [(r["written_as"], r["url"]) for r in await report_rows(engine)] == [
        (None, GALLERY.url), (GALLERY.written_as, GALLERY.url)]


async def test_a_copied_or_altered_url_marks_its_case_damaged_and_the_others_are_served(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A URL copied from another case and a canonical URL altered by one byte are refused
    naming their record (never the value) when the case is read, and marked damaged where
    cases are listed; a report's text copied from another report is marked on that report;
    every other case is served as before."""
    gallery, archive, no_url = await file_three(backend)
    (other,) = await backend.transaction(partial(report, n=5, urls=[OTHER]))
    await store_raw(engine, cases, "url", archive,
                    await stored_value(engine, cases, "url", gallery))
    await store_raw(engine, cases, "canonical_url", gallery,
                    altered(await stored_value(engine, cases, "canonical_url", gallery)))
    [first, _] = await report_ids(engine, gallery)
    [copied_into] = await report_ids(engine, other)
    await store_raw(engine, case_reports, "written_as", copied_into,
                    await stored_value(engine, case_reports, "written_as", first))
    async with engine.connect() as conn:
        listed = {c["id"]: c for c in await list_cases(conn)}
        flagged, _ = await queue_cases(conn, status="new", flag="damaged", limit=10)
    assert set(listed) == {str(gallery), str(archive), str(no_url), str(other)}
    assert {c["id"] for c in flagged} == {str(gallery), str(archive), str(other)}
    copied, changed = listed[str(archive)], listed[str(gallery)]
    assert copied["url"] is None and copied["canonical_url"] == ARCHIVE.canonical
    key = sealer_of(engine).keyring.current.name
    assert copied["damaged"] == [f"cannot open cases.url of record {archive}: it fails "
                                 f"authentication under key {key} (altered, or copied from "
                                 "another record or column)"]
    assert changed["url"] == GALLERY.url and changed["canonical_url"] is None
    assert "cases.canonical_url of record " + str(gallery) in changed["damaged"][0]
    assert listed[str(other)]["url"] == OTHER.url and listed[str(other)]["damaged"] == [
        f"cannot open case_reports.written_as of record {copied_into}: it fails "
        f"authentication under key {key} (altered, or copied from another record or column)"]
    assert all("damaged" in listed[str(c)]["flags"] for c in (gallery, archive, other))
    assert "damaged" not in listed[str(no_url)]
    assert not plaintext_in(json.dumps([c.get("damaged") for c in listed.values()]).encode())

    async with engine.connect() as conn:
        assert (await get_case(conn, no_url)) is not None
        for case_id, where in ((archive, f"cases.url of record {archive}"),
                               (gallery, f"cases.canonical_url of record {gallery}")):
            with pytest.raises(TagMismatch, match=where):
                await get_case(conn, case_id)
        shown = await get_case(conn, other)
    # A report's text that does not open is marked on that report; the case is shown.
    assert shown is not None and shown["url"] == OTHER.url
    [marked] = shown["reports"]
    assert marked["written_as"] is None and marked["damaged"] == shown["damaged"]
    assert shown["damaged"][0].startswith(
        f"cannot open case_reports.written_as of record {copied_into}")


async def report_ids(engine: AsyncEngine, case_id: uuid.UUID) -> list[uuid.UUID]:
    async with engine.connect() as conn:
        return list((await conn.execute(
            select(case_reports.c.id).where(case_reports.c.case_id == case_id)
            .order_by(case_reports.c.reported_at, case_reports.c.id))).scalars())


async def test_the_locate_stage_fails_a_damaged_case_and_locates_the_others(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """A case whose canonical URL does not open is flagged locate_failed at once, its error
    saying which value does not open; the case beside it is located; relocating it is
    refused naming the record."""
    (good,) = await backend.transaction(partial(report, n=1, urls=[ARCHIVE]))
    (bad,) = await backend.transaction(partial(report, n=2, urls=[GALLERY]))
    await store_raw(engine, cases, "canonical_url", bad,
                    altered(await stored_value(engine, cases, "canonical_url", bad)))
    locator = Locator(HostResolver([dns.address], timeout=2),
                      open_geolocator(mmdb["country"], mmdb["asn"]),
                      overrides=Overrides([]), cdn_asns=[13335])
    try:
        stage = LocateStage(backend, locator, worker="w1")
        assert await stage.run_once() == 2
        async with engine.connect() as conn:
            listed = {c["id"]: c for c in await list_cases(conn)}
        located, failed = listed[str(good)], listed[str(bad)]
        assert (located["status"], located["hosting"]["country"]) == ("awaiting_assessment",
                                                                      "BE")
        assert failed["status"] == "locate_failed" and "locate_failed" in failed["flags"]
        assert failed["hosting"]["attempts"] == 1
        assert failed["hosting"]["error"].startswith(
            f"cannot open cases.canonical_url of record {bad}:")
        assert not dns.zone.asked(SECRET_HOST)
        with pytest.raises(SealBroken, match=f"cases.canonical_url of record {bad}"):
            await relocate(backend, locator, bad)
    finally:
        await locator.resolver.close()
    async with engine.connect() as conn:
        error = (await conn.execute(select(cases.c.locate_error)
                                    .where(cases.c.id == bad))).scalar_one()
    assert error.startswith(b"\x01")


async def test_the_console_the_api_and_the_cli_mark_a_damaged_case_and_serve_the_others(
    start: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A case whose URL was copied from another is listed as damaged by the queue page, the
    API and ``cases list``, and refused by its page, the API and ``cases show``: each naming
    the record, never a URL; the case beside it reads as before."""
    gw = await start()
    bad = await file_case(gw, "Please look at http://be.test/broken-r5t6", "broken-r5t6")
    good = await file_case(gw, "Please look at http://be.test/intact-u7i8", "intact-u7i8")
    await store_raw(gw.engine, cases, "url", uuid.UUID(bad),
                    await stored_value(gw.engine, cases, "url", uuid.UUID(good)))
    damaged = f"cannot open cases.url of record {bad}"
    user = await ready_user(gw.console.context.backend, "ana")
    token = await create_token(gw.console.context.backend, "ana", now=utcnow())
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=base(gw), headers=headers) as http:
        async with http.get("/api/v1/cases?status=awaiting_assessment") as response:
            listed = {c["id"]: c for c in await response.json()}
        async with http.get("/api/v1/cases?flag=damaged") as response:
            flagged = [c["id"] for c in await response.json()]
        async with http.get(f"/api/v1/cases/{bad}") as response:
            refused = response.status, await response.json()
        async with http.get(f"/api/v1/cases/{good}") as response:
            shown = response.status, await response.json()
    assert set(listed) == {bad, good} and flagged == [bad]
    assert listed[good]["url"] == "http://be.test/intact-u7i8" and "damaged" not in listed[good]
    assert listed[bad]["url"] is None
    assert listed[bad]["canonical_url"] == "http://be.test/broken-r5t6"
    assert listed[bad]["damaged"][0].startswith(damaged) and "damaged" in listed[bad]["flags"]
    assert refused[0] == 500 and refused[1]["error"].startswith(damaged)
    assert "intact" not in json.dumps([listed[bad]["damaged"], refused[1]])
    assert shown[0] == 200 and shown[1]["url"] == "http://be.test/intact-u7i8"

    browser = StaffClient(base(gw))
    try:
        await browser.login(user)
        _, queue = await browser.get("/")
        status, page = await browser.get(f"/cases/{bad}")
    finally:
        await browser.close()
    assert f"damaged: {damaged}" in queue and "hxxp[:]//be[.]test/intact-u7i8" in queue
    assert status == 500 and damaged in page and "intact" not in page

    path = await asyncio.to_thread(write_config, tmp_path)  # the gateway's database and keys
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(bad) and f"(damaged: {damaged}" in line for line in lines)
    assert any(line.startswith(good) and line.endswith("hxxp[:]//be[.]test/intact-u7i8")
               for line in lines)
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show", bad]) == 1
    out, err = capsys.readouterr()
    assert out == "" and damaged in err and "intact" not in err


async def test_a_verdict_on_a_damaged_case_is_refused_and_nothing_is_stored(
    start: Start,
) -> None:
    """An analyst (through the API) cannot record a verdict on a case whose URL does not
    open: 500 naming the record, no verdict stored, the case still waiting; the case beside
    it is assessed as before."""
    gw = await start()
    bad = await file_case(gw, "Please look at http://be.test/broken-a1s2", "broken-a1s2")
    good = await file_case(gw, "Please look at http://be.test/intact-d3f4", "intact-d3f4")
    await store_raw(gw.engine, cases, "url", uuid.UUID(bad),
                    await stored_value(gw.engine, cases, "url", uuid.UUID(good)))
    await ready_user(gw.console.context.backend, "ana")
    token = await create_token(gw.console.context.backend, "ana", now=utcnow())
    verdict = {"verdict": "legal", "classification": "not_illegal", **LEGAL_DETAILS}
    async with aiohttp.ClientSession(base_url=base(gw),
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"/api/v1/cases/{bad}/assessment", json=verdict) as response:
            refused = response.status, await response.json()
        async with http.post(f"/api/v1/cases/{good}/assessment", json=verdict) as response:
            assessed = response.status, await response.json()
    assert refused[0] == 500
    assert refused[1]["error"].startswith(f"cannot open cases.url of record {bad}")
    assert "intact" not in json.dumps(refused[1])
    assert assessed[0] == 200 and assessed[1]["status"] == "closed_legal"
    async with gw.engine.connect() as conn:
        verdicts = (await conn.execute(select(assessments.c.case_id))).scalars().all()
        status = (await conn.execute(select(cases.c.status)
                                     .where(cases.c.id == uuid.UUID(bad)))).scalar_one()
    assert verdicts == [uuid.UUID(good)] and status == "awaiting_assessment"
