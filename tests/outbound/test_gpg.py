"""Encrypt-and-sign and key checks against real gpg in temporary homes."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import gnupg  # type: ignore[import-untyped]
import pytest

from outbound.gpg import Gpg, GpgError, KeyProblem
from tests.conftest import no_blocking_calls
from tests.outbound.conftest import HOTLINE_PASSPHRASE, Keys, add_subkey, make_key, run_gpg

REFERRAL = b'{"schema": "hotline-gateway/referral/v1", "reference": "CF-2026-000123"}\n'


def open_as_partner(keys: Keys, message: bytes) -> gnupg.Crypt:
    """Decrypt and verify ``message`` with the recipient's secret key."""
    return gnupg.GPG(gnupghome=str(keys.partner_home)).decrypt(message)


async def test_encrypt_and_sign_reaches_only_the_recipient(gpg: Gpg, keys: Keys) -> None:
    """The recipient decrypts the message and sees a valid signature by the hotline key."""
    message = await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.hotline)
    assert message.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert message.rstrip().endswith(b"-----END PGP MESSAGE-----")
    assert REFERRAL not in message and b"CF-2026-000123" not in message
    opened = open_as_partner(keys, message)
    assert opened.ok and opened.data == REFERRAL
    assert opened.valid and opened.pubkey_fingerprint == keys.hotline


def encryption_subkey(home: Path, fingerprint: str) -> str:
    """The key id of the encryption subkey of ``fingerprint`` in ``home``."""
    listed = gnupg.GPG(gnupghome=str(home)).list_keys(keys=[fingerprint])[0]
    return next(keyid for keyid, info in listed["subkey_info"].items() if "e" in info["cap"])


async def test_encrypt_to_self_adds_the_hotline_and_nobody_else(gpg: Gpg, keys: Keys) -> None:
    """With the hotline's own key as ``archive`` the message has exactly two recipients (the
    destination's and the hotline's encryption subkeys): each decrypts the same plaintext,
    signed by the hotline; without it, only the destination's."""
    both = await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.hotline,
                                      archive=keys.hotline)
    only = await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.hotline)
    ours = gnupg.GPG(gnupghome=str(keys.hotline_home))
    theirs = encryption_subkey(keys.partner_home, keys.recipient)
    mine = encryption_subkey(keys.hotline_home, keys.hotline)
    assert sorted(ours.get_recipients(both.decode())) == sorted([theirs, mine])
    assert ours.get_recipients(only.decode()) == [theirs]
    as_partner = open_as_partner(keys, both)
    as_hotline = ours.decrypt(both, passphrase=HOTLINE_PASSPHRASE)
    for opened in (as_partner, as_hotline):
        assert opened.ok and opened.data == REFERRAL
        assert opened.valid and opened.pubkey_fingerprint == keys.hotline
    assert not ours.decrypt(only, passphrase=HOTLINE_PASSPHRASE).ok


@pytest.mark.parametrize("which", ["missing", "sign_only", "revoked", "sub_expired"])
async def test_an_own_key_that_cannot_encrypt_stops_the_referral(
    gpg: Gpg, keys: Keys, which: str
) -> None:
    """Once asked for, the hotline's own key is required: if it cannot encrypt, KeyProblem
    names it (for encryption) and nothing is encrypted, even to a good destination."""
    fingerprint = getattr(keys, which)
    with pytest.raises(KeyProblem) as caught:
        await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.hotline,
                                   archive=fingerprint)
    assert caught.value.fingerprint == fingerprint and caught.value.purpose == "encrypt"


@pytest.mark.parametrize(
    ("which", "problem"),
    [
        ("missing", "not in the keyring"),
        ("expired", "expired 2020-12-31"),
        ("sub_expired", "no valid encryption subkey"),
        ("revoked", "revoked"),
        ("weak", "RSA 1024 is too weak"),
        ("sign_only", "no valid encryption subkey"),
    ],
)
async def test_unusable_recipient_holds_the_referral(
    gpg: Gpg, keys: Keys, which: str, problem: str
) -> None:
    """An unusable recipient key raises KeyProblem naming why, and nothing is encrypted."""
    fingerprint = getattr(keys, which)
    with pytest.raises(KeyProblem) as caught:
        await gpg.encrypt_and_sign(REFERRAL, recipient=fingerprint, signer=keys.hotline)
    assert caught.value.fingerprint == fingerprint
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert "CF-2026" not in str(caught.value)


async def test_signer_without_secret_key_is_refused(gpg: Gpg, keys: Keys) -> None:
    """A signer whose secret key we do not hold raises KeyProblem "no secret key"."""
    with pytest.raises(KeyProblem) as caught:
        await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.recipient)
    assert caught.value.problems == ["no secret key"]


async def test_recipient_must_be_a_fingerprint(gpg: Gpg, keys: Keys) -> None:
    """An address or short key id is never looked up: keys are pinned by full fingerprint."""
    for spec in ("cp@police.test", keys.recipient[-16:]):
        with pytest.raises(KeyProblem, match="40-hex fingerprint"):
            await gpg.encrypt_and_sign(REFERRAL, recipient=spec, signer=keys.hotline)


async def test_check_reports_a_usable_recipient_and_our_signing_key(gpg: Gpg, keys: Keys) -> None:
    """check() finds the recipient fit to encrypt to and our own key fit to sign with."""
    recipient = await gpg.check(keys.recipient.lower(), purpose="encrypt")
    assert recipient.usable and recipient.fingerprint == keys.recipient
    assert recipient.uids == ["Police <cp@police.test>"] and not recipient.secret
    assert recipient.expires is not None and recipient.encrypt_expires is not None
    assert recipient.warnings == []
    own = await gpg.check(keys.hotline, purpose="sign")
    assert own.usable and own.secret
    assert (await gpg.check(keys.recipient, purpose="sign")).problems == ["no secret key"]


async def test_check_explains_each_unusable_key(gpg: Gpg, keys: Keys) -> None:
    """Expired, revoked and weak keys each carry their own problem; the subkey is what counts."""
    expired = await gpg.check(keys.expired, purpose="encrypt")
    assert expired.problems == ["expired 2020-12-31"]
    stale = await gpg.check(keys.sub_expired, purpose="encrypt")
    assert stale.expires is None and stale.problems == ["no valid encryption subkey"]
    assert (await gpg.check(keys.revoked, purpose="encrypt")).problems == ["revoked"]
    assert (await gpg.check(keys.weak, purpose="encrypt")).problems == ["RSA 1024 is too weak"]
    assert (await gpg.check(keys.missing, purpose="encrypt")).problems == ["not in the keyring"]


async def test_check_warns_only_within_warn_days(gpg: Gpg, keys: Keys) -> None:
    """A key expiring in 12 days warns with warn_days=30 and not with warn_days=5 or at 40 days."""
    status = await gpg.check(keys.recipient, purpose="encrypt")
    assert status.expires is not None
    soon = status.expires - timedelta(days=12)
    near = await gpg.check(keys.recipient, purpose="encrypt", now=soon)
    assert near.usable and near.warnings == ["expires in 12 days"]
    strict = await gpg.check(keys.recipient, purpose="encrypt", now=soon, warn_days=5)
    assert strict.warnings == []
    far = status.expires - timedelta(days=40)
    assert (await gpg.check(keys.recipient, purpose="encrypt", now=far)).warnings == []
    after = await gpg.check(keys.recipient, purpose="encrypt", now=status.expires)
    assert not after.usable and after.problems[0].startswith("expired")


async def test_import_list_export_round_trip(
    gpg: Gpg, keys: Keys, empty_home: Path, executor: ThreadPoolExecutor
) -> None:
    """A key exported from one keyring imports into a new one and lists as usable there."""
    exported = await gpg.export_public(keys.recipient)
    assert exported.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    fresh = Gpg(empty_home, executor=executor)
    assert await fresh.import_keys(exported) == [keys.recipient]
    assert (empty_home.stat().st_mode & 0o777) == 0o700
    listed = await fresh.list_keys()
    assert [(k.fingerprint, k.usable, k.secret) for k in listed] == [(keys.recipient, True, False)]
    assert await fresh.list_keys(secret=True) == []
    assert await fresh.export_public(keys.recipient) == exported
    with pytest.raises(KeyProblem, match="not in the keyring"):
        await fresh.export_public(keys.missing)


async def test_import_of_garbage_raises(empty_home: Path, executor: ThreadPoolExecutor) -> None:
    """Data holding no key raises GpgError rather than importing nothing quietly."""
    with pytest.raises(GpgError, match="no key imported"):
        await Gpg(empty_home, executor=executor).import_keys(b"not a key\n")


async def test_generate_makes_a_key_that_signs_and_encrypts(
    fast_home: Path, executor: ThreadPoolExecutor
) -> None:
    """generate() gives an ed25519/cv25519 key we can sign with and encrypt to."""
    fresh = Gpg(fast_home, executor=executor, passphrase="demo")
    fpr = await fresh.generate("Demo <demo@hotline.test>", expire="1y", passphrase="demo")
    assert (await fresh.check(fpr, purpose="sign")).usable
    status = await fresh.check(fpr, purpose="encrypt")
    assert status.usable and status.secret and status.uids == ["Demo <demo@hotline.test>"]
    message = await fresh.encrypt_and_sign(b"demo", recipient=fpr, signer=fpr)
    assert message.startswith(b"-----BEGIN PGP MESSAGE-----")


async def test_a_bad_passphrase_is_a_gpg_error(keys: Keys, executor: ThreadPoolExecutor) -> None:
    """A passphrase gpg cannot take fails as GpgError and never reaches gpg's stdin."""
    broken = Gpg(keys.hotline_home, executor=executor, passphrase="two\nlines")
    with pytest.raises(GpgError, match="Invalid passphrase"):
        await broken.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=keys.hotline)


async def test_concurrent_encrypt_and_sign_stays_off_the_loop(gpg: Gpg, keys: Keys) -> None:
    """Eight referrals encrypted at once on four threads all succeed without blocking the loop."""
    bodies = [REFERRAL.replace(b"000123", f"{n:06d}".encode()) for n in range(8)]
    with no_blocking_calls():
        to, by = keys.recipient, keys.hotline
        messages = await asyncio.gather(
            *(gpg.encrypt_and_sign(b, recipient=to, signer=by) for b in bodies)
        )
    for body, message in zip(bodies, messages, strict=True):
        assert message.startswith(b"-----BEGIN PGP MESSAGE-----") and body not in message
        assert open_as_partner(keys, message).data == body


async def test_wrong_passphrase_fails_without_output(
    fast_home: Path, executor: ThreadPoolExecutor
) -> None:
    """When gpg cannot unlock the signing key, encrypt_and_sign raises GpgError, returns nothing."""
    maker = Gpg(fast_home, executor=executor)
    fpr = await maker.generate("Locked <locked@hotline.test>", passphrase="right")
    wrong = Gpg(fast_home, executor=executor, passphrase="wrong")
    with pytest.raises(GpgError, match="encrypt\\+sign failed") as caught:
        await wrong.encrypt_and_sign(REFERRAL, recipient=fpr, signer=fpr)
    assert not isinstance(caught.value, KeyProblem) and "CF-2026" not in str(caught.value)


async def test_a_key_revoked_here_is_refused_at_once_despite_the_check_cache(
    fast_home: Path, executor: ThreadPoolExecutor
) -> None:
    """Checks are reused for a minute, but importing a revocation forgets them."""
    gpg = Gpg(fast_home, executor=executor)
    ours = await gpg.generate("Us <us@hotline.test>")
    theirs = await gpg.generate("Them <them@police.test>")
    assert (await gpg.encrypt_and_sign(b"one", recipient=theirs, signer=ours)).startswith(
        b"-----BEGIN PGP MESSAGE-----")
    certificate = (fast_home / "openpgp-revocs.d" / f"{theirs}.rev").read_text()
    await gpg.import_keys(certificate.replace(":-----BEGIN", "-----BEGIN").encode())
    with pytest.raises(KeyProblem, match="revoked"):
        await gpg.encrypt_and_sign(b"two", recipient=theirs, signer=ours)


async def test_a_message_is_checked_against_every_key_it_is_encrypted_to(
    fast_home: Path, keys: Keys, executor: ThreadPoolExecutor
) -> None:
    """Before sending, each key a referral was encrypted to is checked again: none went bad,
    no problem; the hotline's own key revoked since, a problem naming it."""
    hotline = make_key(fast_home, "Hotline <referrals@hotline.test>")
    archive = make_key(fast_home, "Hotline staff <staff@hotline.test>")
    add_subkey(fast_home, archive)
    run_gpg(keys.partner_home, "--armor", "--output", str(fast_home / "recipient.asc"),
            "--export", keys.recipient)
    run_gpg(fast_home, "--import", str(fast_home / "recipient.asc"))
    gpg = Gpg(fast_home, executor=executor)
    sealed = await gpg.encrypt_and_sign(REFERRAL, recipient=keys.recipient, signer=hotline,
                                        archive=archive)
    message = b"Content-Type: multipart/encrypted\r\n\r\n" + sealed
    assert await gpg.sealed_for_problems(message) == []
    certificate = (fast_home / "openpgp-revocs.d" / f"{archive}.rev").read_text()
    (fast_home / "revoke.asc").write_text(certificate.replace(":-----BEGIN", "-----BEGIN"))
    await gpg.import_keys((fast_home / "revoke.asc").read_bytes())
    assert await gpg.sealed_for_problems(message) == [f"key {archive}: revoked"]
    assert await gpg.sealed_for_problems(b"no armor") == ["no PGP message in it"]
