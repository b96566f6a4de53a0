"""What an assessment records beside its verdict, as ICCAM records it: for an illegal verdict
the victims' age group and gender, the media, the site type and three content flags; for a
legal one the reason. One vocabulary, code to label, for the console, the API, the database,
the referral document (``outbound/schema/referral-v1.json`` lists the same codes) and the
statistics: codes are stored plain, so that counts can filter on them.

Sources. The site types are INHOPE's, as its member hotlines record them in ICCAM. The list
found that names and defines them all is INHOPE's article "Site types used to share CSAM
online" (https://www.inhope.org/EN/articles/site-types-used-to-share-csam-online;
undated, it gives the breakdown of INHOPE's 2020 Annual Report): website, image host, file
host, forum, image store, banner site, link site, social networking site, blog, search
provider, redirector and web archive, each a code here. The newest figures found, INHOPE's
"The Facts" page (https://www.inhope.org/EN/the-facts, 2023 data), count 10 site types in
2023 but name only the three largest (website, image host, forum: all here); no later list
naming every type was found (searched 2026-12-03), so none was added or renamed from it.
``video_channel`` and ``chat`` are this gateway's additions for platforms the 2020 list does
not name, and ``other`` is for anything else. Codes are only ever added, never removed or
renamed (they are stored): a type INHOPE renames keeps its code and gets the new label. The
age groups and genders are those INHOPE's published statistics use (inhope.org "The Facts"
and the annual reports: infant/toddler, pre-pubescent, pubescent; girls, boys, both). The
media and the reason codes are this gateway's own; the reasons are outcome reason codes too
(``gateway.store.outcome_codes``), so a partner is told the reason of our legal verdict. The
lists are fixed in code, not configurable: adding a code is a change here and in the shipped
schema, which a test keeps in step.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

AGE_GROUPS = {
    "infant_toddler": "infant or toddler",
    "pre_pubescent": "pre-pubescent",
    "pubescent": "pubescent",
}
GENDERS = {"female": "female", "male": "male", "both": "both", "unknown": "unknown"}
MEDIA = {"images": "images", "video": "video", "both": "images and video", "other": "other"}
SITE_TYPES = {
    "website": "website",
    "image_host": "image host",
    "file_host": "file host",
    "forum": "forum",
    "image_store": "image store (image board)",
    "banner_site": "banner site",
    "link_site": "link site",
    "social_network": "social networking site",
    "blog": "blog",
    "search_provider": "search provider",
    "redirector": "redirector",
    "web_archive": "web archive",
    "video_channel": "video channel",
    "chat": "chat",
    "other": "other",
}
#: Flags of an illegal verdict, each stored as a boolean column of the same name.
CONTENT_FLAGS = {
    "computer_generated": "computer-generated or virtual",
    "self_generated": "self-generated",
    "commercial": "commercial",
}
#: Why a report was assessed legal (not actionable for this hotline).
REASONS = {
    "adult_pornography": "adult pornography",
    "age_unclear": "the age cannot be established",
    "child_nudism": "child nudity, not sexual",
    "not_found": "content not found (gone, or never there)",
    "password_protected": "behind a password or login",
    "not_csam": "other content, not child sexual abuse material",
    "other": "other (say why in the note)",
}

#: Each coded field, with its codes and the verdict it belongs to.
CODES: dict[str, dict[str, str]] = {
    "age_group": AGE_GROUPS, "gender": GENDERS, "media": MEDIA, "site_type": SITE_TYPES,
    "reason": REASONS,
}
VERDICT_OF = {"age_group": "illegal", "gender": "illegal", "media": "illegal",
              "site_type": "illegal", "content_flags": "illegal", "reason": "legal"}
#: Field names ``[assessment] require`` may list (the flags are yes/no: never missing).
REQUIRABLE = tuple(CODES)
#: Required unless configured otherwise: enough for INHOPE's statistics by age, media and
#: site type, and a reason for every report not acted on.
DEFAULT_REQUIRE = ("age_group", "media", "site_type", "reason")
#: Every field an assessment body may carry for its classification.
FIELDS = (*CODES, "content_flags")


def _one_of(codes: Collection[str]) -> str:
    return "one of " + ", ".join(f'"{c}"' for c in codes)


@dataclass(frozen=True, slots=True)
class Classification:
    """The coded details of one verdict (None: not recorded)."""

    age_group: str | None = None
    gender: str | None = None
    media: str | None = None
    site_type: str | None = None
    content_flags: frozenset[str] = field(default_factory=frozenset)
    reason: str | None = None

    @classmethod
    def parse(cls, body: Mapping[str, object], verdict: object, *,
              require: Collection[str]) -> tuple[Classification, dict[str, str]]:
        """From a request body, with every bad field named: a code not in the list, a field
        of the other verdict, a field ``require``\\ d for this verdict that is missing."""
        errors: dict[str, str] = {}
        values: dict[str, str] = {}
        for name, codes in CODES.items():
            value = body.get(name)
            belongs = VERDICT_OF[name]
            if value in (None, ""):
                if name in require and verdict == belongs:
                    errors[name] = f"required with verdict {belongs!r}: {_one_of(codes)}"
            elif not isinstance(value, str) or value not in codes:
                errors[name] = _one_of(codes)
            elif verdict in ("illegal", "legal") and verdict != belongs:
                errors[name] = f"only with verdict {belongs!r}"
            else:
                values[name] = value
        flags = body.get("content_flags")
        chosen: frozenset[str] = frozenset()
        if flags is None:
            pass
        elif not isinstance(flags, list) or not all(
                isinstance(f, str) and f in CONTENT_FLAGS for f in flags):
            errors["content_flags"] = "a list of " + ", ".join(f'"{c}"' for c in CONTENT_FLAGS)
        elif flags and verdict == "legal":
            errors["content_flags"] = "only with verdict 'illegal'"
        else:
            chosen = frozenset(flags)
        return cls(**values, content_flags=chosen), errors

    def columns(self, verdict: str) -> dict[str, Any]:
        """The ``assessments`` columns for this verdict (flags are None for a legal one)."""
        illegal = verdict == "illegal"
        return {"age_group": self.age_group, "gender": self.gender, "media": self.media,
                "site_type": self.site_type, "reason": self.reason,
                **{flag: (flag in self.content_flags) if illegal else None
                   for flag in CONTENT_FLAGS}}

    def as_json(self, verdict: str) -> dict[str, Any]:
        """As audit details show it: the fields of this verdict only."""
        if verdict == "illegal":
            return {"age_group": self.age_group, "gender": self.gender, "media": self.media,
                    "site_type": self.site_type,
                    "content_flags": [f for f in CONTENT_FLAGS if f in self.content_flags]}
        return {"reason": self.reason}


def labels(shown: Mapping[str, Any]) -> list[str]:
    """The details of an assessment as the API shows it, in words, for staff to read."""
    found = [f"{name.replace('_', ' ')}: {CODES[name].get(shown[name], shown[name])}"
             for name in CODES if shown.get(name)]
    return found + [CONTENT_FLAGS.get(f, f) for f in shown.get("content_flags") or ()]


def recorded(row: Any) -> dict[str, Any]:
    """A stored assessment's coded details, as the API shows them; ``content_flags`` is None
    where no flag was recorded (a legal verdict, or one from before these fields)."""
    flags = {flag: getattr(row, flag) for flag in CONTENT_FLAGS}
    return {
        "age_group": row.age_group, "gender": row.gender, "media": row.media,
        "site_type": row.site_type,
        "content_flags": None if all(v is None for v in flags.values())
        else [flag for flag, on in flags.items() if on],
        "reason": row.reason,
    }
