"""One source cannot hold the door: connections and messages are limited per source (an IPv4
address, an IPv6 /64, and an IPv6 /48 together), the last places are kept for newcomers, and a
session ends at its lifetime however busy it keeps itself.

A second source is 127.0.0.2: all of 127/8 is loopback on Linux, so a client socket bound to
it reaches the gateway on 127.0.0.1 from another address."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from pathlib import Path

import pytest
import structlog

from gateway import config as config_module
from gateway.config import ConfigError
from intake.ratelimit import RateLimiter, source_of
from intake.smtpdoor import Door
from tests.conftest import ConfigFactory, serving
from tests.smtp_client import REPORT_TO, RawSession, queued_reference, report

OTHER = "127.0.0.2"


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader,
                                                                  asyncio.StreamWriter, bytes]:
    """A connection from ``source`` and the first line the server sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return reader, writer, await asyncio.wait_for(reader.readline(), 10)


async def send_report(session: RawSession, n: int) -> str:
    """One transaction on an open session; the reply that decided it."""
    reply = await session.command(f"MAIL FROM:<r{n}@example.test>")
    if not reply.startswith("250"):
        return reply
    assert (await session.command(f"RCPT TO:<{REPORT_TO}>")).startswith("250")
    assert (await session.command("DATA")).startswith("354")
    return await session.command(report(n) + b".\r\n")


async def session_from(port: int, source: str) -> RawSession:
    reader, writer, greeting = await connect(port, source)
    assert greeting.startswith(b"220"), greeting
    session = RawSession(reader, writer)
    assert (await session.command("EHLO client.test")).startswith("250")
    return session


async def test_one_source_at_its_limit_does_not_keep_another_out(
    make_config: ConfigFactory,
) -> None:
    """127.0.0.1 holding its share gets 421 4.7.0 for one more; 127.0.0.2 still reports."""
    config = make_config(smtp={"max_connections": 3, "max_connections_per_source": 2})
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        held = [await connect(port) for _ in range(2)]
        assert all(greeting.startswith(b"220") for _, _, greeting in held)
        reader, writer, greeting = await connect(port)
        assert greeting.startswith(b"421 4.7.0 Too many connections from your address")
        assert await reader.read() == b""  # and closed
        writer.close()
        other = await session_from(port, OTHER)
        try:
            queued_reference((await send_report(other, 1))[4:])
        finally:
            await other.close()
        for _, held_writer, _ in held:
            held_writer.close()


async def test_a_source_gets_its_share_back_when_it_disconnects(
    make_config: ConfigFactory,
) -> None:
    """A closed connection no longer counts against its source."""
    async with serving(make_config(smtp={"max_connections_per_source": 1})) as gw:
        port = gw.smtp.addresses[0][1]
        first = await session_from(port, "127.0.0.1")
        _, writer, greeting = await connect(port)
        assert greeting.startswith(b"421 4.7.0")
        writer.close()
        await first.command("QUIT")
        await first.close()
        async with asyncio.timeout(10):
            while gw.smtp.session_count:
                await asyncio.sleep(0.01)
        again = await session_from(port, "127.0.0.1")
        await again.close()


async def test_messages_per_source_are_rate_limited(make_config: ConfigFactory) -> None:
    """Past messages_per_minute_per_source a source's MAIL gets 451 4.7.0 on a session that
    stays open; another source is not affected."""
    config = make_config(smtp={"messages_per_minute_per_source": 2})
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        busy = await session_from(port, "127.0.0.1")
        try:
            for n in (1, 2):
                queued_reference((await send_report(busy, n))[4:])
            refused = await send_report(busy, 3)
            assert refused == ("451 4.7.0 Too many messages from your address; please try "
                               "again later")
            assert (await busy.command("NOOP")).startswith("250")
        finally:
            await busy.close()
        other = await session_from(port, OTHER)
        try:
            queued_reference((await send_report(other, 4))[4:])
        finally:
            await other.close()


def test_the_slash_64s_of_one_slash_48_are_limited_together() -> None:
    """Each /64 holds at most the per-source limit, and all the /64s of one /48 twice that;
    another /48 is not affected, and a closed connection gives its place back."""
    door = Door(max_connections=100, per_source=2)
    first = [door.enter("2001:db8:1:1::1"), door.enter("2001:db8:1:1::2")]
    assert all(first) and door.enter("2001:db8:1:1::3") is None  # the /64's own limit
    second = [door.enter("2001:db8:1:2::1"), door.enter("2001:db8:1:2:ffff::1")]
    assert all(second)
    assert door.enter("2001:db8:1:3::1") is None  # a third /64 of the same /48
    assert door.enter("2001:db8:1:ff00::1") is None
    assert door.enter("2001:db8:2::1") is not None  # another /48
    assert door.enter("192.0.2.1") is not None and door.enter("192.0.2.1") is not None
    assert door.enter("192.0.2.1") is None
    pass_ = first[0]
    assert pass_ is not None
    door.leave(pass_)
    assert door.enter("2001:db8:1:3::1") is not None


def test_the_last_tenth_of_the_door_is_for_families_holding_none() -> None:
    """Once nine tenths are taken, a source (or /48) already holding a connection is refused
    and one holding none still gets in; trusted relays count only against the total."""
    door = Door(max_connections=20, per_source=10,
                trusted_relays=[ipaddress.ip_network("198.51.100.0/24")])
    assert all(door.enter(a) for a in ["192.0.2.1"] * 10 + ["192.0.2.2"] * 8)
    assert door.enter("192.0.2.2") is None  # 18 open: the last two places are kept
    assert door.enter("2001:db8:5::1") is not None and door.enter("192.0.2.3") is not None
    assert door.open == 20
    relay = Door(max_connections=20, per_source=1,
                 trusted_relays=[ipaddress.ip_network("198.51.100.0/24")])
    assert all(relay.enter("198.51.100.7") for _ in range(20))


async def test_a_fresh_source_gets_in_when_one_source_has_nearly_filled_the_door(
    make_config: ConfigFactory,
) -> None:
    """127.0.0.1, allowed as many as the door holds, gets all but the last place (421 4.7.0
    from your address); 127.0.0.2, holding none, gets that one."""
    config = make_config(smtp={"max_connections": 4, "max_connections_per_source": 4})
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        held = [await connect(port) for _ in range(4)]
        assert [g[:3] for _, _, g in held] == [b"220"] * 3 + [b"421"]
        assert held[3][2].startswith(b"421 4.7.0 Too many connections from your address")
        other = await session_from(port, OTHER)
        try:
            queued_reference((await send_report(other, 1))[4:])
        finally:
            await other.close()
        for _, writer, _ in held:
            writer.close()


async def test_a_trusted_relay_is_held_only_to_the_total(make_config: ConfigFactory) -> None:
    """From an address in trusted_relays, more connections than the per-source limit and more
    messages than the per-source rate are taken; from any other, neither."""
    config = make_config(smtp={"max_connections_per_source": 1,
                               "messages_per_minute_per_source": 1,
                               "trusted_relays": ["127.0.0.1/32"]})
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        relayed = [await session_from(port, "127.0.0.1") for _ in range(3)]
        try:
            for n, session in enumerate(relayed):
                queued_reference((await send_report(session, n))[4:])
        finally:
            for session in relayed:
                await session.close()
        other = await session_from(port, OTHER)
        try:
            _, writer, greeting = await connect(port, OTHER)
            writer.close()
            assert greeting.startswith(b"421 4.7.0 Too many connections from your address")
            queued_reference((await send_report(other, 10))[4:])
            assert (await send_report(other, 11)).startswith("451 4.7.0")
        finally:
            await other.close()


def test_the_per_source_defaults_leave_room_for_others(make_config: ConfigFactory) -> None:
    """By default a source holds at most 10 of the 100 places, and no relay is trusted."""
    smtp = config_module.parse({}, base=Path(".")).smtp
    assert (smtp.max_connections, smtp.max_connections_per_source) == (100, 10)
    assert smtp.trusted_relays == []


async def test_noop_cannot_extend_a_session_past_its_lifetime(make_config: ConfigFactory) -> None:
    """A client sending NOOP again and again is told 421 4.4.2 and closed at max_session_time."""
    async with serving(make_config(smtp={"max_session_time": "1s"})) as gw:
        session = await session_from(gw.smtp.addresses[0][1], "127.0.0.1")
        async with asyncio.timeout(10):
            while True:
                try:
                    reply = await session.command("NOOP")
                except ConnectionError:
                    pytest.fail("closed without a 421")
                if not reply.startswith("250"):
                    break
                await asyncio.sleep(0.1)  # the client's own pace, not a synchronisation
            assert reply == "421 4.4.2 Session time limit reached; please connect again"
            assert await session.reader.read() == b""
        await session.close()


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    """IPv4 counts by address; IPv6 by /64, an IPv4-mapped address as its IPv4 address."""
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    limiter = RateLimiter(1, clock=lambda: 0.0)
    assert limiter.allow("2001:db8::1") and not limiter.allow("2001:db8::2")
    assert limiter.allow("2001:db8:0:1::1")


@pytest.mark.parametrize(("key", "value"), [
    ("max_connections_per_source", 0), ("messages_per_minute_per_source", 0),
    ("trusted_relays", ["not a network"]), ("trusted_relays", "127.0.0.1"),
    ("max_session_time", "0s"), ("max_session_time", "soon"),
])
def test_fairness_settings_are_validated(make_config: ConfigFactory, key: str,
                                          value: object) -> None:
    """A bad value is an error naming its key (and the entry of a list)."""
    with pytest.raises(ConfigError) as info:
        make_config(smtp={key: value})
    assert [p.split(":")[0].removesuffix(".0") for p in info.value.problems] == [f"smtp.{key}"]


async def test_a_message_being_committed_at_the_lifetime_gets_its_reply_first(
    make_config: ConfigFactory, tmp_path: Path,
) -> None:
    """When the lifetime ends while a message is being committed, the sender gets its 250
    and then 421 4.4.2: an accepted report is never left without its acknowledgement."""
    # The lifetime is ended by the test (end_lifetimes) once the message is being committed.
    config = make_config(smtp={"max_session_time": "1h"}, database={"busy_timeout": "20s"})
    async with serving(config) as gw:
        session = await session_from(gw.smtp.addresses[0][1], "127.0.0.1")
        for line in ("MAIL FROM:<a@example.test>", f"RCPT TO:<{REPORT_TO}>", "DATA"):
            await session.command(line)
        # Hold the commit back, so that the lifetime ends between end of DATA and the reply.
        # Taken off the event loop: a write of the gateway's own (a key holder's heartbeat)
        # may be under way, and it needs the loop to commit before the lock can be had.
        locker = sqlite3.connect(tmp_path / "var" / "gateway.db", isolation_level=None,
                                 timeout=20, check_same_thread=False)
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        try:
            with structlog.testing.capture_logs() as events:
                session.writer.write(report(1) + b".\r\n")
                async with asyncio.timeout(10):
                    while gw.smtp.handler.in_flight != 1:
                        await asyncio.sleep(0.01)
                gw.smtp.end_lifetimes()
            assert [e["storing"] for e in events
                    if e["event"] == "smtp.session_time_limit"] == [True]
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        queued_reference((await session.reply())[4:])
        assert (await session.reply()).startswith("421 4.4.2")
        assert await session.reader.read() == b""
        await session.close()
