"""Addresses to country and autonomous system, from a MaxMind-format database or the builtin.

``geoip_db`` / ``asn_db`` name a ``.mmdb`` file (MaxMind GeoLite2/GeoIP2, DB-IP and IPinfo all
publish this format; the record shapes of each are understood), or ``builtin``: the data the
``geoip2fast`` package ships (MaxMind GeoLite2 country and ASN, IPv4 and IPv6, built on the date
``describe()`` reports), which works offline with nothing to download. The builtin ASN data
names each network's organisation but not its AS number.
"""

from __future__ import annotations

import ipaddress
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import maxminddb

from routing import geo_builtin

#: The builtin ASN data has organisation names, not numbers: these are the names under which
#: it lists the networks of well-known CDNs, so that ``cdn_asns`` works with it too.
BUILTIN_AS_NAMES: dict[int, tuple[str, ...]] = {
    13335: ("CLOUDFLARENET",),
    209242: ("CLOUDFLARESPECTRUM",),
    16509: ("AMAZON-02",),
    54113: ("FASTLY",),
    20940: ("Akamai International B.V.",),
    16625: ("AKAMAI-AS",),
    15133: ("EDGECAST",),
    60068: ("Datacamp Limited",),
}


class GeoError(Exception):
    """A geolocation database cannot be opened or read."""


@dataclass(frozen=True, slots=True)
class AsnFacts:
    asn: int | None
    org: str | None


class CountrySource(Protocol):
    def country(self, address: str) -> str | None: ...

    def describe(self) -> dict[str, str]: ...


class AsnSource(Protocol):
    def asn(self, address: str) -> AsnFacts: ...

    def describe(self) -> dict[str, str]: ...


def _iso_country(value: object) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[A-Z]{2}", value.upper()):
        return value.upper()
    return None


def _as_number(value: object) -> int | None:
    """1136, "1136" or "AS1136" (IPinfo's spelling)."""
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str):
        digits = value.upper().removeprefix("AS")
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return None


class MmdbDatabase:
    """One ``.mmdb`` file; answers country and ASN questions from whichever it holds."""

    def __init__(self, path: Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
            meta = self._reader.metadata()
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoError(f"{path}: {type(exc).__name__}: {exc}") from exc
        built = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
        self._description = {"name": f"{meta.database_type} ({path.name})", "built": built}

    def _record(self, address: str) -> dict[str, Any]:
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return {}
        return record if isinstance(record, dict) else {}

    def country(self, address: str) -> str | None:
        record = self._record(address)
        for key in ("country", "registered_country"):
            value = record.get(key)
            if isinstance(value, dict) and (code := _iso_country(value.get("iso_code"))):
                return code
        return _iso_country(record.get("country_code"))  # IPinfo, DB-IP lite variants

    def asn(self, address: str) -> AsnFacts:
        record = self._record(address)
        number = _as_number(record.get("autonomous_system_number", record.get("asn")))
        org = record.get("autonomous_system_organization", record.get("as_name"))
        return AsnFacts(number, org if isinstance(org, str) and org else None)

    def describe(self) -> dict[str, str]:
        return dict(self._description)

    def close(self) -> None:
        self._reader.close()


class BuiltinDatabase:
    """geoip2fast's shipped GeoLite2 data (country and ASN organisation, IPv4 and IPv6), as
    compact tables built once into ``cache_dir`` (``routing.geo_builtin``): the daemon never
    holds geoip2fast's 108 MiB of lists. Without a cache folder they are built into a
    temporary one for this process."""

    DATA_FILE = geo_builtin.DATA_FILE

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="hotline-geo-")
            cache_dir = Path(self._scratch.name)
        try:
            self._tables = geo_builtin.load(cache_dir)
        except Exception as exc:  # a missing package, a failed build, a damaged cache file
            raise GeoError(f"builtin data: {type(exc).__name__}") from exc
        source = self._tables.source
        stamp = re.search(r"(\d{8})$", source)
        built = (
            datetime.strptime(stamp.group(1), "%Y%m%d").date().isoformat() if stamp else "unknown"
        )
        self._description = {"name": f"builtin geoip2fast ({source})", "built": built}

    def country(self, address: str) -> str | None:
        return _iso_country(self._tables.lookup(address)[0])

    def asn(self, address: str) -> AsnFacts:
        name = self._tables.lookup(address)[1]
        return AsnFacts(None, name if name else None)

    def describe(self) -> dict[str, str]:
        return dict(self._description)


_LOADED: dict[str, BuiltinDatabase] = {}


def builtin_database(cache_dir: Path | None = None) -> BuiltinDatabase:
    """Loaded once per process: the data never changes while it runs, so a second cache
    folder (another gateway in the same process, as in tests) reuses the tables in memory."""
    key = geo_builtin.compact_name()
    if key not in _LOADED:
        _LOADED[key] = BuiltinDatabase(cache_dir)
    return _LOADED[key]


@dataclass(frozen=True, slots=True)
class IpFacts:
    """What the databases say about one address."""

    country: str | None
    asn: int | None
    org: str | None
    reserved: bool  # private, loopback, documentation…: has no country


class Geolocator:
    """Country and ASN of an address, from the configured sources."""

    def __init__(self, countries: CountrySource, asns: AsnSource) -> None:
        self._countries = countries
        self._asns = asns

    def lookup(self, address: str) -> IpFacts:
        ip = ipaddress.ip_address(address)
        if not ip.is_global:
            return IpFacts(None, None, None, reserved=True)
        facts = self._asns.asn(address)
        return IpFacts(self._countries.country(address), facts.asn, facts.org, reserved=False)

    def databases(self) -> dict[str, dict[str, str]]:
        return {"country": self._countries.describe(), "asn": self._asns.describe()}


def open_geolocator(geoip_db: str | Path, asn_db: str | Path,
                    cache_dir: Path | None = None) -> Geolocator:
    """Open the configured databases (blocking: call it off the event loop); the builtin
    data's compact tables are kept in ``cache_dir``."""
    opened: dict[str, Any] = {}

    def source(spec: str | Path) -> Any:
        key = str(spec)
        if key not in opened:
            opened[key] = (builtin_database(cache_dir) if spec == "builtin"
                           else MmdbDatabase(Path(spec)))
        return opened[key]

    return Geolocator(source(geoip_db), source(asn_db))
