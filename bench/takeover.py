"""Takeover: how long the work of an instance killed mid-job waits before another finishes it,
with the default lease (``[gateway] stage_lease``, 30 s, renewed every 10 s while held), and
what the renewals cost; for the stages that hold work across a kill (``--stage``):

- ``locate``: instance A (``parts = ["smtp", "stages", "admin"]``) takes ``--cases`` reports by
  SMTP, each naming a host of its own; its locate stage claims the cases and asks a DNS server
  in this process, which holds every question unanswered (a slow lookup);
- ``recheck``: ``--cases`` referred cases are put in the database (``tests.referred``: as
  routing makes them, due a re-check); A's re-check stage (polling every 15 s) claims them
  and its first lookup hangs the same way, the others wait their turn, all held;
- ``outbox``: 4 referrals (the outbox's concurrency) are queued, each a PGP/MIME-like message
  encrypted to a key made for the bench (the outbox checks the keys a message is encrypted
  to); A's outbox claims them and the relay, an SMTP server in this process, holds every
  RCPT unanswered (a relay that stalls mid-delivery: nothing of the message handed over);
- ``follow_up``: ``--cases`` referrals to a hotline whose acknowledgement is a day late
  (``acknowledge_within = "1h"``, ``remind_every = "1d"``) are put in the database; A's
  follow-up stage (polling every 15 s) claims them all and signs the first reminder, but
  A's gpg-agent is stopped (SIGSTOP): gpg waits for it, A holds every referral. Each instance
  has a copy of the bench's gpg home (its key signs, and is each referral's key), so its own
  agent.

Each trial, on a PostgreSQL database of its own:

1. A holds the work as above, renewing its leases;
2. instance B (``["stages", "admin"]``) starts, finds nothing free to take, and polls;
3. after a random wait (0 to one renewal interval, so that A is killed at every point of
   its renewal cycle), A is SIGKILLed and the DNS server (the relay, A's gpg-agent) answers
   from then on;
4. the figure: seconds from the SIGKILL until B has finished every item A held (located;
   re-checked: one piece of re-check evidence each; sent: the relay has each message once;
   reminded: one reminder queued each).

Expected: the lease left at the kill (20 to 30 s) plus B's poll interval (up to 5 s; 15 s
for the re-check and the follow-up) plus the work; under a minute in every trial (issue 19).
In the first trial, before B starts, A holds the work for ``--hold`` seconds: the renewal's
cost is measured there, as the statements A's renewals ran per second (from
``hotline_lease_renewals_total`` on its ``/metrics``: one statement renews every row a stage
holds), beside every transaction A committed per second meanwhile
(``pg_stat_database.xact_commit``; the stages' idle polling is most of it).

    HOTLINE_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/takeover.py [--stage locate|recheck|outbox|follow_up]
        [--trials 6]
        [--cases 8] [--hold 30]

The PostgreSQL server is shared: each trial makes a database of its own and drops it. Exit
status 0 when every trial's work was all taken over and finished once, each within a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiosmtplib
import dns.message
import dns.rdatatype
import dns.rrset
import harness
from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.referred

CONFIG = """\
[gateway]
data_dir = "{folder}/var"
log_format = "json"
min_free_bytes = 0
parts = {parts}

[database]
url = "{url}"
pool_size = 3

[data]
keyring = "{keyring}"

[smtp]
listen = ["127.0.0.1:0"]
recipients = ["report@hotline.test"]

[admin]
listen = ["127.0.0.1:0"]

[locate]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "120s"

[gpg]
home = "{folder}/gnupg"
signing_key = "{key}"

[routing.hotlines.NL]
email = "referrals@nl.test"
key = "{key}"
acknowledge_within = "1h"
remind_every = "1d"

[outbound]
smtp_host = "127.0.0.1"
smtp_port = {relay_port}
tls = "none"
timeout = "120s"
helo_name = "gateway.hotline.test"
"""
RENEW_EVERY = 10.0  # a third of the default lease
OUTBOX_CONCURRENCY = 4  # what one outbox claims at once (outbound.outbox)


class HeldDns(asyncio.DatagramProtocol):
    """Answers A questions with ``address``, or holds every question while ``hold``."""

    def __init__(self) -> None:
        self.hold = True
        self.address = "193.190.1.5"
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.hold or self.transport is None:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A",
                                                       self.address))
        self.transport.sendto(response.to_wire(), addr)


class HeldRelay:
    """An SMTP relay (aiosmtpd, no TLS) that holds every RCPT unanswered while ``hold``, and
    counts the messages it was handed by Message-ID."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.received: Counter[str] = Counter()
        self.holding = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.released.is_set():
            self.holding += 1
            try:
                await self.released.wait()
            finally:
                self.holding -= 1
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received[str(message_from_bytes(content)["Message-ID"])] += 1
        return "250 2.0.0 queued"


@dataclass
class Trial:
    number: int
    waited: float = 0.0  # from A's claim of the last item to the SIGKILL
    takeover: float = 0.0  # from the SIGKILL to every item finished by B
    held: int = 0
    renew_statements_per_s: float = 0.0
    transactions_per_s: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class Rig:
    """What every trial shares: the DNS server, the relay, the bench's gpg home."""

    dns: HeldDns
    dns_port: int
    relay: HeldRelay
    relay_port: int
    gnupg: Path
    key: str  # the bench key's fingerprint
    message: bytes  # a PGP message encrypted to the bench's key
    #: The gpg homes of the instances (each its own agent, stopped at the end).
    homes: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    """How one stage's work is put before A, held, and seen finished."""

    name: str
    a_parts: str
    a_listener: str
    #: A's rows not finished yet ($1: A's worker pattern); rows finished.
    held_sql: str
    done_sql: str
    #: How many items (the outbox claims 4 at once).
    most: int | None = None


STAGES = {
    "locate": Stage(
        "locate", '["smtp", "stages", "admin"]', "smtp",
        "SELECT count(*) FROM cases WHERE claimed_by LIKE $1 AND located_at IS NULL",
        "SELECT count(*) FROM cases WHERE status = 'awaiting_assessment'"),
    "recheck": Stage(
        "recheck", '["stages", "admin"]', "admin",
        "SELECT count(*) FROM cases WHERE claimed_by LIKE $1 AND NOT EXISTS (SELECT 1 FROM"
        " hosting_evidence e WHERE e.case_id = cases.id AND e.trigger = 'recheck')",
        "SELECT count(*) FROM hosting_evidence WHERE trigger = 'recheck'"),
    "outbox": Stage(
        "outbox", '["stages", "admin"]', "admin",
        "SELECT count(*) FROM outbox WHERE claimed_by LIKE $1 AND status = 'pending'",
        "SELECT count(*) FROM outbox WHERE status = 'sent'", most=OUTBOX_CONCURRENCY),
    "follow_up": Stage(
        "follow_up", '["stages", "admin"]', "admin",
        "SELECT count(*) FROM referrals WHERE claimed_by LIKE $1 AND NOT EXISTS (SELECT 1"
        " FROM referral_reminders r WHERE r.referral_id = referrals.id)",
        "SELECT count(*) FROM referral_reminders"),
}


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql")
    return (parsed.set(database=database) if database else parsed).render_as_string(False)


async def _admin(pg_url: str, statement: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(_asyncpg_dsn(pg_url))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
                          input=data, capture_output=True, check=True).stdout


def make_key(home: Path) -> tuple[str, bytes]:
    """A key for the bench in ``home`` (copied for each instance): its fingerprint, and a
    message encrypted to it as the outbox's are (armored)."""
    home.mkdir(mode=0o700)
    _gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
         "Bench <cp@police.test>", "future-default", "default", "never")
    listed = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    fingerprint = next(line.split(":")[9] for line in listed.splitlines()
                       if line.startswith("fpr:"))
    return fingerprint, _gpg(home, "--trust-model", "always", "--armor", "--encrypt", "-r",
                             "cp@police.test", data=b"a referral\n")


def copy_home(rig: Rig, folder: Path) -> Path:
    """A copy of the bench's gpg home for the instance in ``folder`` (no agent's sockets)."""
    home = folder / "gnupg"
    shutil.copytree(rig.gnupg, home, ignore=shutil.ignore_patterns("S.*", "*.lock"))
    rig.homes.append(home)
    return home


def stop_agent(home: Path) -> int:
    """Start the gpg-agent of ``home`` and stop it (SIGSTOP): gpg then waits for it when it
    signs. Its pid, to let it go on (SIGCONT)."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--launch", "gpg-agent"], check=True)
    said = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "getinfo pid", "/bye"],
                          capture_output=True, check=True, text=True).stdout
    pid = int(next(line.split()[1] for line in said.splitlines() if line.startswith("D ")))
    os.kill(pid, signal.SIGSTOP)
    return pid


def stop_agents(homes: list[Path]) -> None:
    for home in homes:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True)


async def _send(port: int, count: int, tag: str) -> None:
    for n in range(count):
        message = (f"From: reporter@example.test\r\nTo: report@hotline.test\r\n"
                   f"Subject: report {n}\r\nMessage-ID: <{tag}.{n}@example.test>\r\n\r\n"
                   f"Please look at http://h{n}.{tag}.bench.test/x\r\n").encode()
        await aiosmtplib.send(message, sender="reporter@example.test",
                              recipients=["report@hotline.test"], hostname=harness.HOST,
                              port=port, start_tls=False)


async def _store(config: Path, work: Callable[[Any], None]) -> None:
    """Run ``work`` in a write transaction on A's database, its keyring bound (sealing)."""
    from gateway import config as config_module
    from gateway.database import open_database
    from gateway.store.backend import open_write_backend

    engine = await open_database(config_module.load(config))
    try:
        backend = await open_write_backend(engine)
        try:
            await backend.transaction(work)
        finally:
            await backend.close()
    finally:
        await engine.dispose()


async def give_work(stage: Stage, count: int, a: harness.Server, a_folder: Path, tag: str,
                    rig: Rig) -> None:
    """Put ``count`` items of ``stage``'s work before instance A."""
    from sqlalchemy import insert, update

    from gateway.store.ids import uuid7
    from gateway.store.tables import outbox, referrals
    from tests.referred import refer

    if stage.name == "locate":
        await _send(a.port, count, tag)
        return
    at = datetime.now(UTC) - timedelta(days=1)

    def referred(conn: Any) -> None:  # due a re-check: never looked up since the referral
        for _ in range(count):
            refer(conn, at=at)

    def overdue(conn: Any) -> None:  # sent a day ago, to be acknowledged within an hour
        for _ in range(count):
            _, (referral_id,) = refer(conn, at=at)
            conn.execute(update(referrals).where(referrals.c.id == referral_id)
                         .values(key_fingerprint=rig.key))

    def queued(conn: Any) -> None:  # as the refer stage queues them
        for n in range(count):
            _, (referral_id,) = refer(conn, at=at, status="queued")
            conn.execute(update(referrals).where(referrals.c.id == referral_id)
                         .values(key_fingerprint=None))
            message = (f"From: referrals@hotline.test\r\nTo: cp@police.test\r\n"
                       f"Message-ID: <{tag}.{n}@hotline.test>\r\nSubject: Referral\r\n\r\n"
                       ).encode() + rig.message
            conn.execute(insert(outbox).values(
                id=uuid7(), referral_id=referral_id, mail_from="referrals@hotline.test",
                rcpt_to="cp@police.test", message=message, status="pending", attempts=0,
                next_attempt_at=at, created_at=at))

    await _store(a_folder / "config.toml",
                 {"recheck": referred, "outbox": queued, "follow_up": overdue}[stage.name])


async def _renewals(http: aiohttp.ClientSession, port: int, stage: str) -> float:
    """Rows renewed by A's stage so far (its ``/metrics``)."""
    async with http.get(f"http://{harness.HOST}:{port}/metrics") as response:
        text = await response.text()
    found = re.search(rf'^hotline_lease_renewals_total\{{stage="{stage}"\}} (\S+)$', text,
                      re.M)
    return float(found[1]) if found else 0.0


async def _until(what: str, check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:g} s")
        await asyncio.sleep(0.1)


async def trial(number: int, args: argparse.Namespace, work: Path, rig: Rig) -> Trial:
    import asyncpg

    stage = STAGES[args.stage]
    count = min(args.cases, stage.most or args.cases)
    result = Trial(number)
    database = f"takeover_{uuid.uuid4().hex[:10]}"
    await _admin(args.pg_url, f'CREATE DATABASE "{database}"')
    dsn = _asyncpg_dsn(args.pg_url, database)
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    folder = work / f"t{number}"
    keyring = folder / "data-keys.json"
    servers: list[harness.Server] = []
    pg = None
    rig.dns.hold = True
    rig.relay.released.clear()
    rig.relay.received.clear()

    def config(at: Path, parts: str) -> str:
        copy_home(rig, at)
        return CONFIG.format(folder=at, parts=parts, url=url, keyring=keyring,
                             dns_port=rig.dns_port, key=rig.key, relay_port=rig.relay_port)

    agent: int | None = None

    try:
        a_folder, b_folder = folder / "a", folder / "b"
        for each in (a_folder, b_folder):
            each.mkdir(parents=True)
        a = await harness.start_gateway(a_folder, config(a_folder, stage.a_parts),
                                        stage.a_listener)
        servers.append(a)
        a_admin = harness.ready_port(a_folder / "gateway.log", "admin")
        assert a_admin is not None
        pg = await asyncpg.connect(dsn)
        if stage.name == "follow_up":
            agent = await asyncio.to_thread(stop_agent, a_folder / "gnupg")
        await give_work(stage, count, a, a_folder, database, rig)
        worker = f"%:{a.pid}:%"

        async def held_by_a() -> int:
            return int(await pg.fetchval(stage.held_sql, worker))

        async def all_held() -> bool:
            return await held_by_a() >= count

        await _until("A claimed every item", all_held, 60)
        claimed_at = time.monotonic()
        if number == 1:  # the renewal's cost, A alone holding the items
            async with aiohttp.ClientSession() as http:
                xact = ("SELECT xact_commit FROM pg_stat_database"
                        " WHERE datname = current_database()")
                before = (await _renewals(http, a_admin, stage.name), await pg.fetchval(xact),
                          time.monotonic())
                await asyncio.sleep(args.hold)
                after = (await _renewals(http, a_admin, stage.name), await pg.fetchval(xact),
                         time.monotonic())
            seconds = after[2] - before[2]
            result.renew_statements_per_s = (after[0] - before[0]) / count / seconds
            result.transactions_per_s = (after[1] - before[1]) / seconds
        b = await harness.start_gateway(b_folder, config(b_folder, '["stages", "admin"]'),
                                        "admin")
        servers.append(b)
        await asyncio.sleep(random.uniform(0, RENEW_EVERY))
        result.held = await held_by_a()
        if result.held != count:
            result.problems.append(f"A held {result.held} of {count} at the kill")
        a.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rig.dns.hold = False
        rig.relay.released.set()
        if agent is not None:
            os.kill(agent, signal.SIGCONT)
        await a.process.wait()
        result.waited = killed - claimed_at
        deadline = killed + 120
        while await pg.fetchval(stage.done_sql) < count:
            if time.monotonic() > deadline:
                result.problems.append("not every item finished within 120 s of the kill")
                break
            await asyncio.sleep(0.1)
        result.takeover = time.monotonic() - killed
        if result.takeover >= 60:
            result.problems.append(f"taken over in {result.takeover:.1f} s, not within a minute")
        await b.stop()
        # Once: no item finished twice (re-check evidence, messages the relay was handed).
        if (done := await pg.fetchval(stage.done_sql)) != count:
            result.problems.append(f"{done} finished for {count} items")
        if stage.name == "outbox" and sorted(rig.relay.received.values()) != [1] * count:
            result.problems.append(f"the relay was handed {dict(rig.relay.received)}")
    finally:
        if agent is not None:
            os.kill(agent, signal.SIGCONT)
        for server in servers:
            if server.process.returncode is None:
                server.process.kill()
                await server.process.wait()
        if pg is not None:
            await pg.close()
        await _admin(args.pg_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return result


async def main_async(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    dns_server = HeldDns()
    if args.stage == "recheck":
        dns_server.address = "145.100.1.1"  # NL, where tests.referred refers them: "same"
    transport, _ = await loop.create_datagram_endpoint(lambda: dns_server,
                                                       local_addr=(harness.HOST, 0))
    relay = HeldRelay()
    relay_server = await loop.create_server(
        lambda: SMTP(relay, hostname="relay.test"), harness.HOST, 0)
    stage = STAGES[args.stage]
    count = min(args.cases, stage.most or args.cases)
    print(f"{args.trials} trials, stage {args.stage}, {count} items held by the killed "
          f"instance, default lease; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results: list[Trial] = []
    try:
        with tempfile.TemporaryDirectory(prefix="takeover-") as work:
            gnupg = Path(work) / "gnupg"
            key, message = await asyncio.to_thread(make_key, gnupg)
            rig = Rig(dns_server, transport.get_extra_info("sockname")[1], relay,
                      relay_server.sockets[0].getsockname()[1], gnupg, key, message)
            try:
                for number in range(1, args.trials + 1):
                    done = await trial(number, args, Path(work), rig)
                    results.append(done)
                    line = (f"trial {number}: killed {done.waited:5.1f} s after the claim, "
                            f"taken over and finished {done.takeover:5.1f} s after the kill")
                    if number == 1:
                        line += (f"; renewal {done.renew_statements_per_s:.3f} statements/s "
                                 f"(all of A's transactions: {done.transactions_per_s:.1f}/s)")
                    print(line, flush=True)
                    for problem in done.problems:
                        print(f"    PROBLEM {problem}", flush=True)
            finally:
                await asyncio.to_thread(stop_agents, [gnupg, *rig.homes])
    finally:
        transport.close()
        relay.released.set()
        relay_server.close()
    takeovers = sorted(r.takeover for r in results)
    print(f"takeover ({args.stage}): median {statistics.median(takeovers):.2f} s, range "
          f"{takeovers[0]:.1f}-{takeovers[-1]:.1f} s over {len(takeovers)} trials "
          f"(lease 30 s, renewed every {RENEW_EVERY:g} s)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if any(r.problems for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), default="locate")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--cases", type=int, default=8,
                        help="items held by the killed instance (the outbox: at most 4)")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds A holds the items alone in the first trial (default 30)")
    parser.add_argument("--pg-url", default=os.environ.get("HOTLINE_TEST_PG_URL", ""))
    args = parser.parse_args(argv)
    if not args.pg_url:
        parser.error("set HOTLINE_TEST_PG_URL or --pg-url")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
