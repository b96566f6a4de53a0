"""The value types of config.toml: durations, paths, listen addresses, host names, countries,
keys, networks, database URLs. Each either parses its value or raises ``ValueError`` with a
message that ``gateway.config`` prefixes with the key.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_duration(value: object) -> float:
    """``"500ms"``, ``"30s"``, ``"5m"``, ``"3d"`` -> seconds."""
    if not isinstance(value, str):
        raise ValueError('a duration is a string such as "30s", "5m" or "3d"')
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f'{value!r} is not a duration such as "500ms", "30s", "5m", "3d"')
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _resolve_path(value: object, info: ValidationInfo) -> Path | None:
    """A path relative to the config file's folder; the empty string means "not set"."""
    if not isinstance(value, str):
        raise ValueError("a path is a string")
    if value == "":
        return None
    base: Path = (info.context or {}).get("base") or Path.cwd()
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


# Matched with fullmatch and \Z: ``$`` would also match before a final newline.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name")
    return value


def fully_qualified(value: str) -> str:
    """A fully-qualified host name, as RFC 5321 wants after EHLO: two labels or more, the last
    not all digits (no IP address), no final dot. Relays that check (Postfix's
    ``reject_non_fqdn_helo_hostname``) refuse anything else, ``localhost`` included."""
    labels = value.split(".")
    if not _HOSTNAME.fullmatch(value) or value.endswith(".") or len(labels) < 2 \
            or labels[-1].isdigit():
        raise ValueError(f"{value!r} is not a fully-qualified host name such as "
                         "'report.hotline.test'")
    return value


def _parse_listen(value: object) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` or ``"[::1]:2525"`` -> (host, port); port 0 picks a free one."""
    if not isinstance(value, str):
        raise ValueError('a listen address is a string such as "127.0.0.1:2525"')
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:]+):([0-9]{1,5})", value)
    if match is None:
        raise ValueError(f'{value!r} is not "host:port" (IPv6 as "[::1]:2525")')
    host, port_text = match.groups()
    if host.startswith("["):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            _hostname(host)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def _parse_nameserver(value: object) -> tuple[str, int]:
    """A nameserver is an IP address with an optional port (default 53)."""
    if not isinstance(value, str):
        raise ValueError('a nameserver is a string such as "127.0.0.1:5353"')
    try:
        return str(ipaddress.ip_address(value)), 53
    except ValueError:
        host, port = _parse_listen(value)
        ipaddress.ip_address(host)
        return host, port


def _country(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code such as 'BE'")
    return value


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return value


def _fingerprint(value: str) -> str:
    cleaned = value.replace(" ", "").upper()
    if cleaned and not re.fullmatch(r"[0-9A-F]{40}", cleaned):
        raise ValueError("a key is pinned by its full 40-hex-digit fingerprint")
    return cleaned


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError("a network is a string such as '203.0.113.0/24'")
    return ipaddress.ip_network(value, strict=False)


def _database_url(value: str, info: ValidationInfo) -> str:
    """Accept the two supported drivers; make a relative SQLite file path absolute."""
    prefix = "sqlite+aiosqlite:///"
    if value.startswith(prefix):
        file_part = value[len(prefix) :]
        if not file_part or file_part.startswith(":memory:") or "?" in file_part:
            raise ValueError("SQLite needs a file: sqlite+aiosqlite:///PATH (the gateway's "
                             "parts share it, and a report must survive a restart)")
        if not file_part.startswith("/"):
            base: Path = (info.context or {}).get("base") or Path.cwd()
            return prefix + str(base / file_part)
        return value
    if value.startswith("postgresql+asyncpg://"):
        try:
            database = make_url(value).database
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        if not database:
            raise ValueError("name the database: postgresql+asyncpg://USER@HOST:5432/DB")
        return value
    raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
#: At least a second (SMTP's timeouts).
Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(ge=1)]


def _origin(value: object) -> str | None:
    """An RFC 6454 origin as browsers serialise it: scheme://host[:port], lowercase, no
    default port, nothing after it."""
    if value == "" or value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("an origin is a string such as 'https://report.hotline.test'")
    parts = urllib.parse.urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} has a bad port") from exc
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"{value!r} is not an origin such as 'https://report.hotline.test'")
    host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() \
        else parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


HostName = Annotated[str, AfterValidator(_hostname)]
FullyQualified = Annotated[str, AfterValidator(fully_qualified)]
#: The empty string means "not set", as for paths and keys.
def _credential_name(value: str | None) -> str | None:
    """A systemd credential name: no slash, not "." or ".." (systemd.exec(5))."""
    if value is not None and (not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", value)
                              or value in (".", "..")):
        raise ValueError(f"{value!r} is not a credential name such as 'data-keys'")
    return value


_Unset = BeforeValidator(lambda value: None if value == "" else value)
OptionalFullyQualified = Annotated[FullyQualified | None, _Unset]
CredentialName = Annotated[str | None, _Unset, AfterValidator(_credential_name)]
Origin = Annotated[str | None, BeforeValidator(_origin)]
OptionalPath = Annotated[Path | None, BeforeValidator(_resolve_path)]
Listen = Annotated[tuple[str, int], BeforeValidator(_parse_listen)]
Nameserver = Annotated[tuple[str, int], BeforeValidator(_parse_nameserver)]
Country = Annotated[str, AfterValidator(_country)]
Email = Annotated[str, AfterValidator(_email)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
PositiveInt = Annotated[int, Field(gt=0)]

def _domain(value: str) -> str:
    """A domain as canonical URLs spell their hosts: lowercase ASCII (IDNA), no final dot."""
    name = value.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{value!r} is not a domain name") from exc
    labels = name.split(".")
    if not name or any(not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", label)
                       for label in labels):
        raise ValueError(f"{value!r} is not a domain name")
    return name


Domain = Annotated[str, AfterValidator(_domain)]


def _builtin_or_path(value: object, info: ValidationInfo) -> str | Path:
    if value == "builtin":
        return "builtin"
    path = _resolve_path(value, info)
    if path is None:
        raise ValueError('use "builtin" or the path of an .mmdb file')
    return path


def _rp_id(value: str | None) -> str | None:
    """A WebAuthn relying party id: a domain name (never an IP address), as hosts are written."""
    if value is None or value == "":
        return None
    name = _domain(value)
    if name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r}: a relying party id is a domain name, not an IP address")
    return name


RpId = Annotated[str | None, AfterValidator(_rp_id)]
MmdbPath = Annotated[str | Path, BeforeValidator(_builtin_or_path)]


def _clock_time(value: object) -> time:
    """``"09:00"`` (or a TOML local time, ``09:00:00``) -> a time of day."""
    if isinstance(value, time) and value.tzinfo is None:
        return value
    match = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", value) \
        if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a time of day such as \"09:00\"")
    return time(int(match.group(1)), int(match.group(2)))


def _time_zone(value: str) -> str:
    """An IANA time zone name the system (or the tzdata package) knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{value!r} is not a known time zone such as "
                         "'Europe/Brussels'") from None
    return value


def _after_start(value: time, info: ValidationInfo) -> time:
    """``workday_end``, after ``workday_start`` (validated before it)."""
    start = info.data.get("workday_start")  # absent when itself invalid
    if start is not None and value <= start:
        raise ValueError(f"{value:%H:%M} is not after workday_start ({start:%H:%M}): a "
                         "workday does not run past midnight")
    return value


def _each_once(days: list[str]) -> list[str]:
    if len(set(days)) != len(days):
        raise ValueError("a day is named twice")
    return days


def _no_business_days(value: object, info: ValidationInfo) -> object:
    """With ``business_hours`` (validated before it), a duration in days is refused: "2d"
    would be 48 business hours (six 8-hour workdays), not the two workdays one reads in it."""
    if info.data.get("business_hours") is True and isinstance(value, str) \
            and value.strip().endswith("d"):
        raise ValueError(f"{value!r}: with business_hours a duration counts working hours, "
                         "so write it in hours (\"16h\" is two workdays of 09:00-17:00)")
    return value


ClockTime = Annotated[time, BeforeValidator(_clock_time)]
WorkdayEnd = Annotated[ClockTime, AfterValidator(_after_start)]
TimeZoneName = Annotated[str, AfterValidator(_time_zone)]
#: A deadline or a reminder interval of a destination: off when unset (or "").
DeadlineDuration = Annotated[PositiveDuration | None, _Unset,
                             BeforeValidator(_no_business_days)]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Workdays = Annotated[list[Weekday], Field(min_length=1), AfterValidator(_each_once)]
