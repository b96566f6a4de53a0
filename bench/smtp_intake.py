"""SMTP intake throughput: the gateway against a bare aiosmtpd sink, under the same load.

Measures messages per second accepted over SMTP by

  A. a bare aiosmtpd sink (this file with ``--sink``): aiosmtpd's ``SMTP`` on the default
     asyncio loop, whose ``handle_DATA`` answers ``250 OK`` and keeps nothing, and
  B. ``hotline-gateway serve`` with a fresh SQLite database on disk in a temporary folder
     (WAL, ``synchronous=FULL``, JSON logs at level info written to a file), which answers 250
     only after the report is committed.

The load comes from a separate process (this file with ``--load PORT``): 50 persistent
connections, each sending ~2 KB messages one after another (EHLO once, then MAIL FROM, RCPT TO,
DATA, message, "."), waiting for and checking every reply. Every Message-ID is unique across
the run, so the gateway's duplicate detection never fires. Sides alternate A B A B ... with a
fresh server per side per round, started before the timing begins; each run has a warm-up that
is not counted. For the gateway the benchmark also reports peak RSS (VmHWM), checks that the
database holds one row per 250 the client received, and that it exits 0 on SIGTERM.

Run from the project root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python bench/smtp_intake.py [--rounds N] [--seconds S]

The gateway reads MAIL FROM and RCPT TO addresses more cheaply than stock aiosmtpd does (see
``intake.smtpaddress.plain_address``), which alone can make it faster than the bare sink. To
see what durability costs on its own, give the sink the same reading:

    SINK_ADDRESSES=gateway .venv/bin/python bench/smtp_intake.py

Each line gives the rate in the measured window, the latency of one whole message (MAIL FROM
sent to final reply), the server's CPU time per accepted message, the CPU seconds the client
and everything else on the machine used meanwhile (a large "other" means a disturbed run), and
the server's peak RSS. Client and server share the machine's cores, as they would in any
single-host test. Exit status 0 when every reply was the expected one and every check passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the intake benchmarks share is in harness.py beside this file: the script's folder
# is on sys.path when it runs as a script.
import harness
from harness import HOST, STALL_TIMEOUT, LoadStats, SideResult, Window

RECIPIENT = "report@hotline.test"
DATA_SIZE_LIMIT = 10 * 1024 * 1024  # the gateway's default smtp.max_message_bytes
MESSAGE_BYTES = 2048  # approximate size of each message, headers included

GATEWAY_CONFIG = """\
# Written by bench/smtp_intake.py: the shipped defaults, on port 0 and in a temporary folder.
[gateway]
data_dir = "var"
log_level = "info"
log_format = "json"

[database]
url = "sqlite+aiosqlite:///var/gateway.db"

[smtp]
listen = ["127.0.0.1:0"]
recipients = ["report@hotline.test"]
max_message_bytes = 10485760
# The load comes from one address, as through a relay.
max_connections_per_source = 100
messages_per_minute_per_source = 100000

[console]
listen = ["127.0.0.1:0"]

[http]
listen = ["127.0.0.1:0"]

[admin]
listen = ["127.0.0.1:0"]
"""


# --- the sink (side A) --------------------------------------------------------------------


class _SinkHandler:
    """Accepts every message and keeps nothing."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def _run_sink() -> None:
    from aiosmtpd.smtp import SMTP

    # As the gateway does: aiosmtpd's per-command logging is switched off, not just filtered.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL + 1)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    handler = _SinkHandler()
    session_class = SMTP
    if os.environ.get("SINK_ADDRESSES") == "gateway":
        from intake.smtpaddress import plain_address

        class _GatewayAddresses(SMTP):
            def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
                return plain_address(arg, self.local_part_limit) or super()._getaddr(arg)

        session_class = _GatewayAddresses
    server = await loop.create_server(
        lambda: session_class(
            handler, data_size_limit=DATA_SIZE_LIMIT, hostname="sink.bench.test", loop=loop
        ),
        HOST,
        0,
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()



# --- the load generator -------------------------------------------------------------------


@dataclass(kw_only=True)
class LoadResult(harness.LoadResult):
    """What one load run saw: ``accepted`` counts 250 replies at end of DATA, the latency runs
    from MAIL FROM sent to the final 250 received, ``errors`` maps "stage: reply" to a count."""

    message_bytes: int


def _body() -> bytes:
    """A plain-text report body, CRLF line endings, no line starting with a dot."""
    line = b"I came across this page and I think it should be looked at: "
    lines = [b"Hello,", b""]
    n = 0
    while sum(len(x) + 2 for x in lines) < MESSAGE_BYTES - 320:
        n += 1
        lines.append(line + b"http://example.test/p/%04d" % n)
    lines += [b"", b"Thank you."]
    return b"\r\n".join(lines) + b"\r\n"


class _Messages:
    """Builds each message from fixed parts and a unique Message-ID."""

    def __init__(self, tag: str) -> None:
        self._head = (
            b"From: Bench Reporter <reporter@example.test>\r\n"
            b"To: " + RECIPIENT.encode() + b"\r\n"
            b"Subject: Report from the SMTP intake benchmark\r\n"
            b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"Message-ID: <" + tag.encode("ascii") + b"."
        )
        self._tail = b"@bench.hotline.test>\r\n\r\n" + _body() + b".\r\n"

    def build(self, connection: int, seq: int) -> bytes:
        """The message, with its terminating "." line (nothing in it needs dot-stuffing)."""
        return b"%s%d.%d%s" % (self._head, connection, seq, self._tail)


MAIL = b"MAIL FROM:<reporter@example.test>\r\n"
RCPT = b"RCPT TO:<" + RECIPIENT.encode() + b">\r\n"
DATA = b"DATA\r\n"
RSET = b"RSET\r\n"



class _LoadStats(LoadStats):
    def error(self, stage: str, reply: bytes | str) -> None:
        text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply
        self.errors[f"{stage}: {text.strip()[:120]}"] += 1


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One whole reply: its code and its last line."""
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    if len(line) < 4 or not line[:3].isdigit():
        raise ConnectionError(f"no reply or not a reply: {line!r}")
    return int(line[:3]), line


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    code, line = await _reply(reader)
    if code != 220:
        raise ConnectionError(f"greeting: {line!r}")
    writer.write(b"EHLO client.bench.test\r\n")
    code, line = await _reply(reader)
    if code != 250:
        raise ConnectionError(f"EHLO: {line!r}")
    return reader, writer


async def _transaction(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes,
    stats: _LoadStats,
) -> bool:
    """One message; True if the server answered 250 at its end. Every reply is checked.

    There is no ``drain()``: every write is small and followed by waiting for the reply, so
    the transport's buffer never holds more than one command.
    """
    for command, expected, stage in ((MAIL, 250, "MAIL"), (RCPT, 250, "RCPT"), (DATA, 354, "DATA")):
        writer.write(command)
        code, line = await _reply(reader)
        if code != expected:
            stats.error(stage, line)
            writer.write(RSET)
            code, line = await _reply(reader)
            if code != 250:
                stats.error("RSET", line)
            return False
    writer.write(message)
    code, line = await _reply(reader)
    if code != 250:
        stats.error("end of DATA", line)
        return False
    return True


async def _connection(
    number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    messages: _Messages, window: Window, stats: _LoadStats,
) -> None:
    """Send messages back to back until the window ends, then QUIT."""
    loop = asyncio.get_running_loop()
    seq = 0
    try:
        while (began := loop.time()) < window.end:
            seq += 1
            if await _transaction(reader, writer, messages.build(number, seq), stats):
                stats.count(began, loop.time(), window)
        writer.write(b"QUIT\r\n")
        code, line = await _reply(reader)
        if code != 221:
            stats.error("QUIT", line)
    except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
        stats.error("connection", f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _run_load(
    port: int, *, connections: int, warmup: float, seconds: float, tag: str
) -> LoadResult:
    """Open every connection, then send for ``warmup + seconds``; count the last ``seconds``."""
    loop = asyncio.get_running_loop()
    messages = _Messages(tag)
    stats = _LoadStats()
    opened = await asyncio.gather(*(_open(port) for _ in range(connections)),
                                  return_exceptions=True)
    start = loop.time() + warmup
    window = Window(start, start + seconds)
    tasks = []
    for number, conn in enumerate(opened):
        if isinstance(conn, BaseException):
            stats.error("connect", f"{type(conn).__name__}: {conn}")
            continue
        reader, writer = conn
        tasks.append(asyncio.create_task(
            _connection(number, reader, writer, messages, window, stats)
        ))
    done, pending = (
        await asyncio.wait(tasks, timeout=warmup + seconds + STALL_TIMEOUT) if tasks
        else (set(), set())
    )
    for task in pending:
        task.cancel()
        stats.error("client", f"connection still busy {STALL_TIMEOUT:.0f} s after the window")
    for task in done:
        if task.exception() is not None:
            stats.error("client", repr(task.exception()))
    return harness.load_result(
        LoadResult, stats, connections=connections, seconds=seconds,
        message_bytes=len(messages.build(connections, 1)),
    )


# --- report -------------------------------------------------------------------------------


def _figures(r: SideResult) -> str:
    load = r.load
    cpu_us = r.server_cpu_seconds / load.accepted * 1e6 if load.accepted else 0.0
    return (
        f"{load.rate:9.1f} msg/s"
        f"  p50 {load.latency_p50_ms:6.2f} ms  p99 {load.latency_p99_ms:6.2f} ms"
        f"  server CPU {cpu_us:5.0f} us/msg"
    )


def _summary(results: list[SideResult]) -> None:
    sink = [r.load.rate for r in results if r.side == "sink"]
    gateway = [r.load.rate for r in results if r.side == "gateway"]
    sink_median, gateway_median = statistics.median(sink), statistics.median(gateway)
    print()
    print(f"summary over {len(gateway)} rounds")
    print(f"  sink     median {sink_median:9.1f} msg/s   (rounds: "
          + ", ".join(f"{x:.1f}" for x in sink) + ")")
    print(f"  gateway  median {gateway_median:9.1f} msg/s   (rounds: "
          + ", ".join(f"{x:.1f}" for x in gateway) + ")")
    print(f"  gateway/sink ratio {gateway_median / sink_median:.3f}")


# --- command line -------------------------------------------------------------------------


BENCH = harness.Bench(
    script=Path(__file__).resolve(),
    name="smtp",
    listener="smtp",
    gateway_config=GATEWAY_CONFIG,
    load_type=LoadResult,
    reference="sink",
    reference_flag="--sink",
    reference_what="the sink",
    reference_tag="sink",
    gateway_tag="gateway",
    unit="messages",
    reply="250",
    ids="Message-IDs",
    warnings="above info",
    figures=_figures,
    summary=_summary,
    run_reference=_run_sink,
    run_load=_run_load,
    sample_bytes=lambda run_id, connections: len(_Messages("x").build(0, 0)),
    connections=50,
    connections_help="concurrent SMTP connections (default 50)",
    # The benchmark's gateway has no signing key: its start-up says so, and that is expected.
    expected_alerts={"keys.not_configured"},
)


def main(argv: list[str] | None = None) -> int:
    return harness.main(BENCH, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
