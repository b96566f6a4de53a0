"""A report made on the web (the form or the JSON API): validated, stored, normalised.

What is stored is a small JSON document (``hotline-gateway/web-report/v1``) with what the
reporter typed; the normalise stage reads it back into URLs and text, as it does e-mail.
Validation returns every problem at once, by field, so that the form and the API can show
them all; nothing is stored unless the whole report is valid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.store.text import plain_text
from intake.hosts import visitable_host
from intake.urls import FoundUrl, extract_urls

SCHEMA = "hotline-gateway/web-report/v1"
MAX_URLS = 20
MAX_URL = 2048
MAX_DESCRIPTION = 5000
MAX_SEEN_WHERE = 500
MAX_EMAIL = 254
_EMAIL = re.compile(r"[^@\s<>\"(),;:\\\[\]]{1,64}@[^@\s<>\"(),;:\\\[\]]+\.[^@\s<>\"(),;:\\\[\]]+")


# The full stops UTS #46 maps to "." (ideographic, fullwidth, halfwidth ideographic), as a
# browser's address bar does in a host name. Free text cannot: there "。" ends a sentence.
_HOST_DOTS = str.maketrans("\u3002\uff0e\uff61", "...")
_HOST_END = re.compile(r"[/?#]")


def _host_dots(text: str) -> str:
    """``text`` with the full stops of its host part (after any ``scheme://``) as dots."""
    start = text.find("://")
    start = 0 if start < 0 else start + 3
    end = _HOST_END.search(text, start)
    stop = len(text) if end is None else end.start()
    return text[:start] + text[start:stop].translate(_HOST_DOTS) + text[stop:]


def field_urls(text: str) -> list[FoundUrl]:
    """The URL in a field meant for one: as free text would find it, or, when that finds
    nothing (a bare host whose suffix free text does not trust, say), with http:// before
    it. Its host may be written with ideographic full stops, as a browser takes it."""
    if not text.isascii():
        text = _host_dots(text)
    found = extract_urls(text, limit=1)
    candidate = text.strip()
    if not found and "://" not in candidate and not any(c.isspace() for c in candidate):
        prefixed = "http://" + candidate
        found = [u for u in extract_urls(prefixed, limit=1) if u.text == prefixed]
    return found


# One web address as a browser shows it: http(s), a dotted host name whose top label is
# alphabetic, then perhaps a path, query or fragment of printable ASCII. Extraction finds a URL
# in such a field exactly when its host is one a person could visit
# (test_a_plain_address_is_a_url_as_extraction_finds_it), and this pattern with that one test
# says so at a tenth of the cost: what the form and the API are sent, mostly.
_PLAIN_URL = re.compile(
    r"[hH][tT][tT][pP][sS]?://(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63})(?:[/?#][!-~]*)?"
)
# C0 and C1 controls, DEL and the Unicode line and paragraph separators: a field holding one is
# a URL torn apart or glued together, never one to file as it reads (extraction would end the
# URL there and file its first half).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def holds_url(text: str) -> bool:
    """Whether ``field_urls(text)`` finds a URL in ``text`` (stripped)."""
    # Extraction passes over a span longer than it takes; a field's URL is far shorter.
    if len(text) <= MAX_URL and (plain := _PLAIN_URL.fullmatch(text)) is not None:
        return visitable_host(plain["host"].lower())
    return bool(field_urls(text))


@dataclass(frozen=True, slots=True)
class WebReport:
    urls: tuple[str, ...]
    description: str | None = None
    seen_where: str | None = None
    email: str | None = None
    language: str = "en"

    def to_bytes(self) -> bytes:
        """The stored form: stable JSON, so the same report gives the same bytes."""
        document = {"schema": SCHEMA, "urls": list(self.urls), "description": self.description,
                    "seen_where": self.seen_where,
                    "reporter": {"email": self.email} if self.email else None,
                    "language": self.language}
        return json.dumps(document, sort_keys=True, ensure_ascii=False).encode("utf-8")


class Invalid(Exception):
    """The report cannot be stored; ``fields`` holds a message key per field."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(", ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _text(value: object, field: str, limit: int, errors: dict[str, str]) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        errors[field] = "not_text"
        return None
    if len(value) > limit or not plain_text(value):
        errors[field] = "too_long" if len(value) > limit else "not_text"
        return None
    return value.strip()


def validate(urls: object, description: object = None, seen_where: object = None,
             email: object = None, consent: object = False, language: str = "en", *,
             blank_urls: bool = True) -> WebReport:
    """A valid report, or ``Invalid`` naming every field that is not (message keys, which the
    form translates and the API returns as they are)."""
    errors: dict[str, str] = {}
    given: list[str] = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        errors["urls"] = "not_a_list"
    else:
        given = [u.strip() for u in urls if u.strip()]
        blanks = [index for index, url in enumerate(urls) if not url.strip()]
        if blanks and not blank_urls:  # the API: every entry is a URL (the form skips blanks)
            errors.update({f"urls[{index}]": "required" for index in blanks})
        elif not given:
            errors["urls"] = "required"
        elif len(given) > MAX_URLS:
            errors["urls"] = "too_many"
        else:
            for index, url in enumerate(given):
                if len(url) > MAX_URL or not plain_text(url):
                    errors[f"urls[{index}]"] = "too_long" if len(url) > MAX_URL else "not_url"
                elif _CONTROL.search(url) or not holds_url(url):
                    errors[f"urls[{index}]"] = "not_url"
    text = _text(description, "description", MAX_DESCRIPTION, errors)
    where = _text(seen_where, "seen_where", MAX_SEEN_WHERE, errors)
    address = _text(email, "email", MAX_EMAIL, errors)
    if address is not None and not _EMAIL.fullmatch(address):
        errors["email"] = "not_email"
    if address is not None and consent is not True:
        errors["consent"] = "consent_needed"
    if errors:
        raise Invalid(errors)
    return WebReport(tuple(given), text, where, address, language)


@dataclass(frozen=True, slots=True)
class ReadBack:
    urls: list[str]
    text: str | None


def read_back(raw: bytes) -> ReadBack:
    """The stored document back into URL texts and the reporter's words (ValueError if it is
    not one of ours)."""
    document: Any = json.loads(raw.decode("utf-8"))
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError("not a web report")
    urls = [u for u in document.get("urls") or [] if isinstance(u, str)]
    parts = [f"{label}: {document[key]}" for key, label in
             (("seen_where", "Seen on"), ("description", "Description"))
             if isinstance(document.get(key), str) and document[key]]
    return ReadBack(urls, "\n\n".join(parts) or None)
