"""Partner hotlines' referrals read with real gpg: both RFC 3156 forms, and every way a
referral must fail to be trusted. ``recipient`` stands for the NL hotline's pinned key and
``weak`` for another partner's (DE); ``sign_only`` is in the keyring but no partner's."""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outbound.document import inner_message, problems_of, referral_document
from outbound.gpg import Gpg
from outbound.partner_referrals import (
    MAX_REFERENCE,
    PartnerReferrals,
    ReferralReading,
    read_referral_blocking,
)
from tests.budget import examples
from tests.outbound.conftest import Keys
from tests.outbound.hostile_mail import hostile_mail
from tests.outbound.test_replies import (
    ENVELOPE,
    detached,
    envelope,
    gpg_fuzz,
    multipart_signed,
    seal,
)


def partners(keys: Keys) -> dict[str, str]:
    return {keys.recipient: "NL", keys.weak: "DE"}


def document(**changes: Any) -> dict[str, Any]:
    made = referral_document(
        reference="NL-2026-000045", created="2026-12-03T09:00:00Z", rule="protocol-2-inhope",
        destination="hotline:BE", hotline="Meldpunt NL", home_country="NL",
        case={"id": "x", "url": "http://be.test/a", "canonical_url": "http://be.test/a",
              "first_reported": "2026-12-02T10:00:00Z", "last_reported": "2026-12-02T10:00:00Z",
              "report_count": 1},
        classification="baseline", assessed_at=None,
        hosting={"country": "BE", "ips": [], "asn": None, "org": None, "cdn": False,
                 "checked_at": None},
        hashes=[])
    made.update(changes)
    return made


def read(raw: bytes, gpg: Gpg, keys: Keys) -> ReferralReading | None:
    return read_referral_blocking(raw, gpg, partners(keys), home="BE")


def test_a_referral_signed_and_encrypted_in_one_is_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """RFC 3156 6.2, as our outbound code sends it: trusted, the partner named by its key."""
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.hotline, by=keys.recipient))
    reading = read(raw, gpg, keys)
    assert reading is not None and reading.trusted and reading.reason is None, reading
    assert (reading.partner, reading.signer) == ("NL", keys.recipient)
    assert reading.document == document()


def test_the_referrals_message_id_is_kept_for_the_replies_thread(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """The outer Message-ID is what our replies answer; a malformed one is not kept."""
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.hotline, by=keys.recipient))
    reading = read(raw, gpg, keys)
    assert reading is not None and reading.message_id == "<reply-1@police.test>"
    broken = raw.replace(b"Message-ID: <reply-1@police.test>", b"Message-ID: <a b>")
    reading = read(broken, gpg, keys)
    assert reading is not None and reading.trusted and reading.message_id is None


def test_a_signed_referral_inside_the_encryption_is_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """RFC 3156 6.1: the detached signature over the signed part; the document inside it."""
    signed = inner_message(document())
    nested = multipart_signed(signed, detached(keys.partner_home, signed, tmp_path,
                                               keys.recipient))
    reading = read(envelope(seal(keys.partner_home, nested, tmp_path, to=keys.hotline,
                                 by=None)), gpg, keys)
    assert reading is not None and reading.trusted and reading.partner == "NL", reading


def test_a_document_beside_the_signed_part_is_not_covered(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """A signed text, and a referral document outside what the signature covers."""
    text = EmailMessage(policy=SMTP)
    text.set_content("Nothing to see.")
    signed = text.as_bytes()
    signature = detached(keys.partner_home, signed, tmp_path, keys.recipient)
    body = json.dumps(document()).encode()
    b = b"outer-mixed"
    mixed = (b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
             + multipart_signed(signed, signature) + b"\r\n--" + b + b"\r\n"
             b"Content-Type: application/json\r\n\r\n" + body + b"\r\n--" + b + b"--\r\n")
    reading = read(envelope(seal(keys.partner_home, mixed, tmp_path, to=keys.hotline,
                                 by=None)), gpg, keys)
    assert reading is not None and reading.candidate and not reading.trusted
    assert reading.reason == "unsigned"


def test_another_partners_key_must_sign_as_its_own_country(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """DE's pinned key signing a document that claims to come from NL: a bad document."""
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.hotline, by=keys.weak))
    reading = read(raw, gpg, keys)
    assert reading is not None and not reading.trusted and reading.reason == "bad_document"
    assert reading.problems == ("from/country: not DE, whose pinned key signed it",)


def test_a_key_in_the_keyring_that_is_no_partners_is_not_trusted(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.hotline, by=keys.sign_only))
    reading = read(raw, gpg, keys)
    assert reading is not None and (reading.candidate, reading.trusted, reading.reason,
                                    reading.signer) == (True, False, "unpinned_signer",
                                                        keys.sign_only)


def test_a_reference_too_long_to_store_is_a_bad_document(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """The schema allows any number of digits; the store keeps MAX_REFERENCE characters."""
    long = "NL-2026-" + "1" * MAX_REFERENCE
    assert problems_of(document(reference=long)) == []
    raw = envelope(seal(keys.partner_home, inner_message(document(reference=long)), tmp_path,
                        to=keys.hotline, by=keys.recipient))
    reading = read(raw, gpg, keys)
    assert reading is not None and reading.reason == "bad_document"


def test_a_message_without_a_referral_is_no_candidate(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """An encrypted report from anyone: opened once, its plaintext handed back to read."""
    raw = envelope(seal(keys.partner_home, b"Content-Type: text/plain\r\n\r\nwww.be.test/x",
                        tmp_path, to=keys.hotline, by=None))
    reading = read(raw, gpg, keys)
    assert reading is not None and not reading.candidate and b"www.be.test/x" in \
        reading.plaintext


def test_a_message_not_for_us_is_left_to_the_ordinary_path(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Not PGP/MIME: None (read as any report). PGP/MIME gpg cannot decrypt: why, so that
    the report says so without a second decryption; never a candidate."""
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.recipient, by=keys.recipient))
    reading = read(raw, gpg, keys)
    assert reading is not None and reading.undecryptable is not None
    assert not reading.candidate and not reading.trusted and reading.plaintext == b""
    assert read(b"Subject: hi\r\n\r\nhello", gpg, keys) is None


def test_the_reader_the_stage_is_handed_uses_its_partners(
        gpg: Gpg, keys: Keys, tmp_path: Path) -> None:
    """Fingerprints as config writes them (spaces, any case) are the same keys."""
    spaced = " ".join(keys.recipient[i:i + 4] for i in range(0, 40, 4)).lower()
    reader = PartnerReferrals(gpg, {spaced: "NL"}, home="BE")
    raw = envelope(seal(keys.partner_home, inner_message(document()), tmp_path,
                        to=keys.hotline, by=keys.recipient))
    reading = reader(raw)
    assert reading is not None and reading.trusted and reading.partner == "NL"


PIECES = [
    b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=s\r\n",
    b"Content-Type: multipart/mixed; boundary=s\r\n", b"Content-Type: application/json\r\n",
    b"Content-Type: application/pgp-signature\r\n", b"Content-Type: text/plain\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"\r\n", b"--s\r\n", b"--s--\r\n",
    json.dumps(document()).encode(), json.dumps(document(case=None)).encode(),
    b'{"schema": "hotline-gateway/referral/v1", "case": [[[[', b"[" * 200,
]


@gpg_fuzz
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=16)),
                max_size=30).map(b"".join))
def test_hostile_plaintext_from_a_partner_gets_a_reading(
        gpg: Gpg, keys: Keys, tmp_path_factory: pytest.TempPathFactory, plaintext: bytes) -> None:
    """Whatever NL's key signs: a reading, never an exception; trusted only with a valid
    document from NL."""
    folder = tmp_path_factory.mktemp("hostile")
    raw = envelope(seal(keys.partner_home, plaintext, folder, to=keys.hotline,
                        by=keys.recipient))
    reading = read(raw, gpg, keys)
    assert reading is not None
    if reading.trusted:
        assert reading.document is not None and problems_of(reading.document) == []
        assert reading.partner == "NL"


@settings(max_examples=examples(200), deadline=None,  # most never reach gpg
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hostile_mail(ENVELOPE))
@example(ENVELOPE)
def test_hostile_messages_are_never_trusted(gpg: Gpg, keys: Keys, raw: bytes) -> None:
    """Anything at all reaching the intake address: no reading, or one not trusted."""
    reading = read(raw, gpg, keys)
    assert reading is None or not reading.trusted
