"""OpenPGP through python-gnupg: encrypt-and-sign to pinned fingerprints, and key checks.

Replies are opened here too (``open_blocking``, ``verify_detached_blocking``): what gpg
said of each signature comes back as ``Signature`` records, judged by ``outbound.replies``.

Exceptions::

    GpgError          gpg failed; the message never holds plaintext
    └── KeyProblem    a key cannot be used (missing, expired, revoked, weak, no secret key)

Every gpg call is a blocking subprocess and runs in the executor handed in by the composition
root. Trust comes from the fingerprint pinned in config, never from the web of trust, so
encryption uses ``--trust-model always`` — only after ``check()`` found the key usable.
"""

from __future__ import annotations

import asyncio
import functools
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import gnupg  # type: ignore[import-untyped]

from gateway.store.private import make_folder_private

T = TypeVar("T")
Purpose = Literal["encrypt", "sign"]
KeyInfo = dict[str, Any]  # one key or subkey record of python-gnupg's list_keys()

ARMOR = b"-----BEGIN PGP MESSAGE-----"
ARMOR_END = b"-----END PGP MESSAGE-----"
#: How long a key found usable is used without checking it again (a revocation imported by
#: another process, such as `keys import` beside the daemon, takes effect within this).
CHECK_TTL = 60.0
#: The largest plaintext a report may decrypt to (the MIME parser's own limit is smaller).
MAX_DECRYPTED = 32 * 1024 * 1024
# Parallel gpg processes contend on the keyring's random_seed lock; nothing else is at stake.
# --no-encrypt-to: a gpg.conf "encrypt-to" must never add a recipient behind our back.
OPTIONS = ["--no-random-seed-file", "--no-encrypt-to"]
FINGERPRINT = re.compile(r"[0-9A-F]{40}")
SIZED = {"1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA", "20": "ElGamal"}
MIN_BITS = 2048
CURVES = {"ed25519", "cv25519", "ed448", "cv448", "nistp256", "nistp384", "nistp521",
          "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1"}  # fmt: skip
INVALID = set("rdei")  # gpg validity: revoked, disabled, expired, invalid


SignatureStatus = Literal["good", "bad", "expired", "expired_key", "revoked_key", "no_key",
                          "error"]
# gpg's status keywords for one signature (doc/DETAILS), in the order they are judged.
_SIG_STATUS: dict[str, SignatureStatus] = {
    "BADSIG": "bad", "REVKEYSIG": "revoked_key", "EXPKEYSIG": "expired_key", "EXPSIG": "expired",
    "ERRSIG": "error", "GOODSIG": "good"}


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature as gpg judged it. ``key`` is the signer's primary key fingerprint when
    gpg knows the key, else the issuer fingerprint or key id the signature names."""

    status: SignatureStatus
    key: str
    #: When the signer says it signed (the signature's creation time, which the signature
    #: covers); None when gpg did not say.
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    """A message decrypted with one of our secret keys, and the signatures found inside it."""

    plaintext: bytes
    signatures: tuple[Signature, ...]


def signatures_of(status_text: str) -> tuple[Signature, ...]:
    """Every signature in gpg's status output, one per ``NEWSIG`` (RFC 4880 allows several)."""
    groups: list[list[list[str]]] = []
    for line in status_text.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line.split()[1:]
        if not words:
            continue
        if words[0] == "NEWSIG" or not groups:
            groups.append([])
        groups[-1].append(words)
    found: list[Signature] = []
    for group in groups:
        seen = {words[0]: words for words in group}
        keyword = next((k for k in _SIG_STATUS if k in seen), None)
        if keyword is None:
            continue
        words = seen[keyword]
        status = _SIG_STATUS[keyword]
        key = words[1] if len(words) > 1 else ""
        if keyword == "ERRSIG":
            # ERRSIG <keyid> <pkalgo> <hashalgo> <class> <time> <rc> [<fpr>]; rc 9: no key.
            status = "no_key" if len(words) > 6 and words[6] == "9" else "error"
            key = words[7] if len(words) > 7 and words[7] != "-" else key
        elif (valid := seen.get("VALIDSIG")) is not None and len(valid) > 1:
            # VALIDSIG <fpr> <date> <sig-timestamp> ... [<primary-key-fpr>]: the signing
            # subkey, when it signed, then its primary.
            key = valid[10] if len(valid) > 10 else valid[1]
            created = _signed_at(valid[3]) if len(valid) > 3 else None
            found.append(Signature(status, key.upper(), created))
            continue
        elif status == "good":
            status = "error"  # GOODSIG without VALIDSIG: not a signature we can pin
        found.append(Signature(status, key.upper()))
    return tuple(found)


def _signed_at(value: str) -> datetime | None:
    """A signature's timestamp as gpg's status gives it: seconds since the epoch, or an ISO
    8601 basic form (``20261203T101500``); None for anything else."""
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value), UTC)
        return datetime.strptime(value, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None


class GpgError(Exception):
    """gpg failed; the message carries gpg's status, never the data."""


class KeyProblem(GpgError):
    """A key cannot be used for what was asked: the referral is held, never sent in clear."""

    def __init__(self, fingerprint: str, problems: list[str],
                 purpose: Purpose | None = None) -> None:
        super().__init__(f"key {fingerprint}: {'; '.join(problems)}")
        self.fingerprint = fingerprint
        self.problems = problems
        self.purpose = purpose


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """What a key is good for right now; ``problems`` empty means usable for the purpose."""

    fingerprint: str
    uids: list[str] = field(default_factory=list)
    secret: bool = False
    expires: datetime | None = None
    encrypt_expires: datetime | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def _when(epoch: str) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else None


def _weakness(key: KeyInfo) -> str | None:
    """Why this key is too weak, or None (RSA/DSA/ElGamal need 2048 bits; ECC a known curve)."""
    family = SIZED.get(key["algo"])
    if family is not None:
        bits = int(key["length"] or 0)
        return f"{family} {bits} is too weak" if bits < MIN_BITS else None
    curve = key.get("curve") or ""
    return None if curve in CURVES else f"curve {curve or key['algo']!r} is not accepted"


def _valid(key: KeyInfo, cap: str, now: datetime, *, secret: bool) -> bool:
    expires = _when(key["expires"])
    return (
        cap in key["cap"]  # lower case: this key's own capability
        and key["trust"] not in INVALID
        and (expires is None or expires > now)
        and not (secret and key.get("token") == "#")  # '#': only a stub, the secret is offline
    )


def _pick(key: KeyInfo, cap: str, now: datetime, *, secret: bool) -> KeyInfo | str | None:
    """The newest valid, strong (sub)key with ``cap``; else why not (weakness), or None."""
    keys = [key, *key.get("subkey_info", {}).values()]
    valid = [k for k in keys if _valid(k, cap, now, secret=secret)]
    valid.sort(key=lambda k: int(k["date"]), reverse=True)
    strong = [k for k in valid if _weakness(k) is None]
    return strong[0] if strong else (_weakness(valid[0]) if valid else None)


def _evaluate(
    fpr: str, pub: KeyInfo | None, sec: KeyInfo | None, purpose: Purpose, warn_days: int,
    now: datetime,
) -> tuple[KeyStatus, str | None]:  # fmt: skip
    """Judge one key from its listing; also the fingerprint of the (sub)key gpg must use."""
    key = pub if purpose == "encrypt" else sec
    if key is None:
        missing = "no secret key" if pub is not None else "not in the keyring"
        return KeyStatus(fpr, pub["uids"] if pub else [], False, problems=[missing]), None
    problems: list[str] = []
    expires = _when(key["expires"])
    if key["trust"] == "r":
        problems.append("revoked")
    if key["trust"] == "d" or "D" in key["cap"]:
        problems.append("disabled")
    if key["trust"] == "i":
        problems.append("invalid")
    if key["trust"] == "e" or (expires is not None and expires <= now):
        problems.append(f"expired {expires:%Y-%m-%d}" if expires else "expired")
    enc = _pick(key, "e", now, secret=False)
    chosen = enc if purpose == "encrypt" else _pick(key, "s", now, secret=True)
    warnings: list[str] = []
    if not isinstance(chosen, dict):
        if not problems:
            what = "encryption subkey" if purpose == "encrypt" else "signing key"
            problems.append(chosen or f"no valid {what}")
    elif not problems:
        role = "encryption" if purpose == "encrypt" else "signing"
        soonest: tuple[datetime, str] | None = None
        for end, who in ((expires, ""), (_when(chosen["expires"]), f"{role} subkey ")):
            if end is not None and (soonest is None or end < soonest[0]):
                soonest = (end, who)
        if soonest is not None and soonest[0] - now <= timedelta(days=warn_days):
            warnings.append(f"{soonest[1]}expires in {(soonest[0] - now).days} days")
    enc_expires = _when(enc["expires"]) if isinstance(enc, dict) else None
    status = KeyStatus(fpr, key["uids"], sec is not None, expires, enc_expires, problems, warnings)
    return status, chosen["fingerprint"] if isinstance(chosen, dict) and not problems else None


class Gpg:
    """The hotline's keyring: checks keys and encrypts+signs referrals, off the event loop."""

    def __init__(self, home: Path, *, executor: Executor, passphrase: str | None = None) -> None:
        self._home = home
        self._executor = executor
        # python-gnupg sends --passphrase-fd 0 for "" but writes no line: gpg would then read
        # the first line of the plaintext as the passphrase.
        self._passphrase = passphrase or None
        self._gpg: Any = None
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._checked: dict[tuple[str, Purpose], tuple[float, str]] = {}

    def __repr__(self) -> str:
        return f"Gpg(home={str(self._home)!r})"  # never the passphrase

    def _handle(self) -> Any:
        """The python-gnupg object, made on first use (it runs gpg, so only in the executor)."""
        with self._lock:
            if self._gpg is None:
                self._home.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    self._gpg = gnupg.GPG(gnupghome=str(self._home), options=OPTIONS)
                except (OSError, ValueError) as exc:
                    raise GpgError(f"cannot run gpg with home {self._home}: {exc}") from exc
            return self._gpg

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking gpg work in the executor; python-gnupg's errors become GpgError."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (OSError, ValueError) as exc:  # gpg missing, a refused passphrase, bad output
            raise GpgError(f"gpg call failed: {exc}") from exc

    def _inspect(
        self, fingerprint: str, purpose: Purpose, warn_days: int, now: datetime | None
    ) -> tuple[KeyStatus, str | None]:
        fpr = fingerprint.replace(" ", "").upper()
        if not FINGERPRINT.fullmatch(fpr):
            return KeyStatus(fpr, problems=["not a 40-hex fingerprint (keys are pinned)"]), None
        g = self._handle()
        pub = next((k for k in g.list_keys(keys=[fpr]) if k["fingerprint"] == fpr), None)
        # All secret keys (a handful): asking for one we lack makes gpg exit 2 and python-gnupg
        # log a warning on every referral.
        sec = next((k for k in g.list_keys(True) if k["fingerprint"] == fpr), None)
        return _evaluate(fpr, pub, sec, purpose, warn_days, now or datetime.now(UTC))

    async def check(
        self, fingerprint: str, *, purpose: Purpose, warn_days: int = 30,
        now: datetime | None = None,
    ) -> KeyStatus:  # fmt: skip
        """Whether the pinned key can encrypt (a recipient) or sign (our own key) right now."""
        return (await self._run(self._inspect, fingerprint, purpose, warn_days, now))[0]

    def _usable(self, fingerprint: str, purpose: Purpose) -> str:
        """The (sub)key to use, from a check at most CHECK_TTL old (each check costs ~4 gpg
        processes, three times the encryption itself). Only a usable answer is kept, never
        past the key's own expiry, and importing keys here forgets them all."""
        now = time.monotonic()
        with self._cache_lock:
            cached = self._checked.get((fingerprint, purpose))
        if cached is not None and cached[0] > now:
            return cached[1]
        status, use = self._inspect(fingerprint, purpose, 0, None)
        if use is None:
            raise KeyProblem(status.fingerprint, status.problems, purpose)
        until = now + CHECK_TTL
        expiry = status.encrypt_expires if purpose == "encrypt" else status.expires
        if expiry is not None:
            until = min(until, now + (expiry - datetime.now(UTC)).total_seconds())
        with self._cache_lock:
            self._checked[(fingerprint, purpose)] = (until, use)
        return use

    async def problems(self, fingerprint: str, purpose: Purpose) -> list[str]:
        """Why the key cannot be used now (empty: it can), from the short-lived check cache."""
        try:
            await self._run(self._usable, fingerprint, purpose)
        except KeyProblem as exc:
            return exc.problems
        return []

    def _sealed_for(self, message: bytes) -> list[str]:
        start = message.find(ARMOR)
        end = message.find(ARMOR_END, start)
        if start < 0 or end < 0:
            return ["no PGP message in it"]
        g, now = self._handle(), datetime.now(UTC)
        # The session-key packets name the (sub)keys it was encrypted to (RFC 4880 5.1).
        ids: list[str] = g.get_recipients(message[start:end + len(ARMOR_END)])
        if not ids:
            return ["encrypted to no key gpg can name"]
        problems: list[str] = []
        for keyid in ids:
            key = next((k for k in g.list_keys(keys=[keyid])
                        if keyid in k.get("subkey_info", {}) or k["keyid"] == keyid), None)
            if key is None:
                problems.append(f"key {keyid}: not in the keyring")
                continue
            status, _ = _evaluate(key["fingerprint"], key, None, "encrypt", 0, now)
            found = list(status.problems)
            used = key.get("subkey_info", {}).get(keyid, key)
            if not found and not _valid(used, "e", now, secret=False):
                found.append(f"its encryption subkey {keyid} is no longer valid")
            problems += [f"key {key['fingerprint']}: {p}" for p in found]
        return problems

    async def sealed_for_problems(self, message: bytes) -> list[str]:
        """Why ``message`` must not be sent now: each key it is encrypted to that went bad
        since (revoked, expired, gone), the hotline's own included; empty: none did."""
        return await self._run(self._sealed_for, message)

    def decrypt_blocking(self, data: bytes) -> bytes:
        """Decrypt a message encrypted to one of our secret keys. Blocking: call it from a
        worker thread (the normalise stage's executor)."""
        # A small compressed packet can expand without bound: gpg stops at max_output.
        result = self._handle().decrypt(data, passphrase=self._passphrase,
                                        extra_args=["--max-output", str(MAX_DECRYPTED)])
        if not (result.ok and result.returncode == 0):
            raise GpgError(f"cannot decrypt: {result.status or 'no secret key'}")
        plaintext: bytes = result.data
        return plaintext

    def open_blocking(self, data: bytes, *, max_output: int) -> Opened:
        """Decrypt ``data`` (encrypted to one of our secret keys) and check the signatures
        inside; at most ``max_output`` bytes of plaintext. Blocking: call it from a worker."""
        # --no-auto-key-retrieve: a signer's key is pinned, never fetched (a gpg.conf may ask).
        result = self._handle().decrypt(data, passphrase=self._passphrase, extra_args=[
            "--max-output", str(max_output), "--no-auto-key-retrieve"])
        status: str = result.stderr or ""
        signatures = signatures_of(status)
        # A message that is only signed also "decrypts": only DECRYPTION_OKAY says that it
        # was encrypted, and with integrity protection (gpg refuses a missing MDC).
        decrypted = "[GNUPG:] DECRYPTION_OKAY" in status \
            and "[GNUPG:] DECRYPTION_FAILED" not in status
        # gpg exits 2 for a signature it cannot check (an unknown key, say): the message is
        # decrypted all the same, and never trusted (its signature is not good). Any other
        # failure, such as output cut at max_output, is a failure to decrypt.
        explained = any(s.status != "good" for s in signatures)
        if not (decrypted and (result.returncode == 0 or explained)):
            failure = next((ln.split()[1] for ln in status.splitlines() if ln.startswith(
                ("[GNUPG:] NO_SECKEY", "[GNUPG:] DECRYPTION_FAILED", "[GNUPG:] FAILURE"))), "")
            raise GpgError(f"cannot decrypt: {failure or 'not encrypted to us'} "
                           f"(exit {result.returncode})")
        return Opened(bytes(result.data), signatures)

    def verify_detached_blocking(self, data: bytes, signature: bytes) -> tuple[Signature, ...]:
        """The signatures a detached ``signature`` makes over exactly ``data``. Blocking."""
        with tempfile.TemporaryDirectory(prefix="hotline-sig-") as folder:
            path = Path(folder) / "signature.asc"
            path.write_bytes(signature)
            result = self._handle().verify_data(str(path), data,
                                                extra_args=["--no-auto-key-retrieve"])
        return signatures_of(result.stderr or "")

    def forget_checks(self) -> None:
        """Check every key afresh next time (after an import, say)."""
        with self._cache_lock:
            self._checked.clear()

    def _encrypt(self, data: bytes, recipient: str, signer: str, archive: str | None) -> bytes:
        # "FPR!" makes gpg use exactly the (sub)key checked above, not one it picks itself.
        to, by = self._usable(recipient, "encrypt"), self._usable(signer, "sign")
        recipients = [f"{to}!"]
        if archive is not None:
            # One more session-key packet (RFC 4880 5.1): the recipient's is unchanged.
            mine = self._usable(archive, "encrypt")
            recipients += [f"{mine}!"] if mine != to else []
        # -u (not --default-key): gpg fails rather than sign with some other secret key.
        extra = ["--local-user", f"{by}!"]
        result = self._handle().encrypt(data, recipients, sign=True, always_trust=True,
                                        passphrase=self._passphrase, extra_args=extra)  # fmt: skip
        out: bytes = result.data
        lines: list[str] = (result.stderr or "").splitlines()
        signed = any(ln.startswith("[GNUPG:] SIG_CREATED ") and ln.endswith(by) for ln in lines)
        if not (result.ok and result.returncode == 0 and signed and out.startswith(ARMOR)):
            raise GpgError(f"gpg encrypt+sign failed: {result.status} (exit {result.returncode})")
        return out

    async def encrypt_and_sign(self, data: bytes, *, recipient: str, signer: str,
                               archive: str | None = None) -> bytes:
        """An armored PGP message to exactly the pinned recipient, signed by ``signer``; with
        ``archive``, also to that key (the hotline's own), which must then be usable too."""
        return await self._run(self._encrypt, data, recipient, signer, archive)

    def _import(self, data: bytes) -> list[str]:
        self.forget_checks()
        result = self._handle().import_keys(data)
        make_folder_private(self._home)  # gpg writes its public keyring by the umask
        fprs: list[str] = list(dict.fromkeys(f for f in result.fingerprints if f))
        if not fprs and not int(result.n_revoc or 0):
            raise GpgError(f"no key imported (gpg exit {result.returncode})")
        return fprs  # empty when only revocations came in

    async def import_keys(self, data: bytes) -> list[str]:
        """Import keys (or revocations); returns the fingerprints gpg reported."""
        return await self._run(self._import, data)

    def _list(self, secret: bool) -> list[KeyStatus]:
        g, now = self._handle(), datetime.now(UTC)
        pubs = {k["fingerprint"]: k for k in g.list_keys()}
        secs = {k["fingerprint"]: k for k in g.list_keys(True)}
        purpose: Purpose = "sign" if secret else "encrypt"
        chosen = secs if secret else pubs
        return [_evaluate(f, pubs.get(f), secs.get(f), purpose, 30, now)[0] for f in chosen]

    async def list_keys(self, *, secret: bool = False) -> list[KeyStatus]:
        """Every key, judged for encryption (public) or signing (secret)."""
        return await self._run(self._list, secret)

    def _export(self, fingerprint: str) -> bytes:
        fpr = fingerprint.replace(" ", "").upper()
        armored: str = self._handle().export_keys(fpr) if FINGERPRINT.fullmatch(fpr) else ""
        if not armored:
            raise KeyProblem(fpr, ["not in the keyring"])
        return armored.encode("ascii")

    async def export_public(self, fingerprint: str) -> bytes:
        """The armored public key, for partners and the Web Key Directory."""
        return await self._run(self._export, fingerprint)

    def _generate(self, uid: str, expire: str, passphrase: str | None) -> str:
        if any(c in s for s in (uid, expire, passphrase or "") for c in "\r\n"):
            raise GpgError("uid, expiry and passphrase must each be one line")
        secret = f"Passphrase: {passphrase}" if passphrase else "%no-protection"
        params = (
            "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\n"
            "Subkey-Type: ECDH\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
            f"Name-Real: {uid}\nExpire-Date: {expire}\n{secret}\n%commit\n"
        )
        self.forget_checks()
        result = self._handle().gen_key(params)
        make_folder_private(self._home)
        fpr: str = result.fingerprint
        if result.returncode != 0 or not fpr:
            raise GpgError(f"key generation failed: {result.status} (exit {result.returncode})")
        return fpr

    async def generate(self, uid: str, *, expire: str = "2y", passphrase: str | None = None) -> str:
        """A fresh ed25519 signing key with a cv25519 encryption subkey; returns its fingerprint."""
        return await self._run(self._generate, uid, expire, passphrase)
