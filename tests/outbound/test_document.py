"""The referral document, its schema, the PGP/MIME envelope and the file transport."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.store.classification import CODES, CONTENT_FLAGS
from outbound.document import inner_message, referral_document, schema, summary
from outbound.pgpmime import encrypted_message, message_id
from outbound.transports import FileTransport

CASE = {"id": "01a22469-6f1a-72ce-b08d-f9d48f7e8660", "url": "hxxp://example.test/x",
        "canonical_url": "http://example.test/x", "first_reported": "2026-11-28T10:00:00Z",
        "last_reported": "2026-11-28T11:00:00Z", "report_count": 3}


def document(**changes: Any) -> dict[str, Any]:
    base = referral_document(
        reference="CF-2026-000123", created="2026-11-28T12:00:00Z", rule="protocol-2-inhope",
        destination="hotline:NL", hotline="Child Focus", home_country="BE", case=CASE,
        classification="baseline", assessed_at="2026-11-28T11:30:00Z",
        hosting={"country": "NL", "country_source": "geoip", "ips": ["145.100.1.1"],
                 "asn": 1103, "org": "SURF B.V.", "cdn": False,
                 "checked_at": "2026-11-28T11:59:00Z"},
        hashes=[{"sha256": "a" * 64, "md5": "b" * 32}])
    base.update(changes)
    return base


def test_the_document_satisfies_its_schema_and_design_shape() -> None:
    """The shipped JSON Schema accepts the document; the DESIGN.md fields are all there."""
    made = document()
    jsonschema.validate(made, schema())
    assert made["schema"] == "hotline-gateway/referral/v1"
    assert set(made["case"]) >= {"url", "canonical_url", "first_reported", "report_count",
                                 "classification", "hosting", "hashes"}
    assert made["from"] == {"hotline": "Child Focus", "country": "BE"}


@pytest.mark.parametrize("broken", [{"rule": "protocol-3-legal"}, {"reference": "nope"},
                                    {"schema": "other"}, {"extra": 1}])
def test_the_schema_refuses_what_is_not_a_referral(broken: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document(**broken), schema())


#: A referral as gateways wrote them before the ICCAM details were added to v1: what existing
#: readers have on file must still validate.
OLD_V1 = {
    "schema": "hotline-gateway/referral/v1", "reference": "CF-2026-000123",
    "created": "2026-11-28T12:00:00Z", "rule": "protocol-2-inhope", "destination": "hotline:NL",
    "from": {"hotline": "Child Focus", "country": "BE"},
    "case": {"id": CASE["id"], "url": "hxxp://example.test/x",
             "canonical_url": "http://example.test/x", "first_reported": "2026-11-28T10:00:00Z",
             "last_reported": "2026-11-28T11:00:00Z", "report_count": 3,
             "classification": "baseline", "assessed_at": "2026-11-28T11:30:00Z",
             "hosting": {"country": "NL", "country_source": "geoip", "ips": ["145.100.1.1"],
                         "asn": 1103, "org": "SURF B.V.", "cdn": False,
                         "checked_at": "2026-11-28T11:59:00Z"},
             "hashes": [{"sha256": "a" * 64, "md5": "b" * 32}]}}
DETAILS = {"age_group": "pre_pubescent", "gender": "female", "media": "both",
           "site_type": "image_host", "content_flags": ["commercial"], "reason": None}


def with_details(details: dict[str, Any]) -> dict[str, Any]:
    return referral_document(
        reference="CF-2026-000123", created="2026-11-28T12:00:00Z", rule="protocol-2-inhope",
        destination="hotline:NL", hotline="Child Focus", home_country="BE", case=CASE,
        classification="baseline", assessed_at="2026-11-28T11:30:00Z",
        hosting=OLD_V1["case"]["hosting"], hashes=OLD_V1["case"]["hashes"], details=details)


def test_the_iccam_details_are_optional_fields_of_v1() -> None:
    """A document with the verdict's ICCAM details validates against the shipped schema, and
    so does a v1 document from before them; without details the document is as it was."""
    made = with_details(DETAILS)
    jsonschema.validate(made, schema())
    assert made["schema"] == "hotline-gateway/referral/v1"
    assert {k: made["case"][k] for k in ("age_group", "gender", "media", "site_type",
                                         "content_flags")} == {
        "age_group": "pre_pubescent", "gender": "female", "media": "both",
        "site_type": "image_host", "content_flags": ["commercial"]}
    assert "reason" not in made["case"]  # a legal verdict's: never referred
    jsonschema.validate(OLD_V1, schema())
    assert with_details({}) == document() == OLD_V1
    assert "Classification: baseline (age group: pre-pubescent; gender: female" in summary(made)


@pytest.mark.parametrize("wrong", [{"age_group": "adult"}, {"site_type": "darknet"},
                                   {"content_flags": ["commercial", "commercial"]},
                                   {"content_flags": ["violent"]}, {"gender": None}])
def test_the_schema_refuses_codes_that_are_not_in_the_list(wrong: dict[str, Any]) -> None:
    made = with_details(DETAILS)
    made["case"].update(wrong)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(made, schema())


def test_the_schema_lists_the_vocabulary_of_the_gateway() -> None:
    """The codes the schema allows are exactly those an analyst can record."""
    case = schema()["properties"]["case"]["properties"]
    for name in ("age_group", "gender", "media", "site_type"):
        assert case[name]["enum"] == list(CODES[name]), name
    assert case["content_flags"]["items"]["enum"] == list(CONTENT_FLAGS)


def test_the_inner_message_holds_the_summary_and_the_json() -> None:
    """Summary (URL defanged) and JSON, in one MIME message that gets encrypted whole."""
    inner = message_from_bytes(inner_message(document()), policy=policy.default)
    parts = {p.get_content_type(): p for p in inner.iter_parts()}
    assert json.loads(parts["application/json"].get_content())["case"]["id"] == CASE["id"]
    text = parts["text/plain"].get_content()
    assert "example[.]test" in text and "http://example.test" not in text
    assert "CF-2026-000123" in summary(document())


def test_the_envelope_follows_rfc_3156_and_tells_nothing() -> None:
    armored = b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n"
    raw = encrypted_message(armored, from_address="referrals@hotline.test",
                            to_address="cp@police.test", reference="CF-2026-000123",
                            msg_id=message_id("abc", "referrals@hotline.test"),
                            date=datetime(2026, 11, 28, tzinfo=UTC))
    outer = message_from_bytes(raw, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    assert outer["Subject"] == "Referral CF-2026-000123"
    assert outer["Message-ID"] == "<referral-abc@hotline.test>"
    first, second = outer.iter_parts()
    assert first.get_content_type() == "application/pgp-encrypted"
    assert second.get_content_type() == "application/octet-stream"
    assert b"-----BEGIN PGP MESSAGE-----" in raw
    with pytest.raises(ValueError, match="not an OpenPGP message"):
        encrypted_message(b"plain text", from_address="a@b.test", to_address="c@d.test",
                          reference="CF-2026-000123", msg_id="<x@y>", date=datetime.now(UTC))


def test_the_envelope_names_where_replies_are_read() -> None:
    """A reply address other than the sender is the Reply-To (RFC 5322 3.6.2); none, none."""
    armored = b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n"
    made: dict[str, Any] = dict(
        from_address="referrals@hotline.test", to_address="cp@police.test",
        reference="CF-2026-000123", msg_id="<x@y>", date=datetime(2026, 12, 3, tzinfo=UTC))
    outer = message_from_bytes(encrypted_message(armored, reply_to="replies@hotline.test",
                                                 **made), policy=policy.default)
    assert outer["Reply-To"] == "replies@hotline.test"
    assert message_from_bytes(encrypted_message(armored, **made),
                              policy=policy.default)["Reply-To"] is None
    with pytest.raises(ValueError, match="Reply-To"):
        encrypted_message(armored, reply_to="a@b.test\r\nBcc: x@y.test", **made)


async def test_the_file_transport_writes_whole_files(tmp_path: Path) -> None:
    """Each message lands whole under its name; no temporary file is left behind."""
    transport = FileTransport(tmp_path / "outbox")
    for n in range(3):
        answer = await transport.send(mail_from="a@b.test", rcpt_to="c@d.test",
                                      message=b"message %d\r\n" % n, name=f"CF-2026-00000{n}")
        assert answer == f"written CF-2026-00000{n}.eml"
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == [f"CF-2026-00000{n}.eml" for n in range(3)]
    assert (tmp_path / "outbox" / "CF-2026-000001.eml").read_bytes() == b"message 1\r\n"
