"""The normalise stage: stored submissions become cases, exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import quopri
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Gateway
from gateway.stats import collect_stats
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.case_view import get_case, list_cases
from gateway.store.ids import uuid7
from gateway.store.references import ReferenceAllocator
from gateway.store.tables import case_reports, submissions
from gateway.store.writer import NewSubmission, SubmissionWriter
from intake import hosts
from intake.normalise import NormaliseStage, _normalise_all, normalise_message
from tests.conftest import Start
from tests.console_client import StaffClient, base, ready_user
from tests.smtp_client import deliver, queued_reference
from tests.submissions import opened_submission

SPELLINGS = [
    "http://www.example.com/gallery/index.html",
    "hxxp://www[.]example[.]com/gallery/index.html",
    "WWW.EXAMPLE.COM/gallery/index.html?utm_source=mail",
    "http://www.example.com:80/gallery/./index.html#top",
    "<http://www.example.com/gallery//index.html>",
]


def mail(n: int, body: str, *, sender: str = "reporter@example.org") -> bytes:
    return (
        f"From: {sender}\r\nTo: report@hotline.test\r\nSubject: found this {n}\r\n"
        f"Message-ID: <n{n}@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def submission(raw: bytes) -> NewSubmission:
    return NewSubmission(
        channel="smtp", received_at=datetime.now(UTC), raw=raw,
        body_sha256=hashlib.sha256(raw).hexdigest(), message_id=None,
    )


@pytest.fixture
async def backend(engine: AsyncEngine) -> AsyncIterator[WriteBackend]:
    b = await open_write_backend(engine, busy_timeout=30)
    yield b
    await b.close()


async def store(backend: WriteBackend, raws: list[bytes]) -> list[str]:
    writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
    task = asyncio.create_task(writer.run())
    receipts = await asyncio.gather(*(writer.submit(submission(r)) for r in raws))
    await writer.stop()
    await task
    return [r.reference for r in receipts]


def stage(backend: WriteBackend, name: str = "w1", **kwargs: object) -> NormaliseStage:
    return NormaliseStage(backend, None, worker=name, legal_window=timedelta(days=180),
                          **kwargs)  # type: ignore[arg-type]


async def drain(*stages: NormaliseStage) -> None:
    """Run the stages side by side until none of them finds work."""
    while sum(await asyncio.gather(*(s.run_once() for s in stages))):
        pass


async def test_one_url_in_many_spellings_from_many_reporters_is_one_case(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Five spellings of one URL, from five reports, give one case counting five reports."""
    references = await store(backend, [
        mail(n, f"Please look at {url} thanks") for n, url in enumerate(SPELLINGS)])
    await drain(stage(backend))
    async with engine.connect() as conn:
        [case] = await list_cases(conn)
    assert case["canonical_url"] == "http://www.example.com/gallery/index.html"
    assert case["report_count"] == 5
    assert case["status"] == "new" and case["kind"] == "url"
    assert sorted(case["references"]) == sorted(references)


async def test_several_workers_process_each_submission_exactly_once(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Three workers draining 120 submissions together count every report exactly once."""
    raws = [mail(n, f"see {SPELLINGS[n % 5]} and http://example.net/{n % 3}") for n in range(120)]
    await store(backend, raws)
    second = await open_write_backend(engine, busy_timeout=30)
    try:
        await drain(stage(backend, "w1", batch_size=7), stage(second, "w2", batch_size=5),
                    stage(backend, "w3", batch_size=11))
    finally:
        await second.close()
    async with engine.connect() as conn:
        counts = {c["canonical_url"]: c["report_count"] for c in await list_cases(conn)}
        parsed = (await conn.execute(select(func.count()).select_from(submissions)
                                     .where(submissions.c.status == "parsed"))).scalar_one()
    assert parsed == 120
    assert counts == {
        "http://www.example.com/gallery/index.html": 120,
        "http://example.net/0": 40, "http://example.net/1": 40, "http://example.net/2": 40,
    }


async def test_a_worker_that_dies_mid_batch_loses_and_doubles_nothing(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A claim that is never applied expires; another worker does the work; the late apply of
    the first worker then changes nothing."""
    await store(backend, [mail(n, f"see http://example.com/{n}") for n in range(4)])
    now = datetime.now(UTC)
    dead = stage(backend, "dead", lease=timedelta(minutes=2))
    until = now + timedelta(minutes=2)
    claimed = await backend.transaction(partial(dead._claim, now=now, until=until))
    assert len(claimed) == 4
    # Within the lease nobody else takes them...
    assert await stage(backend, "w2").run_once() == 0
    # ...after it another worker does.
    later = stage(backend, "w2", clock=lambda: now + timedelta(minutes=3))
    assert await later.run_once() == 4
    results = _normalise_all(claimed, backend.sealer)
    late = await backend.transaction(partial(
        dead._apply, results=[(c, *r) for c, r in zip(claimed, results, strict=True)], now=now))
    assert late == 0
    async with engine.connect() as conn:
        assert [c["report_count"] for c in await list_cases(conn)] == [1, 1, 1, 1]


async def test_unparseable_submission_becomes_parse_failed_with_its_error(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A MIME bomb is marked parse_failed with the reason, which stats count and its own
    no_url case, waiting for an analyst, carries as a flag."""
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(20_000))
    bomb = (
        "From: x@example.org\r\nTo: report@hotline.test\r\nSubject: bomb\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        f"{parts}--b--\r\n"
    ).encode()
    await store(backend, [bomb, mail(1, "fine: http://example.com/ok")])
    w = stage(backend)
    await drain(w)
    assert w.failed == 1
    async with engine.connect() as conn:
        row = await opened_submission(conn, submissions.c.status, submissions.c.parse_error,
                                      filter_by=submissions.c.status != "parsed")
        stats = await collect_stats(engine)
        found = {c["kind"]: c for c in await list_cases(conn)}
    assert row.status == "parse_failed" and row.parse_error.startswith("mime:")
    assert stats["submissions_by_status"] == {"parse_failed": 1, "parsed": 1}
    assert found["url"]["canonical_url"] == "http://example.com/ok"
    assert found["url"]["report_flags"] == [] and "parse_failed" not in found["url"]["flags"]
    unread = found["no_url"]
    assert unread["status"] == "awaiting_assessment" and "parse_failed" in unread["flags"]
    [flag] = unread["report_flags"]
    assert flag == {"reference": unread["references"][0], "flag": "parse_failed",
                    "error": row.parse_error,
                    "message": f"the report could not be read: {row.parse_error}"}


async def test_a_report_without_urls_keeps_its_text_for_the_analyst(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """No URL found: a no_url case whose report text and subject are kept."""
    await store(backend, [mail(1, "There is a bad site but I forgot the address.")])
    await drain(stage(backend))
    async with engine.connect() as conn:
        [case] = await list_cases(conn)
        detail = await get_case(conn, __import__("uuid").UUID(case["id"]))
        text = await opened_submission(conn, submissions.c.report_text, submissions.c.subject)
    assert case["kind"] == "no_url" and case["url"] is None
    assert detail is not None and detail["reports"][0]["reference"] == case["references"][0]
    assert "forgot the address" in text.report_text and text.subject == "found this 1"


async def test_logs_never_carry_urls_or_reporter_addresses(
    backend: WriteBackend,
) -> None:
    """Normalising logs references and counts only."""
    with structlog.testing.capture_logs() as events:
        await store(backend, [mail(1, "see http://secret-site.example.com/x",
                                   sender="private.person@example.org")])
        await drain(stage(backend))
    text = repr(events)
    assert "normalise.batch" in text
    for private in ("secret-site", "private.person", "example.org"):
        assert private not in text


async def test_the_stage_makes_progress_even_while_intake_never_rests(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Intake comes first, but a stage facing endless intake still works a batch per deferral."""
    await store(backend, [mail(n, f"see http://example.com/{n}") for n in range(3)])
    busy = stage(backend, intake_busy=lambda: True, max_defer=0.1, idle_poll=0.05)
    task = asyncio.create_task(busy.run())
    try:
        async with asyncio.timeout(10):
            while busy.processed < 3:
                await asyncio.sleep(0.02)
    finally:
        await busy.stop()
        await task
    async with engine.connect() as conn:
        assert len(await list_cases(conn)) == 3


async def test_a_stopping_worker_hands_back_what_it_claimed(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Claims released on stop (or after a failed batch) are taken at once by another worker,
    without waiting for the lease to run out."""
    await store(backend, [mail(n, f"see http://example.com/{n}") for n in range(3)])
    now = datetime.now(UTC)
    leaving = stage(backend, "leaving")
    claimed = await backend.transaction(
        partial(leaving._claim, now=now, until=now + timedelta(minutes=2)))
    assert len(claimed) == 3
    assert await stage(backend, "w2").run_once() == 0
    assert await leaving.release() == 3
    assert await stage(backend, "w2").run_once() == 3
    async with engine.connect() as conn:
        assert len(await list_cases(conn)) == 3


async def test_the_submission_keeps_what_was_read_from_it(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Subject, reporter text, URL count and the attachment's hashes (never its bytes) are
    recorded on the submission, with the time it was read; the claim is let go."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "two links and a file"
    message["Message-ID"] = "<kept@example.org>"
    message.set_content("See http://example.com/a and http://example.net/b please.")
    message.add_attachment(b"not really a document", maintype="application",
                           subtype="octet-stream", filename="notes.bin")
    await store(backend, [message.as_bytes()])
    await drain(stage(backend))
    async with engine.connect() as conn:
        row = await opened_submission(conn)
    assert (row.status, row.parse_error, row.subject, row.url_count) == (
        "parsed", None, "two links and a file", 2)
    assert "http://example.com/a" in row.report_text
    assert row.parsed_at is not None and row.claimed_by is None and row.claimed_until is None
    [attachment] = row.attachments
    assert attachment["filename"] == "notes.bin"
    assert attachment["sha256"] == hashlib.sha256(b"not really a document").hexdigest()


@pytest.mark.parametrize("busy", [True, False])
async def test_a_batch_is_filed_in_short_transactions_only_while_reports_arrive(
    backend: WriteBackend, engine: AsyncEngine, busy: bool,
) -> None:
    """While intake is busy a batch is filed a few submissions per transaction, so intake's
    commits interleave; otherwise in one. (Each transaction stamps its own time.)"""
    from intake.normalise import APPLY_GROUP

    await store(backend, [mail(n, f"see http://example.com/{n % 3}") for n in range(20)])
    ticks = iter(range(1, 1000))
    clock = lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))  # noqa: E731
    worker = stage(backend, batch_size=20, clock=clock, intake_busy=lambda: busy)
    assert await worker.run_once() == 20
    async with engine.connect() as conn:
        stamps = (await conn.execute(select(submissions.c.parsed_at))).scalars().all()
        [total] = [c["report_count"] for c in await list_cases(conn)
                   if c["canonical_url"] == "http://example.com/0"]
    sizes = sorted(Counter(stamps).values(), reverse=True)
    assert sizes == ([APPLY_GROUP, APPLY_GROUP, 20 - 2 * APPLY_GROUP] if busy else [20])
    assert total == 7


async def test_a_word_after_a_scheme_stays_text_for_the_analyst(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """``http://hello/`` in a mail files no case for it: the report is a no_url case whose text
    keeps what was written."""
    await store(backend, [mail(1, "look at http://hello/ and hello.zzz/x")])
    await drain(stage(backend))
    async with engine.connect() as conn:
        [case] = await list_cases(conn)
        text = (await opened_submission(conn, submissions.c.report_text)).report_text
    assert case["kind"] == "no_url"
    assert "http://hello/ and hello.zzz/x" in text


async def test_a_nul_inside_a_url_never_joins_its_halves(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A NUL inside a URL's host files no URL made of its halves, nor its second half; the
    report text shows where the NUL was (as U+2400)."""
    body = "see http://exa\0mple.com/a and http://example.org/gal\0lery"
    raw = mail(1, body).replace(b"charset=utf-8", b"charset=us-ascii")
    await store(backend, [raw])
    await drain(stage(backend))
    async with engine.connect() as conn:
        found = [c["canonical_url"] for c in await list_cases(conn)]
        text = (await opened_submission(conn, submissions.c.report_text)).report_text
    assert found == ["http://example.org/gal"]
    assert "http://exa\u2400mple.com/a" in text and "gal\u2400lery" in text


async def test_what_is_not_filed_is_a_flag_on_the_report(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """URLs beyond the cap and a URL too long to take are recorded on the submission, and
    every case it reports shows them."""
    from intake.normalise import MAX_URLS

    urls = "\n".join(f"http://host{n}.example.com/" for n in range(MAX_URLS + 50))
    huge = "http://example.net/" + "a" * 40_000
    [reference] = await store(backend, [mail(1, f"{huge}\n{urls}\n{huge}\n{huge}x")])
    await drain(stage(backend))
    async with engine.connect() as conn:
        row = await opened_submission(conn, submissions.c.flags, submissions.c.url_count)
        found = await list_cases(conn)
    assert row.url_count == MAX_URLS and len(found) == MAX_URLS
    assert row.flags == [
        {"flag": "urls_over_cap", "found": MAX_URLS + 50, "filed": MAX_URLS},
        {"flag": "url_too_long", "length": len(huge) + 1, "count": 2}]
    for case in found:
        assert [(f["reference"], f["flag"]) for f in case["report_flags"]] == [
            (reference, "urls_over_cap"), (reference, "url_too_long")]
        assert {"urls_over_cap", "url_too_long"} <= set(case["flags"])


# --- through the running gateway: SMTP in, the case view (API, CLI, console) out ------------

async def reported(gw: Gateway, message: bytes) -> tuple[str, dict[str, Any]]:
    """Deliver ``message``; its reference, and its first case as ``get_case`` shows it (what
    the console API, ``cases show --json`` and the console page show) once it is filed."""
    code, text = await deliver(gw.smtp.addresses[0][1], message)
    assert code == 250, text
    reference = queued_reference(text)
    async with asyncio.timeout(60):
        while True:
            async with gw.engine.connect() as conn:
                ids = (await conn.execute(
                    select(case_reports.c.case_id).join(
                        submissions, submissions.c.id == case_reports.c.submission_id)
                    .where(submissions.c.reference == reference)
                    .order_by(case_reports.c.id))).scalars().all()
                if ids:
                    case = await get_case(conn, ids[0])
                    assert case is not None
                    return reference, case
            await asyncio.sleep(0.05)


def qp_mail(tag: str, body: str, headers: str = "") -> bytes:
    """A report whose text travels quoted-printable, so no line on the wire is long."""
    encoded = quopri.encodestring(body.encode()).replace(b"\n", b"\r\n")
    return (f"From: reporter@example.test\r\nTo: report@hotline.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.test>\r\n{headers}MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + encoded


async def test_a_mail_with_ten_thousand_urls_is_flagged_on_its_cases(start: Start) -> None:
    """Of 10,000 URLs in one mail, 200 are filed, and each of their cases says that 10,000
    were found."""
    gw = await start()
    body = "\n".join(f"http://host{n}.example.com/page" for n in range(10_000))
    reference, case = await reported(gw, qp_mail("many", body))
    assert case["kind"] == "url" and "urls_over_cap" in case["flags"]
    assert case["report_flags"] == [{
        "reference": reference, "flag": "urls_over_cap", "found": 10_000, "filed": 200,
        "message": "10000 URLs found in this report; only the first 200 were filed as "
                   "cases"}]
    async with gw.engine.connect() as conn:
        filed = (await conn.execute(select(func.count()).select_from(case_reports)))
    assert filed.scalar_one() == 200


async def test_a_url_of_100_kb_is_flagged_not_lost(start: Start) -> None:
    """A 100 KB URL is not filed, and the report's case says so, with the URL's length."""
    gw = await start()
    url = "http://example.com/" + "a" * 100_000
    reference, case = await reported(gw, qp_mail("long", f"see {url} please"))
    assert case["kind"] == "no_url" and case["status"] == "awaiting_assessment"
    assert case["report_flags"] == [{
        "reference": reference, "flag": "url_too_long", "length": len(url), "count": 1,
        "message": f"URL too long: {len(url)} characters, not filed"}]


async def test_an_unreadable_mail_is_a_case_in_the_queue_with_the_reason(start: Start) -> None:
    """A mail whose header block is over the MIME limit is a no_url case awaiting assessment,
    whose flag gives the parse error, on the case page too."""
    gw = await start()
    filler = "".join(f"X-Filler-{n}: {'x' * 200}\r\n" for n in range(700))  # ~150 KB
    reference, case = await reported(gw, qp_mail("headers", "see http://example.com/",
                                                  headers=filler))
    assert case["kind"] == "no_url" and case["status"] == "awaiting_assessment"
    [flag] = case["report_flags"]
    assert flag["flag"] == "parse_failed" and flag["reference"] == reference
    assert flag["error"].startswith("mime: header block larger than")
    async with gw.engine.connect() as conn:
        queue = await list_cases(conn, status="awaiting_assessment")
    assert [c["id"] for c in queue] == [case["id"]] and "parse_failed" in queue[0]["flags"]
    user = await ready_user(gw.console.context.backend, "ana")
    browser = StaffClient(base(gw))
    try:
        await browser.login(user)
        status, page = await browser.get(f"/cases/{case['id']}")
    finally:
        await browser.close()
    assert status == 200
    assert f"{reference}: the report could not be read: mime: header block larger than" in page


@given(st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), max_size=3),
       st.from_regex(r"[a-z]{1,12}", fullmatch=True).filter(
           lambda tld: tld not in hosts.SPECIAL_USE_SUFFIXES
           and hosts._suffix_list().publicsuffix(f"example.{tld}") is None),
       st.sampled_from(["http://{}/", "https://{}/x?y=1", "www.{}", "{}/path", "hxxp://{}",
                        "<a href=\"http://{}/\">here</a>"]))
@example(["hello"], "zzz", "http://{}/")
def test_a_host_under_no_public_suffix_never_becomes_a_case(
    labels: list[str], tld: str, spelling: str,
) -> None:
    """However a mail writes a name whose top label no public suffix list holds, it files no
    URL (the report is kept as a no_url case, with its text)."""
    text = spelling.format(".".join([*labels, tld]))
    raw = mail(1, f"look: {text} now").replace(b"text/plain", b"text/html")
    assert normalise_message(raw).urls == []


def test_an_html_link_that_is_no_url_is_shown_in_the_text() -> None:
    """An anchor whose target is no URL files nothing, and the report's text shows the target
    (the anchor's words alone would hide it); mailto: and in-page links are left out."""
    body = ('<p>Look <a href="http://hello/">here</a>, <a href="hxxp://exa\0mple.com/x">there'
            '</a>, <a href="mailto:a@example.org">me</a> <a href="#top">top</a></p>')
    raw = mail(1, body).replace(b"text/plain", b"text/html")
    result = normalise_message(raw)
    assert result.urls == []
    assert result.report_text == ("Look here, there, me top\n\nLinks that are not web "
                                  "addresses:\nhttp://hello/\nhxxp://exa\u2400mple.com/x")


def test_past_the_counting_limit_the_flag_says_at_least() -> None:
    """A list longer than MAX_COUNTED is counted that far, and flagged as at least so many."""
    from gateway.store.case_view import describe
    from intake.normalise import MAX_COUNTED, MAX_URLS

    body = "\n".join(f"http://a{n}.example.com/" for n in range(MAX_COUNTED + 10))
    result = normalise_message(mail(1, body))
    assert len(result.urls) == MAX_URLS
    assert result.flags == [{"flag": "urls_over_cap", "found": MAX_COUNTED, "filed": MAX_URLS,
                             "more": True}]
    assert describe(result.flags[0]).startswith(f"at least {MAX_COUNTED} URLs found")


def test_a_batch_is_opened_parsed_and_sealed_in_passes_each_in_its_place() -> None:
    """The executor's work on a batch, opened, parsed and sealed pass by pass: a large message
    (opened only at its turn), a small one, one whose raw message is gone, one sealed for
    another record and one under a key this process lacks each get their own outcome, in
    the batch's order, sealed for their own record."""
    from gateway.store.sealed import open_value, seal_value
    from gateway.store.sealing import Keyring, Sealer, UnknownKey
    from intake.normalise import _OPEN_AHEAD, _Claimed

    now = datetime.now(UTC)
    sealer = Sealer(Keyring.generate(now))
    elsewhere = Sealer(Keyring.generate(now))
    ids = [uuid7() for _ in range(5)]
    large = mail(0, "big: http://example.com/large\r\n" + "x" * 76 * (_OPEN_AHEAD // 76 + 1))
    raws = [seal_value(sealer, submissions.c.raw, ids[0], large),
            seal_value(sealer, submissions.c.raw, ids[1], mail(1, "http://example.com/small")),
            None,
            seal_value(sealer, submissions.c.raw, ids[0], mail(3, "http://example.com/moved")),
            seal_value(elsewhere, submissions.c.raw, ids[4], mail(4, "http://example.com/k"))]
    assert len(raws[0]) > _OPEN_AHEAD
    batch = [_Claimed(sid, f"CF-{n}", "smtp", now, raw)
             for n, (sid, raw) in enumerate(zip(ids, raws, strict=True))]
    results = _normalise_all(batch, sealer)
    assert isinstance(results[4], UnknownKey)
    outcomes = [r for r in results[:4] if not isinstance(r, UnknownKey)]
    assert len(outcomes) == 4
    assert [[u.url for u in r.urls] for r, _ in outcomes] == [
        ["http://example.com/large"], ["http://example.com/small"], [], []]
    errors = [r.error or "" for r, _ in outcomes]
    assert errors[:3] == ["", "", "raw message no longer stored"]
    assert errors[3].startswith("sealed: ") and str(ids[3]) in errors[3]
    assert [outcome["sid"] for _, outcome in outcomes] == ids[:4]
    subject = open_value(sealer, submissions.c.subject, ids[1], outcomes[1][1]["new_subject"])
    assert subject == "found this 1"
