"""Referral throughput: referrals encrypted, signed and handed to a local sink per second,
beside bare ``gpg --encrypt --sign`` processes on the same machine in the same run.

Two fresh GnuPG homes in a temporary folder, made with the gpg command line as the tests do
(``gpg-agent.conf`` with ``s2k-count 65536``; ed25519 primary keys with a cv25519 encryption
subkey): ``hotline`` holds our signing key, without a passphrase, and the recipient's public
key; ``partner`` holds the recipient's secret key, to check what was sent. Every side signs
with the same key in the same home (so through the same gpg-agent), encrypts to the same
recipient, and has ``--concurrency`` referrals in flight at a time:

  gpg       the baseline the goal is set against: one bare
            ``gpg --batch --yes --trust-model always --encrypt --sign -r RCPT -u SIGNER --armor``
            process per referral, as asyncio subprocesses, on a referral's inner message
            (the MIME message that the gateway encrypts, ~2-3 KB), read from stdin;
  gpg-nrsf  the same with ``--no-random-seed-file``, as the gateway passes it;
  gateway   the whole path of one referral: ``referral_document`` and ``inner_message`` for a
            new reference, ``Gpg.encrypt_and_sign`` (its key checks, then the encryption),
            ``encrypted_message`` with its ``message_id``, and ``FileTransport.send`` into a
            temporary folder (a local sink: write, fsync, rename, fsync of the folder), with
            a ``--concurrency``-thread executor for gpg as the composition root gives it;
  checks    only the key checks that ``encrypt_and_sign`` runs before it encrypts, through
            the public ``Gpg.check`` (the same code): the recipient for encryption, then
            the signer for signing;
  encrypt   only python-gnupg's ``encrypt`` call as ``Gpg`` makes it (same options, exact
            subkeys with "!", ``--local-user``), in the same kind of executor;
  list1     one bare ``gpg --with-colons --with-secret --list-keys RCPT SIGNER`` per referral:
            what the key checks would cost as a single listing of both keys.

``checks``, ``encrypt`` and ``list1`` are not a referral each: they split ``gateway``'s gpg
time, and price one way of making it smaller.

The refer stage and the outbox around this (SQLite, the case view, the audit log) are not
measured here. Sides alternate in every round; each line is the median over rounds. Beside
the rate: the CPU seconds this process used (python, gpg's pipes, the sink), its gpg children
used, the signing home's gpg-agent used, all of it per referral, and what everything else on
the machine used meanwhile (a large "other" means a disturbed run). A separate, untimed pass
counts the gpg processes one gateway referral starts, by kind. At the end one message of each
kind is decrypted in the partner home and its signature checked. Run from the project root
with the project's virtualenv:

    .venv/bin/python bench/refer.py [--count N] [--rounds N] [--concurrency N]

Exit status 0 when every referral was made and the check at the end passed.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import gnupg  # type: ignore[import-untyped]  # noqa: E402

from gateway.store.ids import uuid7  # noqa: E402
from outbound.document import inner_message, referral_document  # noqa: E402
from outbound.gpg import OPTIONS, Gpg  # noqa: E402
from outbound.pgpmime import encrypted_message, message_id  # noqa: E402
from outbound.transports import FileTransport  # noqa: E402

FROM = "referrals@hotline.test"
TO = "cp@police.test"
ARMOR = b"-----BEGIN PGP MESSAGE-----"
MOMENT = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


# --- keys ----------------------------------------------------------------------------------


def run_gpg(home: Path, *args: str) -> str:
    """gpg in batch mode on ``home``, no passphrase; its status lines and output."""
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-random-seed-file", "--status-fd", "1",
           "--pinentry-mode", "loopback", "--passphrase", ""]  # fmt: skip
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout


def new_home(path: Path) -> Path:
    """An empty GnuPG home with the cheapest S2K count, as ``tests/outbound/conftest.py``."""
    path.mkdir(mode=0o700, parents=True)
    (path / "gpg-agent.conf").write_text("s2k-count 65536\n")
    return path


def make_key(home: Path, uid: str) -> str:
    """ed25519 (sign) with a cv25519 encryption subkey, no passphrase; the fingerprint."""
    out = run_gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "2y")
    fpr = next(ln.split()[3] for ln in out.splitlines() if ln.startswith("[GNUPG:] KEY_CREATED"))
    run_gpg(home, "--quick-add-key", fpr, "cv25519", "encr", "2y")
    return fpr


def subkey(home: Path, fpr: str) -> str:
    """The fingerprint of the key's (only) subkey."""
    out = run_gpg(home, "--with-colons", "--list-keys", fpr)
    lines = out.splitlines()
    at = next(n for n, ln in enumerate(lines) if ln.startswith("sub:"))
    return next(ln.split(":")[9] for ln in lines[at:] if ln.startswith("fpr:"))


def stop_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   check=False, capture_output=True)  # fmt: skip


def agent_pids(home: Path) -> list[int]:
    """The gpg-agent(s) serving ``home``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and str(home).encode() in argv:
            pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class Keys:
    hotline_home: Path
    partner_home: Path
    signer: str  # our key (primary fingerprint), secret in hotline_home
    recipient: str  # the police's key, public in hotline_home, secret in partner_home
    signer_sub: str  # what Gpg signs with: the signing-capable key (here the primary)
    recipient_sub: str  # what Gpg encrypts to: the cv25519 subkey


def make_keys(folder: Path) -> Keys:
    hotline, partner = new_home(folder / "hotline"), new_home(folder / "partner")
    signer = make_key(hotline, "Hotline <referrals@hotline.test>")
    recipient = make_key(partner, "Police <cp@police.test>")
    run_gpg(partner, "--armor", "--output", str(folder / "police.asc"), "--export", recipient)
    run_gpg(hotline, "--import", str(folder / "police.asc"))
    run_gpg(hotline, "--armor", "--output", str(folder / "hotline.asc"), "--export", signer)
    run_gpg(partner, "--import", str(folder / "hotline.asc"))
    return Keys(hotline, partner, signer, recipient, signer, subkey(hotline, recipient))


# --- one referral --------------------------------------------------------------------------


def document(n: int) -> dict[str, Any]:
    """A referral document as the refer stage builds it, for the n-th referral of the run."""
    reference = f"NL-2026-{n:06d}"
    digest = hashlib.sha256(reference.encode()).hexdigest()
    return referral_document(
        reference=reference, created="2026-11-28T10:00:00Z", rule="protocol-2-inhope",
        destination="hotline:DE", hotline="Meldpunt Kinderporno", home_country="NL",
        case={"id": str(uuid7()), "url": f"https://files.example-host.test/a/{digest[:24]}.jpg",
              "canonical_url": f"https://files.example-host.test/a/{digest[:24]}.jpg",
              "first_reported": "2026-11-27T08:12:31Z", "last_reported": "2026-11-28T09:41:05Z",
              "report_count": 3},
        classification="baseline", assessed_at="2026-11-28T09:55:00Z",
        hosting={"country": "DE", "country_source": "geoip",
                 "ips": ["203.0.113.17", "2001:db8:4:1::17"], "asn": 64511,
                 "org": "Example Hosting GmbH", "cdn": False, "checked_at": "2026-11-28T09:58:02Z"},
        hashes=[{"sha256": hashlib.sha256(f"{digest}{k}".encode()).hexdigest(),
                 "md5": hashlib.md5(f"{digest}{k}".encode()).hexdigest()} for k in range(3)],
    )


@dataclass
class Steps:
    """Wall time each step of the gateway's referrals took, summed over referrals."""

    build: float = 0.0
    gpg: float = 0.0
    wrap: float = 0.0
    sink: float = 0.0

    def add(self, other: Steps) -> None:
        self.build += other.build
        self.gpg += other.gpg
        self.wrap += other.wrap
        self.sink += other.sink


class GatewaySide:
    """Build, encrypt and sign, wrap, and hand to the sink: one referral each call."""

    def __init__(self, keys: Keys, gpg: Gpg, sink: FileTransport) -> None:
        self._keys, self._gpg, self._sink = keys, gpg, sink
        self.steps = Steps()
        self.last: bytes = b""

    async def one(self, n: int) -> None:
        t0 = time.perf_counter()
        doc = document(n)
        inner = inner_message(doc)
        t1 = time.perf_counter()
        armored = await self._gpg.encrypt_and_sign(
            inner, recipient=self._keys.recipient, signer=self._keys.signer)
        t2 = time.perf_counter()
        referral_id = str(uuid7())
        message = encrypted_message(armored, from_address=FROM, to_address=TO,
                                    reference=doc["reference"],
                                    msg_id=message_id(referral_id, FROM), date=MOMENT)
        t3 = time.perf_counter()
        await self._sink.send(mail_from=FROM, rcpt_to=TO, message=message,
                              name=f"{doc['reference']}-{referral_id}")
        t4 = time.perf_counter()
        self.steps.build += t1 - t0
        self.steps.gpg += t2 - t1
        self.steps.wrap += t3 - t2
        self.steps.sink += t4 - t3
        self.last = message


def bare_command(keys: Keys, *extra: str) -> list[str]:
    return ["gpg", "--homedir", str(keys.hotline_home), "--batch", "--yes", *extra,
            "--trust-model", "always", "--encrypt", "--sign", "-r", keys.recipient,
            "-u", keys.signer, "--armor"]  # fmt: skip


async def bare_one(command: list[str], plaintext: bytes, out: list[bytes]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate(plaintext)
    if process.returncode != 0 or not stdout.startswith(ARMOR):
        raise RuntimeError(f"bare gpg failed (exit {process.returncode}): {stderr[-300:]!r}")
    out[:] = [stdout]


async def listing_one(keys: Keys) -> None:
    """One listing of both keys with their secret parts: what a single check could cost."""
    process = await asyncio.create_subprocess_exec(
        "gpg", "--homedir", str(keys.hotline_home), "--batch", *OPTIONS, "--with-colons",
        "--with-secret", "--list-keys", keys.recipient, keys.signer,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    stdout, _ = await process.communicate()
    if process.returncode != 0 or stdout.count(b"\npub:") + stdout.startswith(b"pub:") != 2:
        raise RuntimeError(f"gpg --list-keys failed (exit {process.returncode})")


async def checks_one(gpg: Gpg, keys: Keys) -> None:
    for fpr, purpose in ((keys.recipient, "encrypt"), (keys.signer, "sign")):
        status = await gpg.check(fpr, purpose=purpose, warn_days=0)  # type: ignore[arg-type]
        if not status.usable:
            raise RuntimeError(f"key check failed: {status}")


def pygnupg_encrypt(handle: Any, keys: Keys, plaintext: bytes) -> None:
    result = handle.encrypt(plaintext, f"{keys.recipient_sub}!", sign=True, always_trust=True,
                            passphrase=None, extra_args=["--local-user", f"{keys.signer_sub}!"])
    if not (result.ok and result.returncode == 0 and result.data.startswith(ARMOR)):
        raise RuntimeError(f"python-gnupg encrypt failed: {result.status}")


# --- measurements --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    """CPU time of the child processes this process has waited for (gpg)."""
    times = os.times()
    return times.children_user + times.children_system


async def in_parallel(count: int, concurrency: int,
                      work: Callable[[int], Awaitable[object]]) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await work(n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(agents: list[int], count: int,
                  run: Callable[[], Awaitable[None]]) -> dict[str, float]:
    agent_before = sum(cpu_seconds(pid) for pid in agents)
    busy_before, children_before = machine_busy_seconds(), children_seconds()
    own_before = time.process_time()
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    own = time.process_time() - own_before
    gpg = children_seconds() - children_before
    agent = sum(cpu_seconds(pid) for pid in agents) - agent_before
    other = machine_busy_seconds() - busy_before - own - gpg - agent
    return {"rate": count / elapsed, "own_cpu": own, "gpg_cpu": gpg, "agent_cpu": agent,
            "cpu_per": (own + gpg + agent) / count * 1000, "other_cpu": max(0.0, other)}


@dataclass
class Spawned:
    """gpg processes python-gnupg started, by what they were for."""

    kinds: Counter[str] = field(default_factory=Counter)

    def __call__(self, real: Any) -> Any:
        def popen(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
            kind = next((a for a in cmd if a in ("--list-keys", "--list-secret-keys",
                                                  "--encrypt", "--version")), "other")
            self.kinds[kind.lstrip("-")] += 1
            return real(cmd, *args, **kwargs)
        return popen


async def count_processes(side: GatewaySide, referrals: int, concurrency: int) -> Counter[str]:
    """The gpg processes ``referrals`` gateway referrals start (untimed)."""
    spawned, real = Spawned(), gnupg.Popen
    gnupg.Popen = spawned(real)
    try:
        await in_parallel(referrals, concurrency, lambda n: side.one(10_000_000 + n))
    finally:
        gnupg.Popen = real
    return spawned.kinds


def verify(keys: Keys, armored: bytes, plaintext: bytes | None) -> str | None:
    """Decrypt in the partner home; a problem, or None when signed by us and intact."""
    done = subprocess.run(
        ["gpg", "--homedir", str(keys.partner_home), "--batch", "--status-fd", "2",
         "--decrypt"], input=armored, capture_output=True, check=False)  # fmt: skip
    status = done.stderr.decode(errors="replace")
    if done.returncode != 0 or "[GNUPG:] DECRYPTION_OKAY" not in status:
        return f"does not decrypt (exit {done.returncode})"
    valid = [ln.split() for ln in status.splitlines() if ln.startswith("[GNUPG:] VALIDSIG ")]
    if not any(parts[-1] == keys.signer for parts in valid):
        return "not signed by the hotline key"
    if plaintext is not None and done.stdout != plaintext:
        return "plaintext differs"
    return None


def armored_part(message: bytes) -> bytes:
    parsed = email.message_from_bytes(message)
    parts = parsed.get_payload()
    assert parsed.get_content_type() == "multipart/encrypted" and isinstance(parts, list)
    payload: bytes = parts[1].get_payload(decode=True)
    return payload


# --- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, keys: Keys, folder: Path) -> int:
    plaintext = inner_message(document(0))
    executor = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="gpg")
    try:
        gpg = Gpg(keys.hotline_home, executor=executor)
        gateway = GatewaySide(keys, gpg, FileTransport(folder / "sink"))
        handle = gnupg.GPG(gnupghome=str(keys.hotline_home), options=OPTIONS)
        loop = asyncio.get_running_loop()
        bare_out: list[bytes] = []
        sides: dict[str, Callable[[int], Awaitable[None]]] = {
            "gpg": lambda n: bare_one(bare_command(keys), plaintext, bare_out),
            "gpg-nrsf": lambda n: bare_one(bare_command(keys, "--no-random-seed-file"),
                                           plaintext, bare_out),
            "gateway": gateway.one,
            "checks": lambda n: checks_one(gpg, keys),
            "encrypt": lambda n: loop.run_in_executor(
                executor, pygnupg_encrypt, handle, keys, plaintext),
            "list1": lambda n: listing_one(keys),
        }
        # Warm-up, not counted: the agent starts and loads the key, python-gnupg asks gpg for
        # its version, the first imports and files.
        for work in sides.values():
            await in_parallel(2 * args.concurrency, args.concurrency, work)
        agents = agent_pids(keys.hotline_home)
        processes = await count_processes(gateway, 20, args.concurrency)
        gateway.steps = Steps()
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        offset = 0
        for _round in range(args.rounds):
            for side, work in sides.items():
                base = offset
                results[side].append(await measure(
                    agents, args.count,
                    partial(in_parallel, args.count, args.concurrency,
                            lambda n, work=work, base=base: work(base + n))))
                offset += args.count
    finally:
        executor.shutdown(wait=True)

    print(f"{args.count} referrals per side (inner message {len(plaintext)} B, armored "
          f"{len(bare_out[0]) if bare_out else 0} B), {args.concurrency} in flight, "
          f"{args.concurrency} gpg threads, {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"gpg-agents {agents or 'not found'}; median per side")
    print(f"{'side':<10}{'ref/s':>8}{'vs gpg':>8}{'vs nrsf':>9}{'own cpu':>9}{'gpg cpu':>9}"
          f"{'agent cpu':>11}{'cpu/ref':>10}{'other cpu':>11}")
    rates = {side: statistics.median(r["rate"] for r in rounds)
             for side, rounds in results.items()}
    base_rate, nrsf_rate = rates["gpg"], rates["gpg-nrsf"]
    for side, rounds in results.items():
        print(f"{side:<10}{rates[side]:>8.1f}{rates[side] / base_rate:>7.2f}x"
              f"{rates[side] / nrsf_rate:>8.2f}x"
              f"{statistics.median(r['own_cpu'] for r in rounds):>8.2f}s"
              f"{statistics.median(r['gpg_cpu'] for r in rounds):>8.2f}s"
              f"{statistics.median(r['agent_cpu'] for r in rounds):>10.2f}s"
              f"{statistics.median(r['cpu_per'] for r in rounds):>8.1f}ms"
              f"{statistics.median(r['other_cpu'] for r in rounds):>10.2f}s")
    print("rounds (ref/s): " + "; ".join(
        f"{side} " + " ".join(f"{r['rate']:.1f}" for r in rounds)
        for side, rounds in results.items()))
    made = args.rounds * args.count
    steps = gateway.steps
    print(f"gateway, wall ms per referral while {args.concurrency} in flight: "
          f"build {steps.build / made * 1000:.2f}, encrypt_and_sign {steps.gpg / made * 1000:.1f}"
          f", wrap {steps.wrap / made * 1000:.2f}, sink {steps.sink / made * 1000:.2f}")
    per = {kind: count / 20 for kind, count in sorted(processes.items())}
    print("gpg processes per gateway referral (untimed pass of 20): "
          + ", ".join(f"{kind} {n:g}" for kind, n in per.items())
          + f"; total {sum(per.values()):g} (bare gpg: 1)")
    # At the same concurrency, 1/rate is the time a referral holds the machine: a referral's
    # gpg work is about the checks' share plus the encryption's.
    checks, encrypt = 1 / rates["checks"], 1 / rates["encrypt"]
    print(f"key checks alone {rates['checks']:.1f}/s, encrypt alone {rates['encrypt']:.1f}/s: "
          f"together {1 / (checks + encrypt):.1f}/s, the checks "
          f"{checks / (checks + encrypt) * 100:.0f}% of it")
    ratio = rates["gateway"] / base_rate
    print(f"gateway/gpg {ratio:.2f}x (goal >= 0.80x: {'met' if ratio >= 0.8 else 'NOT met'}); "
          f"gateway/gpg-nrsf {rates['gateway'] / rates['gpg-nrsf']:.2f}x")

    problems = []
    sent = sorted((folder / "sink").glob("*.eml"))
    expected = made + 20 + 2 * args.concurrency
    if len(sent) != expected:
        problems.append(f"{len(sent)} messages in the sink, expected {expected}")
    if (problem := verify(keys, armored_part(gateway.last), None)) is not None:
        problems.append(f"gateway message: {problem}")
    if bare_out and (problem := verify(keys, bare_out[0], plaintext)) is not None:
        problems.append(f"bare gpg message: {problem}")
    print("checked: one gateway message and one bare gpg message decrypt in the partner home, "
          "signed by the hotline key: " + ("; ".join(problems) if problems else "ok"))
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="referrals per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4,
                        help="referrals in flight, and the gateway's gpg threads")
    args = parser.parse_args()
    if min(args.count, args.rounds, args.concurrency) < 1:
        parser.error("--count, --rounds and --concurrency must be positive")
    if shutil.which("gpg") is None or shutil.which("gpgconf") is None:
        parser.error("gpg and gpgconf must be on PATH")
    folder = Path(tempfile.mkdtemp(prefix="refer-bench-"))
    keys: Keys | None = None
    try:
        started = time.perf_counter()
        keys = make_keys(folder)
        print(f"keys made in {time.perf_counter() - started:.1f} s", flush=True)
        return asyncio.run(run(args, keys, folder))
    finally:
        for home in (folder / "hotline", folder / "partner"):
            if home.exists():
                stop_agent(home)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
