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


def child(tree: Path, count: int, seed: int, stub: str | None = None) -> None:
    """In the child (this file run as a script, which imports no gateway code of its own):
    ``tree``'s normalise benchmark's stage, once; prints one JSON line. With ``stub``
    "sealing", after ``instructions.py``'s plaintext door is installed."""
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
        wall, cpu = theirs.asyncio.run(theirs.run_stage(reports, Path(tmp) / "g.db"))
        _, ok = theirs.check(Path(tmp) / "g.db", reports)
    print(json.dumps({"wall": wall, "cpu": cpu, "corpus": digest, "ok": ok}))


def _run(tree: Path, count: int, seed: int, stub: str | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "against.py"), str(tree), str(count), str(seed),
         *([stub] if stub else [])],
        env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True,
        check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: exit {done.returncode}\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def compare(tree: Path, *, count: int, seed: int, rounds: int) -> bool:
    """Print both stages' figures per round and the median ratios; False if a check failed
    or the two corpora differ."""
    here = HERE.parent
    stub = "sealing" if str(tree) == NO_SEALING else None
    if stub:  # this checkout, without sealing
        tree = here
    print(f"\nthe stage against {'this checkout without sealing' if stub else tree} "
          f"({rounds} rounds, child processes, alternating order)")
    rate: list[float] = []
    cpu: list[float] = []
    ok = True
    for round_no in range(1, rounds + 1):
        order = ["now", "before"] if round_no % 2 else ["before", "now"]
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
          sys.argv[4] if len(sys.argv) > 4 else None)
