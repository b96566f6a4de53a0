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

Needs valgrind (``apt-get install valgrind``): about a minute per tree and phase for 192
reports. The figures are instructions, not time: a ratio of two of them says how much more work
one build does, which is what a "costs under N%" goal asks, on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PHASES = ("store", "stage")


def _toggle(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                   stdout=subprocess.DEVNULL)


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


def _child(tree: Path, phase: str, count: int, null: bool) -> None:
    """In valgrind: the phase of ``tree``'s normalise benchmark, instrumented alone."""
    sys.path.insert(0, str(tree / "bench"))
    import normalise

    if null:
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


def _measure(tree: Path, phase: str, count: int, null: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
                   "--child", str(tree), "--phase", phase, "--count", str(count)]
        if null:
            command.append("--null-crypto")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=192, help="reports (default 192)")
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="another checkout to measure too (repeatable)")
    parser.add_argument("--null-crypto", action="store_true",
                        help="also measure this checkout with AES-GCM and HMAC stubbed")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.phase, args.count, args.null_crypto)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    here = HERE.parent
    runs = [(str(tree), tree.resolve(), False) for tree in args.tree]
    runs.append(("this checkout", here, False))
    if args.null_crypto:
        runs.append(("this checkout, crypto stubbed", here, True))
    print(f"instructions per report (callgrind), {args.count} reports, corpus of"
          " bench/normalise.py (seed 7)")
    figures: dict[str, dict[str, float]] = {}
    for label, tree, null in runs:
        figures[label] = {phase: _measure(tree, phase, args.count, null) / args.count
                          for phase in PHASES}
        line = "  ".join(f"{phase} {figures[label][phase] / 1e3:8.1f} k" for phase in PHASES)
        print(f"  {label:<34} {line}", flush=True)
    first = runs[0][0]
    if len(runs) > 1:
        print(f"ratios to {first}:")
        for label, _, _ in runs[1:]:
            line = "  ".join(f"{phase} {figures[label][phase] / figures[first][phase]:.3f}x"
                             for phase in PHASES)
            print(f"  {label:<34} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
