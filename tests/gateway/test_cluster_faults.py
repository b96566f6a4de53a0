"""Several ``serve`` processes on one PostgreSQL database, and the faults a cluster meets.

Real processes, a real PostgreSQL (a database of its own per test, copied from one migrated
once per module), real SMTP and HTTP clients. The shared PostgreSQL server is never stopped:
where the database must go away, the instances reach it through a TCP proxy in this process
(``tests/tcp_proxy.py``) that cuts every connection (a restart) or stops passing bytes (a
network pause). Leases are 5 s (``[gateway] stage_lease``) so that an instance's death is
over in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy import func, make_url, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_module
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.demo import setup_demo
from gateway.store.backend import open_write_backend
from gateway.store.case_view import list_cases
from gateway.store.tables import (
    case_reports,
    cases,
    outbox,
    outbox_attempts,
    periodic_runs,
    referrals,
    submissions,
    users,
)
from gateway.store.times import aware
from tests.cluster import until
from tests.conftest import PG_URL
from tests.console_client import ILLEGAL_DETAILS, StaffClient, code, hidden
from tests.daemon import Daemon
from tests.dns_server import DnsServer, Zone
from tests.locating import standard_zone
from tests.outbound.conftest import stop_agent
from tests.smtp_client import deliver, queued_reference, report
from tests.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.startup,  # processes, and a database made by setup-demo
    pytest.mark.skipif(not PG_URL, reason="HOTLINE_TEST_PG_URL is not set"),
]

SIGNING_KEY = "C43BF0D756F87F3E16B27BC11ACDB04D10546F87"  # demo/keys: the demo hotline
POLICE_KEY = "F4E1B55EAF3C780CFEAEEAEC65BC69DAC54E310D"
HOTLINE_NL_KEY = "4DFEC3D880142F2211EFBF4A08EDA2FDDCFF1F3A"
#: A URL's host -> where routing refers it (home country BE: domestic to the police, NL to
#: the INHOPE partner there).
DESTINATION = {"be.test": "police", "nl.test": "hotline:NL", "slow.be.test": "police"}


def _server() -> URL:
    return make_url(PG_URL).set(drivername="postgresql")


def _dsn(database: str | None = None) -> str:
    url = _server()
    return (url.set(database=database) if database else url).render_as_string(False)


@dataclass(frozen=True)
class Template:
    """A database migrated once by ``setup-demo`` (copied per test), and what it made: the
    keyring, a gpg home with the demo keys, the supervisor's one-time password and TOTP."""

    folder: Path
    database: str
    password: str
    totp_secret: str


def _config_text(folder: Path, template: Template, *, database: str, port: int,
                 nameserver: str = "127.0.0.1:9", mmdb: dict[str, Path] | None = None,
                 parts: tuple[str, ...] = ("smtp", "http", "console", "admin", "stages"),
                 extra: str = "") -> str:
    pg = _server()
    url = pg.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=port,
                 database=database).render_as_string(False)
    geo = (f'geoip_db = "{mmdb["country"]}"\nasn_db = "{mmdb["asn"]}"\n' if mmdb else "")
    shared = template.folder
    return f"""
[gateway]
home_country = "BE"
data_dir = "{folder / "var"}"
log_format = "json"
shutdown_grace = "2s"
stage_lease = "5s"
min_free_bytes = 0
parts = {list(parts)!r}
[database]
url = "{url}"
commit_deadline = "2s"
statement_timeout = "10s"
pool_size = 3
[smtp]
listen = ["127.0.0.1:0"]
max_connections_per_source = 1000
messages_per_minute_per_source = 100000
[http]
listen = ["127.0.0.1:0"]
reports_per_minute = 10000
[console]
listen = ["127.0.0.1:0"]
password_hashing = "insecure-for-tests"
[admin]
listen = ["127.0.0.1:0"]
[locate]
nameservers = ["{nameserver}"]
{geo}timeout = "20s"
retry_after = "1s"
retry_max = "2s"
[gpg]
home = "{shared / "var" / "gnupg"}"
signing_key = "{SIGNING_KEY}"
[outbound]
transport = "file"
file_dir = "{folder / "outbox"}"
[routing.destinations.police]
email = "cp@police.test"
key = "{POLICE_KEY}"
[routing.hotlines.NL]
email = "referrals@hotline-nl.test"
key = "{HOTLINE_NL_KEY}"
[data]
keyring = "{shared / "var" / "data-keys.json"}"
{extra}""".replace("'", '"')


async def _admin(statement: str) -> None:
    """``statement`` run on the server outside any database's transaction."""
    admin = await asyncpg.connect(_dsn())
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _create(template: str | None = None) -> str:
    """A new database's name, empty or copied from ``template``."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"'
                 + (f' TEMPLATE "{template}"' if template is not None else ""))
    return name


async def _make_template(folder: Path) -> Template:
    name = await _create()
    path = folder / "config.toml"
    path.write_text(_config_text(folder, Template(folder, name, "", ""), database=name,
                                 port=_server().port or 5432))
    lines = await setup_demo(config_module.load(path))
    said = "\n".join(lines)
    password = re.search(r"one-time password: (\S+)", said)
    secret = re.search(r"TOTP secret: +(\S+)", said)
    assert password and secret, said
    return Template(folder, name, password[1], secret[1])


async def _drop(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_thread(coroutine: Any) -> Any:
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    made = _in_thread(_make_template(tmp_path_factory.mktemp("cluster")))
    try:
        yield made
    finally:
        _in_thread(_drop(made.database))
        stop_agent(made.folder / "var" / "gnupg")


@dataclass
class Cluster:
    """Instances of ``serve`` on one database of their own (through ``proxy`` when given)."""

    template: Template
    folder: Path
    database: str
    engine: AsyncEngine
    dns: DnsServer | None = None
    mmdb: dict[str, Path] | None = None
    proxy: TcpProxy | None = None
    daemons: list[Daemon] = field(default_factory=list)

    async def start(self, count: int, *, parts: tuple[str, ...] | None = None,
                    extra: str = "") -> list[Daemon]:
        made = []
        for _ in range(count):
            folder = self.folder / f"i{len(self.daemons)}"
            folder.mkdir()
            port = self.proxy.port if self.proxy else (_server().port or 5432)
            settings: dict[str, Any] = {"parts": parts} if parts else {}
            (folder / "config.toml").write_text(_config_text(
                folder, self.template, database=self.database, port=port,
                nameserver=self.dns.nameserver if self.dns else "127.0.0.1:9",
                mmdb=self.mmdb, extra=extra, **settings))
            daemon = Daemon(folder / "config.toml", folder)
            self.daemons.append(daemon)
            made.append(daemon)
        await asyncio.gather(*(d.start(smtp=parts is None or "smtp" in parts)
                               for d in made))
        return made


@pytest.fixture
async def cluster(template: Template, tmp_path: Path, request: pytest.FixtureRequest,
                  ) -> AsyncIterator[Cluster]:
    name = await _create(template.database)
    config = config_module.load(template.folder / "config.toml")
    config = config.model_copy(update={"database": config.database.model_copy(update={
        "url": _server().set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(False)})})
    engine = await open_database(config)
    made = Cluster(template, tmp_path, name, engine)
    try:
        yield made
    finally:
        await asyncio.gather(*(d.close() for d in made.daemons))
        if made.proxy is not None:
            await made.proxy.stop()
        await engine.dispose()
        await _drop(name)


# --- clients ------------------------------------------------------------------------------


FORM = ("lang=en&description=seen+in+a+chat&seen_where=a+chat&website=&form_id={form_id}"
        "&urls={url}")
RECEIPT = re.compile(r"/receipt\?ref=(CF-\d{4}-\d{6})")


async def post_form(http: aiohttp.ClientSession, port: int, url: str,
                    form_id: str) -> tuple[int, str | None]:
    """The web form sent once: its status, and the reference of a 303 to the receipt."""
    async with http.post(f"http://127.0.0.1:{port}/report",
                         data=FORM.format(form_id=form_id, url=url),
                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                         allow_redirects=False) as response:
        await response.read()
        found = RECEIPT.match(response.headers.get("Location", ""))
        return response.status, found[1] if found and response.status == 303 else None


async def send_smtp(port: int, url: str, tag: str) -> tuple[int, str | None]:
    status, answer = await deliver(port, report(tag, body=f"Please look at {url}"))
    return status, queued_reference(answer) if status == 250 else None


async def send_one(http: aiohttp.ClientSession, daemon: Daemon, channel: str, url: str,
                   tag: str) -> tuple[int, str | None]:
    """One attempt: the answer's code (0 for no connection) and the acknowledged reference."""
    try:
        async with asyncio.timeout(30):
            if channel == "smtp":
                return await send_smtp(daemon.smtp_port, url, tag)
            return await post_form(http, daemon.http_port, url, tag)
    except (OSError, aiohttp.ClientError, ConnectionError, TimeoutError):
        return 0, None
    except Exception as exc:  # aiosmtplib's own errors: a connection that went away
        if "aiosmtplib" in type(exc).__module__:
            return 0, None
        raise


@dataclass
class Sent:
    """What the clients were told: each acknowledged reference with the URL it reported,
    and every answer's code by channel."""

    acked: dict[str, str] = field(default_factory=dict)
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)


async def _references(engine: AsyncEngine) -> Counter[str]:
    async with engine.connect() as conn:
        return Counter((await conn.execute(select(submissions.c.reference))).scalars())


async def _claimed(engine: AsyncEngine) -> int:
    """Rows of the leased tables some worker still holds."""
    held = 0
    async with engine.connect() as conn:
        for table in (submissions, cases, referrals, outbox):
            held += (await conn.execute(select(func.count()).select_from(table).where(
                table.c.claimed_until > func.now()))).scalar_one()
    return held


def _worker_of(daemon: Daemon) -> str:
    assert daemon.process is not None
    return f"%:{daemon.process.pid}:%"  # the stages' worker names: host:pid:random


# --- the tests ----------------------------------------------------------------------------


@pytest.fixture
def faults_zone() -> Zone:
    zone = standard_zone()
    zone.add("slow.be.test", "A", "193.190.1.5")
    zone.behave("slow.be.test", ("slow", 60.0))  # until the test lets it answer
    return zone


async def test_three_instances_one_killed_mid_load(
    cluster: Cluster, faults_zone: Zone, mmdb: dict[str, Path],
) -> None:
    """Three instances take reports by SMTP and the form at once; the one holding a case
    (its lookup made slow) is SIGKILLed in the middle. Every acknowledged reference is stored
    once, every URL is one case holding each report of it, located; after an illegal verdict
    on each (given on the survivors), each case is referred once to its destination and each
    referral delivered once; nothing stays claimed, and what the killed instance held was
    taken over by the others and finished."""
    async with DnsServer(faults_zone) as dns:
        cluster.dns, cluster.mmdb = dns, mmdb
        daemons = await cluster.start(3)
        urls = ["http://slow.be.test/held", *(f"http://{host}/c{n}" for n in range(8)
                                              for host in ("be.test", "nl.test"))]
        # Each URL reported three times (the first of them first), on turns of instance
        # and channel: cases made at once by different instances.
        plan = [(urls[0], 0)] + [(url, n) for n, url in enumerate(urls[1:] * 3, start=1)]
        sent = Sent()
        killed: list[Daemon] = []
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def client(http: aiohttp.ClientSession, once: bool = False) -> None:
            while not queue.empty():
                url, n = queue.get_nowait()
                channel = ("smtp", "web")[n % 2]
                # As an MTA with several MX hosts, or a user pressing again: on to the
                # next instance until one acknowledges.
                for attempt in range(6):
                    daemon = daemons[(n + attempt) % 3]
                    if daemon in killed:
                        continue
                    status, reference = await send_one(http, daemon, channel, url,
                                                       f"r{n}.{attempt}")
                    sent.codes[(channel, status)] += 1
                    if reference is not None:
                        sent.acked[reference] = url
                        break
                if once:
                    return

        async def client_one(http: aiohttp.ClientSession) -> None:
            await client(http, once=True)

        async def holder() -> Daemon | None:
            """The instance holding the slow URL's case (the first filed), looking it up."""
            async with cluster.engine.connect() as conn:
                worker = (await conn.execute(
                    select(cases.c.claimed_by).where(cases.c.located_at.is_(None))
                    .order_by(cases.c.first_reported, cases.c.id).limit(1))).scalar()
            for daemon in daemons:
                assert daemon.process is not None
                if worker and f":{daemon.process.pid}:" in worker:
                    return daemon
            return None

        async with aiohttp.ClientSession() as http:
            await client_one(http)  # the slow URL first: its case is the oldest
            clients = [asyncio.create_task(client(http)) for _ in range(6)]
            victim = await until("an instance holding the slow case", holder)

            async def half_acknowledged() -> bool:
                return len(sent.acked) >= len(plan) // 2

            await until("half the reports acknowledged", half_acknowledged)
            victim = await holder() or victim  # its lease may have passed to another
            victim.send_signal(signal.SIGKILL)
            killed.append(victim)
            await victim.wait()
            held = await _held_by(cluster.engine, victim)
            faults_zone.behaviour.clear()  # the host answers now, to whoever asks
            await asyncio.gather(*clients)
        survivors = [d for d in daemons if d is not victim]
        assert len(sent.acked) == len(plan), sent.codes
        engine = cluster.engine

        # Every acknowledged reference stored exactly once; every report read and filed.
        stored = await _references(engine)
        assert set(sent.acked) <= set(stored)
        assert all(stored[reference] == 1 for reference in sent.acked)

        async def all_located() -> bool:
            async with engine.connect() as conn:
                unread = (await conn.execute(select(func.count()).select_from(submissions)
                                             .where(submissions.c.parsed_at.is_(None))))
                if unread.scalar_one():
                    return False
                waiting = (await conn.execute(select(func.count()).select_from(cases).where(
                    cases.c.status != "awaiting_assessment"))).scalar_one()
                return not waiting and bool((await conn.execute(
                    select(func.count()).select_from(cases))).scalar_one())

        await until("every report filed and every case located", all_located)
        async with engine.connect() as conn:
            listed = await list_cases(conn)
            filed = Counter((await conn.execute(select(case_reports.c.submission_id)))
                            .scalars())
            unlocated = (await conn.execute(select(func.count()).select_from(cases).where(
                cases.c.located_at.is_(None)))).scalar_one()
            submission_ids = {reference: id_ for reference, id_ in (await conn.execute(
                select(submissions.c.reference, submissions.c.id))).all()}
        by_url = {case["canonical_url"]: case for case in listed}
        assert sorted(by_url) == sorted(urls)  # one case per URL, none twice
        acked_per_url = Counter(sent.acked.values())
        assert unlocated == 0
        for url, case in by_url.items():
            assert case["report_count"] >= acked_per_url[url]
        assert all(filed[submission_ids[reference]] == 1 for reference in sent.acked)

        # A verdict on each case, given on the survivors in turn, by API token.
        backend = await open_write_backend(engine)
        try:
            await backend.transaction(lambda conn: conn.execute(
                update(users).values(must_change_password=False)))
            token = await create_token(backend, "analyst", now=utcnow())
        finally:
            await backend.close()
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"}) as http:
            for daemon, case in zip(itertools.cycle(survivors), listed, strict=False):
                async with http.post(
                        f"http://127.0.0.1:{daemon.console_port}/api/v1/cases/{case['id']}"
                        "/assessment", json={"verdict": "illegal", "classification": "baseline",
                                             **ILLEGAL_DETAILS}) as response:
                    assert response.status == 200, await response.text()

        async def all_sent() -> bool:
            async with engine.connect() as conn:
                made = (await conn.execute(select(func.count()).select_from(referrals)))
                if made.scalar_one() < len(urls):
                    return False
                return not (await conn.execute(select(func.count()).select_from(outbox).where(
                    outbox.c.status != "sent"))).scalar_one()

        await until("every referral delivered", all_sent)
        async with engine.connect() as conn:
            made = (await conn.execute(select(referrals.c.case_id, referrals.c.destination,
                                              referrals.c.status))).all()
            attempts = Counter((await conn.execute(select(outbox_attempts.c.outbox_id).where(
                outbox_attempts.c.outcome == "sent"))).scalars())
            messages = (await conn.execute(select(func.count()).select_from(outbox)))
            messages_count = messages.scalar_one()
        case_url = {case["id"]: case["canonical_url"] for case in listed}
        assert Counter((str(case_id), destination) for case_id, destination, _ in made) == {
            (case_id, DESTINATION[re.sub(r"^http://([^/]+)/.*", r"\1", url)]): 1
            for case_id, url in case_url.items()}
        assert {status for _, _, status in made} == {"sent"}
        assert messages_count == len(made) == len(attempts)
        assert set(attempts.values()) == {1}
        delivered = [p for d in survivors for p in (d.config_path.parent / "outbox").glob("*.eml")]
        assert len(delivered) == len(made)  # each message handed over once, by one instance
        await until("nothing claimed once the leases ran out",
                    lambda: _nothing_claimed(engine))
        # What the killed instance held was taken over by the others and finished.
        assert held["cases"], held  # the slow case at least
        async with engine.connect() as conn:
            unread = (await conn.execute(select(func.count()).select_from(submissions).where(
                submissions.c.id.in_(held["submissions"]),
                submissions.c.status == "received"))).scalar_one()
            taken = (await conn.execute(select(cases.c.located_at, cases.c.claimed_by).where(
                cases.c.id.in_(held["cases"])))).all()
        assert unread == 0
        assert len(taken) == len(held["cases"])
        assert all(located is not None and by is None for located, by in taken)
        for daemon in survivors:
            assert daemon.process is not None and daemon.process.returncode is None
            assert "slow.be.test" not in daemon.log() and "nl.test/c" not in daemon.log()


async def _held_by(engine: AsyncEngine, daemon: Daemon) -> dict[str, list[Any]]:
    """The rows of the leased tables ``daemon``'s stages hold, by table."""
    held = {}
    async with engine.connect() as conn:
        for table in (submissions, cases, referrals, outbox):
            held[table.name] = list((await conn.execute(select(table.c.id).where(
                table.c.claimed_by.like(_worker_of(daemon))))).scalars())
    return held


async def _nothing_claimed(engine: AsyncEngine) -> bool:
    return await _claimed(engine) == 0


async def test_the_database_away_then_back_mid_load(cluster: Cluster) -> None:
    """Two instances reach PostgreSQL through a proxy. It goes down (every connection cut,
    new ones refused) for 10 s, later the network pauses 4 s (nothing passes), both under a
    steady load by SMTP and the form: meanwhile SMTP answers 451 and the form 503, no
    instance exits, each takes reports again by itself once the database is back, and
    every report acknowledged at any time is stored."""
    target = _server()
    cluster.proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await cluster.proxy.start()
    daemons = await cluster.start(2, parts=("smtp", "http", "admin", "stages"))
    sent = Sent()
    phase = {"now": "before"}
    seen: Counter[tuple[str, str, int]] = Counter()
    stop = asyncio.Event()
    serial = itertools.count()
    took: set[tuple[str, int, str]] = set()

    async def client(http: aiohttp.ClientSession, daemon: Daemon, channel: str) -> None:
        while not stop.is_set():
            n = next(serial)
            url = f"http://be.test/away{n}"
            status, reference = await send_one(http, daemon, channel, url, f"a{n}")
            seen[(phase["now"], channel, status)] += 1
            if reference is not None:
                took.add((phase["now"], daemons.index(daemon), channel))
                sent.acked[reference] = url
            await asyncio.sleep(0.05)

    def answered(when: str, channel: str, status: int) -> bool:
        return seen[(when, channel, status)] > 0

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http, d, channel))
                   for d in daemons for channel in ("smtp", "web")]
        await until("reports taken", lambda: _true(len(sent.acked) >= 8))
        for fault, seconds in (("down", 10.0), ("pause", 4.0)):
            phase["now"] = fault
            if fault == "down":
                cluster.proxy.down()
            else:
                cluster.proxy.pause()
            await asyncio.sleep(seconds)
            cluster.proxy.up()
            phase["now"] = f"after {fault}"
            await until(f"both instances taking reports by both channels after the {fault}",
                        lambda fault=fault: _true({(f"after {fault}", n, channel) for n in (0, 1)
                                                   for channel in ("smtp", "web")} <= took))
            assert answered(fault, "smtp", 451) and answered(fault, "web", 503), seen
        stop.set()
        await asyncio.gather(*clients)
    for daemon in daemons:
        assert daemon.process is not None and daemon.process.returncode is None
    # Nothing acknowledged lost (the proxy is up: read through it, as the instances do).
    stored = await _references(cluster.engine)
    assert all(stored[reference] == 1 for reference in sent.acked)
    unexpected = {key: n for key, n in seen.items() if key[2] not in (250, 303, 451, 503)}
    assert not unexpected, seen
    # The readiness probe is back to ready on each.
    async with aiohttp.ClientSession() as http:
        for daemon in daemons:
            async def ready(port: int = daemon.admin_port) -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200
            await until("ready again", ready)


async def _true(value: bool) -> bool:
    return value


async def test_a_login_and_a_revoked_token_hold_on_every_instance(
    cluster: Cluster, template: Template,
) -> None:
    """A staff member logs in on one instance; the session is good on the two others. A
    token works on all three; the password changed on the second (which revokes the token)
    and it is refused by all three. Meanwhile the three run a compressed day (the retention
    every second): each period's run is done once, by one of them, not three times."""
    daemons = await cluster.start(3, parts=("console", "stages"),
                                  extra='[retention]\nevery = "1s"\n')
    bases = [f"http://127.0.0.1:{d.console_port}" for d in daemons]
    token = ""

    async def me_everywhere() -> list[int]:
        answers = []
        async with aiohttp.ClientSession() as http:
            for base in bases:
                async with http.get(f"{base}/api/v1/me",
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                    answers.append(response.status)
        return answers

    browser = StaffClient(bases[0])
    try:
        _, page = await browser.get("/login")
        form = {"login_token": hidden(page, "login_token"), "name": "analyst",
                "password": template.password, "code": code(template.totp_secret)}
        async with browser.http.post(f"{bases[0]}/login", data=form) as response:
            assert response.status == 200
        # The one-time password is changed on the first instance: the session then works.
        browser.base = bases[0]
        status, _ = await browser.post_from("/password", "/password", {
            "current": template.password, "password": "a first passphrase of mine",
            "again": "a first passphrase of mine"})
        assert status == 200
        # A token made after that works on every instance.
        backend = await open_write_backend(cluster.engine)
        try:
            token = await create_token(backend, "analyst", now=utcnow())
        finally:
            await backend.close()
        assert await me_everywhere() == [200, 200, 200]
        # The same session cookie, on the other two instances: logged in there too.
        for base in bases[1:]:
            browser.base = base
            status, page = await browser.get("/")
            assert status == 200 and 'name="login_token"' not in page, page[:300]
            assert "analyst" in page
        # The password changed on the second instance revokes the token: refused by all.
        browser.base = bases[1]
        status, _ = await browser.post_from("/password", "/password", {
            "current": "a first passphrase of mine", "password": "a second passphrase now",
            "again": "a second passphrase now"})
        assert status == 200
        assert await me_everywhere() == [401, 401, 401]
    finally:
        await browser.close()
    async with cluster.engine.connect() as conn:
        live = (await conn.execute(text(
            "SELECT count(*) FROM api_tokens WHERE NOT revoked"))).scalar_one()
    assert live == 0
    await _each_period_run_once(cluster.engine, daemons)


async def _each_period_run_once(engine: AsyncEngine, daemons: list[Daemon]) -> None:
    """Three periods of the retention done; each by one instance, once: one row per period,
    taken at the first attempt, and one ``periodic.started`` in all the instances' logs."""

    async def runs() -> list[Any]:
        async with engine.connect() as conn:
            return list((await conn.execute(
                select(periodic_runs.c.period_start, periodic_runs.c.attempts,
                       periodic_runs.c.holder)
                .where(periodic_runs.c.job == "retention",
                       periodic_runs.c.finished_at.is_not(None)))).all())

    done = await until("three periods' runs", lambda: _at_least(3, runs))
    started: Counter[str] = Counter()
    for daemon in daemons:
        for line in daemon.log_path.read_text(errors="replace").splitlines():
            if '"periodic.started"' in line:
                started[json.loads(line)["period_start"]] += 1
    for period_start, attempts, holder in done:
        assert attempts == 1
        assert started[aware(period_start).isoformat()] == 1, (period_start, started)
        assert any(f":{d.process.pid}:" in holder for d in daemons if d.process), holder
    assert sum(started.values()) >= len(done)


async def _at_least(count: int, rows: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    found = await rows()
    return found if len(found) >= count else []
