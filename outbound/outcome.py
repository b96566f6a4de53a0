"""The outcome: a small JSON document (``hotline-gateway/outcome/v1``) that a destination sends
back about one referral, inside a signed and encrypted reply (see ``outbound.replies``).

The schema ships beside this module (``schema/outcome-v1.json``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from outbound import schemas

SCHEMA_ID = "hotline-gateway/outcome/v1"
Outcome = Literal["acknowledged", "removed", "content_unavailable", "not_actionable"]
OUTCOMES: tuple[Outcome, ...] = ("acknowledged", "removed", "content_unavailable",
                                 "not_actionable")


def schema() -> dict[str, Any]:
    """The JSON Schema that every outcome document satisfies."""
    return schemas.load("outcome-v1")


def outcome_document(
    *, reference: str, outcome: Outcome, occurred_at: datetime, reason: str | None = None,
    their_reference: str | None = None, note: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The document; ``occurred_at`` must be aware (it is written as RFC 3339 with its offset).
    Raises ValueError when the result would not satisfy the schema."""
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    document: dict[str, Any] = {
        "schema": SCHEMA_ID, "reference": reference, "outcome": outcome,
        "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
    }
    optional = {"reason": reason, "their_reference": their_reference, "note": note}
    document.update({name: value for name, value in optional.items() if value is not None})
    if problems := problems_of(document):
        raise ValueError(f"not an outcome/v1 document: {'; '.join(problems)}")
    return document


def problems_of(document: object) -> list[str]:
    """Why ``document`` is not a valid outcome/v1 document (empty: it is). Each problem names
    the field and the rule it breaks, never the value (values come from outside)."""
    problems = schemas.problems("outcome-v1", document)
    if not problems and isinstance(document, dict):
        # The schema's pattern is the RFC 3339 shape; this finds impossible dates in it.
        try:
            datetime.fromisoformat(str(document["occurred_at"]).upper().replace("Z", "+00:00"))
        except ValueError:
            problems.append("occurred_at: not a real time")
    return sorted(problems)
