"""Locating test data: a zone of test names for the DNS server on 127.0.0.1, and small .mmdb
databases built in the test so that countries and AS numbers are known in advance (the
fixtures that serve them are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.dns_server import Zone

# network: (country, AS number, organisation)
NETWORKS = {
    "145.100.0.0/16": ("NL", 1103, "SURF B.V."),
    "2001:610::/32": ("NL", 1103, "SURF B.V."),
    "193.190.0.0/16": ("BE", 2611, "BELNET"),
    "2a02:578::/32": ("BE", 5432, "Proximus NV"),
    "5.6.7.0/24": ("DE", 3320, "Deutsche Telekom AG"),
    "95.0.0.0/16": ("RU", 12389, "Rostelecom"),
    "2.72.0.0/16": ("KZ", 9198, "JSC Kazakhtelecom"),
    "12.0.0.0/16": ("US", 7018, "AT&T"),
    "104.16.0.0/16": ("US", 13335, "CLOUDFLARENET"),
    "2606:4700::/32": ("US", 13335, "CLOUDFLARENET"),
}


def build_mmdb(path: Path, kind: str) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True,
                        database_type=f"Test-{kind}", description="hotline-gateway tests")
    for network, (country, asn, org) in NETWORKS.items():
        record: dict[str, object] = (
            {"country": {"iso_code": country}} if kind == "Country"
            else {"autonomous_system_number": asn, "autonomous_system_organization": org}
        )
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def standard_zone() -> Zone:
    zone = Zone()
    zone.add("nl.test", "A", "145.100.1.1", ttl=120)
    zone.add("nl.test", "AAAA", "2001:610::1", ttl=60)
    zone.add("be.test", "A", "193.190.1.1")
    zone.add("www.example.be", "A", "145.100.9.9")
    zone.add("mixed.test", "A", "145.100.1.2", "193.190.1.2")
    zone.add("cdn.test", "A", "104.16.1.1")
    zone.add("v6.test", "AAAA", "2001:610::2", "2a02:578::1")
    zone.add("private.test", "A", "10.0.0.1")
    zone.add("de.test", "A", "5.6.7.8")
    zone.add("ru.test", "A", "95.0.1.1")
    zone.add("us.test", "A", "12.0.1.1")
    zone.add("noaddr.test", "TXT", '"hello"')
    zone.cname("alias.test", "mid.test", ttl=30)
    zone.cname("mid.test", "nl.test", ttl=40)
    zone.cname("dangling.test", "be.test", alone=True)
    zone.add("tcp.test", "A", "145.100.1.3")
    zone.behave("tcp.test", "truncate")
    zone.behave("broken.test", "servfail")
    zone.behave("refused.test", "refused")
    zone.behave("garbage.test", "garbage")
    zone.behave("silent.test", "drop")
    zone.add("slow.test", "A", "145.100.1.4")
    zone.behave("slow.test", ("slow", 30.0))
    return zone
