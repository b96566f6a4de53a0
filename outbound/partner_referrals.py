"""Referrals from partner hotlines' gateways, read as they reach the intake address: PGP/MIME
encrypted to the hotline's key, carrying a ``hotline-gateway/referral/v1`` document (what
``outbound.refer`` sends, from their side).

A message that carries such a document is a *candidate*. It is trusted only when all of
these hold, checked in this order (the first that fails is the reading's ``reason``):

- ``unsigned`` / ``bad_signature`` / ``unpinned_signer``: validly signed by exactly one key,
  the one pinned for a partner hotline in ``[routing.hotlines.XX]`` (``outbound.signed``: in
  one with the encryption, RFC 3156 section 6.2, or a multipart/signed entity inside, 6.1);
  a key pinned for the police is not a partner's;
- ``unsigned``: the document is inside what that signature covers;
- ``bad_document``: exactly one document, valid against the shipped schema, whose ``from``
  country is the partner's whose key signed it, and whose reference fits in the store;
- ``not_for_us``: the document's ``destination`` is this hotline (``hotline:XX``, XX our
  ``[gateway] home_country``). A partner's signed referral to another hotline, forwarded or
  replayed to us, is not a referral to us; one that names no destination is not either.

The caller (the normalise stage) files a trusted candidate with its provenance and an
untrusted one as an ordinary report with the reason. A message that cannot be opened here is
not a candidate (None): the stage reads it as it reads any report, and says why it could not.
One that gpg cannot decrypt is a reading with ``undecryptable`` set, so that the stage says
why without asking gpg a second time.
Hostile input never raises. Nothing here logs message content or addresses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email import errors
from email.message import Message
from typing import Any, Literal

import structlog

from outbound.document import SCHEMA_ID, problems_of
from outbound.gpg import MAX_DECRYPTED
from outbound.signed import Opener, Refused, check_signed, decrypt, fingerprint, leaves, parse

log = structlog.get_logger("outbound.partner_referrals")

Reason = Literal["unsigned", "bad_signature", "unpinned_signer", "bad_document", "not_for_us"]
_REASONS: dict[str, Reason] = {"unsigned": "unsigned", "unpinned_signer": "unpinned_signer",
                               "bad_document": "bad_document"}
#: The longest partner reference kept (the store's column).
MAX_REFERENCE = 40


@dataclass(frozen=True, slots=True)
class ReferralLimits:
    """Bounds on one message. Any PGP/MIME report to the intake address is opened here, so
    the message and plaintext limits are intake's; a referral itself is a few KiB."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_plaintext_bytes: int = MAX_DECRYPTED
    #: MIME entities (counted by their Content-Type headers), outside and inside.
    max_entities: int = 64
    max_document_bytes: int = 256 * 1024


DEFAULT_LIMITS = ReferralLimits()


@dataclass(frozen=True, slots=True)
class ReferralReading:
    """A PGP/MIME message opened. ``candidate``: it carries a referral/v1 document;
    ``trusted``: a partner's, to be filed with its provenance; else ``reason`` says why not."""

    #: The decrypted message (the MIME entity inside the encryption), for the report's text.
    plaintext: bytes
    candidate: bool = False
    trusted: bool = False
    reason: Reason | None = None
    #: One line for the analyst and the log: what failed, never the message's content.
    detail: str = ""
    #: The signer's primary key fingerprint (or, for a key we lack, the key id it names).
    signer: str | None = None
    #: The partner's country code (``[routing.hotlines.XX]``), when trusted.
    partner: str | None = None
    #: Trusted: the valid document. Otherwise the JSON object found, as it is (its URLs are
    #: still reported, as anyone may report a URL), or None.
    document: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()
    #: The outer message's Message-ID (``<...>``), when it has a well-formed one: the thread
    #: our replies to the partner go in (not covered by the signature; used only for that).
    message_id: str | None = None
    #: Why gpg could not decrypt it (then nothing else is set): the report is unreadable.
    undecryptable: str | None = None


def _documents(entity: Message, limits: ReferralLimits) -> list[dict[str, Any] | None]:
    """The referral/v1 documents among the entity's parts (None for one too large to read:
    still a sign that a referral is meant)."""
    found: list[dict[str, Any] | None] = []
    for part in leaves(entity, limits.max_entities):
        kind = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if kind != "application/json" and not (name.endswith(".json") and kind != "text/plain"):
            continue
        body = part.get_payload(decode=True)
        if not isinstance(body, bytes):
            continue
        if len(body) > limits.max_document_bytes:
            if SCHEMA_ID.encode() in body:
                found.append(None)
            continue
        try:
            loaded = json.loads(body)
        except (ValueError, RecursionError):
            continue
        if isinstance(loaded, dict) and loaded.get("schema") == SCHEMA_ID:
            found.append(loaded)
    return found


def _document_problems(document: dict[str, Any], partner: str) -> list[str]:
    problems = problems_of(document)
    if problems:
        return problems
    if document["from"]["country"] != partner:
        problems.append(f"from/country: not {partner}, whose pinned key signed it")
    if len(document["reference"]) > MAX_REFERENCE:
        problems.append(f"reference: longer than {MAX_REFERENCE} characters")
    return problems


_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")


def _message_id(message: Message) -> str | None:
    """The message's Message-ID when it is one well-formed ``<id>`` (RFC 5322 3.6.4)."""
    found = _MESSAGE_ID.fullmatch(str(message.get("Message-ID", "")).strip())
    return found[0] if found else None


def _destination_problem(document: dict[str, Any], home: str | None) -> str | None:
    """Why a partner's valid document is not a referral to us, or None when it is (never
    the value it names: it comes from outside, and the detail is logged)."""
    if home is None:
        return None
    ours = f"hotline:{home}"
    named = document.get("destination")
    if named is None:
        return f"the referral names no destination (ours is {ours})"
    if named != ours:
        return f"the referral is addressed to another destination, not to us ({ours})"
    return None


def _read(raw: bytes, opener: Opener, partners: Mapping[str, str],
          limits: ReferralLimits, home: str | None) -> ReferralReading | None:
    if len(raw) > limits.max_message_bytes:
        return None
    try:
        message = parse(raw, limits.max_entities, "message")
        opened = decrypt(message, opener, max_plaintext=limits.max_plaintext_bytes)
    except Refused as refused:
        if refused.reason == "undecryptable":  # gpg tried: its answer is the report's
            return ReferralReading(b"", undecryptable=refused.detail or "gpg failed")
        return None  # not PGP/MIME: read as any report is
    reading = ReferralReading(opened.plaintext, message_id=_message_id(message))
    try:
        inner = parse(opened.plaintext, limits.max_entities, "decrypted message")
        found = _documents(inner, limits)
    except Refused:
        return reading  # more parts than a referral has: not one
    if not found:
        return reading
    reading = replace(reading, candidate=True, document=found[0])
    try:
        signed = check_signed(opened, inner, opener, frozenset(partners),
                              max_entities=limits.max_entities)
    except Refused as refused:
        detail = refused.detail
        if refused.reason == "unpinned_signer" and refused.signer is not None:
            detail += " for a partner hotline ([routing.hotlines])"
        return replace(reading, reason=_REASONS.get(refused.reason, "bad_signature"),
                       detail=detail, signer=refused.signer)
    reading = replace(reading, signer=signed.signer)
    covered = _documents(signed.entity, limits) if signed.entity is not inner else found
    if not covered:
        return replace(reading, reason="unsigned",
                       detail="the referral document is outside the signed part")
    if len(found) > 1 or len(covered) > 1:
        return replace(reading, reason="bad_document", detail="more than one referral document")
    document = covered[0]
    if document is None:
        return replace(reading, reason="bad_document", detail="a referral document too large")
    partner = partners[signed.signer]
    if problems := _document_problems(document, partner):
        return replace(reading, reason="bad_document", document=document,
                       detail="not a valid referral/v1 document", problems=tuple(problems))
    if (elsewhere := _destination_problem(document, home)) is not None:
        return replace(reading, reason="not_for_us", detail=elsewhere)
    return replace(reading, trusted=True, partner=partner, document=document)


def read_referral_blocking(raw: bytes, opener: Opener, partners: Mapping[str, str], *,
                           home: str | None,
                           limits: ReferralLimits = DEFAULT_LIMITS) -> ReferralReading | None:
    """The reading of a message received at the intake address, or None when it is not
    PGP/MIME. ``partners``: pinned key fingerprint -> country code; ``home``: our country
    code, the destination a referral to us names (None: not checked, for tools only).
    Blocking (gpg): call it from a worker thread."""
    pinned = {fingerprint(key): country for key, country in partners.items()}
    try:
        return _read(raw, opener, pinned, limits, home)
    except (ValueError, LookupError, TypeError, RecursionError, AttributeError,
            errors.MessageError) as exc:
        # The stdlib's parser met something it cannot take: read as any report is.
        log.warning("partner_referrals.unreadable", error_type=type(exc).__name__)
        return None


class PartnerReferrals:
    """The reader the normalise stage is handed: gpg, the partners' pinned keys
    (fingerprint -> country code) and our country (``home``: the destination a referral to us
    names). A reload of the config hands the stage a new one."""

    def __init__(self, opener: Opener, partners: Mapping[str, str], *, home: str,
                 limits: ReferralLimits = DEFAULT_LIMITS) -> None:
        self._opener = opener
        self._partners = dict(partners)
        self._home = home
        self._limits = limits

    def __call__(self, raw: bytes) -> ReferralReading | None:
        return read_referral_blocking(raw, self._opener, self._partners, home=self._home,
                                      limits=self._limits)
