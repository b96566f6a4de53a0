"""The protocol table, rule by rule."""

from __future__ import annotations

import pytest

from routing.protocol import Facts, MembershipList, decide, no_key

MEMBERS = MembershipList.shipped()


def facts(verdict: str = "illegal", country: str | None = "NL", status: str = "located",
          hotlines: frozenset[str] = frozenset({"NL"}), members: MembershipList = MEMBERS
          ) -> Facts:
    return Facts(verdict=verdict, classification="baseline" if verdict == "illegal"
                 else "not_illegal", home_country="BE", country=country,
                 country_source="geoip" if country else None, hosting_status=status,
                 membership=members.get(country) if country else None, hotlines=hotlines)


@pytest.mark.parametrize(
    ("given", "rule", "outcome", "destination"),
    [
        (facts(verdict="legal"), "protocol-3-legal", "close", None),
        (facts(verdict="legal", country=None, status="cdn"), "protocol-3-legal", "close", None),
        (facts(country=None, status="cdn"), "hold-unknown-hosting", "hold", None),
        (facts(country=None, status="unresolvable"), "hold-unknown-hosting", "hold", None),
        (facts(country="BE"), "protocol-1-domestic", "refer", "police"),
        (facts(country="NL"), "protocol-2-inhope", "refer", "hotline:NL"),
        (facts(country="DE"), "protocol-2-iccam", "iccam", None),
        (facts(country="RU"), "protocol-2-police", "refer", "police_international"),
        (facts(country="CN"), "protocol-2-police", "refer", "police_international"),
    ],
)
def test_each_rule(given: Facts, rule: str, outcome: str, destination: str | None) -> None:
    decision = decide(given)
    assert (decision.rule, decision.outcome, decision.destination) == (rule, outcome, destination)
    assert decision.explanation and "\n" not in decision.explanation
    assert decision.facts["country"] == given.country


def test_the_decision_records_the_membership_data_it_used() -> None:
    decision = decide(facts(country="NL"))
    assert decision.facts["inhope_member"] is True
    assert decision.facts["membership_as_of"] == "2026-02"
    assert "INHOPE" in decision.facts["membership_source"]
    assert "as of 2026-02" in decision.explanation


def test_config_corrects_the_membership_list() -> None:
    corrected = MembershipList.shipped({"CA": False, "IS": True})
    assert MEMBERS.get("CA").member and not corrected.get("CA").member
    assert decide(facts(country="CA", members=corrected)).rule == "protocol-2-police"
    iceland = decide(facts(country="IS", members=corrected, hotlines=frozenset({"IS"})))
    assert iceland.rule == "protocol-2-inhope"
    assert iceland.facts["membership_source"].startswith("[routing.membership]")


def test_every_shipped_member_has_a_date_and_a_source() -> None:
    for code in ("BE", "NL", "US", "CA", "KH"):
        entry = MEMBERS.get(code)
        assert entry.member and entry.as_of and entry.source
    assert MEMBERS.get("CA").note and "2026" in (MEMBERS.get("CA").note or "")
    assert not MEMBERS.get("CN").member


def test_no_key_holds_and_keeps_what_was_decided() -> None:
    held = no_key(decide(facts(country="BE")), ["expired 2026-01-01"])
    assert (held.rule, held.outcome, held.destination) == ("hold-no-key", "hold", "police")
    assert held.facts["routed_by"] == "protocol-1-domestic"
    assert "never sent in clear" in held.explanation
