"""Where is it hosted? One host's lookup, geolocation and verdict, as one piece of evidence.

The verdict (``status``):

- ``located``: every address agrees on one country (or an operator override names it);
- ``cdn``: an address belongs to a configured CDN's AS: the country of the origin is unknown;
- ``mixed``: the addresses disagree (round robin across countries, fast flux);
- ``unknown``: the addresses are public but no database knows the country of (some of) them;
- ``unresolvable``: the name does not exist, or has no public address (a sinkhole's
  ``127.0.0.1`` is evidence, not a place);
- ``failed``: the lookup failed (SERVFAIL, timeout); it says nothing about the hosting and is
  tried again.

Operator overrides (by domain, or by network per address) beat the databases, and the evidence
says so (``source = "override"``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from routing.geo import BUILTIN_AS_NAMES, Geolocator, IpFacts
from routing.resolve import HostResolver, Resolution

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_of(url: str | None) -> str | None:
    """The host of a canonical URL (lowercase; brackets of an IPv6 literal removed)."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".") or None if host else None


class Overrides:
    """The operator's ``[[locate.override]]`` rules: the most specific one wins."""

    def __init__(self, rules: Iterable[Any]) -> None:
        self._domains: dict[str, str] = {}
        networks: list[tuple[IPNetwork, str]] = []
        for rule in rules:
            if rule.domain is not None:
                self._domains[rule.domain] = rule.country
            else:
                networks.append((rule.network, rule.country))
        # Longest prefix first.
        self._networks = sorted(networks, key=lambda item: -item[0].prefixlen)

    def for_domain(self, host: str) -> tuple[str, str] | None:
        """``(domain, country)`` of the rule for ``host`` or its nearest parent domain."""
        labels = host.split(".")
        for start in range(len(labels)):
            domain = ".".join(labels[start:])
            if domain in self._domains:
                return domain, self._domains[domain]
        return None

    def for_address(self, address: str) -> tuple[str, str] | None:
        """``(network, country)`` of the narrowest rule covering ``address``."""
        ip = ipaddress.ip_address(address)
        for network, country in self._networks:
            if ip.version == network.version and ip in network:
                return str(network), country
        return None


@dataclass(frozen=True, slots=True)
class HostingEvidence:
    """One lookup and its verdict: a row of hosting evidence."""

    host: str
    checked_at: datetime
    resolver: str
    outcome: str
    status: str
    country: str | None = None
    asn: int | None = None
    org: str | None = None
    cdn: bool = False
    source: str | None = None
    ips: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    addresses: list[dict[str, Any]] = field(default_factory=list)
    databases: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: Once stored: the id of its hosting evidence row.
    evidence_id: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


class Locator:
    """Resolves a host, geolocates its addresses and gives the verdict."""

    def __init__(
        self,
        resolver: HostResolver,
        geo: Geolocator,
        *,
        overrides: Overrides,
        cdn_asns: Iterable[int],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.resolver = resolver
        self._geo = geo
        self._overrides = overrides
        self._cdn_asns = frozenset(cdn_asns)
        self._cdn_names = {
            name: number for number in self._cdn_asns for name in BUILTIN_AS_NAMES.get(number, ())
        }
        self._clock = clock
        self._databases = geo.databases()

    def reconfigure(self, overrides: Overrides, cdn_asns: Iterable[int]) -> None:
        """New operator overrides and CDN list (a reload), for the next lookup."""
        self._overrides = overrides
        self._cdn_asns = frozenset(cdn_asns)
        self._cdn_names = {
            name: number for number in self._cdn_asns for name in BUILTIN_AS_NAMES.get(number, ())
        }

    async def locate(self, host: str, *, fresh: bool = False) -> HostingEvidence:
        resolution = await self.resolver.resolve(host, fresh=fresh)
        return self.judge(resolution)

    def _cdn_match(self, facts: IpFacts) -> str | None:
        if facts.asn is not None:
            return f"AS{facts.asn}" if facts.asn in self._cdn_asns else None
        if facts.org is not None and facts.org in self._cdn_names:
            return f"organisation {facts.org} (AS{self._cdn_names[facts.org]})"
        return None

    def judge(self, resolution: Resolution) -> HostingEvidence:
        """The verdict on one resolution (pure but for the clock)."""
        host = resolution.host
        records = list(resolution.records)
        if resolution.cached:
            # Evidence says when the DNS answered, not only when it was looked at again.
            answered = datetime.fromtimestamp(resolution.answered_at, UTC)
            records = [{**r, "cached": True, "answered_at": answered.isoformat()}
                       for r in records]
        common: dict[str, Any] = {
            "host": host, "checked_at": self._clock(), "resolver": resolution.resolver,
            "outcome": resolution.outcome, "records": records,
            "databases": self._databases, "error": resolution.error,
        }
        literal = resolution.outcome == "ip_literal"
        domain_rule = None if literal else self._overrides.for_domain(host)
        addresses = [self._address(ip) for ip in resolution.addresses]
        ips = list(resolution.addresses)
        if domain_rule is not None:  # whatever the DNS said: the operator knows
            domain, country = domain_rule
            common["databases"] = {**self._databases, "override": {"domain": domain}}
            first = addresses[0] if addresses else {}
            return HostingEvidence(
                status="located", country=country, asn=first.get("asn"), org=first.get("org"),
                source="override", ips=ips, addresses=addresses, **common,
            )
        if resolution.outcome == "failed":
            return HostingEvidence(status="failed", **common)
        # A private or reserved address (a sinkhole's 0.0.0.0 or 127.0.0.1, say) hosts
        # nothing anyone else can reach: it is evidence, not a place.
        public = [a for a in addresses if "note" not in a or a["source"] == "override"]
        if not public:
            if addresses:
                common["error"] = "no public address"
            return HostingEvidence(status="unresolvable", ips=ips, addresses=addresses, **common)
        first = public[0]
        cdn = [a for a in public if a.get("cdn")]
        if cdn:
            return HostingEvidence(status="cdn", asn=cdn[0]["asn"], org=cdn[0]["org"], cdn=True,
                           source="geoip", ips=ips, addresses=addresses, **common)
        countries = {a["country"] for a in public}
        source = "override" if all(a["source"] == "override" for a in public) else "geoip"
        known = countries - {None}
        if len(known) > 1:
            status = "mixed"  # round robin across countries, fast flux
        elif None in countries:
            status = "unknown"  # no database knows where (some of) the addresses are
        else:
            return HostingEvidence(status="located", country=known.pop(), asn=first["asn"],
                           org=first["org"], source=source, ips=ips, addresses=addresses,
                           **common)
        return HostingEvidence(status=status, asn=first["asn"], org=first["org"], source=source,
                       ips=ips, addresses=addresses, **common)

    def _address(self, ip: str) -> dict[str, Any]:
        facts = self._geo.lookup(ip)
        entry: dict[str, Any] = {
            "ip": ip, "country": facts.country, "asn": facts.asn, "org": facts.org,
            "source": "geoip", "cdn": None,
        }
        if facts.reserved:
            entry["note"] = "not a public address"
        rule = self._overrides.for_address(ip)
        if rule is not None:
            # The operator knows where this network's content is, CDN or not.
            entry.update(country=rule[1], source="override", override=rule[0])
        else:
            entry["cdn"] = self._cdn_match(facts)
        return entry
