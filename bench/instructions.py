"""Instructions per report, counted by valgrind: the figure that a shared, noisy machine does not
move, for comparing two builds (or the sealing against a build without it) in one run.

Times and CPU seconds from the other benchmarks swing by 10-20% when other work shares the
cores; the number of instructions a piece of code executes does not (repeated runs agree to
about 0.2%). This script runs the normalise benchmark's own corpus and set-up
(``bench/normalise.py``: ``generate`` and ``run_stage``) under ``valgrind --tool=callgrind``
with instrumentation switched on only around one phase, so start-up, imports and corpus
generation are not counted:

  store   the durable intake's part: ``SubmissionWriter`` storing every report as SMTP intake
          stores it (reference, dedup key, sealing the raw message, the batched INSERT, commit);
  stage   the normalise stage draining them (open, parse, seal the results, file the cases).

Each tree given (this checkout by default, others with ``--tree``, e.g. a ``git worktree`` of
an older commit) is measured with its own code and its own copy of ``bench/normalise.py``. With
``--null-crypto`` this checkout is measured a second time with AES-GCM and the lookup HMAC
replaced by stand-ins that copy their input (a measurement device only, never a mode of the
gateway): the difference is what the cryptographic primitives cost, the rest of a difference
to an older build is what sealing costs around them (encoding, bigger rows, bookkeeping).

    .venv/bin/python bench/instructions.py [--count 192] [--tree ../base] [--null-crypto]

``--null-crypto`` applies to ``--serve`` too (the serve child installs the stand-ins before
the CLI starts), and ``--no-sealing`` measures this checkout once more with the sealing door
storing plaintext and opening it back, and an unkeyed lookup hash (``_no_sealing``): the same
code otherwise, so the difference is what sealing costs (storing, the stage, or the whole
intake path with ``--serve``), apart from the other changes an older tree also lacks.

``--serve`` measures the two intake benchmarks' whole path the same way:

  smtp    ``hotline-gateway serve`` (the tree's own, with ``bench/smtp_intake.py``'s config and
          ``normalise = "separate"``) under callgrind, taking messages from this checkout's
          SMTP load generator: sessions, parsing, the durable write, the 250;
  http    the same for ``bench/http_intake.py``'s form posts.

The load comes over one connection by default, one report at a time: each report is then its
own batch and commit, so the figure does not depend on how a run happened to batch concurrent
reports (with two connections, runs of one build differed by up to 20%). For these, a short
load first warms the server up uncounted; then the server's idle work is counted (timers,
the other stages polling: ``--idle`` seconds, by default as long as the load, since a stage
that polls every 30 s is missed by a short window and then counted as the reports' work),
then a load of ``--seconds``;
the figure is the load's instructions, less the idle rate over the load's duration, per row
that the load added to ``submissions``. A tree that has ``[gateway] parts`` runs only its
listeners and the writer (``_intake_only``): nothing but intake is counted.

Needs valgrind (``apt-get install valgrind``): about a minute per tree and phase for 192
reports, and a minute or two per tree for each ``--serve`` phase. The figures are
instructions, not time: a ratio of two of them says how much more work one build does, which
is what a "costs under N%" goal asks, on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The intake benchmarks' shared parts (this checkout's), beside this file.
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

PHASES = ("store", "stage")
#: The whole-path phases: the benchmark script each one borrows its config and load from.
SERVE_PHASES = {"smtp": "smtp_intake", "http": "http_intake"}
SERVE_START_TIMEOUT = 600.0


def _toggle(state: str) -> None:
    _toggle_pid(os.getpid(), state)


def _null_crypto() -> None:
    """AES-GCM and the lookup HMAC replaced by stand-ins of the same shapes (measurement only)."""
    from gateway.store.sealing import cipher

    class CopyAead:
        def __init__(self, key: bytes) -> None:
            pass

        def encrypt(self, nonce: bytes, data: bytes, associated: bytes) -> bytes:
            return data + bytes(16)

        def decrypt(self, nonce: bytes, data: bytes, associated: bytes) -> bytes:
            return data[:-16]

    def lookup(version: int, secret: bytes, purpose: str, value: bytes | str) -> str:
        return f"k{version}:{hash((purpose, value)) & (2 ** 64 - 1):064x}"

    cipher.AESGCM = CopyAead  # type: ignore[misc,assignment]
    cipher._lookup = lookup


def _no_sealing() -> None:
    """The door replaced by one that stores what it is given, as the column's kind encodes
    it (text as UTF-8, JSON compact), and opens it back, and the lookup hash by the unkeyed
    SHA-256 the release before sealing made its dedup key with: the gateway as it would be
    without sealing (a measurement device only, never a mode of the gateway). Installed
    before the gateway's modules are imported, so ``from ... import seal_values`` finds it."""
    import hashlib

    from gateway.store import sealed
    from gateway.store.sealing import cipher

    def seal_values(sealer: Any, table: Any, record: object,
                    values: Any) -> dict[str, Any]:
        out = dict(values)
        for name, kind in sealed.SEALED.get(table.name, {}).items():
            value = out.get(name)
            if value is None:
                continue
            if kind == "text":
                out[name] = value.encode("utf-8", "surrogatepass")
            elif kind == "json":
                out[name] = cipher.json_plaintext(value)
        return out

    def seal_value(sealer: Any, column: Any, record: object, value: Any) -> Any:
        kind = sealed.sealed_kind(column)
        if value is None or kind == "bytes":
            return value
        return (cipher.json_plaintext(value) if kind == "json"
                else value.encode("utf-8", "surrogatepass"))

    def open_value(sealer: Any, column: Any, record: object, stored: Any) -> Any:
        kind = sealed.sealed_kind(column)
        if stored is None or kind == "bytes":
            return stored
        text = bytes(stored).decode("utf-8", "surrogatepass")
        return json.loads(text) if kind == "json" else text

    def lookup_key(self: Any, purpose: str, value: bytes | str) -> str:
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        return hashlib.sha256(value).hexdigest()

    sealed.seal_values = seal_values
    sealed.seal_value = seal_value
    sealed.open_value = open_value
    cipher.Sealer.lookup_key = lookup_key  # type: ignore[method-assign]


def _child(tree: Path, phase: str, count: int, stub: str | None) -> None:
    """In valgrind: the phase of ``tree``'s normalise benchmark, instrumented alone."""
    if stub == "sealing":  # before the gateway's modules take its names
        _no_sealing()
    sys.path.insert(0, str(tree / "bench"))
    import normalise

    if stub == "crypto":
        _null_crypto()
    writer_class: Any = normalise.SubmissionWriter
    stage_class: Any = normalise.NormaliseStage
    if phase == "store":
        submit, stop = writer_class.submit, writer_class.stop
        started: list[bool] = []

        async def counted_submit(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not started:
                started.append(True)
                _toggle("on")
            return await submit(self, *args, **kwargs)

        async def counted_stop(self: Any) -> None:
            await stop(self)
            _toggle("off")

        async def skip(self: Any) -> bool:
            return False

        writer_class.submit, writer_class.stop = counted_submit, counted_stop
        stage_class.run_once = skip
    else:
        run_once = stage_class.run_once
        first: list[bool] = []

        async def counted(self: Any) -> bool:
            if not first:
                first.append(True)
                _toggle("on")
            more: bool = await run_once(self)
            if not more:
                _toggle("off")
            return more

        stage_class.run_once = counted
    reports = normalise.generate(count, 7)
    with tempfile.TemporaryDirectory(prefix="instructions-bench-") as tmp:
        asyncio.run(normalise.run_stage(reports, Path(tmp) / "gateway.db"))


def _measure(tree: Path, phase: str, count: int, stub: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
                   "--child", str(tree), "--phase", phase, "--count", str(count)]
        if stub is not None:
            command += ["--stub", stub]
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tree} {phase}: exit {done.returncode}\n{done.stderr[-2000:]}")
        totals = [int(line.split()[1]) for path in Path(tmp).glob("callgrind.out*")
                  for line in path.read_text().splitlines() if line.startswith("totals:")]
        if not totals or sum(totals) == 0:
            raise RuntimeError(f"{tree} {phase}: callgrind counted nothing")
        return sum(totals)


def _load(script: str, port: int, *, seconds: float, connections: int, tag: str) -> int:
    """This checkout's load generator against ``port``; the replies it counted as accepted."""
    done = subprocess.run(
        [sys.executable, str(HERE / f"{script}.py"), "--load", str(port), "--connections",
         str(connections), "--warmup", "0", "--seconds", str(seconds), "--tag", tag],
        capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    errors = result.get("errors") or {}
    if errors:
        raise RuntimeError(f"{script} load: {errors}")
    return int(result["accepted"])


def _dump_totals(out: Path, after: set[Path]) -> tuple[int, set[Path]]:
    """The instructions in the dump files written since ``after`` (callgrind_control -d)."""
    deadline = time.monotonic() + 120
    while True:
        files = set(out.parent.glob(out.name + ".*")) - after  # one per thread
        if files and all("totals:" in path.read_text() for path in files):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.5)
    totals = sum(int(line.split()[1]) for path in files
                 for line in path.read_text().splitlines() if line.startswith("totals:"))
    return totals, after | files


#: What ``--null-crypto`` and ``--no-sealing`` install in a measured process.
STUBS = {"crypto": "_null_crypto", "sealing": "_no_sealing"}


def serve_code(stub: str | None) -> str:
    """What the serve child runs: the CLI, after the ``stub``'s stand-ins when one is named."""
    first = (f"sys.path.insert(0, {str(HERE)!r}); import instructions; "
             f"instructions.{STUBS[stub]}(); ") if stub else ""
    return f"import sys; {first}from gateway.cli import main; sys.exit(main())"


def _intake_only(tree: Path, config: str) -> str:
    """``config`` running the listeners alone where ``tree`` has ``[gateway] parts``: no
    stage polls the database meanwhile, so the idle work left to subtract is near nothing
    (with the stages it was 5-18% of a load's count, and its estimate moved the figure by a
    few percent from run to run). An older tree runs everything, its idle work subtracted."""
    if '"stages"' not in (tree / "gateway" / "config_sections.py").read_text():
        return config
    return config.replace("[gateway]\n", '[gateway]\nparts = ["smtp", "http", "admin"]\n', 1)


def _measure_serve(tree: Path, phase: str, *, seconds: float, connections: int,
                   idle: float, keep: Path | None = None, stub: str | None = None
                   ) -> tuple[float, int, float]:
    """(instructions per accepted report, reports, idle share) for ``tree``'s serve."""
    script = SERVE_PHASES[phase]
    with tempfile.TemporaryDirectory(prefix="callgrind-serve-") as tmp:
        work = Path(tmp)
        config = work / "config.toml"
        config.write_text(_intake_only(tree, harness.tree_config(tree, script))
                          + '\n[intake]\nnormalise = "separate"\n')
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        harness.make_tree_keyring(tree, config, env)
        out = work / "callgrind.out"
        log_file = work / "gateway.log"
        with log_file.open("wb") as log, (work / "gateway.stderr").open("wb") as err:
            server = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                 f"--callgrind-out-file={out}", sys.executable, "-c", serve_code(stub),
                 "--config", str(config), "serve"],
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=err)
        try:
            deadline = time.monotonic() + SERVE_START_TIMEOUT
            while (port := harness.ready_port(log_file, SERVE_PHASES[phase].split("_")[0])) is None:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (work / "gateway.stderr").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{tree} serve did not become ready:\n{tail}")
                time.sleep(0.5)
            _load(script, port, seconds=seconds / 4, connections=connections, tag="warm")
            database = work / "var" / "gateway.db"
            before = harness.plain_rows(database)
            _toggle_pid(server.pid, "on")
            time.sleep(idle)
            subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            idle_instructions, seen = _dump_totals(out, set())
            started = time.monotonic()
            accepted = _load(script, port, seconds=seconds, connections=connections,
                             tag="counted")
            took = time.monotonic() - started
            subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            load_instructions, dumps = _dump_totals(out, seen)
            if keep is not None:  # the load's dump, for callgrind_annotate
                keep.mkdir(parents=True, exist_ok=True)
                for path in dumps - seen:
                    thread = path.name.rpartition("-")[2]
                    name = f"{tree.name}{'-' + stub if stub else ''}-{phase}-{thread}"
                    shutil.copy(path, keep / f"{name}.callgrind")
            _toggle_pid(server.pid, "off")
            reports = harness.plain_rows(database) - before
            if reports != accepted or reports == 0:
                raise RuntimeError(f"{tree} {phase}: {reports} rows for {accepted} accepted")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    idle_part = idle_instructions / idle * took
    return (load_instructions - idle_part) / reports, reports, idle_part / load_instructions


def _toggle_pid(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def _serve_figures(runs: list[tuple[str, Path, str | None]],
                   args: argparse.Namespace) -> None:
    print(f"instructions per report through serve (callgrind), load of {args.seconds:g} s "
          f"on {args.connections} connections, idle work subtracted")
    figures: dict[str, dict[str, float]] = {}
    for label, tree, stub in runs:
        figures[label] = {}
        parts = []
        for phase in SERVE_PHASES:
            per, reports, idle_share = _measure_serve(
                tree, phase, seconds=args.seconds, connections=args.connections,
                idle=args.idle, keep=args.keep, stub=stub)
            figures[label][phase] = per
            parts.append(f"{phase} {per / 1e3:8.1f} k ({reports} reports, idle "
                         f"{idle_share:.1%})")
        print(f"  {label:<34} {'  '.join(parts)}", flush=True)
    _print_ratios(figures, tuple(SERVE_PHASES))


def _print_ratios(figures: dict[str, dict[str, float]], phases: tuple[str, ...]) -> None:
    """Each later run's figures over the first's."""
    first, *others = figures
    if others:
        print(f"ratios to {first}:")
        for label in others:
            line = "  ".join(f"{phase} {figures[label][phase] / figures[first][phase]:.3f}x"
                             for phase in phases)
            print(f"  {label:<34} {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=192, help="reports (default 192)")
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="another checkout to measure too (repeatable)")
    parser.add_argument("--null-crypto", action="store_true",
                        help="also measure this checkout with AES-GCM and HMAC stubbed")
    parser.add_argument("--no-sealing", action="store_true",
                        help="also measure this checkout with the sealing door storing "
                             "plaintext (what sealing itself costs)")
    parser.add_argument("--serve", action="store_true",
                        help="measure the smtp and http intake paths through serve instead")
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="--serve: seconds of counted load (default 40)")
    parser.add_argument("--connections", type=int, default=1,
                        help="--serve: the load's connections (default 1: each report is "
                             "its own batch, so the figure does not depend on batching)")
    parser.add_argument("--idle", type=float, default=None,
                        help="--serve: seconds of idle work counted first (default: as long "
                             "as the load, so that stages polling every few tens of seconds "
                             "are subtracted in proportion)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="--serve: keep each load's callgrind dump in DIR")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--stub", choices=sorted(STUBS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.idle is None:
        args.idle = args.seconds
    if args.child is not None:
        _child(args.child, args.phase, args.count, args.stub)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    here = HERE.parent
    runs: list[tuple[str, Path, str | None]] = [
        (str(tree), tree.resolve(), None) for tree in args.tree]
    runs.append(("this checkout", here, None))
    if args.null_crypto:
        runs.append(("this checkout, crypto stubbed", here, "crypto"))
    if args.no_sealing:
        runs.append(("this checkout, no sealing", here, "sealing"))
    if args.serve:
        _serve_figures(runs, args)
        return 0
    print(f"instructions per report (callgrind), {args.count} reports, corpus of"
          " bench/normalise.py (seed 7)")
    figures: dict[str, dict[str, float]] = {}
    for label, tree, stub in runs:
        figures[label] = {phase: _measure(tree, phase, args.count, stub) / args.count
                          for phase in PHASES}
        line = "  ".join(f"{phase} {figures[label][phase] / 1e3:8.1f} k" for phase in PHASES)
        print(f"  {label:<34} {line}", flush=True)
    _print_ratios(figures, PHASES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
