"""Destinations' replies to referrals, read: decrypted, signatures checked, the referral and
the outcome found, into a ``Verdict`` (``outbound.reply_compose`` writes them).

A reply is trusted only when all of these hold, checked in this order (the first that fails is
the verdict's ``reason``):

- ``too_large``: within ``ReplyLimits``;
- ``not_encrypted``: PGP/MIME encrypted (RFC 3156 section 4); a reply signed in clear, or with
  an inline PGP block, is not read further;
- ``undecryptable``: gpg decrypts it with the hotline's secret key, and it *was* encrypted
  (a message that is only signed also "decrypts");
- ``unsigned`` / ``bad_signature`` / ``unpinned_signer`` (``outbound.signed``): signed,
  validly, by exactly one key, whose primary fingerprint is one of the pinned destinations'
  keys; signed and encrypted in one (section 6.2), or a multipart/signed entity inside the
  encryption (section 6.1), whose detached signature is checked over the signed part's exact
  bytes (CRLF line ends, section 5); both, when present, by the same key;
- ``no_referral_named``: it names a referral (``Naming``).

A reply that passes is ``trusted``: its signer has the referral. ``bad_document`` is the one
reason a trusted verdict can carry: an ``application/json`` part that is not a valid
``hotline-gateway/outcome/v1`` document. Authentic and naming the referral, it still
acknowledges it; the outcome it meant is not guessed (``document`` is None) and the reply
goes to an analyst. Which destination must have signed is the caller's to know: it finds the
referral by the names and calls ``Verdict.for_referral`` (``signer_not_destination``).

Only the signed part is read for content. Headers outside the encryption (In-Reply-To,
References, Subject) can be rewritten by anyone who replays a destination's ciphertext (or
re-encrypts a signed part they captured to the hotline's public key), so names inside the
signature win when there are any (``Verdict.names_referral``), and a reply named only from
outside is held against replays in two more ways:

- ``signed_before_referral`` (``Verdict.for_referral``): the signature says it was made
  before the referral was sent (``CLOCK_SKEW`` allowed): it cannot be about that referral;
- ``replayed`` (the reply stage, ``signed_digest``): the same signed content, by the same
  key at the same signature time, was already trusted once.

An outcome is only ever recorded from an outcome/v1 document, which names its referral
inside the signature (``reference``): outer names alone can at most acknowledge.
Hostile input never raises: every failure is a verdict. Nothing here logs message content
or addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Collection
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email import errors
from email.header import decode_header, make_header
from email.message import Message
from functools import partial
from typing import Any, Literal

import structlog

from outbound.outcome import problems_of
from outbound.signed import (
    Form,
    Opener,
    Refused,
    check_signed,
    decrypt,
    fingerprint,
    leaves,
    parse,
)

log = structlog.get_logger("outbound.replies")

Reason = Literal["too_large", "not_encrypted", "undecryptable", "unsigned", "bad_signature",
                 "unpinned_signer", "signer_not_destination", "no_referral_named",
                 "signed_before_referral", "replayed", "bad_document"]

#: A referral's reference: the case's for its first referral, a fresh one of the same form for
#: the case's later referrals (``gateway.store.referral_refs``).
REFERENCE = rb"[A-Z][A-Z0-9]{0,7}-[0-9]{4}-[0-9]{6,12}"
_NAMED = re.compile(rb"\bReferral:?[ \t]+(" + REFERENCE + rb")(?![0-9])")
#: How far a destination's clock may be behind ours: a signature dated more than this before
#: the referral was sent is not about it (``signed_before_referral``).
CLOCK_SKEW = timedelta(minutes=5)
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
_REFERRAL_SCHEMA = "hotline-gateway/referral/v1"


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """Bounds on the work one reply may cost (a reply is a few KiB: text and a small JSON)."""

    max_message_bytes: int = 1024 * 1024
    max_plaintext_bytes: int = 1024 * 1024
    #: MIME entities (counted by their Content-Type headers), outside and inside.
    max_entities: int = 32
    max_document_bytes: int = 64 * 1024
    #: Names kept of each kind (References can list a whole thread).
    max_names: int = 16


DEFAULT_LIMITS = ReplyLimits()


@dataclass(frozen=True, slots=True)
class Naming:
    """How a reply names the referral it answers, from the most to the least trustworthy."""

    #: The outcome document's ``reference`` (signed, and the document valid).
    document: str | None = None
    #: In-Reply-To then References of the signed entity (protected headers).
    signed_message_ids: tuple[str, ...] = ()
    #: ``Referral <reference>`` in the signed entity's Subject or text.
    signed_references: tuple[str, ...] = ()
    #: In-Reply-To then References of the outer message: not covered by the signature.
    message_ids: tuple[str, ...] = ()
    #: ``Referral <reference>`` in the outer Subject: not covered by the signature.
    references: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.document or self.signed_message_ids or self.signed_references
                    or self.message_ids or self.references)

    @property
    def all_message_ids(self) -> tuple[str, ...]:
        """Every Message-ID named, signed first: what to look the referral up by."""
        return tuple(dict.fromkeys(self.signed_message_ids + self.message_ids))

    @property
    def all_references(self) -> tuple[str, ...]:
        """Every reference named, the document's and the signed ones first."""
        first = (self.document,) if self.document else ()
        return tuple(dict.fromkeys(first + self.signed_references + self.references))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a reply is worth. ``trusted``: act on it (acknowledge; record ``document``'s
    outcome when there is one); else keep it for an analyst, with ``reason`` and an alert."""

    trusted: bool
    reason: Reason | None
    #: One line for the analyst and the log: what failed, never the message's content.
    detail: str = ""
    #: The signer's primary key fingerprint (or, for a key we lack, the key id it names).
    signer: str | None = None
    form: Form | None = None
    names: Naming = field(default_factory=Naming)
    #: The valid outcome/v1 document inside the signed part, if any.
    document: dict[str, Any] | None = None
    #: Why the JSON inside is not a valid outcome/v1 document (``bad_document``).
    problems: tuple[str, ...] = ()
    #: When the signature says it was made (None: gpg did not say).
    signed_at: datetime | None = None
    #: SHA-256 (hex) of the signer, the signature's time and the exact bytes signed: the same
    #: for every copy of one signed reply however it is wrapped (``replayed``).
    signed_digest: str | None = None

    def names_referral(self, *, message_ids: Collection[str], reference: str) -> bool:
        """Whether this reply is about that referral (``message_ids``: the referral's own and
        its reminders'). The most trustworthy naming present decides alone: the document's
        reference, else the signed names, else the outer ones."""
        n = self.names
        if n.document is not None:
            return n.document == reference
        if n.signed_message_ids or n.signed_references:
            return (any(m in n.signed_message_ids for m in message_ids)
                    or reference in n.signed_references)
        return any(m in n.message_ids for m in message_ids) or reference in n.references

    def for_referral(self, *, destination_key: str, message_ids: Collection[str],
                     reference: str, sent_at: datetime | None) -> Verdict:
        """This verdict for the referral the caller found by ``names``: not trusted unless
        signed by the key of the destination it went to, about that referral, and signed
        after it was sent (``sent_at``; ``CLOCK_SKEW`` allowed)."""
        if not self.trusted:
            return self
        if self.signer != fingerprint(destination_key):
            return replace(self, trusted=False, reason="signer_not_destination",
                           detail="signed by another destination's pinned key")
        if not self.names_referral(message_ids=message_ids, reference=reference):
            return replace(self, trusted=False, reason="no_referral_named",
                           detail="its signed names are not this referral's")
        if (self.signed_at is not None and sent_at is not None
                and self.signed_at < sent_at - CLOCK_SKEW):
            return replace(self, trusted=False, reason="signed_before_referral",
                           detail="signed before the referral it names was sent")
        return self

    @property
    def outcome_named_inside(self) -> bool:
        """Whether the outcome it carries names its referral inside the signature: always,
        for a document (its ``reference``); outer names never carry an outcome."""
        return self.document is None or self.names.document == self.document.get("reference")


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return str(value)[:8192] if value is not None else ""


def _subject(message: Message) -> str:
    """The Subject, its encoded words (RFC 2047) decoded where they can be."""
    raw = _header(message, "Subject")
    try:
        return str(make_header(decode_header(raw)))
    except (ValueError, LookupError, errors.HeaderParseError):
        return raw


def _names_in(message: Message, texts: list[bytes], limits: ReplyLimits
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Message-IDs from In-Reply-To then References, references from Subject and texts).

    References lists a thread from its first message (RFC 5322 3.6.4): here the referral,
    then our reminders and the destination's earlier replies. The nearest are kept first,
    and the thread's first is always kept, however long the thread grew."""
    ids = _MESSAGE_ID.findall(_header(message, "In-Reply-To"))
    thread = _MESSAGE_ID.findall(_header(message, "References"))
    ids += reversed(thread)  # nearest first
    kept = tuple(dict.fromkeys(ids))[: limits.max_names]
    if thread and thread[0] not in kept:
        kept = (*kept[: limits.max_names - 1], thread[0])
    subject = _subject(message).encode("utf-8", "replace")
    refs = [m.decode("ascii") for text in [subject, *texts] for m in _NAMED.findall(text)]
    return kept, tuple(dict.fromkeys(refs))[: limits.max_names]


def _content(entity: Message, limits: ReplyLimits
             ) -> tuple[list[bytes], list[dict[str, Any]], list[str]]:
    """The texts, the outcome documents and the problems of the JSON in the signed entity."""
    texts: list[bytes] = []
    documents: list[dict[str, Any]] = []
    problems: list[str] = []
    for part in leaves(entity, limits.max_entities):
        kind = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if kind == "application/json" or (name.endswith(".json") and kind != "text/plain"):
            body = part.get_payload(decode=True)
            if not isinstance(body, bytes) or len(body) > limits.max_document_bytes:
                problems.append("a JSON part that is empty or too large")
                continue
            try:
                loaded = json.loads(body)
            except (ValueError, RecursionError):
                problems.append("a JSON part that is not JSON")
                continue
            if isinstance(loaded, dict) and loaded.get("schema") == _REFERRAL_SCHEMA:
                continue  # our referral, quoted back: not what they say
            found = problems_of(loaded)
            if found:
                problems += found
            else:
                documents.append(loaded)
        elif kind == "text/plain":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                texts.append(body[: limits.max_document_bytes])
    if len(documents) > 1:
        problems.append("more than one outcome document")
    return texts, documents, problems


def _read(raw: bytes, opener: Opener, pinned: frozenset[str], limits: ReplyLimits) -> Verdict:
    found = Verdict(False, "not_encrypted")  # how far the reading got, for a refusal
    try:
        if len(raw) > limits.max_message_bytes:
            return replace(found, reason="too_large",
                           detail=f"larger than {limits.max_message_bytes} bytes")
        message = parse(raw, limits.max_entities, "message")
        ids, refs = _names_in(message, [], limits)
        found = replace(found, names=Naming(message_ids=ids, references=refs))
        opened = decrypt(message, opener, max_plaintext=limits.max_plaintext_bytes)
        found = replace(found, reason="bad_signature")
        inner = parse(opened.plaintext, limits.max_entities, "decrypted message")
        signed = check_signed(opened, inner, opener, pinned, max_entities=limits.max_entities)
        entity = signed.entity
        found = replace(found, reason="bad_document", signer=signed.signer, form=signed.form)
        texts, documents, problems = _content(entity, limits)
    except Refused as refused:
        return replace(found, reason=refused.reason, detail=refused.detail,
                       signer=refused.signer or found.signer)
    except (ValueError, LookupError, TypeError, RecursionError, AttributeError,
            errors.MessageError) as exc:
        # The stdlib's parser met something it cannot take: no one can read this reply.
        log.warning("replies.unreadable", reason=found.reason, error_type=type(exc).__name__)
        return replace(found, detail=f"unreadable ({type(exc).__name__})")
    ids, refs = _names_in(entity, texts, limits)
    document = documents[0] if len(documents) == 1 and not problems else None
    names = replace(found.names, document=document["reference"] if document else None,
                    signed_message_ids=ids, signed_references=refs)
    verdict = replace(found, trusted=True, reason=None, names=names, document=document,
                      problems=tuple(problems), signed_at=signed.signed_at,
                      signed_digest=_digest(signed.signer, signed.signed_at, signed.content))
    if not names.any:
        return replace(verdict, trusted=False, reason="no_referral_named",
                       detail="names no referral (In-Reply-To, References or a reference)")
    if problems:
        return replace(verdict, reason="bad_document",
                       detail="its JSON is not a valid outcome/v1 document")
    return verdict


def _digest(signer: str, signed_at: datetime | None, content: bytes) -> str:
    """What every copy of one signed reply shares, however it is wrapped: the signer, the
    signature's time (which the signature covers) and the exact bytes signed. Two replies a
    destination signed at different times differ, even with the same words."""
    when = signed_at.isoformat() if signed_at is not None else ""
    return hashlib.sha256(b"\0".join([b"signed", signer.encode("ascii", "replace"),
                                      when.encode("ascii"), content])).hexdigest()


def read_reply_blocking(raw: bytes, opener: Opener, pinned: Collection[str], *,
                        limits: ReplyLimits = DEFAULT_LIMITS) -> Verdict:
    """The verdict on a received reply (``raw``: the message as received); never raises on
    what the message holds. Blocking (gpg): call it from a worker thread. ``pinned``: the
    destinations' key fingerprints."""
    return _read(raw, opener, frozenset(fingerprint(k) for k in pinned), limits)


async def read_reply(raw: bytes, opener: Opener, pinned: Collection[str], *,
                     executor: Executor, limits: ReplyLimits = DEFAULT_LIMITS) -> Verdict:
    """``read_reply_blocking`` in ``executor``, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        executor, partial(read_reply_blocking, raw, opener, pinned, limits=limits))
