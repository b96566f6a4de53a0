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

The reason codes follow what hotlines and INHOPE's ICCAM record when a report is not acted on
(ICCAM's "not actionable" outcomes); ``other`` is for the rest, said in the note.
"""

from __future__ import annotations

#: Every outcome, in the order a referral usually meets them.
OUTCOMES = ("acknowledged", "removed", "content_unavailable", "not_actionable", "moved")
#: Outcomes that close a referral: nothing is recorded for it after one of these.
CLOSING = ("removed", "content_unavailable", "not_actionable", "moved")

#: Why a referral is ``not_actionable``: code → what it means.
NOT_ACTIONABLE_REASONS: dict[str, str] = {
    "not_illegal_in_country": "not illegal under the law of the destination's country",
    "not_found": "the destination could not find the content at the address given",
    "already_removed": "already removed before the destination acted (another notice)",
    "no_jurisdiction": "not hosted in the destination's jurisdiction",
    "duplicate": "already handled by the destination under another reference",
    "access_restricted": "behind a login or password: the destination cannot see it",
    "other": "another reason, given in the note",
}
