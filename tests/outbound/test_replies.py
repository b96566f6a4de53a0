"""Destinations' replies: read with real gpg (the hotline's secret key, pinned destinations'
public keys), in both RFC 3156 forms, and every way a reply must fail to be trusted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS
from outbound.gpg import Gpg, signatures_of
from outbound.outcome import outcome_document, problems_of, schema
from outbound.pgpmime import encrypted_message
from outbound.replies import (
    DEFAULT_LIMITS,
    ReplyLimits,
    Verdict,
    read_reply,
    read_reply_blocking,
)
from outbound.reply_compose import compose_reply, reply_inner
from tests.budget import examples
from tests.conftest import no_blocking_calls
from tests.outbound.conftest import Keys, make_key, new_home, run_gpg, stop_agent
from tests.outbound.hostile_mail import hostile_mail

REFERRAL_ID = "<referral-0190a1b2-7c3d@hotline.test>"
OTHER_ID = "<referral-0190ffff-0000@hotline.test>"
REFERENCE = "CF-2026-000123"
WHEN = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
# gpg calls cost tens of milliseconds: few examples where each one runs gpg.
gpg_fuzz = settings(max_examples=examples(25), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def pinned(keys: Keys) -> set[str]:
    """The destinations' keys: the police (``recipient``) and a partner hotline (``weak``)."""
    return {keys.recipient, keys.weak}


def removed(**changes: Any) -> dict[str, Any]:
    return outcome_document(reference=REFERENCE, outcome="removed", occurred_at=WHEN,
                            their_reference="NL-2026-42", **changes)


@pytest.fixture
def partner(keys: Keys, executor: ThreadPoolExecutor) -> Gpg:
    """The destinations' keyring: their secret keys, the hotline's public key."""
    return Gpg(keys.partner_home, executor=executor)


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[tuple[Path, str]]:
    """Someone whose key the hotline has never seen, who knows the hotline's public key."""
    home = new_home(tmp_path_factory.mktemp("gpg") / "stranger")
    fpr = make_key(home, "Stranger <someone@elsewhere.test>")
    run_gpg(home, "--import", str(keys.hotline_home / "hotline.asc"))
    yield home, fpr
    stop_agent(home)


def seal(home: Path, data: bytes, folder: Path, *, to: str | None, by: str | None) -> bytes:
    """Armored OpenPGP made with the gpg command line: encrypted to ``to``, signed by ``by``."""
    source, out = folder / "in.bin", folder / "out.asc"
    source.write_bytes(data)
    out.unlink(missing_ok=True)
    args = ["--armor", "--trust-model", "always", "--output", str(out)]
    args += ["--encrypt", "--recipient", to] if to else []
    args += ["--sign", "--local-user", f"{by}!"] if by else []
    run_gpg(home, *args, str(source))
    return out.read_bytes()


def detached(home: Path, data: bytes, folder: Path, by: str) -> bytes:
    source, out = folder / "signed.bin", folder / "signature.asc"
    source.write_bytes(data)
    out.unlink(missing_ok=True)
    run_gpg(home, "--armor", "--detach-sign", "--local-user", f"{by}!", "--output", str(out),
            str(source))
    return out.read_bytes()


def multipart_signed(signed: bytes, signature: bytes) -> bytes:
    """RFC 3156 section 5 as Thunderbird writes it (a preamble, a boundary of dashes):
    ``signed`` exactly, then the detached signature."""
    b = b"------------sig9f2c"
    return (b'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n'
            b' protocol="application/pgp-signature";\r\n boundary="' + b + b'"\r\n\r\n'
            b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
            b"--" + b + b"\r\n" + signed + b"\r\n--" + b + b"\r\n"
            b'Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"\r\n\r\n'
            + signature + b"\r\n--" + b + b"--\r\n")


def envelope(armored: bytes, *, in_reply_to: str | None = REFERRAL_ID) -> bytes:
    return encrypted_message(armored, from_address="referrals@police.test",
                             to_address="replies@hotline.test", reference=REFERENCE,
                             msg_id="<reply-1@police.test>", date=WHEN, in_reply_to=in_reply_to)


def inner(document: dict[str, Any] | None = None, *, text: str = "Removed today.",
          named: bool = True) -> bytes:
    if named:
        return reply_inner(text=text, reference=REFERENCE, referral_message_id=REFERRAL_ID,
                           document=document)
    message = EmailMessage(policy=SMTP)
    message.set_content(text)
    if document is not None:
        message.add_attachment(json.dumps(document).encode(), maintype="application",
                               subtype="json", filename="outcome.json")
    return message.as_bytes()


def read(raw: bytes, gpg: Gpg, keys: Keys) -> Verdict:
    return read_reply_blocking(raw, gpg, pinned(keys))


async def test_a_reply_signed_and_encrypted_in_one_is_trusted(
        gpg: Gpg, partner: Gpg, keys: Keys, executor: ThreadPoolExecutor) -> None:
    """RFC 3156 6.2 from ``compose_reply``: trusted, signer, referral and outcome all read."""
    raw = await compose_reply(
        partner, text="The content is gone.", reference=REFERENCE,
        referral_message_id=REFERRAL_ID, document=removed(), recipient=keys.hotline,
        signer=keys.recipient, from_address="referrals@police.test",
        to_address="replies@hotline.test", date=WHEN)
    assert b"Subject: Re: Referral CF-2026-000123" in raw
    assert f"In-Reply-To: {REFERRAL_ID}".encode() in raw
    assert b"removed" not in raw and b"gone" not in raw  # nothing readable outside
    with no_blocking_calls():  # gpg and the parsing run in the executor
        verdict = await read_reply(raw, gpg, pinned(keys), executor=executor)
    assert verdict.trusted and verdict.reason is None, verdict
    assert (verdict.signer, verdict.form) == (keys.recipient, "combined")
    assert verdict.document == removed()
    assert verdict.names.document == REFERENCE
    assert verdict.names.signed_message_ids == (REFERRAL_ID,)
    assert verdict.names.message_ids == (REFERRAL_ID,)
    assert verdict.names.all_references == (REFERENCE,)
    assert verdict.for_referral(destination_key=keys.recipient, message_ids=[REFERRAL_ID],
                                reference=REFERENCE, sent_at=None) is verdict


async def test_an_acknowledgement_without_a_document_is_trusted(
        gpg: Gpg, partner: Gpg, keys: Keys, executor: ThreadPoolExecutor) -> None:
    """No JSON: trusted all the same (it acknowledges), with no outcome to record."""
    raw = await compose_reply(
        partner, text="Received, thank you.", reference=REFERENCE,
        referral_message_id=REFERRAL_ID, document=None, recipient=keys.hotline,
        signer=keys.recipient, from_address="referrals@police.test",
        to_address="replies@hotline.test", date=WHEN)
    verdict = await read_reply(raw, gpg, pinned(keys), executor=executor)
    assert verdict.trusted and verdict.document is None and verdict.reason is None


def test_a_signed_message_inside_the_encryption_is_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """RFC 3156 6.1: the detached signature is checked over the signed part's exact bytes."""
    signed = inner(removed())
    nested = multipart_signed(signed, detached(keys.partner_home, signed, tmp_path,
                                               keys.recipient))
    verdict = read(envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline, by=None)),
                   gpg, keys)
    assert verdict.trusted and verdict.reason is None, verdict
    assert (verdict.signer, verdict.form) == (keys.recipient, "nested")
    assert verdict.document == removed()


def test_a_nested_signature_holds_over_lf_line_ends(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Signed in canonical CRLF form but carried with LF line ends: still the same bytes."""
    signed = inner(removed())
    nested = multipart_signed(signed, detached(keys.partner_home, signed, tmp_path,
                                               keys.recipient)).replace(b"\r\n", b"\n")
    verdict = read(envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline, by=None)),
                   gpg, keys)
    assert verdict.trusted and verdict.form == "nested", verdict


def test_a_changed_signed_part_is_a_bad_signature(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """A nested reply whose signed part was altered after signing is not trusted."""
    signed = inner(removed())
    signature = detached(keys.partner_home, signed, tmp_path, keys.recipient)
    forged = signed.replace(REFERRAL_ID.encode(), OTHER_ID.encode())
    assert forged != signed
    nested = multipart_signed(forged, signature)
    verdict = read(envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline, by=None)),
                   gpg, keys)
    assert (verdict.trusted, verdict.reason, verdict.document) == (False, "bad_signature", None)


def test_signatures_by_two_keys_inside_and_outside_are_refused(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """6.1 inside 6.2: both layers must be the same destination's."""
    signed = inner(removed())
    nested = multipart_signed(signed, detached(keys.partner_home, signed, tmp_path, keys.weak))
    raw = envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline,
                        by=keys.recipient))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "bad_signature")


def test_an_unsigned_reply_is_not_trusted(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Encrypted to the hotline, but anyone can do that: ``unsigned``, names kept for the
    analyst."""
    raw = envelope(seal(keys.partner_home, inner(removed()), tmp_path, to=keys.hotline, by=None))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason, verdict.signer) == (False, "unsigned", None)
    assert verdict.document is None
    assert verdict.names.message_ids == (REFERRAL_ID,)


def test_a_key_that_is_not_pinned_is_not_trusted(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """In the keyring but not a destination's pinned key: ``unpinned_signer``."""
    raw = envelope(seal(keys.partner_home, inner(removed()), tmp_path, to=keys.hotline,
                        by=keys.sign_only))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason, verdict.signer) == \
        (False, "unpinned_signer", keys.sign_only)


def test_a_stranger_s_key_is_not_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path, stranger: tuple[Path, str]) -> None:
    """A key the hotline has never seen: ``unpinned_signer``, naming the key it claims."""
    home, fpr = stranger
    raw = envelope(seal(home, inner(removed()), tmp_path, to=keys.hotline, by=fpr))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "unpinned_signer")
    assert verdict.signer is not None and fpr.endswith(verdict.signer)


def test_another_destination_s_key_is_exposed_and_refused_for_the_referral(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Signed by another pinned partner: readable, but not for a referral sent elsewhere."""
    raw = envelope(seal(keys.partner_home, inner(removed()), tmp_path, to=keys.hotline,
                        by=keys.weak))
    verdict = read(raw, gpg, keys)
    assert verdict.trusted and verdict.signer == keys.weak
    judged = verdict.for_referral(destination_key=keys.recipient, message_ids=[REFERRAL_ID],
                                  reference=REFERENCE, sent_at=None)
    assert (judged.trusted, judged.reason, judged.signer) == \
        (False, "signer_not_destination", keys.weak)


@pytest.mark.parametrize("form", ["multipart/signed", "inline"])
def test_a_reply_signed_in_clear_is_not_encrypted(
        gpg: Gpg, keys: Keys, tmp_path: Path, form: str) -> None:
    """A valid signature by the right key, but not PGP/MIME encrypted: not trusted."""
    signed = inner(removed())
    if form == "inline":
        body = seal(keys.partner_home, signed, tmp_path, to=keys.hotline, by=keys.recipient)
        raw = (b"Subject: Re: Referral CF-2026-000123\r\nIn-Reply-To: " + REFERRAL_ID.encode()
               + b"\r\nContent-Type: text/plain\r\n\r\n" + body)
    else:
        raw = (b"Subject: Re: Referral CF-2026-000123\r\nMIME-Version: 1.0\r\n" + multipart_signed(
            signed, detached(keys.partner_home, signed, tmp_path, keys.recipient)))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "not_encrypted")
    assert verdict.names.references == (REFERENCE,)


def test_a_signed_only_message_in_an_encrypted_envelope_is_refused(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """gpg "decrypts" a message that is only signed: that must not pass for encrypted."""
    raw = envelope(seal(keys.partner_home, inner(removed()), tmp_path, to=None,
                        by=keys.recipient))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "undecryptable")


def test_a_reply_encrypted_to_someone_else_is_undecryptable(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    raw = envelope(seal(keys.partner_home, inner(removed()), tmp_path, to=keys.recipient,
                        by=keys.recipient))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "undecryptable")
    assert "NO_SECKEY" in verdict.detail


def test_a_reply_that_names_no_referral_is_not_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Signed by the destination, but nothing says which referral: ``no_referral_named``."""
    armored = seal(keys.partner_home, inner(text="Done.", named=False), tmp_path,
                   to=keys.hotline, by=keys.recipient)
    raw = envelope(armored, in_reply_to=None).replace(
        b"Subject: Referral CF-2026-000123", b"Subject: About your message")
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason, verdict.signer) == \
        (False, "no_referral_named", keys.recipient)


def test_outer_headers_name_the_referral_when_nothing_inside_does(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """A reply from a mail client: the thread's headers outside are its only names."""
    armored = seal(keys.partner_home, inner(text="We have it.", named=False), tmp_path,
                   to=keys.hotline, by=keys.recipient)
    verdict = read(envelope(armored), gpg, keys)
    assert verdict.trusted and verdict.names.message_ids == (REFERRAL_ID,)
    assert verdict.names_referral(message_ids=[REFERRAL_ID], reference=REFERENCE)
    assert not verdict.names_referral(message_ids=[OTHER_ID], reference="CF-2026-000124")


def test_a_replayed_reply_cannot_be_moved_to_another_referral(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """The outer headers rewritten to another referral: the signed names still decide."""
    armored = seal(keys.partner_home, inner(removed()), tmp_path, to=keys.hotline,
                   by=keys.recipient)
    raw = envelope(armored, in_reply_to=OTHER_ID).replace(REFERENCE.encode(), b"CF-2026-000124")
    verdict = read(raw, gpg, keys)
    assert verdict.trusted and verdict.names.message_ids == (OTHER_ID,)
    judged = verdict.for_referral(destination_key=keys.recipient, message_ids=[OTHER_ID],
                                  reference="CF-2026-000124", sent_at=None)
    assert (judged.trusted, judged.reason) == (False, "no_referral_named")


def test_a_reference_in_the_signed_text_names_the_referral(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    armored = seal(keys.partner_home, inner(text="Referral CF-2026-000123: removed.",
                                            named=False), tmp_path,
                   to=keys.hotline, by=keys.recipient)
    raw = envelope(armored, in_reply_to=None).replace(b"Referral CF-2026-000123", b"Hello")
    verdict = read(raw, gpg, keys)
    assert verdict.trusted and verdict.names.signed_references == (REFERENCE,)
    assert verdict.names.message_ids == () and verdict.names.references == ()


def test_a_document_that_breaks_the_schema_acknowledges_but_records_nothing(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Authentic and naming the referral: trusted (an acknowledgement), ``bad_document``,
    no outcome, and the problems named without the values."""
    broken = {"schema": "hotline-gateway/outcome/v1", "reference": REFERENCE,
              "outcome": "deleted-by-us", "occurred_at": "2026-12-01T09:30:00Z"}
    raw = envelope(seal(keys.partner_home, inner(broken), tmp_path, to=keys.hotline,
                        by=keys.recipient))
    verdict = read(raw, gpg, keys)
    assert (verdict.trusted, verdict.reason, verdict.document) == (True, "bad_document", None)
    assert verdict.problems == ("outcome: enum",)
    assert verdict.names.document is None and verdict.names.signed_message_ids == (REFERRAL_ID,)


def test_our_referral_quoted_back_is_not_a_document(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    quoted = {"schema": "hotline-gateway/referral/v1", "reference": REFERENCE}
    raw = envelope(seal(keys.partner_home, inner(quoted), tmp_path, to=keys.hotline,
                        by=keys.recipient))
    verdict = read(raw, gpg, keys)
    assert verdict.trusted and verdict.reason is None and verdict.document is None


def test_too_large_is_refused_before_gpg(gpg: Gpg, keys: Keys) -> None:
    verdict = read_reply_blocking(b"x" * 2048, gpg, pinned(keys),
                                  limits=ReplyLimits(max_message_bytes=1024))
    assert (verdict.trusted, verdict.reason) == (False, "too_large")


def test_the_outcome_schema_and_its_builder() -> None:
    """Every builder output satisfies the shipped schema; not_actionable needs a reason."""
    jsonschema.Draft202012Validator.check_schema(schema())
    for outcome in ("acknowledged", "removed", "content_unavailable"):
        jsonschema.validate(outcome_document(reference=REFERENCE, outcome=outcome,
                                             occurred_at=WHEN), schema())
    made = outcome_document(reference=REFERENCE, outcome="not_actionable", occurred_at=WHEN,
                            reason="age_unclear", note="Adult, per our review.")
    assert made["occurred_at"] == "2026-12-01T09:30:00Z"
    with pytest.raises(ValueError, match="reason"):
        outcome_document(reference=REFERENCE, outcome="not_actionable", occurred_at=WHEN)
    with pytest.raises(ValueError, match="time zone"):
        outcome_document(reference=REFERENCE, outcome="removed", occurred_at=datetime(2026, 1, 1))
    impossible = {**removed(), "occurred_at": "2026-02-30T10:00:00Z"}
    assert problems_of(impossible) == ["occurred_at: not a real time"]
    assert problems_of({**removed(), "extra": "x"}) == ["(document): additionalProperties"]


def test_every_reason_code_fits_outcome_v1_and_older_documents_still_do() -> None:
    """The outcome codes (the assessment's legal reasons among them) all fit v1's reason, so a
    partner is sent the code itself; a document as older gateways wrote it (a legal verdict
    as not_illegal_in_country, our code in the note) still validates: v1 did not narrow."""
    for code in NOT_ACTIONABLE_REASONS:
        assert problems_of(outcome_document(reference=REFERENCE, outcome="not_actionable",
                                            occurred_at=WHEN, reason=code)) == []
    older = {"schema": "hotline-gateway/outcome/v1", "reference": REFERENCE,
             "outcome": "not_actionable", "reason": "not_illegal_in_country",
             "occurred_at": "2026-12-03T09:02:00Z", "their_reference": "CF-R-000001",
             "note": "assessed not illegal here: adult_pornography"}
    assert problems_of(older) == []


def test_gpg_status_lines_become_signatures() -> None:
    """One signature per NEWSIG; the primary key's fingerprint from VALIDSIG."""
    sub, primary = "A" * 40, "B" * 40
    status = "\n".join([
        "[GNUPG:] NEWSIG", "[GNUPG:] GOODSIG 1234 Someone",
        f"[GNUPG:] VALIDSIG {sub} 2026-12-01 1 0 4 0 22 10 00 {primary}",
        "[GNUPG:] NEWSIG", "[GNUPG:] ERRSIG 99AA 22 10 00 1 9 " + "C" * 40,
        "[GNUPG:] NEWSIG", "[GNUPG:] BADSIG 77EE Someone else",
        "[GNUPG:] NEWSIG", "[GNUPG:] GOODSIG 5555 No validsig",
        "[GNUPG:] NEWSIG", "[GNUPG:] EXPKEYSIG 6666 Expired",
        f"[GNUPG:] VALIDSIG {sub} 2026-12-01 1 0 4 0 22 10 00 {primary}",
        "[GNUPG:] NEWSIG", "[GNUPG:] REVKEYSIG 7777 Revoked",
        "[GNUPG:] NEWSIG", "[GNUPG:] ERRSIG 88 22 10 00 1 4 -"])
    assert [(s.status, s.key) for s in signatures_of(status)] == [
        ("good", primary), ("no_key", "C" * 40), ("bad", "77EE"), ("error", "5555"),
        ("expired_key", primary), ("revoked_key", "7777"), ("error", "88")]


ENVELOPE = envelope(b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n")


@settings(max_examples=examples(300), deadline=None,  # most never reach gpg
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hostile_mail(ENVELOPE))
@example(ENVELOPE)
@example(b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"\r\n\r\n")
def test_hostile_messages_get_a_verdict(gpg: Gpg, keys: Keys, raw: bytes) -> None:
    """Anything at all: a verdict, never an exception, never trusted."""
    verdict = read_reply_blocking(raw, gpg, pinned(keys))
    assert isinstance(verdict, Verdict) and not verdict.trusted and verdict.reason is not None


INNER_PIECES = [
    b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=s\r\n",
    b"Content-Type: multipart/mixed; boundary=s\r\n", b"Content-Type: application/json\r\n",
    b"Content-Type: application/pgp-signature\r\n", b"Content-Type: text/plain\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*=bogus''x.json\r\n",
    b"\r\n", b"--s\r\n", b"--s--\r\n", b"In-Reply-To: <a@b>\r\n", b"References: <<<>\r\n",
    b"Referral CF-2026-000123 ", b"Subject: Referral X-0000-000000\r\n",
    json.dumps({"schema": "hotline-gateway/outcome/v1", "reference": REFERENCE,
                "outcome": "removed", "occurred_at": "2026-12-01T09:30:00Z"}).encode(),
    b'{"schema": "hotline-gateway/outcome/v1", "outcome": [[[[', b"[" * 200, b"1e999999",
    b"-----BEGIN PGP SIGNATURE-----\r\n\r\niHUEARYKAB0W\r\n-----END PGP SIGNATURE-----\r\n",
]


@gpg_fuzz
@given(st.lists(st.one_of(st.sampled_from(INNER_PIECES), st.binary(max_size=16)),
                max_size=30).map(b"".join))
def test_hostile_signed_plaintext_gets_a_verdict(
        gpg: Gpg, keys: Keys, tmp_path_factory: pytest.TempPathFactory, plaintext: bytes) -> None:
    """Whatever a pinned destination encrypts and signs: a verdict; trusted only with its
    signer, and any document in it valid."""
    folder = tmp_path_factory.mktemp("hostile")
    raw = envelope(seal(keys.partner_home, plaintext, folder, to=keys.hotline,
                        by=keys.recipient))
    verdict = read_reply_blocking(raw, gpg, pinned(keys))
    assert isinstance(verdict, Verdict)
    if verdict.trusted:
        assert verdict.signer == keys.recipient
    if verdict.document is not None:
        assert problems_of(verdict.document) == []



def test_a_whole_signed_message_in_place_of_a_detached_signature_is_refused(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Any message the destination ever signed, put where the detached signature goes, must
    not vouch for a signed part it never saw."""
    elsewhere = seal(keys.partner_home, b"A public statement.\r\n", tmp_path, to=None,
                     by=keys.recipient)
    nested = multipart_signed(inner(removed()), elsewhere)
    verdict = read(envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline, by=None)),
                   gpg, keys)
    assert (verdict.trusted, verdict.reason) == (False, "bad_signature")


def test_a_plaintext_over_the_limit_is_undecryptable(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """gpg stops at the limit; a cut plaintext is never read, even validly signed."""
    raw = envelope(seal(keys.partner_home, inner(removed(), text="x" * 5000), tmp_path,
                        to=keys.hotline, by=keys.recipient))
    verdict = read_reply_blocking(raw, gpg, pinned(keys),
                                  limits=ReplyLimits(max_plaintext_bytes=1024))
    assert (verdict.trusted, verdict.reason) == (False, "undecryptable")


def test_an_encoded_subject_still_names_the_referral(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """A mail client's RFC 2047 Subject ("AW: Referral …"), the only name there is."""
    armored = seal(keys.partner_home, inner(text="Erhalten.", named=False), tmp_path,
                   to=keys.hotline, by=keys.recipient)
    raw = envelope(armored, in_reply_to=None).replace(
        b"Subject: Referral CF-2026-000123",
        b"Subject: =?utf-8?q?AW=3A_Referral_CF-2026-000123_=C3=BCber?=")
    verdict = read(raw, gpg, keys)
    assert verdict.trusted and verdict.names.references == (REFERENCE,)


async def test_the_composer_sends_only_valid_documents_about_the_referral(
        partner: Gpg, keys: Keys) -> None:
    """An invalid document, or one about another referral, never leaves."""
    common: dict[str, Any] = {
        "text": "x", "reference": REFERENCE, "referral_message_id": REFERRAL_ID,
        "recipient": keys.hotline, "signer": keys.recipient, "date": WHEN,
        "from_address": "referrals@police.test", "to_address": "replies@hotline.test"}
    with pytest.raises(ValueError, match="outcome: enum"):
        await compose_reply(partner, document={**removed(), "outcome": "gone"}, **common)
    with pytest.raises(ValueError, match="another referral"):
        await compose_reply(partner, document={**removed(), "reference": "CF-2026-000999"},
                            **common)


def test_a_forwarded_message_inside_says_nothing(gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """An outcome document or a reference inside a forwarded message is quoted, not said."""
    forwarded = EmailMessage(policy=SMTP)
    forwarded.set_content("Referral CF-2026-000999 was removed.")
    forwarded.add_attachment(json.dumps({**removed(), "reference": "CF-2026-000999"}).encode(),
                             maintype="application", subtype="json", filename="outcome.json")
    message = EmailMessage(policy=SMTP)
    message.set_content("See the forwarded message.")
    message.add_attachment(forwarded)
    armored = seal(keys.partner_home, message.as_bytes(), tmp_path, to=keys.hotline,
                   by=keys.recipient)
    verdict = read(envelope(armored), gpg, keys)
    assert verdict.trusted and verdict.document is None and verdict.reason is None
    assert verdict.names.signed_references == () and verdict.names.document is None


def test_a_long_thread_still_names_its_first_message(gpg: Gpg, keys: Keys,
                                                      tmp_path: Path) -> None:
    """References lists the thread from its first message, the referral: after many
    reminders and replies, more Message-IDs than are kept, the referral's is still kept."""
    armored = seal(keys.partner_home, inner(text="Still on it.", named=False), tmp_path,
                   to=keys.hotline, by=keys.recipient)
    later = [f"<reminder-{n}@hotline.test>" for n in range(40)]
    thread = "\r\n ".join([REFERRAL_ID, *later]).encode()
    raw = envelope(armored, in_reply_to=later[-1]).replace(
        b"Subject: ", b"References: " + thread + b"\r\nSubject: ", 1)
    verdict = read(raw, gpg, keys)
    names = verdict.names.message_ids
    assert verdict.trusted and REFERRAL_ID in names
    assert len(names) == DEFAULT_LIMITS.max_names and names[0] == later[-1]
