"""Encryption at rest, end to end: reports by SMTP, by the form and by the API, with
distinctive URLs, host names, subjects, texts, reporter addresses and attachment names, go
through normalising, locating, assessment and an encrypted referral; then a byte scan of
everything the gateway keeps (the SQLite file with its WAL and SHM, a ``backup``, the outbox
folder, the logs, and a ``pg_dump`` of the PostgreSQL variant) finds none of those strings:
not in UTF-8, not in UTF-16, not in the base64 or quoted-printable lines the raw messages
carried them in. The console API still shows them, opened."""

from __future__ import annotations

import asyncio
import base64
import json
import quopri
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from sqlalchemy import make_url, select, update

from gateway.app import Gateway
from gateway.backup import backup
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.store.case_view import list_cases
from gateway.store.tables import cases
from tests.conftest import BACKENDS, PG_URL, ConfigFactory, PgSchema, serving
from tests.console_client import ILLEGAL_DETAILS, ready_user
from tests.dns_server import DnsServer, Zone
from tests.outbound.conftest import HOTLINE_PASSPHRASE, Keys
from tests.outbound.test_refer import api, assess, case_of, referral_in
from tests.smtp_client import REPORT_TO, deliver

# Strings that occur nowhere but in what the reporters sent (and the analyst wrote).
HOST = "quokka-hosting-e2e.be.test"
ALIAS = "quokka-alias-e2e.test"  # a CNAME to HOST: a DNS name only the evidence holds
SECRETS = {
    "smtp url": f"http://{HOST}/marsupial-gallery-4471",
    "alias url": f"http://{ALIAS}/wallaby-folder-9902",
    "form url": f"http://{HOST}/form-bandicoot-2208",
    "api url": f"http://{HOST}/api-numbat-3317",
    "host": HOST,
    "alias": ALIAS,
    "subject": "Quokka sighting nightfall report",
    "text": "I stumbled on this while looking for platypus recipes",
    "qp text": "Vu sur un forum caché de bilby",
    "sender": "quokka.reporter@mailbox-e2e.example",
    "from header": "Quentin Quokkasson",
    "attachment": "quokka-holiday-snapshot.png",
    "form where": "a chatroom named potoroo-lounge",
    "form text": "the page shows echidna thumbnails",
    "form email": "form-reporter-quoll@example.org",
    "api text": "found through a dingo search engine",
    "api email": "api-reporter-cassowary@example.org",
    "note": "analyst note: kookaburra watermark",
}


def smtp_reports() -> list[tuple[str, bytes]]:
    """(envelope sender, raw) of two reports: one base64, with an attachment; one
    quoted-printable."""
    first = EmailMessage()
    first["From"] = f"{SECRETS['from header']} <{SECRETS['sender']}>"
    first["To"] = REPORT_TO
    first["Subject"] = SECRETS["subject"]
    first["Message-ID"] = "<e2e-one@mailbox-e2e.example>"
    first.set_content(f"{SECRETS['text']}: {SECRETS['smtp url']}\n",
                      cte="base64")
    first.add_attachment(b"\x89PNG\r\n\x1a\n not really", maintype="image", subtype="png",
                         filename=SECRETS["attachment"])
    second = EmailMessage()
    second["From"] = SECRETS["sender"]
    second["To"] = REPORT_TO
    second["Subject"] = "another"
    second["Message-ID"] = "<e2e-two@mailbox-e2e.example>"
    second.set_content(f"{SECRETS['qp text']} {SECRETS['alias url']}\n",
                       cte="quoted-printable")
    return [(SECRETS["sender"], bytes(first)), (SECRETS["sender"], bytes(second))]


def needles(raws: list[bytes]) -> dict[str, bytes]:
    """Every form a secret may take on disk: UTF-8, UTF-16 (both orders), and each line of
    the raw messages' encoded bodies."""
    found: dict[str, bytes] = {}
    for name, text in SECRETS.items():
        found[name] = text.encode()
        found[f"{name} (utf-16le)"] = text.encode("utf-16-le")
        found[f"{name} (utf-16be)"] = text.encode("utf-16-be")
    for raw in raws:
        body = raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else raw
        for line in body.splitlines():
            line = line.strip()
            if len(line) >= 24 and not line.startswith((b"--", b"Content-")):
                found[f"raw line {line[:20]!r}"] = line
    # The encoded forms of the two bodies, as the messages carried them.
    for name in ("text", "smtp url"):
        encoded = base64.b64encode(SECRETS[name].encode())[:24]
        assert encoded in b"".join(raws) or name == "smtp url"
    qp = quopri.encodestring(SECRETS["qp text"].encode())
    assert b"=C3=A9" in qp
    found["qp text (quoted-printable)"] = qp.strip()
    return found


def scan(label: str, data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [f"{label}: {name}" for name, needle in forms.items() if needle in data]


@dataclass
class Run:
    gw: Gateway
    backend: str
    schema: PgSchema | None
    database: Path | None
    outbox: Path


@pytest.fixture(params=BACKENDS)
async def run(request: pytest.FixtureRequest, make_config: ConfigFactory, dns: DnsServer,
              zone: Zone, mmdb: dict[str, Path], keys: Keys, tmp_path: Path
              ) -> AsyncIterator[Run]:
    zone.add(HOST, "A", "193.190.1.77")
    zone.cname(ALIAS, HOST)
    secret = tmp_path / "passphrase"
    secret.write_text(HOTLINE_PASSPHRASE + "\n")
    outbox = tmp_path / "outbox"
    sections: dict[str, Any] = {
        "locate": {"nameservers": [dns.nameserver], "geoip_db": str(mmdb["country"]),
                   "asn_db": str(mmdb["asn"]), "timeout": "10s"},
        "gpg": {"home": str(keys.hotline_home), "signing_key": keys.hotline,
                "passphrase_file": str(secret)},
        "outbound": {"transport": "file", "file_dir": str(outbox)},
        "routing": {"destinations": {
            "police": {"email": "cp@police.test", "key": keys.recipient},
            "police_international": {"email": "intl@police.test", "key": keys.recipient}}},
        "intake": {"keep_reporter_ip": True},
        "http": {"listen": ["127.0.0.1:0"], "reports_per_minute": 1000},
    }
    schema: PgSchema | None = None
    engine = None
    if request.param == "postgresql":
        schema = PgSchema(PG_URL)
        await schema.create()
        config = make_config(database={"url": PG_URL}, **sections)
        engine = await open_database(config, **schema.connect_args)
        context = serving(config, engine=engine)
        database = None
    else:
        config = make_config(**sections)
        context = serving(config)
        database = Path(make_url(config.database.url).database or "")
    try:
        gw = await context.__aenter__()
        try:
            yield Run(gw, request.param, schema, database, outbox)
        finally:
            await context.__aexit__(None, None, None)
    finally:
        if engine is not None:
            await engine.dispose()
        if schema is not None:
            await schema.drop()


async def public_post(gw: Gateway, path: str, **kwargs: Any) -> tuple[int, str]:
    host, port = gw.public.addresses[0]
    async with aiohttp.ClientSession() as http, http.post(
            f"http://{host}:{port}{path}", allow_redirects=False, **kwargs) as response:
        return response.status, await response.text()


async def waiting_cases(gw: Gateway, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while True:
            async with gw.engine.connect() as conn:
                found = await list_cases(conn, status="awaiting_assessment")
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)


def walk(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def scan_files(run: Run, tmp_path: Path, forms: dict[str, bytes]) -> list[str]:
    """What the gateway keeps on disk, scanned: the outbox, and the SQLite files with a
    ``backup`` of them, or a ``pg_dump``."""
    outboxed = list(walk(run.outbox))
    assert outboxed, "no referral in the outbox"
    leaks = [hit for path in outboxed
             for hit in scan(f"outbox {path.name}", path.read_bytes(), forms)]
    if run.database is not None:
        copy = tmp_path / "backup.db"
        backup(f"sqlite:///{run.database}", copy)
        files = [run.database, run.database.with_name(run.database.name + "-wal"),
                 run.database.with_name(run.database.name + "-shm"), copy]
        assert files[1].exists() and files[1].stat().st_size > 0, "no WAL to scan"
        for path in files:
            leaks += scan(path.name, path.read_bytes(), forms)
        return leaks
    assert run.schema is not None
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "-n", run.schema.name,
         make_url(PG_URL).set(drivername="postgresql").render_as_string(False)],
        capture_output=True, check=True).stdout
    assert b"COPY" in dump and len(dump) > 10_000
    return leaks + scan("pg_dump", dump, forms)


async def test_nothing_sensitive_is_readable_at_rest(
        run: Run, keys: Keys, tmp_path: Path) -> None:
    gw = run.gw
    raws = smtp_reports()
    forms = needles([raw for _, raw in raws])
    with structlog.testing.capture_logs() as logged:
        for sender, raw in raws:
            code, _ = await deliver(gw.smtp.addresses[0][1], raw, sender=sender)
            assert code == 250
        status, _ = await public_post(gw, "/report", data={
            "form_id": "e2e-form", "lang": "en", "urls": SECRETS["form url"],
            "seen_where": SECRETS["form where"], "description": SECRETS["form text"],
            "email": SECRETS["form email"], "consent": "yes", "website": ""})
        assert status == 303, _
        status, _ = await public_post(gw, "/api/v1/reports", json={
            "urls": [SECRETS["api url"]], "description": SECRETS["api text"],
            "reporter": {"email": SECRETS["api email"]}})
        assert status == 201

        found = await waiting_cases(gw, 4)
        by_url = {case["canonical_url"]: case for case in found}
        assert set(by_url) == {SECRETS[k] for k in ("smtp url", "alias url", "form url",
                                                    "api url")}
        backend = gw.console.context.backend
        await ready_user(backend, "ana")
        token = await create_token(backend, "ana", now=utcnow())
        smtp_case = str(by_url[SECRETS["smtp url"]]["id"])
        for case in found:
            await assess(gw, token, str(case["id"]))
        status, answer = await api(gw, "GET", f"/api/v1/cases/{smtp_case}", token)
        assert status == 200, answer
        status, answer = await api(gw, "POST", f"/api/v1/cases/{smtp_case}/assessment",
                                   token, {"verdict": "illegal",
                                           "classification": "baseline", **ILLEGAL_DETAILS,
                                           "note": SECRETS["note"]})
        for case in found:
            await referral_in(gw, str(case["id"]), "sent")

        # Every public path shows what was reported, opened.
        status, shown = await api(gw, "GET", f"/api/v1/cases/{smtp_case}", token)
        assert status == 200
        text = json.dumps(shown, ensure_ascii=False)
        for name in ("smtp url", "subject", "host"):
            assert SECRETS[name] in text, name
        view = await case_of(gw, smtp_case)
        assert view["canonical_url"] == SECRETS["smtp url"]

    leaks = scan("logs", json.dumps(logged, default=str).encode(), forms)
    leaks += await asyncio.to_thread(scan_files, run, tmp_path, forms)
    assert leaks == []


async def test_a_moved_or_altered_url_is_refused_and_the_others_still_serve(
        run: Run) -> None:
    """A case's sealed URL copied into another case, or altered by one byte, does not open:
    the error names the record, and the queue and the other cases go on serving."""
    gw = run.gw
    for n, path in enumerate(("one", "two", "three")):
        code, _ = await deliver(gw.smtp.addresses[0][1], (
            f"From: r@example.test\r\nTo: {REPORT_TO}\r\nSubject: s{n}\r\n"
            f"Message-ID: <t{n}@example.test>\r\n\r\nhttp://{HOST}/{path}\r\n").encode())
        assert code == 250
    found = await waiting_cases(gw, 3)
    ids = {case["canonical_url"].rsplit("/", 1)[1]: uuid.UUID(case["id"]) for case in found}
    async with gw.engine.begin() as conn:
        stored = {row.id: row.canonical_url for row in await conn.execute(
            select(cases.c.id, cases.c.canonical_url))}
        assert all(value.startswith(b"\x01") for value in stored.values())
        await conn.execute(update(cases).where(cases.c.id == ids["two"])
                           .values(canonical_url=stored[ids["one"]]))
        altered = stored[ids["three"]]
        flipped = altered[:-6] + bytes((altered[-6] ^ 1,)) + altered[-5:]
        await conn.execute(update(cases).where(cases.c.id == ids["three"])
                           .values(canonical_url=flipped))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    status, answer = await api(gw, "GET", f"/api/v1/cases/{ids['one']}", token)
    assert status == 200 and answer["canonical_url"] == f"http://{HOST}/one"
    for damaged in ("two", "three"):
        status, answer = await api(gw, "GET", f"/api/v1/cases/{ids[damaged]}", token)
        assert status >= 400
        message = json.dumps(answer)
        assert str(ids[damaged]) in message and HOST not in message
    status, listing = await api(gw, "GET", "/api/v1/cases", token)
    assert status == 200
    assert str(ids["one"]) in json.dumps(listing)
    # Still serving: a new report becomes a case.
    code, _ = await deliver(gw.smtp.addresses[0][1], (
        f"From: r@example.test\r\nTo: {REPORT_TO}\r\nSubject: s\r\n"
        f"Message-ID: <t9@example.test>\r\n\r\nhttp://{HOST}/four\r\n").encode())
    assert code == 250
    assert any(str(c["canonical_url"]).endswith("/four")
               for c in await waiting_cases(gw, 4) if c["canonical_url"])
    assert uuid.UUID(str(ids["one"]))
