"""Real keys in temporary GnuPG homes, built once per session with the gpg command line.

``hotline`` holds our own signing key (passphrase protected) and the public keys of every
recipient; ``partner`` holds the recipients' secret keys, to decrypt and verify what we send.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from outbound.gpg import Gpg
from outbound.outcome import problems_of
from tests.outbound.mta import FakeMta

HOTLINE_PASSPHRASE = "correct horse battery staple"
PAST = "20200101T000000"  # --faked-system-time: keys made "then" have long expired


def run_gpg(home: Path, *args: str, passphrase: str = "", faked: str | None = None) -> str:
    """Run gpg in batch mode on ``home``; returns its status lines (stderr) and output."""
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-random-seed-file", "--status-fd", "1",
           "--pinentry-mode", "loopback", "--passphrase", passphrase]  # fmt: skip
    if faked:
        cmd += ["--faked-system-time", faked]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, check=True)
    return done.stdout


def make_key(
    home: Path, uid: str, algo: str = "ed25519", usage: str = "sign", expire: str = "2y",
    *, passphrase: str = "", faked: str | None = None,
) -> str:  # fmt: skip
    """A new primary key; returns its fingerprint."""
    out = run_gpg(home, "--quick-gen-key", uid, algo, usage, expire,
                  passphrase=passphrase, faked=faked)  # fmt: skip
    return next(ln.split()[3] for ln in out.splitlines() if ln.startswith("[GNUPG:] KEY_CREATED"))


def add_subkey(
    home: Path, fpr: str, algo: str = "cv25519", expire: str = "2y", *, passphrase: str = "",
    faked: str | None = None,
) -> None:  # fmt: skip
    run_gpg(home, "--quick-add-key", fpr, algo, "encr", expire, passphrase=passphrase, faked=faked)


def new_home(path: Path) -> Path:
    """An empty GnuPG home whose agent protects secret keys with the cheapest S2K count.

    At the calibrated default, unlocking a passphrase-protected key costs the agent ~0.5 s per
    signature (serialised): fine for the daemon, too slow for a test suite.
    """
    path.mkdir(mode=0o700, parents=True)
    (path / "gpg-agent.conf").write_text("s2k-count 65536\n")
    return path


def stop_agent(home: Path) -> None:
    """gpg starts one agent per home: stop it, so none outlives the tests."""
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@dataclass(frozen=True)
class Keys:
    hotline_home: Path
    partner_home: Path
    hotline: str  # our signing key, secret in hotline_home
    recipient: str  # a good recipient: ed25519 + cv25519, two years
    expired: str  # primary expired on 2020-12-31 (1y is 365 days)
    sub_expired: str  # primary never expires, its only encryption subkey expired in 2021
    revoked: str
    weak: str  # ed25519 primary, RSA 1024 encryption subkey
    sign_only: str  # no encryption subkey at all
    missing: str = "0123456789ABCDEF0123456789ABCDEF01234567"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Every kind of key the tests need, made once (about a second of gpg)."""
    hotline_home = new_home(tmp_path_factory.mktemp("gpg") / "hotline")
    partner_home = new_home(tmp_path_factory.mktemp("gpg") / "partner")
    hotline = make_key(hotline_home, "Hotline <referrals@hotline.test>",
                       passphrase=HOTLINE_PASSPHRASE)  # fmt: skip
    add_subkey(hotline_home, hotline, passphrase=HOTLINE_PASSPHRASE)

    p = partner_home
    recipient = make_key(p, "Police <cp@police.test>")
    add_subkey(p, recipient)
    expired = make_key(p, "Expired <old@police.test>", expire="1y", faked=PAST)
    add_subkey(p, expired, expire="1y", faked=PAST)
    sub_expired = make_key(p, "Stale subkey <stale@police.test>", expire="never", faked=PAST)
    add_subkey(p, sub_expired, expire="1y", faked=PAST)
    revoked = make_key(p, "Revoked <gone@police.test>")
    add_subkey(p, revoked)
    # gpg prefixes the stored revocation certificate with ':' so that it is not imported by
    # accident; take that off to revoke the key.
    certificate = (p / "openpgp-revocs.d" / f"{revoked}.rev").read_text()
    (p / "revoke.asc").write_text(certificate.replace(":-----BEGIN", "-----BEGIN"))
    run_gpg(p, "--import", str(p / "revoke.asc"))
    weak = make_key(p, "Weak <weak@hotline-nl.test>")
    add_subkey(p, weak, "rsa1024")
    sign_only = make_key(p, "Sign only <signonly@hotline-nl.test>")

    run_gpg(p, "--armor", "--output", str(p / "partners.asc"), "--export")
    run_gpg(hotline_home, "--import", str(p / "partners.asc"))
    run_gpg(hotline_home, "--armor", "--output", str(hotline_home / "hotline.asc"), "--export")
    run_gpg(p, "--import", str(hotline_home / "hotline.asc"))
    yield Keys(hotline_home, partner_home, hotline, recipient, expired, sub_expired, revoked,
               weak, sign_only)  # fmt: skip
    stop_agent(hotline_home)
    stop_agent(partner_home)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """The bounded pool the composition root would own."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpg")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def gpg(keys: Keys, executor: ThreadPoolExecutor) -> Gpg:
    """The hotline's keyring, as the daemon uses it."""
    return Gpg(keys.hotline_home, executor=executor, passphrase=HOTLINE_PASSPHRASE)


@pytest.fixture
def fast_home(tmp_path: Path) -> Iterator[Path]:
    """An empty GnuPG home with cheap key protection (see ``new_home``)."""
    home = new_home(tmp_path / "gnupg")
    yield home
    stop_agent(home)


@pytest.fixture
def empty_home(tmp_path: Path) -> Iterator[Path]:
    """A GnuPG home that does not exist yet (Gpg creates it)."""
    home = tmp_path / "gnupg"
    yield home
    if home.exists():
        stop_agent(home)


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[FakeMta]:
    """A fake upstream MTA on 127.0.0.1 (STARTTLS with a trustme certificate)."""
    server = FakeMta(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def outcome_schema_read() -> None:
    """The outcome schema read from disk once, before any test's event loop runs (a module
    asks for it with ``pytestmark = pytest.mark.usefixtures("outcome_schema_read")``)."""
    problems_of({})
