"""Verdicts and overrides: real DNS answers, real .mmdb lookups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import LocateOverride
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides, host_of
from routing.resolve import HostResolver
from tests.dns_server import DnsServer


def make_locator(
    dns: DnsServer, mmdb: dict[str, Path] | None, overrides: list[dict[str, Any]] | None = None,
    cdn_asns: tuple[int, ...] = (13335, 16509),
) -> Locator:
    geo = (open_geolocator(mmdb["country"], mmdb["asn"]) if mmdb
           else open_geolocator("builtin", "builtin"))
    rules = [LocateOverride.model_validate(r, strict=False) for r in overrides or []]
    return Locator(HostResolver([dns.address], timeout=1.0), geo,
                   overrides=Overrides(rules), cdn_asns=cdn_asns)


async def test_every_address_in_one_country_is_located(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    hosting = await make_locator(dns, mmdb).locate("nl.test")
    assert (hosting.status, hosting.country, hosting.asn, hosting.org) == (
        "located", "NL", 1103, "SURF B.V.")
    assert (hosting.cdn, hosting.source, hosting.outcome) == (False, "geoip", "answer")
    assert hosting.ips == ["145.100.1.1", "2001:610::1"]
    assert [a["country"] for a in hosting.addresses] == ["NL", "NL"]
    assert hosting.databases["country"]["name"].startswith("Test-Country")
    assert {r["type"] for r in hosting.records} == {"A", "AAAA"}


async def test_addresses_in_different_countries_are_mixed(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    hosting = await make_locator(dns, mmdb).locate("mixed.test")
    assert hosting.status == "mixed" and hosting.country is None
    assert {a["ip"]: a["country"] for a in hosting.addresses} == {
        "145.100.1.2": "NL", "193.190.1.2": "BE"}


async def test_an_address_of_a_cdn_makes_it_cdn(dns: DnsServer, mmdb: dict[str, Path]) -> None:
    hosting = await make_locator(dns, mmdb).locate("cdn.test")
    assert (hosting.status, hosting.cdn, hosting.asn, hosting.country) == (
        "cdn", True, 13335, None)
    assert hosting.addresses[0]["cdn"] == "AS13335"
    # Not a CDN when the operator does not list its AS.
    plain = await make_locator(dns, mmdb, cdn_asns=(16509,)).locate("cdn.test")
    assert (plain.status, plain.country) == ("located", "US")


async def test_the_builtin_data_finds_cdns_by_organisation(dns: DnsServer) -> None:
    dns.zone.add("cf.test", "A", "104.16.132.229")
    hosting = await make_locator(dns, None).locate("cf.test")
    assert hosting.status == "cdn" and hosting.asn is None and hosting.org == "CLOUDFLARENET"
    assert hosting.addresses[0]["cdn"] == "organisation CLOUDFLARENET (AS13335)"
    assert hosting.databases["country"]["built"] == "2024-06-18"


@pytest.mark.parametrize(("host", "outcome"), [("nowhere.test", "nxdomain"),
                                               ("noaddr.test", "no_answer")])
async def test_no_address_is_unresolvable(
    dns: DnsServer, mmdb: dict[str, Path], host: str, outcome: str
) -> None:
    hosting = await make_locator(dns, mmdb).locate(host)
    assert (hosting.status, hosting.outcome, hosting.ips) == ("unresolvable", outcome, [])


async def test_a_failed_lookup_gives_no_verdict(dns: DnsServer, mmdb: dict[str, Path]) -> None:
    hosting = await make_locator(dns, mmdb).locate("broken.test")
    assert hosting.failed and hosting.country is None and "SERVFAIL" in (hosting.error or "")


async def test_a_host_with_only_private_addresses_is_unresolvable(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    dns.zone.add("sinkholed.test", "A", "0.0.0.0", "127.0.0.1")
    for host in ("private.test", "sinkholed.test"):
        hosting = await make_locator(dns, mmdb).locate(host)
        assert (hosting.status, hosting.country, hosting.error) == (
            "unresolvable", None, "no public address")
        assert hosting.addresses[0]["note"] == "not a public address"


async def test_a_private_address_beside_public_ones_is_left_out(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    dns.zone.add("half.test", "A", "145.100.7.7", "10.1.1.1")
    hosting = await make_locator(dns, mmdb).locate("half.test")
    assert (hosting.status, hosting.country) == ("located", "NL")
    assert len(hosting.addresses) == 2


async def test_an_address_no_database_places_makes_it_unknown(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    dns.zone.add("nowhere-known.test", "A", "8.8.8.8")
    dns.zone.add("partly-known.test", "A", "8.8.8.8", "145.100.3.3")
    for host in ("nowhere-known.test", "partly-known.test"):
        hosting = await make_locator(dns, mmdb).locate(host)
        assert (hosting.status, hosting.country) == ("unknown", None), host


async def test_ip_literal_hosts_are_located_without_dns(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    hosting = await make_locator(dns, mmdb).locate("193.190.7.7")
    assert (hosting.status, hosting.country, hosting.outcome) == ("located", "BE", "ip_literal")
    assert not dns.zone.queries


async def test_network_overrides_win_for_ipv4_and_ipv6(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    rules = [{"network": "145.100.0.0/16", "country": "BE"},
             {"network": "145.100.1.0/24", "country": "LU"},  # narrower: wins
             {"network": "2001:610::/32", "country": "LU"}]
    hosting = await make_locator(dns, mmdb, rules).locate("nl.test")
    assert (hosting.status, hosting.country, hosting.source) == ("located", "LU", "override")
    assert [(a["override"], a["source"]) for a in hosting.addresses] == [
        ("145.100.1.0/24", "override"), ("2001:610::/32", "override")]
    assert hosting.asn == 1103  # the AS is still what the database says


async def test_a_partial_network_override_is_recorded_per_address(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    rules = [{"network": "193.190.0.0/16", "country": "NL"}]
    hosting = await make_locator(dns, mmdb, rules).locate("mixed.test")
    assert (hosting.status, hosting.country, hosting.source) == ("located", "NL", "geoip")
    assert {a["ip"]: a["source"] for a in hosting.addresses} == {
        "145.100.1.2": "geoip", "193.190.1.2": "override"}


async def test_a_network_override_beats_the_cdn(dns: DnsServer, mmdb: dict[str, Path]) -> None:
    rules = [{"network": "104.16.1.0/24", "country": "BE"}]
    hosting = await make_locator(dns, mmdb, rules).locate("cdn.test")
    assert (hosting.status, hosting.country, hosting.cdn) == ("located", "BE", False)


async def test_domain_overrides_win_for_the_domain_and_its_subdomains(
    dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    locator = make_locator(dns, mmdb, [{"domain": "Example.BE.", "country": "BE"}])
    hosting = await locator.locate("www.example.be")
    assert (hosting.status, hosting.country, hosting.source) == ("located", "BE", "override")
    assert hosting.databases["override"] == {"domain": "example.be"}
    assert hosting.addresses[0]["country"] == "NL"  # what geolocation said, kept as evidence
    # Whatever the DNS says, even nothing at all.
    gone = await locator.locate("gone.example.be")
    assert (gone.status, gone.country, gone.outcome) == ("located", "BE", "nxdomain")
    assert (await locator.locate("notexample.be")).source != "override"


@pytest.mark.parametrize(
    ("url", "host"),
    [("http://www.example.be/a?b", "www.example.be"),
     ("http://[2001:db8::1]:8080/", "2001:db8::1"),
     ("http://user:pw@EXAMPLE.be./", "example.be"),
     ("http:///nohost", None), ("", None), ("http://[::1/", None)],
)
def test_host_of(url: str, host: str | None) -> None:
    assert host_of(url) == host


@given(st.text(max_size=200))
def test_host_of_never_raises(url: str) -> None:
    host_of(url)
    host_of("http://" + url)


@given(st.text(alphabet="abc.-", max_size=40))
def test_domain_rules_never_raise(host: str) -> None:
    rules = Overrides([LocateOverride.model_validate({"domain": "a.b", "country": "BE"},
                                                     strict=False)])
    found = rules.for_domain(host)
    assert found is None or host == "a.b" or host.endswith(".a.b")
