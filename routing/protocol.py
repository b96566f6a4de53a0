"""The protocol table: where an assessed case goes, as small named rules tried in order.

- ``protocol-3-legal``: the verdict is legal: closed, nothing sent;
- ``hold-unknown-hosting``: no country (unresolvable, mixed, unknown, or a CDN with no
  origin): held until an analyst sets the country;
- ``protocol-1-domestic``: hosted in the home country: the national police;
- ``protocol-2-inhope``: hosted in an INHOPE member country whose hotline receives by e-mail:
  that hotline;
- ``protocol-2-iccam``: a member country without an e-mail destination: an analyst refers
  through ICCAM by hand;
- ``protocol-2-police``: hosted abroad, not a member: the police's international desk.

(``hold-no-key``, a destination whose key cannot be used, is decided where keys are checked;
``hold-route-error``, routing itself failed for the case, and ``hold-damaged``, what the case
holds does not open (``SealBroken``), by the stage that routes.)
Each decision carries its rule id, the facts it used and a one-line explanation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class Membership:
    member: bool
    as_of: str
    source: str
    note: str | None = None


class MembershipList:
    """Which countries have an INHOPE member hotline: the shipped data, corrected by config."""

    def __init__(self, countries: Mapping[str, Membership], as_of: str) -> None:
        self._countries = dict(countries)
        self.as_of = as_of

    @classmethod
    def shipped(cls, corrections: Mapping[str, bool] | None = None,
                partners: Iterable[str] = ()) -> MembershipList:
        """The shipped list; a country with a configured partner hotline counts as a member
        (the operator knows it is one), unless a correction says otherwise."""
        listed = cls._shipped(corrections)
        for code in partners:
            if not listed.get(code).member and code not in (corrections or {}):
                listed._countries[code] = Membership(
                    True, "config", "[routing.hotlines] in config.toml")
        return listed

    @classmethod
    def _shipped(cls, corrections: Mapping[str, bool] | None) -> MembershipList:
        data = json.loads(
            (resources.files("routing") / "data" / "inhope.json").read_text("utf-8"))
        countries = {code: Membership(bool(entry["member"]), entry["as_of"], entry["source"],
                                      entry.get("note"))
                     for code, entry in data["countries"].items()}
        for code, member in (corrections or {}).items():
            countries[code] = Membership(member, "config", "[routing.membership] in config.toml")
        return cls(countries, data["as_of"])

    def get(self, country: str) -> Membership:
        return self._countries.get(country) or Membership(
            False, self.as_of, "not in the membership list")


@dataclass(frozen=True, slots=True)
class Facts:
    """What a decision is made from, recorded with it."""

    verdict: str
    classification: str
    home_country: str
    country: str | None  # None: unknown
    country_source: str | None  # "analyst", "geoip" or "override"
    hosting_status: str | None
    evidence_id: str | None = None
    evidence_checked_at: str | None = None
    membership: Membership | None = None
    hotlines: frozenset[str] = field(default_factory=frozenset)  # countries with e-mail

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "verdict": self.verdict, "classification": self.classification,
            "home_country": self.home_country, "country": self.country,
            "country_source": self.country_source, "hosting_status": self.hosting_status,
            "evidence_id": self.evidence_id, "evidence_checked_at": self.evidence_checked_at,
        }
        if self.membership is not None:
            document["inhope_member"] = self.membership.member
            document["membership_as_of"] = self.membership.as_of
            document["membership_source"] = self.membership.source
        return document


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a case goes: the rule that matched, its outcome, and the facts it used."""

    rule: str
    outcome: str  # refer | iccam | hold | close
    destination: str | None
    explanation: str
    facts: dict[str, Any]


Rule = tuple[str, Callable[[Facts], bool], Callable[[Facts], tuple[str, str | None, str]]]

RULES: list[Rule] = [
    ("protocol-3-legal", lambda f: f.verdict == "legal",
     lambda f: ("close", None, f"assessed legal ({f.classification}): closed, nothing sent")),
    ("hold-unknown-hosting", lambda f: f.country is None,
     lambda f: ("hold", None, f"hosting is {f.hosting_status or 'not located'}: an analyst "
                              "must set the hosting country")),
    ("protocol-1-domestic", lambda f: f.country == f.home_country,
     lambda f: ("refer", "police", f"hosted in {f.country}, the home country: national "
                                   "police")),
    ("protocol-2-inhope",
     lambda f: f.membership is not None and f.membership.member and f.country in f.hotlines,
     lambda f: ("refer", f"hotline:{f.country}", f"hosted in {f.country}, an INHOPE member "
                                                 f"(as of {_as_of(f)}): its hotline")),
    ("protocol-2-iccam", lambda f: f.membership is not None and f.membership.member,
     lambda f: ("iccam", None, f"hosted in {f.country}, an INHOPE member (as of {_as_of(f)}) "
                               "with no e-mail destination: refer through ICCAM by hand")),
    ("protocol-2-police", lambda f: True,
     lambda f: ("refer", "police_international", f"hosted in {f.country}, not an INHOPE "
                                                 f"member (as of {_as_of(f)}): police "
                                                 "international desk")),
]


def _as_of(facts: Facts) -> str:
    return facts.membership.as_of if facts.membership is not None else "unknown"


def decide(facts: Facts) -> RoutingDecision:
    """The first rule that matches."""
    for rule, matches, result in RULES:
        if matches(facts):
            outcome, destination, explanation = result(facts)
            return RoutingDecision(rule, outcome, destination, explanation, facts.to_json())
    raise AssertionError("the last rule matches everything")


def no_key(decision: RoutingDecision, problems: list[str]) -> RoutingDecision:
    """``hold-no-key``: the destination's key cannot be used; never sent in clear."""
    return RoutingDecision("hold-no-key", "hold", decision.destination,
                    f"{decision.destination}: no usable key ({'; '.join(problems)}); "
                    "held, never sent in clear",
                    {**decision.facts, "routed_by": decision.rule, "key_problems": problems})
