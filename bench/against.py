"""The normalise stage of this checkout against another's, in one window (``normalise.py
--against TREE``).

Each round runs the stage of both checkouts, one after the other in an order that alternates
between rounds, each in a child process of its own, pinned to the same CPU, with its own code
(the tree on ``PYTHONPATH``) and its own copy of ``bench/normalise.py``: its corpus (the same
seed gives the same reports, checked by a digest of the raw messages) stored by its own writer,
drained by its own stage on a fresh SQLite database. The figures are the stage's rate and its
CPU time per submission; the ratios are taken per round, where both shared the machine's
noise, and their median reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


NO_SEALING = "no-sealing"


def child(tree: Path, count: int, seed: int, stub: str | None = None,
          paired: bool = False) -> None:
    """In the child (this file run as a script, which imports no gateway code of its own):
    ``tree``'s normalise benchmark's stage, once; prints one JSON line. With ``stub``
    "sealing", after ``instructions.py``'s plaintext door is installed. ``paired``: once the
    corpus is stored, say ``stored`` and wait for a line on stdin before the stage starts."""
    if stub == "sealing":
        sys.path.insert(0, str(HERE))
        import instructions

        instructions._no_sealing()
    sys.path.insert(0, str(tree / "bench"))
    import normalise as theirs
    import structlog

    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[-1]})
    reports = theirs.generate(count, seed)
    digest = hashlib.sha256(b"".join(r.raw for r in reports)).hexdigest()[:16]
    with (tempfile.TemporaryDirectory(prefix="normalise-against-") as tmp,
          (Path(tmp) / "gateway.log").open("w") as log_file):
        theirs.logs.configure("info", "json")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(log_file))
        wall, cpu = theirs.asyncio.run(theirs.run_stage(
            reports, Path(tmp) / "g.db", *([_wait_for_go] if paired else [])))
        _, ok = theirs.check(Path(tmp) / "g.db", reports)
    print(json.dumps({"wall": wall, "cpu": cpu, "corpus": digest, "ok": ok}))


def _wait_for_go() -> None:
    print("stored", flush=True)
    sys.stdin.readline()


def _command(tree: Path, count: int, seed: int, stub: str | None,
             paired: bool = False) -> list[str]:
    return [sys.executable, str(HERE / "against.py"), str(tree), str(count), str(seed),
            stub or "-", *(["paired"] if paired else [])]


def _result(tree: Path, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    if returncode != 0:
        raise RuntimeError(f"{tree}: exit {returncode}\n{stderr[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return result


def _run_paired(sides: dict[str, tuple[Path, str | None]], count: int,
                seed: int) -> dict[str, dict[str, Any]]:
    """Both stages at once, each in its child on the same CPU, started together once both
    have stored their corpus."""
    children = {side: subprocess.Popen(
        _command(tree, count, seed, stub, paired=True), env={**os.environ,
                                                             "PYTHONPATH": str(tree)},
        cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for side, (tree, stub) in sides.items()}
    try:
        for side, process in children.items():
            assert process.stdout is not None
            if process.stdout.readline().strip() != "stored":
                raise RuntimeError(f"{sides[side][0]}: its stage did not start\n"
                                   + (process.stderr.read() if process.stderr else "")[-2000:])
        for process in children.values():
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        return {side: _result(sides[side][0], process.wait(), *process.communicate())
                for side, process in children.items()}
    finally:
        for process in children.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _run(tree: Path, count: int, seed: int, stub: str | None = None) -> dict[str, Any]:
    done = subprocess.run(
        _command(tree, count, seed, stub), env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree, capture_output=True, text=True, check=False)
    return _result(tree, done.returncode, done.stdout, done.stderr)


def compare(tree: Path, *, count: int, seed: int, rounds: int, paired: bool = False) -> bool:
    """Print both stages' figures per round and the median ratios; False if a check failed
    or the two corpora differ. ``paired``: both stages of a round at the same time (their
    rates then say nothing; their CPU time per submission is the figure)."""
    here = HERE.parent
    stub = "sealing" if str(tree) == NO_SEALING else None
    if stub:  # this checkout, without sealing
        tree = here
    print(f"\nthe stage against {'this checkout without sealing' if stub else tree} "
          f"({rounds} rounds, child processes, "
          f"{'both at once on one CPU' if paired else 'alternating order'})")
    rate: list[float] = []
    cpu: list[float] = []
    ok = True
    for round_no in range(1, rounds + 1):
        order = ["now", "before"] if round_no % 2 else ["before", "now"]
        if paired:
            got = _run_paired({"now": (here, None), "before": (tree, stub)}, count, seed)
        else:
            got = {side: _run(here, count, seed) if side == "now"
                   else _run(tree, count, seed, stub) for side in order}
        now, before = got["now"], got["before"]
        ok &= bool(now["ok"]) and bool(before["ok"]) and now["corpus"] == before["corpus"]
        rate.append(before["wall"] / now["wall"])
        cpu.append(now["cpu"] / before["cpu"])
        print(f"  round {round_no}  stage {count / now['wall']:6.0f}/s vs"
              f" {count / before['wall']:6.0f}/s   CPU {now['cpu'] / count * 1e6:5.0f} vs"
              f" {before['cpu'] / count * 1e6:5.0f} us/submission"
              f"   corpus {'same' if now['corpus'] == before['corpus'] else 'DIFFERENT'}",
              flush=True)
    print(f"  median ratios (this/before): rate {statistics.median(rate):.3f}"
          f"  CPU per submission {statistics.median(cpu):.3f}  (rounds: rate "
          + ", ".join(f"{x:.3f}" for x in rate) + "; CPU "
          + ", ".join(f"{x:.3f}" for x in cpu) + ")")
    return ok


if __name__ == "__main__":
    child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
          sys.argv[4] if sys.argv[4] != "-" else None, sys.argv[5:] == ["paired"])
