"""What the intake benchmarks (``smtp_intake.py``, ``http_intake.py``) have in common.

Each benchmark is a script that measures one intake listener of the gateway against a bare
server speaking the same protocol, under the same load from a separate process. The script
itself is also the bare server and the load generator (re-run with an internal flag); this
module holds the rest:

- :class:`Server`, a server child process and its port, stopped with SIGTERM;
- starting the bare server (:func:`start_reference`) and ``hotline-gateway serve`` with a
  given config in a temporary folder (:func:`start_gateway`), whose port is read from the
  ``gateway.ready`` line of its JSON log for a given listener ("smtp" or "http");
- the load: :class:`LoadResult` (the fields both load generators report), :class:`LoadStats`,
  :class:`Window` and :func:`load_result` for the load process, and :func:`run_load` and
  :func:`measure` to run it against a server while reading CPU time and peak RSS from /proc;
- one side of one round (:func:`run_reference_side`, :func:`run_gateway_side`: rows in the
  database, log lines above info, stderr, exit status) as a :class:`SideResult`;
- the report (:func:`print_side`, :func:`print_summary_tail`), the A/B loop
  (:func:`run_benchmark`), the command line (:func:`parser`, :func:`main`);
- with ``--against TREE``, a third side in every round: another checkout's own gateway (a
  ``git worktree`` of an older commit, e.g. the release before a change) with that checkout's
  own copy of the benchmark's config, so that "before" and "after" share one window of the
  machine's noise (:func:`run_before_side`, :func:`print_against`); with ``--paired`` as
  well, the two gateways run at the same time, pinned to one CPU with their load on the
  other, so that they share that noise second by second (:func:`run_paired_sides`).

What differs between benchmarks (names, units, the gateway config, how the figures are
printed) is given by the script as a :class:`Bench`. The scripts run as scripts, so this
folder is on ``sys.path`` and they ``import harness``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
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
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds a server may take to start listening
STOP_TIMEOUT = 30.0  # seconds a server may take to exit after SIGTERM
STALL_TIMEOUT = 60.0  # seconds past the end of the window before the client gives up


# --- what a benchmark script provides -----------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One benchmark: the script, its names and units, its gateway and its two roles."""

    script: Path  # the benchmark script, re-run as the bare server and the load generator
    name: str  # "smtp": the first word of the heading line, and of the temporary folders
    listener: str  # the key of the gateway's "gateway.ready" log line with the port to load
    gateway_config: str  # config.toml for the gateway, without its [intake] section
    load_type: type[LoadResult]  # what the load process prints, as JSON
    reference: str  # the bare side's name ("sink", "bare")
    reference_flag: str  # the internal option that makes the script the bare server
    reference_what: str  # the bare server in "... did not start"
    reference_tag: str  # the bare side's suffix in the load's tag
    gateway_tag: str  # the gateway side's suffix in the load's tag
    unit: str  # what the heading line says is sent: "messages", "forms"
    reply: str  # the status the client counts as accepted: "250", "303"
    ids: str  # the unique ids in the database: "Message-IDs", "form ids"
    warnings: str  # how the rows check line names the log lines it counts: "above info"
    figures: Callable[[SideResult], str]  # rate, latency and server CPU of one side's line
    summary: Callable[[list[SideResult]], None]  # the summary, up to print_summary_tail
    run_reference: Callable[[], Awaitable[None]]  # the bare server, until SIGTERM
    run_load: Callable[..., Awaitable[LoadResult]]  # (port, connections=, warmup=, ...)
    sample_bytes: Callable[[str, int], int]  # (run id, connections) -> bytes of one request
    connections: int  # the default of --connections
    connections_help: str
    expected_alerts: Collection[str] = ()  # events logged above info that are not problems


# --- the load generator -------------------------------------------------------------------


@dataclass(kw_only=True)
class LoadResult:
    """What one load run saw; sent from the load process to the benchmark as JSON.

    Each benchmark adds the size of what it sends.
    """

    connections: int
    window_seconds: float
    accepted: int = 0  # answers that accepted a report, over the whole run (warm-up included)
    in_window: int = 0  # of those, the ones that arrived inside the measured window
    latency_p50_ms: float = 0.0  # request sent to answer received, in the window
    latency_p99_ms: float = 0.0
    client_cpu_seconds: float = 0.0  # the load process's CPU time, start-up included
    errors: dict[str, int] = field(default_factory=dict)  # "what" -> count

    @property
    def rate(self) -> float:
        return self.in_window / self.window_seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Window:
    """The measured interval, in loop time, starting a warm-up after the load starts."""

    start: float = 0.0
    end: float = 0.0


class LoadStats:
    def __init__(self) -> None:
        self.accepted = 0
        self.in_window = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def count(self, began: float, done: float, window: Window) -> None:
        """One accepted request, sent at ``began`` and answered at ``done`` (loop time)."""
        self.accepted += 1
        if window.start <= done < window.end:
            self.in_window += 1
            self.latencies.append(done - began)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


L = TypeVar("L", bound=LoadResult)


def load_result(
    load_type: type[L], stats: LoadStats, *, connections: int, seconds: float, **size: int
) -> L:
    """The load process's result, from its counts; ``size`` is the benchmark's own field."""
    latencies = sorted(stats.latencies)
    return load_type(
        connections=connections,
        window_seconds=seconds,
        accepted=stats.accepted,
        in_window=stats.in_window,
        latency_p50_ms=percentile(latencies, 0.50) * 1000,
        latency_p99_ms=percentile(latencies, 0.99) * 1000,
        client_cpu_seconds=time.process_time(),
        errors=dict(stats.errors),
        **size,
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


async def start_reference(bench: Bench) -> Server:
    """The bare server: the script with its flag, which prints ``{"port": N}`` when ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(bench.script), bench.reference_flag, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        port = int(json.loads(line)["port"])
    except (TimeoutError, ValueError, KeyError) as exc:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{bench.reference_what} did not start: {exc!r}") from exc
    return Server(process, port)


def gateway_command() -> list[str]:
    """The installed ``hotline-gateway`` of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "hotline-gateway"
    found = str(beside) if beside.exists() else shutil.which("hotline-gateway")
    if found is None:
        raise RuntimeError("hotline-gateway is not installed: run `make` or `pip install -e .`")
    return [found]


def ready_port(log_file: Path, listener: str) -> int | None:
    """The port of ``listener`` ("smtp", "http") from the gateway's "gateway.ready" log line,
    once it is there (the first address the gateway listens on for it)."""
    with log_file.open("rb") as fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "gateway.ready":
                return int(str(entry[listener][0]).rpartition(":")[2])
    return None


def make_keyring(config_path: Path) -> None:
    """The data keys the config names, made as ``setup-demo`` makes them: the gateway seals
    what it stores with them and refuses to start without."""
    from gateway import config as config_module
    from gateway.store.sealing import create_keyring

    keyring = config_module.load(config_path).data.keyring
    if keyring is not None and not keyring.exists():
        keyring.parent.mkdir(parents=True, exist_ok=True)
        create_keyring(keyring)


def make_tree_keyring(tree: Path, config_path: Path, env: dict[str, str]) -> None:
    """``tree``'s own way to make the keys its config names (none before sealing)."""
    import subprocess

    subprocess.run([sys.executable, "-c",
                    "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                    "import harness; make = getattr(harness, 'make_keyring', None); "
                    "make and make(Path(sys.argv[2]))",
                    str(tree / "bench"), str(config_path)],
                   cwd=config_path.parent, env=env, check=True, stdout=subprocess.DEVNULL)


def tree_config(tree: Path, script: str) -> str:
    """``GATEWAY_CONFIG`` of ``tree``'s copy of the benchmark ``script`` ("smtp_intake"),
    read without importing it: an older checkout's gateway gets the config it was
    benchmarked with."""
    module = ast.parse((tree / "bench" / f"{script}.py").read_text())
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "GATEWAY_CONFIG"
                for target in node.targets):
            return str(ast.literal_eval(node.value))
    raise RuntimeError(f"{tree}/bench/{script}.py has no GATEWAY_CONFIG")


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """``command`` run on the CPUs ``cpus`` names ("1", "0-2"), every thread it starts
    included; as it is where ``cpus`` is None."""
    return ["taskset", "--cpu-list", cpus, *command] if cpus is not None else command


async def start_gateway(
    workdir: Path, config_text: str, listener: str, normalise: str = "serve",
    tree: Path | None = None, stub: str | None = None, cpus: str | None = None,
) -> Server:
    """``hotline-gateway serve`` in ``workdir`` with ``config_text``, JSON logs in gateway.log;
    the server on the port of ``listener`` once the gateway says it is ready. With ``tree``,
    that checkout's gateway (its code on ``PYTHONPATH``, this environment's libraries); with
    ``stub``, after ``bench/instructions.py``'s stand-ins of that name ("sealing"); with
    ``cpus``, on those CPUs only."""
    config = workdir / "config.toml"
    config.write_text(config_text + f'\n[intake]\nnormalise = "{normalise}"\n')
    env = None
    if tree is None:
        make_keyring(config)
        command = gateway_command()
    else:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        make_tree_keyring(tree, config, env)
        import instructions  # beside this file; it imports this module, so not at the top

        command = [sys.executable, "-c", instructions.serve_code(stub)]
    log_file, err_file = workdir / "gateway.log", workdir / "gateway.stderr"
    with log_file.open("wb") as out, err_file.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *pinned(command, cpus), "--config", str(config), "serve",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while (port := ready_port(log_file, listener)) is None:
        if process.returncode is not None or time.monotonic() > deadline:
            if process.returncode is None:
                process.kill()
            status = await process.wait()
            tail = err_file.read_text(errors="replace")[-2000:] or log_file.read_text()[-2000:]
            raise RuntimeError(f"the gateway did not become ready (exit {status}):\n{tail}")
        await asyncio.sleep(0.05)
    return Server(process, port)


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` value such as VmHWM from /proc/PID/status (0 if not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included) from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (idle and iowait excluded)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# --- one side of one round ----------------------------------------------------------------


@dataclass
class SideResult:
    side: str
    round: int
    load: LoadResult  # the benchmark's own kind
    server_cpu_seconds: float
    other_cpu_seconds: float  # the machine's busy time minus server and client: noise
    peak_rss_kib: int
    exit_status: int
    rows: int | None = None  # gateway only: rows in `submissions` after it stopped
    log_lines: int = 0
    log_warnings: int = 0
    kept: str | None = None  # the gateway's folder, with --keep
    problems: list[str] = field(default_factory=list)


async def run_load(
    bench: Bench, port: int, *, args: argparse.Namespace, tag: str, cpus: str | None = None,
) -> LoadResult:
    """The load generator, in a process of its own (on ``cpus`` where given)."""
    process = await asyncio.create_subprocess_exec(
        *pinned([sys.executable, str(bench.script)], cpus), "--load", str(port),
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
    return bench.load_type(**json.loads(out.splitlines()[-1]))


async def measure(
    bench: Bench, server: Server, *, args: argparse.Namespace, tag: str,
    cpus: str | None = None,
) -> tuple[LoadResult, float, float, int]:
    """Run the load (on ``cpus`` where given) against ``server``.

    Returns the load result, the server's CPU seconds, the CPU seconds used by everything
    else on the machine meanwhile, and the server's peak RSS in KiB.
    """
    cpu_before, busy_before = cpu_seconds(server.pid), machine_busy_seconds()
    load = await run_load(bench, server.port, args=args, tag=tag, cpus=cpus)
    cpu = cpu_seconds(server.pid) - cpu_before
    other = machine_busy_seconds() - busy_before - cpu - load.client_cpu_seconds
    return load, cpu, max(0.0, other), proc_status(server.pid, "VmHWM")


def _check_load(result: SideResult) -> None:
    for what, count in sorted(result.load.errors.items()):
        result.problems.append(f"{count} x {what}")
    if result.exit_status != 0:
        result.problems.append(f"server exit status {result.exit_status}, expected 0")


async def run_reference_side(
    bench: Bench, round_no: int, args: argparse.Namespace, run_id: str
) -> SideResult:
    server = await start_reference(bench)
    try:
        load, cpu, other, rss = await measure(
            bench, server, args=args, tag=f"{run_id}.r{round_no}.{bench.reference_tag}"
        )
    finally:
        status = await server.stop()
    result = SideResult(bench.reference, round_no, load, cpu, other, rss, status)
    _check_load(result)
    return result


def count_rows(database: Path, config_path: Path) -> tuple[int, int]:
    """(rows, distinct message ids) in the gateway's ``submissions`` table; the ids are
    sealed, so they are opened with the keyring ``config_path`` names."""
    import uuid

    from gateway import config as config_module
    from gateway.store.sealed import open_value
    from gateway.store.sealing import Sealer, keyring_path, load_keyring
    from gateway.store.tables import submissions

    data = config_module.load(config_path).data
    sealer = Sealer(load_keyring(keyring_path(data.keyring, data.credential, os.environ)))
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, message_id FROM submissions").fetchall()
    finally:
        conn.close()
    ids = {open_value(sealer, submissions.c.message_id, uuid.UUID(hex=record), sealed)
           for record, sealed in rows}
    ids.discard(None)
    return len(rows), len(ids)


def _count_log(result: SideResult, log_file: Path, expected_alerts: Collection[str]) -> None:
    """Count the log's lines, and those above info but for the expected alerts."""
    with log_file.open("rb") as fh:
        for line in fh:
            result.log_lines += 1
            if b'"level": "info"' in line or b'"level": "debug"' in line:
                continue
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                event = None
            if event not in expected_alerts:
                result.log_warnings += 1


async def run_gateway_side(
    bench: Bench, round_no: int, args: argparse.Namespace, run_id: str
) -> SideResult:
    return await _gateway_side(bench, round_no, args, run_id, None)


def _before(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The tree and stub of the side ``--against`` names: another checkout's gateway as that
    checkout benchmarked it; or, with ``--against no-sealing``, this checkout's with the
    sealing door storing plaintext."""
    if str(args.against) == "no-sealing":
        return Path(__file__).parent.parent, "sealing"
    return args.against, None


async def run_before_side(
    bench: Bench, round_no: int, args: argparse.Namespace, run_id: str
) -> SideResult:
    """The gateway of the checkout ``--against`` names (``_before``)."""
    return await _gateway_side(bench, round_no, args, run_id, *_before(args))


def plain_rows(database: Path) -> int:
    """Rows in ``submissions`` (read-only; whatever release wrote the file)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM submissions").fetchone()[0])
    finally:
        conn.close()


@dataclass
class _Side:
    """A gateway side under way: its name, its folder, its server and its load's tag."""

    name: str
    tag: str
    workdir: Path
    tree: Path | None
    server: Server | None = None


async def _open_side(bench: Bench, round_no: int, args: argparse.Namespace, run_id: str,
                     tree: Path | None, stub: str | None, cpus: str | None = None) -> _Side:
    name, tag = ("gateway", bench.gateway_tag) if tree is None else ("before", "before")
    side = _Side(name, f"{run_id}.r{round_no}.{tag}", Path(tempfile.mkdtemp(
        prefix=f"{bench.name}-intake-bench-", dir=args.tmpdir)), tree)
    config_text = bench.gateway_config if tree is None else tree_config(tree, bench.script.stem)
    try:
        side.server = await start_gateway(side.workdir, config_text, bench.listener,
                                          args.normalise, tree, stub, cpus)
    except BaseException:
        shutil.rmtree(side.workdir, ignore_errors=True)
        raise
    return side


async def _close_side(side: _Side, round_no: int, args: argparse.Namespace, bench: Bench,
                      measured: tuple[LoadResult, float, float, int]) -> SideResult:
    """Stop the side's server, and its result with the checks of its database and log."""
    assert side.server is not None
    try:
        status = await side.server.stop()
        result = SideResult(side.name, round_no, *measured, status)
        _check_load(result)
        _check_gateway(bench, result, side.workdir, side.tree)
        if args.keep:
            result.kept = str(side.workdir)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(side.workdir, ignore_errors=True)


def _check_gateway(bench: Bench, result: SideResult, workdir: Path, tree: Path | None) -> None:
    """Rows against acknowledgements, distinct ids, the log and stderr of a gateway side."""
    database = workdir / "var" / "gateway.db"
    try:
        if tree is None:
            result.rows, distinct = count_rows(database, workdir / "config.toml")
        else:  # another release's columns: the count alone
            result.rows = distinct = plain_rows(database)
    except sqlite3.Error as exc:
        result.problems.append(f"cannot count the rows: {exc}")
    else:
        if result.rows != result.load.accepted:
            result.problems.append(
                f"{result.rows} rows in submissions but the client got"
                f" {result.load.accepted} x {bench.reply}"
            )
        if distinct != result.rows:
            result.problems.append(f"{result.rows} rows, {distinct} distinct {bench.ids}")
    _count_log(result, workdir / "gateway.log", bench.expected_alerts)
    stderr = (workdir / "gateway.stderr").read_text(errors="replace").strip()
    if result.log_warnings:
        result.problems.append(f"{result.log_warnings} log lines above info in gateway.log")
    if stderr:
        result.problems.append(f"gateway stderr: {stderr[-500:]}")


async def _gateway_side(
    bench: Bench, round_no: int, args: argparse.Namespace, run_id: str, tree: Path | None,
    stub: str | None = None,
) -> SideResult:
    side = await _open_side(bench, round_no, args, run_id, tree, stub)
    assert side.server is not None
    try:
        measured = await measure(bench, side.server, args=args, tag=side.tag)
    except BaseException:
        await side.server.stop()
        if not args.keep:
            shutil.rmtree(side.workdir, ignore_errors=True)
        raise
    return await _close_side(side, round_no, args, bench, measured)


async def run_paired_sides(
    bench: Bench, round_no: int, args: argparse.Namespace, run_id: str
) -> list[SideResult]:
    """This checkout's gateway and the one ``--against`` names at the same time, both pinned
    to the last CPU (their load generators to the others), so that whatever else runs on
    the machine meanwhile falls on both alike: the scheduler shares that CPU between the two
    fairly, and each one's CPU time per report and rate are measured in the same seconds."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise RuntimeError("--paired needs two CPUs: one for the servers, one for the load")
    servers_cpu, load_cpus = str(allowed[-1]), ",".join(str(c) for c in allowed[:-1])
    sides: list[_Side] = []
    try:
        for tree, stub in ((None, None), _before(args)):
            sides.append(await _open_side(bench, round_no, args, run_id, tree, stub,
                                          servers_cpu))
        measured = await asyncio.gather(*(
            measure(bench, side.server, args=args, tag=side.tag, cpus=load_cpus)
            for side in sides if side.server is not None))
    except BaseException:
        for side in sides:
            if side.server is not None:
                await side.server.stop()
            if not args.keep:
                shutil.rmtree(side.workdir, ignore_errors=True)
        raise
    # Each side's "other CPU" counted the other side as noise: take it out.
    both = [m[1] + m[0].client_cpu_seconds for m in measured]
    measured = [(m[0], m[1], max(0.0, m[2] - both[1 - i]), m[3])
                for i, m in enumerate(measured)]
    return [await _close_side(side, round_no, args, bench, m)
            for side, m in zip(sides, measured, strict=True)]


# --- report -------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def print_side(bench: Bench, r: SideResult) -> None:
    load = r.load
    line = (
        f"round {r.round}  {r.side:<7} {bench.figures(r)}"
        f"  client CPU {load.client_cpu_seconds:5.1f} s"
        f"  other CPU {r.other_cpu_seconds:5.1f} s"
        f"  VmHWM {mib(r.peak_rss_kib)}"
        f"  {bench.reply}s {load.accepted}  errors {load.error_count}  exit {r.exit_status}"
    )
    print(line)
    if r.rows is not None:
        verdict = "ok" if r.rows == load.accepted else "MISMATCH"
        print(
            f"         rows check: {r.rows} rows in submissions,"
            f" {load.accepted} x {bench.reply} received:"
            f" {verdict}; gateway.log {r.log_lines} lines, {r.log_warnings} {bench.warnings}"
        )
    if r.kept:
        print(f"         files kept in {r.kept}")
    for problem in r.problems:
        print(f"         PROBLEM: {problem}")
    sys.stdout.flush()


def print_summary_tail(bench: Bench, results: list[SideResult]) -> None:
    """The gateway's peak RSS, the rows check and the problems, after the rates."""
    gateway = [r for r in results if r.side == "gateway"]
    print(f"  gateway peak RSS (VmHWM) {mib(max(r.peak_rss_kib for r in gateway))}"
          f"   (rounds: " + ", ".join(mib(r.peak_rss_kib) for r in gateway) + ")")
    rows_ok = all(r.rows == r.load.accepted for r in gateway)
    print(f"  rows == {bench.reply}s in every gateway run: {'yes' if rows_ok else 'NO'}")
    print(f"  problems: {sum(len(r.problems) for r in results)}")


def _cpu_per_report_us(r: SideResult) -> float:
    return r.server_cpu_seconds / r.load.accepted * 1e6 if r.load.accepted else 0.0


def print_against(bench: Bench, results: list[SideResult], tree: Path,
                  paired: bool = False) -> None:
    """This checkout's gateway against the one ``--against`` named, round by round (each
    pair shared a round's window) and as medians of the per-round ratios."""
    now = {r.round: r for r in results if r.side == "gateway"}
    before = {r.round: r for r in results if r.side == "before"}
    rounds = sorted(set(now) & set(before))
    if not rounds:
        return
    rate = [now[i].load.rate / before[i].load.rate for i in rounds if before[i].load.rate]
    cpu = [_cpu_per_report_us(now[i]) / _cpu_per_report_us(before[i]) for i in rounds
           if _cpu_per_report_us(before[i])]
    print(f"\nthis checkout against {tree} (same rounds, "
          f"{'at the same time on one CPU' if paired else 'same window'})")
    for i in rounds:
        print(f"  round {i}  rate {now[i].load.rate:9.1f} vs {before[i].load.rate:9.1f}"
              f" {bench.unit}/s   server CPU {_cpu_per_report_us(now[i]):6.0f} vs"
              f" {_cpu_per_report_us(before[i]):6.0f} us/{bench.unit.rstrip('s')}")
    if rate and cpu:
        print(f"  median ratios (this/before): rate {statistics.median(rate):.3f}"
              f"  server CPU per report {statistics.median(cpu):.3f}"
              f"  (rounds: rate " + ", ".join(f"{x:.3f}" for x in rate)
              + "; CPU " + ", ".join(f"{x:.3f}" for x in cpu) + ")")


async def run_benchmark(bench: Bench, args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:12]
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    print(
        f"{bench.name} intake benchmark {run_id}: {args.connections} connections, "
        f"~{bench.sample_bytes(run_id, args.connections)} B {bench.unit}, "
        f"{args.rounds} rounds x {args.seconds:g} s per side "
        f"(+{args.warmup:g} s warm-up), {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"gateway database under {tmp}, normalise = {args.normalise}"
    )
    sys.stdout.flush()
    if args.against is not None:
        print(f"  against: {args.against} (its gateway as a third side, \"before\")")
    results: list[SideResult] = []
    for round_no in range(1, args.rounds + 1):
        sides: list[Callable[..., Awaitable[SideResult]]] = [run_gateway_side]
        if args.against is not None and not args.paired:  # which goes first alternates
            sides = [*sides, run_before_side] if round_no % 2 else [run_before_side, *sides]
        if args.paired:
            sides = []
        for run_side in (run_reference_side, *sides):
            result = await run_side(bench, round_no, args, run_id)
            print_side(bench, result)
            results.append(result)
        if args.paired:
            for result in await run_paired_sides(bench, round_no, args, run_id):
                print_side(bench, result)
                results.append(result)
    bench.summary([r for r in results if r.side != "before"])
    if args.paired:
        print("  (--paired: the gateway shared one CPU with the other side, so its rate against"
              f" the {bench.reference} is\n   not the intake figure; run without --paired for"
              " that.)")
    print_summary_tail(bench, results)
    if args.against is not None:
        print_against(bench, results, args.against, args.paired)
    return 1 if any(r.problems for r in results) else 0


# --- command line -------------------------------------------------------------------------


def parser(bench: Bench, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds per side per round (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before the measurement starts (default 1)")
    parser.add_argument("--connections", type=int, default=bench.connections,
                        help=bench.connections_help)
    parser.add_argument("--tmpdir", default=None,
                        help="where the gateway's temporary folders go (default: the system's)")
    parser.add_argument(
        "--normalise", choices=["serve", "separate"], default="serve",
        help="serve: the gateway also files reports into cases while it takes them in (the "
             "default install); separate: intake alone, as with a separate normalise process")
    parser.add_argument("--keep", action="store_true",
                        help="keep the gateway's temporary folders (database, log)")
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="also run another checkout's gateway (e.g. a git worktree of the "
                             "release before a change) in every round, and compare; "
                             "'no-sealing': this checkout with the sealing door storing "
                             "plaintext (what sealing costs)")
    parser.add_argument("--paired", action="store_true",
                        help="with --against: run the two gateways at the same time, both on "
                             "one CPU (the load on the other), rather than one after the other: "
                             "the machine's noise then falls on both alike")
    # Internal: the same script is the bare server and the load generator.
    parser.add_argument(bench.reference_flag, action="store_true", dest="reference",
                        help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="bench", help=argparse.SUPPRESS)
    return parser


def main(bench: Bench, description: str | None, argv: list[str] | None = None) -> int:
    args = parser(bench, description).parse_args(argv)
    if args.reference:
        asyncio.run(bench.run_reference())
        return 0
    if args.load is not None:
        result = asyncio.run(bench.run_load(
            args.load, connections=args.connections, warmup=args.warmup,
            seconds=args.seconds, tag=args.tag,
        ))
        print(json.dumps(asdict(result)))
        return 0
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1:
        parser(bench, description).error("--rounds, --seconds and --connections must be positive")
    if args.paired and args.against is None:
        parser(bench, description).error("--paired compares two gateways: give --against too")
    return asyncio.run(run_benchmark(bench, args))
