"""The outcomes a referral can have, and the reason codes of ``not_actionable``: one list for the
console, the API, the store and the readers of destinations' replies.

What each outcome means, as the hotline records it (an analyst, or the destination's verified
reply):

- ``acknowledged``: the destination has the referral and is dealing with it;
- ``removed``: the content went down after the referral (``occurred_at``: when);
- ``content_unavailable``: the content could not be reached when the destination looked (gone
  or unreachable, not known to be removed because of the referral);
- ``not_actionable``: the destination will not or cannot act, for the reason its code gives;
- ``moved``: the content is now hosted elsewhere (a re-check of the hosting, or the
  destination, says so): the case is to be routed again.

The reason codes are one vocabulary with the assessment's: those a destination gives when it
does not act (ICCAM's "not actionable" outcomes: not illegal there, not found, already removed,
not its jurisdiction, a duplicate, access restricted), and every reason an analyst records for a
legal verdict (``gateway.store.classification.REASONS``: adult pornography, age unclear, child
nudism, password protected, not CSAM; ``not_found`` and ``other`` are in both). So a partner is
told our assessment's own code, and a destination's reply saying one is recorded as that code,
not as ``other``. ``other`` is for the rest, said in the note. Codes are only ever added (they
are stored, and sent in outcome/v1 documents).
"""

from __future__ import annotations

from gateway.store.classification import REASONS as ASSESSMENT_REASONS

#: Every outcome, in the order a referral usually meets them.
OUTCOMES = ("acknowledged", "removed", "content_unavailable", "not_actionable", "moved")
#: Outcomes that close a referral: nothing is recorded for it after one of these.
CLOSING = ("removed", "content_unavailable", "not_actionable", "moved")

#: What a destination says when it does not act (``other`` comes last, below).
_DESTINATION_REASONS: dict[str, str] = {
    "not_illegal_in_country": "not illegal under the law of the destination's country",
    "not_found": "the destination could not find the content at the address given",
    "already_removed": "already removed before the destination acted (another notice)",
    "no_jurisdiction": "not hosted in the destination's jurisdiction",
    "duplicate": "already handled by the destination under another reference",
    "access_restricted": "behind a login or password: the destination cannot see it",
}
OTHER = "other"
#: Why a referral is ``not_actionable``: code → what it means. The destination's reasons, then
#: the assessment's (those not already there), then ``other``.
NOT_ACTIONABLE_REASONS: dict[str, str] = {
    **_DESTINATION_REASONS,
    **{code: label for code, label in ASSESSMENT_REASONS.items()
       if code not in _DESTINATION_REASONS and code != OTHER},
    OTHER: "another reason, given in the note",
}
