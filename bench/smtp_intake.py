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

Each line gives the rate in the measured window, the latency of one whole message (MAIL FROM
sent to final reply), the server's CPU time per accepted message, the CPU seconds the client
and everything else on the machine used meanwhile (a large "other" means a disturbed run), and
the server's peak RSS. Client and server share the machine's cores, as they would in any
single-host test. Exit status 0 when every reply was the expected one and every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
HOST = "127.0.0.1"
RECIPIENT = "report@hotline.test"
DATA_SIZE_LIMIT = 10 * 1024 * 1024  # the gateway's default smtp.max_message_bytes
MESSAGE_BYTES = 2048  # approximate size of each message, headers included
START_TIMEOUT = 60.0  # seconds a server may take to start listening
STOP_TIMEOUT = 30.0  # seconds a server may take to exit after SIGTERM
STALL_TIMEOUT = 60.0  # seconds past the end of the window before the client gives up

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
    server = await loop.create_server(
        lambda: SMTP(
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


@dataclass
class LoadResult:
    """What one load run saw; sent from the load process to the benchmark as JSON."""

    connections: int
    message_bytes: int
    window_seconds: float
    accepted: int = 0  # 250 replies at end of DATA, over the whole run (warm-up, tail included)
    in_window: int = 0  # of those, the ones that arrived inside the measured window
    latency_p50_ms: float = 0.0  # MAIL FROM sent to final 250 received, in the window
    latency_p99_ms: float = 0.0
    client_cpu_seconds: float = 0.0  # the load process's CPU time, start-up included
    errors: dict[str, int] = field(default_factory=dict)  # "stage: reply" -> count

    @property
    def rate(self) -> float:
        return self.in_window / self.window_seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


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


@dataclass
class _Window:
    """The measured interval, in loop time, starting a warm-up after every connection is open."""

    start: float = 0.0
    end: float = 0.0


class _LoadStats:
    def __init__(self) -> None:
        self.accepted = 0
        self.in_window = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

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
    messages: _Messages, window: _Window, stats: _LoadStats,
) -> None:
    """Send messages back to back until the window ends, then QUIT."""
    loop = asyncio.get_running_loop()
    seq = 0
    try:
        while (began := loop.time()) < window.end:
            seq += 1
            if await _transaction(reader, writer, messages.build(number, seq), stats):
                done = loop.time()
                stats.accepted += 1
                if window.start <= done < window.end:
                    stats.in_window += 1
                    stats.latencies.append(done - began)
        writer.write(b"QUIT\r\n")
        code, line = await _reply(reader)
        if code != 221:
            stats.error("QUIT", line)
    except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
        stats.error("connection", f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


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
    window = _Window(start, start + seconds)
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
    latencies = sorted(stats.latencies)
    return LoadResult(
        connections=connections,
        message_bytes=len(messages.build(connections, 1)),
        window_seconds=seconds,
        accepted=stats.accepted,
        in_window=stats.in_window,
        latency_p50_ms=_percentile(latencies, 0.50) * 1000,
        latency_p99_ms=_percentile(latencies, 0.99) * 1000,
        client_cpu_seconds=time.process_time(),
        errors=dict(stats.errors),
    )


# --- servers as child processes -----------------------------------------------------------


@dataclass
class Server:
    """A server child process and the port it listens on."""

    process: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> int:
        """SIGTERM, then wait; the exit status (SIGKILL after STOP_TIMEOUT, reported as such)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            return -int(signal.SIGKILL)


async def start_sink() -> Server:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "--sink", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        port = int(json.loads(line)["port"])
    except (TimeoutError, ValueError, KeyError) as exc:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the sink did not start: {exc!r}") from exc
    return Server(process, port)


def gateway_command() -> list[str]:
    """The installed ``hotline-gateway`` of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "hotline-gateway"
    found = str(beside) if beside.exists() else shutil.which("hotline-gateway")
    if found is None:
        raise RuntimeError("hotline-gateway is not installed: run `make` or `pip install -e .`")
    return [found]


def _ready_port(log_file: Path) -> int | None:
    """The SMTP port from the gateway's "gateway.ready" log line, once it is there."""
    with log_file.open("rb") as fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "gateway.ready":
                return int(str(entry["smtp"][0]).rpartition(":")[2])
    return None


async def start_gateway(workdir: Path, normalise: str = "serve") -> Server:
    config = workdir / "config.toml"
    config.write_text(GATEWAY_CONFIG + f'\n[intake]\nnormalise = "{normalise}"\n')
    log_file, err_file = workdir / "gateway.log", workdir / "gateway.stderr"
    with log_file.open("wb") as out, err_file.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *gateway_command(), "--config", str(config), "serve",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while (port := _ready_port(log_file)) is None:
        if process.returncode is not None or time.monotonic() > deadline:
            if process.returncode is None:
                process.kill()
            status = await process.wait()
            tail = err_file.read_text(errors="replace")[-2000:] or log_file.read_text()[-2000:]
            raise RuntimeError(f"the gateway did not become ready (exit {status}):\n{tail}")
        await asyncio.sleep(0.05)
    return Server(process, port)


def _proc_status(pid: int, key: str) -> int:
    """A ``kB`` value such as VmHWM from /proc/PID/status (0 if not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included) from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (idle and iowait excluded)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# --- one side of one round ----------------------------------------------------------------


@dataclass
class SideResult:
    side: str
    round: int
    load: LoadResult
    server_cpu_seconds: float
    other_cpu_seconds: float  # the machine's busy time minus server and client: noise
    peak_rss_kib: int
    exit_status: int
    rows: int | None = None  # gateway only: rows in `submissions` after it stopped
    log_lines: int = 0
    log_warnings: int = 0
    kept: str | None = None  # the gateway's folder, with --keep
    problems: list[str] = field(default_factory=list)


async def run_load(port: int, *, args: argparse.Namespace, tag: str) -> LoadResult:
    """The load generator, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "--load", str(port),
        "--connections", str(args.connections), "--warmup", str(args.warmup),
        "--seconds", str(args.seconds), "--tag", tag,
        stdout=asyncio.subprocess.PIPE,
    )
    limit = args.warmup + args.seconds + STALL_TIMEOUT + START_TIMEOUT
    try:
        out, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the load generator did not finish in {limit:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {process.returncode})")
    return LoadResult(**json.loads(out.splitlines()[-1]))


async def measure(
    server: Server, *, args: argparse.Namespace, tag: str
) -> tuple[LoadResult, float, float, int]:
    """Run the load against ``server``.

    Returns the load result, the server's CPU seconds, the CPU seconds used by everything
    else on the machine meanwhile, and the server's peak RSS in KiB.
    """
    cpu_before, busy_before = _cpu_seconds(server.pid), _machine_busy_seconds()
    load = await run_load(server.port, args=args, tag=tag)
    cpu = _cpu_seconds(server.pid) - cpu_before
    other = _machine_busy_seconds() - busy_before - cpu - load.client_cpu_seconds
    return load, cpu, max(0.0, other), _proc_status(server.pid, "VmHWM")


def _check_load(result: SideResult) -> None:
    for what, count in sorted(result.load.errors.items()):
        result.problems.append(f"{count} x {what}")
    if result.exit_status != 0:
        result.problems.append(f"server exit status {result.exit_status}, expected 0")


async def run_sink_side(round_no: int, args: argparse.Namespace, run_id: str) -> SideResult:
    server = await start_sink()
    try:
        load, cpu, other, rss = await measure(
            server, args=args, tag=f"{run_id}.r{round_no}.sink"
        )
    finally:
        status = await server.stop()
    result = SideResult("sink", round_no, load, cpu, other, rss, status)
    _check_load(result)
    return result


def _count_rows(database: Path) -> tuple[int, int]:
    """(rows, distinct Message-IDs) in the gateway's ``submissions`` table."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM submissions"
        ).fetchone()
    finally:
        conn.close()
    return int(rows), int(distinct)


async def run_gateway_side(round_no: int, args: argparse.Namespace, run_id: str) -> SideResult:
    workdir = Path(tempfile.mkdtemp(prefix="smtp-intake-bench-", dir=args.tmpdir))
    try:
        server = await start_gateway(workdir, args.normalise)
        try:
            load, cpu, other, rss = await measure(
                server, args=args, tag=f"{run_id}.r{round_no}.gateway"
            )
        finally:
            status = await server.stop()
        result = SideResult("gateway", round_no, load, cpu, other, rss, status)
        _check_load(result)
        try:
            result.rows, distinct = _count_rows(workdir / "var" / "gateway.db")
        except sqlite3.Error as exc:
            result.problems.append(f"cannot count the rows: {exc}")
        else:
            if result.rows != load.accepted:
                result.problems.append(
                    f"{result.rows} rows in submissions but the client got {load.accepted} x 250"
                )
            if distinct != result.rows:
                result.problems.append(f"{result.rows} rows, {distinct} distinct Message-IDs")
        with (workdir / "gateway.log").open("rb") as fh:
            for line in fh:
                result.log_lines += 1
                if b'"level": "info"' not in line and b'"level": "debug"' not in line:
                    result.log_warnings += 1
        stderr = (workdir / "gateway.stderr").read_text(errors="replace").strip()
        if result.log_warnings:
            result.problems.append(f"{result.log_warnings} log lines above info in gateway.log")
        if stderr:
            result.problems.append(f"gateway stderr: {stderr[-500:]}")
        if args.keep:
            result.kept = str(workdir)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report -------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def print_side(r: SideResult) -> None:
    load = r.load
    cpu_us = r.server_cpu_seconds / load.accepted * 1e6 if load.accepted else 0.0
    line = (
        f"round {r.round}  {r.side:<7} {load.rate:9.1f} msg/s"
        f"  p50 {load.latency_p50_ms:6.2f} ms  p99 {load.latency_p99_ms:6.2f} ms"
        f"  server CPU {cpu_us:5.0f} us/msg"
        f"  client CPU {load.client_cpu_seconds:5.1f} s"
        f"  other CPU {r.other_cpu_seconds:5.1f} s"
        f"  VmHWM {_mib(r.peak_rss_kib)}"
        f"  250s {load.accepted}  errors {load.error_count}  exit {r.exit_status}"
    )
    print(line)
    if r.rows is not None:
        verdict = "ok" if r.rows == load.accepted else "MISMATCH"
        print(
            f"         rows check: {r.rows} rows in submissions, {load.accepted} x 250 received:"
            f" {verdict}; gateway.log {r.log_lines} lines, {r.log_warnings} above info"
        )
    if r.kept:
        print(f"         files kept in {r.kept}")
    for problem in r.problems:
        print(f"         PROBLEM: {problem}")
    sys.stdout.flush()


def print_summary(results: list[SideResult]) -> None:
    sink = [r.load.rate for r in results if r.side == "sink"]
    gateway = [r for r in results if r.side == "gateway"]
    gateway_rates = [r.load.rate for r in gateway]
    sink_median, gateway_median = statistics.median(sink), statistics.median(gateway_rates)
    print()
    print(f"summary over {len(gateway)} rounds")
    print(f"  sink     median {sink_median:9.1f} msg/s   (rounds: "
          + ", ".join(f"{x:.1f}" for x in sink) + ")")
    print(f"  gateway  median {gateway_median:9.1f} msg/s   (rounds: "
          + ", ".join(f"{x:.1f}" for x in gateway_rates) + ")")
    print(f"  gateway/sink ratio {gateway_median / sink_median:.3f}")
    print(f"  gateway peak RSS (VmHWM) {_mib(max(r.peak_rss_kib for r in gateway))}"
          f"   (rounds: " + ", ".join(_mib(r.peak_rss_kib) for r in gateway) + ")")
    rows_ok = all(r.rows == r.load.accepted for r in gateway)
    print(f"  rows == 250s in every gateway run: {'yes' if rows_ok else 'NO'}")
    problems = sum(len(r.problems) for r in results)
    print(f"  problems: {problems}")


async def run_benchmark(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:12]
    probe = _Messages("x").build(0, 0)
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    print(
        f"smtp intake benchmark {run_id}: {args.connections} connections, "
        f"~{len(probe)} B messages, {args.rounds} rounds x {args.seconds:g} s per side "
        f"(+{args.warmup:g} s warm-up), {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"gateway database under {tmp}, normalise = {args.normalise}"
    )
    sys.stdout.flush()
    results: list[SideResult] = []
    for round_no in range(1, args.rounds + 1):
        for run_side in (run_sink_side, run_gateway_side):
            result = await run_side(round_no, args, run_id)
            print_side(result)
            results.append(result)
    print_summary(results)
    return 1 if any(r.problems for r in results) else 0


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds per side per round (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before the measurement starts (default 1)")
    parser.add_argument("--connections", type=int, default=50,
                        help="concurrent SMTP connections (default 50)")
    parser.add_argument("--tmpdir", default=None,
                        help="where the gateway's temporary folders go (default: the system's)")
    parser.add_argument(
        "--normalise", choices=["serve", "separate"], default="serve",
        help="serve: the gateway also files reports into cases while it takes them in (the "
             "default install); separate: intake alone, as with a separate normalise process")
    parser.add_argument("--keep", action="store_true",
                        help="keep the gateway's temporary folders (database, log)")
    # Internal: the same file is the sink and the load generator.
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="bench", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sink:
        asyncio.run(_run_sink())
        return 0
    if args.load is not None:
        result = asyncio.run(_run_load(
            args.load, connections=args.connections, warmup=args.warmup,
            seconds=args.seconds, tag=args.tag,
        ))
        print(json.dumps(asdict(result)))
        return 0
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1:
        _parser().error("--rounds, --seconds and --connections must be positive")
    return asyncio.run(run_benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
