"""Destinations' replies to referrals, read: decrypted, signatures checked, the referral and
the outcome found, into a ``Verdict`` (``outbound.reply_compose`` writes them).

A reply is trusted only when all of these hold, checked in this order (the first that fails is
the verdict's ``reason``):

- ``too_large``: within ``ReplyLimits``;
- ``not_encrypted``: PGP/MIME encrypted (RFC 3156 section 4); a reply signed in clear, or with
  an inline PGP block, is not read further;
- ``undecryptable``: gpg decrypts it with the hotline's secret key, and it *was* encrypted
  (a message that is only signed also "decrypts");
- ``unsigned`` / ``bad_signature`` / ``unpinned_signer``: signed, validly, by exactly one key,
  whose primary fingerprint is one of the pinned destinations' keys; signed and encrypted in
  one (section 6.2), or a multipart/signed entity inside the encryption (section 6.1), whose
  detached signature is checked over the signed part's exact bytes (CRLF line ends, section
  5); both, when present, by the same key;
- ``no_referral_named``: it names a referral (``Naming``).

A reply that passes is ``trusted``: its signer has the referral. ``bad_document`` is the one
reason a trusted verdict can carry: an ``application/json`` part that is not a valid
``hotline-gateway/outcome/v1`` document. Authentic and naming the referral, it still
acknowledges it; the outcome it meant is not guessed (``document`` is None) and the reply
goes to an analyst. Which destination must have signed is the caller's to know: it finds the
referral by the names and calls ``Verdict.for_referral`` (``signer_not_destination``).

Only the signed part is read for content. Headers outside the encryption (In-Reply-To,
References, Subject) can be rewritten by anyone who replays a destination's ciphertext, so
names inside the signature win when there are any (``Verdict.names_referral``).
Hostile input never raises: every failure is a verdict. Nothing here logs message content
or addresses.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Collection, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from email import errors, message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from functools import partial
from typing import Any, Literal, Protocol

import structlog

from outbound.gpg import ARMOR, ARMOR_END, GpgError, Opened, Signature
from outbound.outcome import problems_of

log = structlog.get_logger("outbound.replies")

Reason = Literal["too_large", "not_encrypted", "undecryptable", "unsigned", "bad_signature",
                 "unpinned_signer", "signer_not_destination", "no_referral_named",
                 "bad_document"]
Form = Literal["combined", "nested"]  # RFC 3156 section 6.2, section 6.1

REFERENCE = rb"[A-Z][A-Z0-9]{0,7}-[0-9]{4}-[0-9]{6,12}"
_NAMED = re.compile(rb"\bReferral:?[ \t]+(" + REFERENCE + rb")(?![0-9])")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
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


class Opener(Protocol):
    """The gpg a reply is opened with: the hotline's secret key, the pinned public keys."""

    def open_blocking(self, data: bytes, *, max_output: int) -> Opened: ...

    def verify_detached_blocking(self, data: bytes, signature: bytes) -> tuple[Signature, ...]:
        ...


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

    def names_referral(self, *, message_id: str, reference: str) -> bool:
        """Whether this reply is about that referral. The most trustworthy naming present
        decides alone: the document's reference, else the signed names, else the outer ones."""
        n = self.names
        if n.document is not None:
            return n.document == reference
        if n.signed_message_ids or n.signed_references:
            return message_id in n.signed_message_ids or reference in n.signed_references
        return message_id in n.message_ids or reference in n.references

    def for_referral(self, *, destination_key: str, message_id: str, reference: str) -> Verdict:
        """This verdict for the referral the caller found by ``names``: not trusted unless
        signed by the key of the destination it went to, and about that referral."""
        if not self.trusted:
            return self
        if self.signer != _fingerprint(destination_key):
            return replace(self, trusted=False, reason="signer_not_destination",
                           detail="signed by another destination's pinned key")
        if not self.names_referral(message_id=message_id, reference=reference):
            return replace(self, trusted=False, reason="no_referral_named",
                           detail="its signed names are not this referral's")
        return self


class _Refused(Exception):
    """A reply failed a check: the verdict's reason and detail."""

    def __init__(self, reason: Reason, detail: str, signer: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.signer = signer


def _fingerprint(value: str) -> str:
    return value.replace(" ", "").upper()


def _parse(data: bytes, limits: ReplyLimits, what: str) -> Message:
    """A message (compat32: lenient, never raising on a header), within the entity limit."""
    if data.lower().count(b"content-type:") > limits.max_entities:
        raise _Refused("not_encrypted" if what == "message" else "bad_document",
                       f"more than {limits.max_entities} MIME entities in the {what}")
    return message_from_bytes(data, policy=policy.compat32)


def _parts(message: Message) -> list[Message]:
    """A multipart entity's parts; empty for anything else."""
    payload = message.get_payload()
    if not isinstance(payload, list):
        return []
    return [part for part in payload if isinstance(part, Message)]


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
    """(Message-IDs from In-Reply-To then References, references from Subject and texts)."""
    ids = _MESSAGE_ID.findall(_header(message, "In-Reply-To"))
    ids += reversed(_MESSAGE_ID.findall(_header(message, "References")))  # nearest first
    subject = _subject(message).encode("utf-8", "replace")
    refs = [m.decode("ascii") for text in [subject, *texts] for m in _NAMED.findall(text)]
    return (tuple(dict.fromkeys(ids))[: limits.max_names],
            tuple(dict.fromkeys(refs))[: limits.max_names])


def _outer(message: Message) -> bytes:
    """The ciphertext of a PGP/MIME message (RFC 3156 section 4)."""
    if message.get_content_type() != "multipart/encrypted":
        raise _Refused("not_encrypted", "not PGP/MIME encrypted")
    parts = _parts(message)
    if (message.get_param("protocol") != "application/pgp-encrypted" or len(parts) != 2
            or parts[0].get_content_type() != "application/pgp-encrypted"):
        raise _Refused("not_encrypted", "multipart/encrypted, but not as RFC 3156 section 4")
    ciphertext = parts[1].get_payload(decode=True)
    if not isinstance(ciphertext, bytes) or not ciphertext:
        raise _Refused("not_encrypted", "no encrypted part")
    start, end = ciphertext.find(ARMOR), ciphertext.find(ARMOR_END)
    if start >= 0 and end > start:
        ciphertext = ciphertext[start:end + len(ARMOR_END)] + b"\n"
    return ciphertext


def _signer(signatures: tuple[Signature, ...], pinned: frozenset[str]) -> str:
    """The one pinned key that signed validly, or why not."""
    if not signatures:
        raise _Refused("unsigned", "no signature")
    keys = {s.key for s in signatures}
    if len(keys) > 1:
        raise _Refused("bad_signature", "signed by more than one key")
    key = next(iter(keys))
    statuses = {s.status for s in signatures}
    if statuses == {"no_key"}:
        raise _Refused("unpinned_signer", "signed by a key we do not have", key)
    if statuses != {"good"}:
        bad = sorted(statuses - {"good"})
        raise _Refused("bad_signature", f"signature {', '.join(bad)}", key)
    if key not in pinned:
        raise _Refused("unpinned_signer", "signed by a key that is not pinned", key)
    return key


def _signed_part(plaintext: bytes, message: Message) -> tuple[bytes, bytes]:
    """The exact bytes of a multipart/signed entity's first part, with CRLF line ends (RFC
    3156 section 5), and its detached signature."""
    boundary = message.get_boundary()
    parts = _parts(message)
    if (boundary is None or message.get_param("protocol") != "application/pgp-signature"
            or len(parts) != 2
            or parts[1].get_content_type() != "application/pgp-signature"):
        raise _Refused("bad_signature", "multipart/signed, but not as RFC 3156 section 5")
    signature = parts[1].get_payload(decode=True)
    try:
        delimiter = re.escape(b"--" + boundary.encode("ascii"))
    except UnicodeEncodeError:
        raise _Refused("bad_signature", "a boundary that is not ASCII") from None
    # The CRLF before a delimiter line belongs to the delimiter (RFC 2046 section 5.1.1);
    # the body starts after the header block.
    body = _HEADER_END.search(plaintext)
    first = re.compile(rb"\r?\n" + delimiter + rb"[ \t]*\r?\n").search(
        plaintext, body.start()) if body is not None else None
    after = re.compile(rb"\r?\n" + delimiter + rb"(?:--)?[ \t]*(?:\r?\n|\Z)")
    following = after.search(plaintext, first.end()) if first is not None else None
    if first is None or following is None or not isinstance(signature, bytes):
        raise _Refused("bad_signature", "cannot find the signed part")
    signed = plaintext[first.end():following.start()]
    return re.sub(rb"\r?\n", b"\r\n", signed), signature


def _leaves(entity: Message, limits: ReplyLimits) -> Iterator[Message]:
    """The entity's leaf parts in order, at most ``max_entities`` looked at. A forwarded
    message (message/*) is someone else's words, quoted: it is not looked into."""
    queue, seen = [entity], 0
    while queue and seen < limits.max_entities:
        part, seen = queue.pop(0), seen + 1
        if part.get_content_maintype() == "message":
            continue
        if part.is_multipart():
            queue[:0] = _parts(part)
            continue
        yield part


def _content(entity: Message, limits: ReplyLimits
             ) -> tuple[list[bytes], list[dict[str, Any]], list[str]]:
    """The texts, the outcome documents and the problems of the JSON in the signed entity."""
    texts: list[bytes] = []
    documents: list[dict[str, Any]] = []
    problems: list[str] = []
    for part in _leaves(entity, limits):
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
        message = _parse(raw, limits, "message")
        ids, refs = _names_in(message, [], limits)
        found = replace(found, names=Naming(message_ids=ids, references=refs))
        ciphertext = _outer(message)
        try:
            opened = opener.open_blocking(ciphertext, max_output=limits.max_plaintext_bytes)
        except (GpgError, OSError, ValueError) as exc:
            raise _Refused("undecryptable", str(exc)[:200]) from None
        found = replace(found, reason="bad_signature")
        inner = _parse(opened.plaintext, limits, "decrypted message")
        form: Form = "combined"
        entity, signers = inner, []
        if opened.signatures:
            signers.append(_signer(opened.signatures, pinned))
        if inner.get_content_type() == "multipart/signed":
            signed, signature = _signed_part(opened.plaintext, inner)
            try:
                detached = opener.verify_detached_blocking(signed, signature)
            except (GpgError, OSError, ValueError) as exc:
                raise _Refused("bad_signature", f"cannot verify: {type(exc).__name__}") from None
            if not detached:  # gpg found no detached signature over these bytes
                raise _Refused("bad_signature", "multipart/signed with no signature gpg checks")
            signers.append(_signer(detached, pinned))
            entity, form = _parse(signed, limits, "signed part"), "nested"
        if not signers:
            raise _Refused("unsigned", "encrypted, but not signed")
        if len(set(signers)) > 1:
            raise _Refused("bad_signature", "signed by different keys inside and outside")
        found = replace(found, reason="bad_document", signer=signers[0], form=form)
        texts, documents, problems = _content(entity, limits)
    except _Refused as refused:
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
                      problems=tuple(problems))
    if not names.any:
        return replace(verdict, trusted=False, reason="no_referral_named",
                       detail="names no referral (In-Reply-To, References or a reference)")
    if problems:
        return replace(verdict, reason="bad_document",
                       detail="its JSON is not a valid outcome/v1 document")
    return verdict


def read_reply_blocking(raw: bytes, opener: Opener, pinned: Collection[str], *,
                        limits: ReplyLimits = DEFAULT_LIMITS) -> Verdict:
    """The verdict on a received reply (``raw``: the message as received); never raises on
    what the message holds. Blocking (gpg): call it from a worker thread. ``pinned``: the
    destinations' key fingerprints."""
    return _read(raw, opener, frozenset(_fingerprint(k) for k in pinned), limits)


async def read_reply(raw: bytes, opener: Opener, pinned: Collection[str], *,
                     executor: Executor, limits: ReplyLimits = DEFAULT_LIMITS) -> Verdict:
    """``read_reply_blocking`` in ``executor``, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        executor, partial(read_reply_blocking, raw, opener, pinned, limits=limits))
