"""The referral: a JSON document (``hotline-gateway/referral/v1``) and a short text summary,
wrapped in one MIME message that is then encrypted whole (see ``outbound.pgpmime``).

The schema ships beside this module (``schema/referral-v1.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from gateway.store.classification import labels
from gateway.store.text import defang
from outbound import schemas

SCHEMA_ID = "hotline-gateway/referral/v1"
#: What a referral carries of an illegal verdict's details, under these names.
ILLEGAL_DETAILS = ("age_group", "gender", "media", "site_type", "content_flags")


def schema() -> dict[str, Any]:
    """The JSON Schema that every referral document satisfies."""
    return schemas.load("referral-v1")


def problems_of(document: object) -> list[str]:
    """Why ``document`` is not a valid referral/v1 document (empty: it is). Each problem names
    the field and the rule it breaks, never the value (values come from outside)."""
    return schemas.problems("referral-v1", document)


def referral_document(
    *, reference: str, created: str, rule: str, destination: str, hotline: str,
    home_country: str, case: dict[str, Any], classification: str, assessed_at: str | None,
    hosting: dict[str, Any], hashes: list[dict[str, str]],
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document, from a case as the case view shows it and the routing facts.
    ``details`` are the verdict's ICCAM details (``gateway.store.classification``): each
    recorded one goes in the case, optional in the schema, so a document without them is the
    same as before."""
    recorded = {name: value for name, value in (details or {}).items()
                if name in ILLEGAL_DETAILS and value is not None}
    return {
        "schema": SCHEMA_ID, "reference": reference, "created": created, "rule": rule,
        "destination": destination,
        "from": {"hotline": hotline, "country": home_country},
        "case": {
            "id": case["id"], "url": case["url"], "canonical_url": case["canonical_url"],
            "first_reported": case["first_reported"], "last_reported": case["last_reported"],
            "report_count": case["report_count"], "classification": classification,
            **recorded, "assessed_at": assessed_at, "hosting": hosting, "hashes": hashes,
        },
    }


def summary(document: dict[str, Any]) -> str:
    """A few lines for whoever opens the message; the JSON beside it is authoritative."""
    case, hosting = document["case"], document["case"]["hosting"]
    where = hosting["country"] + (f", AS{hosting['asn']}" if hosting.get("asn") else "") + (
        f" ({hosting['org']})" if hosting.get("org") else "") + (
        f", addresses {', '.join(hosting['ips'])}" if hosting.get("ips") else "")
    return "\n".join([
        f"Referral {document['reference']} from {document['from']['hotline']} "
        f"({document['from']['country']}), under rule {document['rule']}.",
        "",
        f"URL (defanged): {defang(case['url'])}",
        f"Classification: {case['classification']}"
        + (f" ({'; '.join(details)})" if (details := labels(case)) else ""),
        f"Hosting: {where}; checked {hosting.get('checked_at') or 'by an analyst'}",
        f"Reported {case['report_count']} time(s), first on {case['first_reported']}.",
        f"Attachment hashes: {len(case['hashes'])}.",
        "",
        f"The attached JSON document ({SCHEMA_ID}) holds the details.",
        "Please do not reply with content; reply with your reference for this case.",
        "",
    ])


def inner_message(document: dict[str, Any]) -> bytes:
    """The MIME message that gets encrypted: the summary and the JSON document."""
    message = EmailMessage(policy=SMTP)
    message.set_content(summary(document), charset="utf-8")
    body = json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    message.add_attachment(body, maintype="application", subtype="json",
                           filename=f"referral-{document['reference']}.json")
    return message.as_bytes(policy=SMTP)
