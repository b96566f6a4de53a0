"""Geolocation databases: MaxMind-format files built in the test, and the builtin data."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from routing.geo import BuiltinDatabase, GeoError, MmdbDatabase, builtin_database, open_geolocator


def test_mmdb_country_and_asn(mmdb: dict[str, Path]) -> None:
    geo = open_geolocator(mmdb["country"], mmdb["asn"])
    nl = geo.lookup("145.100.200.1")
    assert (nl.country, nl.asn, nl.org, nl.reserved) == ("NL", 1103, "SURF B.V.", False)
    assert geo.lookup("2a02:578::beef").country == "BE"
    unknown = geo.lookup("8.8.8.8")
    assert (unknown.country, unknown.asn, unknown.org) == (None, None, None)
    described = geo.databases()
    assert described["country"]["name"] == "Test-Country (country.mmdb)"
    assert described["asn"]["built"][:2] == "20"


def test_reserved_addresses_have_no_country(mmdb: dict[str, Path]) -> None:
    geo = open_geolocator(mmdb["country"], mmdb["asn"])
    for address in ("10.0.0.1", "127.0.0.1", "192.168.1.1", "::1", "fe80::1", "100.64.0.1"):
        facts = geo.lookup(address)
        assert facts.reserved and facts.country is None, address


def test_ipinfo_style_records_are_understood(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="ipinfo lite")
    writer.insert_network(IPSet(["145.100.0.0/16"]),
                          {"country_code": "NL", "asn": "AS1103", "as_name": "SURF B.V."})
    writer.to_db_file(str(tmp_path / "lite.mmdb"))
    database = MmdbDatabase(tmp_path / "lite.mmdb")
    assert database.country("145.100.0.1") == "NL"
    facts = database.asn("145.100.0.1")
    assert (facts.asn, facts.org) == (1103, "SURF B.V.")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"not a database" * 100)
    with pytest.raises(GeoError, match=r"bogus\.mmdb"):
        MmdbDatabase(bogus)
    with pytest.raises(GeoError):
        MmdbDatabase(tmp_path / "missing.mmdb")


@pytest.mark.parametrize(
    ("address", "country", "org"),
    [
        ("8.8.8.8", "US", "GOOGLE"),
        ("2001:4860:4860::8888", "US", "GOOGLE"),
        ("193.190.198.1", "BE", "BELNET"),  # the Belgian research network
        ("145.100.1.1", "NL", "SURF B.V."),
        ("104.16.132.229", "US", "CLOUDFLARENET"),
        ("2a00:1450:4001::1", "DE", "GOOGLE"),
    ],
)
def test_builtin_data_on_well_known_addresses(address: str, country: str, org: str) -> None:
    database = builtin_database()
    assert database.country(address) == country
    facts = database.asn(address)
    assert (facts.asn, facts.org) == (None, org)  # the builtin data has no AS numbers


def test_builtin_data_says_how_old_it_is() -> None:
    described = builtin_database().describe()
    assert described["built"] == "2024-06-18"
    assert "GeoLite2" in described["name"]
    assert isinstance(builtin_database(), BuiltinDatabase)
    assert builtin_database() is builtin_database()  # loaded once per process
