"""The gateway's configuration: config.toml read once into frozen, typed objects.

Unknown keys and bad values are errors that name the key (``smtp.max_message_bytes: ...``).
Relative paths resolve against the folder of the config file, so a checkout runs from anywhere.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_PATHS = (Path("config.toml"), Path("/etc/hotline-gateway/config.toml"))


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one ``key: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value types -------------------------------------------------------------------------

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


def _fqdn(value: str) -> str:
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
FullyQualified = Annotated[str, AfterValidator(_fqdn)]
#: The empty string means "not set", as for paths and keys.
_Unset = BeforeValidator(lambda value: None if value == "" else value)
OptionalPath = Annotated[Path | None, BeforeValidator(_resolve_path)]
Listen = Annotated[tuple[str, int], BeforeValidator(_parse_listen)]
Nameserver = Annotated[tuple[str, int], BeforeValidator(_parse_nameserver)]
Country = Annotated[str, AfterValidator(_country)]
Email = Annotated[str, AfterValidator(_email)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- sections ----------------------------------------------------------------------------


class GatewayConfig(_Section):
    home_country: Country = "BE"
    #: The hotline's name, as referrals give it ("from").
    hotline_name: Annotated[str, Field(min_length=1, max_length=80)] = "Child Focus"
    data_dir: OptionalPath = Field(default="var", validate_default=True)
    reference_prefix: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{0,7}$")] = "CF"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_grace: Duration = 10.0


class DatabaseConfig(_Section):
    url: DatabaseUrl = Field(default="sqlite+aiosqlite:///var/gateway.db", validate_default=True)
    busy_timeout: PositiveDuration = 5.0
    statement_timeout: PositiveDuration = 30.0
    pool_size: PositiveInt = 5
    batch_max: Annotated[int, Field(gt=0, le=2000)] = 512


class TlsFiles(_Section):
    tls_cert: OptionalPath = None
    tls_key: OptionalPath = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsFiles:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key are set together or not at all")
        return self


def _line_within_message(value: int, info: ValidationInfo) -> int:
    """``smtp.max_line_bytes`` no greater than ``smtp.max_message_bytes`` (validated before it)."""
    message = info.data.get("max_message_bytes")  # absent when itself invalid
    if message is not None and value > message:
        raise ValueError(f"{value} is more than max_message_bytes ({message}): a line cannot "
                         "be longer than the message")
    return value


class SmtpConfig(TlsFiles):
    listen: list[Listen] = Field(
        default=["127.0.0.1:2525"], validate_default=True, min_length=1
    )
    hostname: HostName = "report.hotline.test"
    recipients: list[Annotated[Email, AfterValidator(str.lower)]] = Field(
        default=["report@hotline.test"], min_length=1
    )
    max_message_bytes: PositiveInt = 10 * 1024 * 1024
    #: Longest line taken (CRLF not counted): real mailers send unwrapped HTML far beyond
    #: RFC 5322's 998; at least that many are always taken.
    max_line_bytes: Annotated[int, Field(ge=998, le=64 * 1024 * 1024, validate_default=True),
                              AfterValidator(_line_within_message)] = 64 * 1024
    max_connections: PositiveInt = 100
    #: Connections one source (an IPv4 address, an IPv6 /64) may hold at once; an IPv6 /48
    #: twice that (intake/smtpdoor.py).
    max_connections_per_source: PositiveInt = 10
    #: A relay of the hotline's own in front: its connections count only against
    #: max_connections, its messages against no per-source rate.
    trusted_relays: list[Network] = []
    #: Messages one source may send a minute (a burst of as many, then that rate).
    messages_per_minute_per_source: Annotated[int, Field(ge=1, le=100_000)] = 60
    timeout: Annotated[float, BeforeValidator(_parse_duration), Field(ge=1)] = 300.0
    #: The longest one session may last, whatever it sends (NOOP does not extend it).
    max_session_time: Annotated[float, BeforeValidator(_parse_duration), Field(ge=1)] = 600.0

    @model_validator(mode="before")
    @classmethod
    def _line_default_within_message(cls, data: Any) -> Any:
        """Left unset, max_line_bytes is at most the message limit (a line cannot be longer
        than the message); set explicitly above it, it is an error naming the key."""
        if isinstance(data, dict) and "max_line_bytes" not in data:
            message = data.get("max_message_bytes")
            if isinstance(message, int) and 998 <= message < 64 * 1024:
                return {**data, "max_line_bytes": message}
        return data


class HttpConfig(TlsFiles):
    listen: list[Listen] = Field(default=["127.0.0.1:8080"], validate_default=True)
    trusted_proxies: list[Network] = []
    #: Reports one client may send per minute (a burst of as many, then that rate).
    reports_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: Largest request body accepted; larger ones get 413 before they are read.
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 64 * 1024
    #: The origin browsers see the form at (``https://report.hotline.test``), when a TLS
    #: proxy serves it; empty: the origin each request was addressed to.
    public_origin: Annotated[str | None, BeforeValidator(_origin)] = None


def _rp_id(value: str | None) -> str | None:
    """A WebAuthn relying party id: a domain name (never an IP address), as hosts are written."""
    if value is None or value == "":
        return None
    name = _domain(value)
    if name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r}: a relying party id is a domain name, not an IP address")
    return name


class ConsoleConfig(TlsFiles):
    listen: list[Listen] = Field(default=["127.0.0.1:8081"], validate_default=True)
    #: A session ends after this long without a request, and this long after login anyway.
    session_idle: PositiveDuration = 30 * 60.0
    session_max: PositiveDuration = 12 * 3600.0
    #: After ``lockout_after`` wrong codes in a row with the right password, an account's
    #: next login attempt waits ``lockout``, doubling with every further one up to 10 minutes.
    #: Wrong passwords never slow the account, only the address they come from.
    lockout_after: Annotated[int, Field(ge=1, le=100)] = 5
    lockout: PositiveDuration = 60.0
    #: X-Forwarded-For names the client (for the login throttle) only from these proxies.
    trusted_proxies: list[Network] = []
    #: Cookies are marked Secure when the console is served over TLS, here or by a proxy
    #: in front of it ("auto": when tls_cert is set).
    secure_cookies: Literal["auto", "always"] = "auto"
    #: The origin staff browsers see the console at (``https://console.hotline.test``),
    #: for security keys (WebAuthn) behind a proxy; empty: the origin each request was
    #: addressed to.
    public_origin: Annotated[str | None, BeforeValidator(_origin)] = None
    #: The WebAuthn relying party id security keys are registered for: the origin's host or
    #: a domain it is under; empty: the host of the origin (public_origin or the request's).
    rp_id: Annotated[str | None, AfterValidator(_rp_id)] = None
    #: Supervisors and admins log in with a security key, not with a TOTP code alone (one
    #: without a key may log in with a code only to register one).
    require_security_key: bool = False

    @model_validator(mode="after")
    def _rp_id_of_origin(self) -> ConsoleConfig:
        host = urllib.parse.urlsplit(self.public_origin or "").hostname
        if self.rp_id is not None and host is not None and not (
                host == self.rp_id or host.endswith("." + self.rp_id)):
            raise ValueError(f"rp_id {self.rp_id!r} is neither public_origin's host nor a "
                             "domain it is under")
        return self


class AdminConfig(_Section):
    listen: list[Listen] = Field(default=["127.0.0.1:9100"], validate_default=True)


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


class LocateOverride(_Section):
    network: Network | None = None
    domain: Domain | None = None
    country: Country

    @model_validator(mode="after")
    def _one_target(self) -> LocateOverride:
        if (self.network is None) == (self.domain is None):
            raise ValueError("an override names exactly one of network or domain")
        return self


def _builtin_or_path(value: object, info: ValidationInfo) -> str | Path:
    if value == "builtin":
        return "builtin"
    path = _resolve_path(value, info)
    if path is None:
        raise ValueError('use "builtin" or the path of an .mmdb file')
    return path


class LocateConfig(_Section):
    nameservers: list[Nameserver] = []
    geoip_db: Annotated[str | Path, BeforeValidator(_builtin_or_path)] = "builtin"
    asn_db: Annotated[str | Path, BeforeValidator(_builtin_or_path)] = "builtin"
    cdn_asns: list[PositiveInt] = [13335, 16509, 54113, 20940]
    override: list[LocateOverride] = []
    #: How long one name's lookup (A and AAAA, all nameservers) may take.
    timeout: PositiveDuration = 5.0
    #: Names looked up at once; a slow name holds one of these, never the queue.
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 64
    #: Failed lookups (SERVFAIL, timeouts) are retried after ``retry_after``, doubling up to
    #: ``retry_max``; after ``max_attempts`` the case is flagged ``locate_failed`` (and still
    #: retried at ``retry_max``).
    retry_after: PositiveDuration = 30.0
    retry_max: PositiveDuration = 3600.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5


class GpgConfig(_Section):
    home: OptionalPath = Field(default="var/gnupg", validate_default=True)
    signing_key: Fingerprint = ""
    #: The key referrals are also encrypted to (``outbound.encrypt_to_self``), so that the
    #: hotline's staff can read what was sent; empty: the signing key's encryption subkey.
    archive_key: Fingerprint = ""
    passphrase_file: OptionalPath = None
    warn_days: PositiveInt = 30


class OutboundConfig(_Section):
    transport: Literal["smtp", "file"] = "smtp"
    file_dir: OptionalPath = Field(default="var/outbox", validate_default=True)
    from_address: Email = "referrals@hotline.test"
    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    #: Certificates of the upstream server are checked against the system's CAs, or these.
    tls_ca_file: OptionalPath = None
    max_attempt_age: Duration = 3 * 86400.0
    #: Delivery retries wait retry_after, doubling (with jitter) up to retry_max.
    retry_after: PositiveDuration = 60.0
    retry_max: PositiveDuration = 3600.0
    timeout: PositiveDuration = 60.0
    #: The name given in EHLO when referrals leave; unset, the [smtp] hostname (the hotline's
    #: public mail name), which must then be fully qualified.
    helo_name: Annotated[FullyQualified | None, _Unset] = None
    #: Every referral is also encrypted to the hotline's own key (``gpg.archive_key``, else
    #: ``gpg.signing_key``); a referral is held while that key cannot encrypt.
    encrypt_to_self: bool = True


class Destination(_Section):
    email: Email
    key: Fingerprint


class RoutingConfig(_Section):
    destinations: dict[Literal["police", "police_international"], Destination] = {}
    hotlines: dict[Country, Destination] = {}
    #: Corrections to the shipped INHOPE membership list: true adds a country, false removes.
    membership: dict[Country, bool] = {}


class AssessmentConfig(_Section):
    four_eyes: bool = False


class RetentionConfig(_Section):
    raw_message_days: PositiveInt = 30
    reporter_contact_days: PositiveInt = 90


class IntakeConfig(_Section):
    attachments: Literal["hash-and-discard", "reject"] = "hash-and-discard"
    keep_reporter_ip: bool = False
    legal_window_days: PositiveInt = 180
    normalise: Literal["serve", "separate"] = "serve"


class Config(_Section):
    """The whole configuration; every section has working defaults."""

    path: Path | None = None
    gateway: GatewayConfig = GatewayConfig()
    database: DatabaseConfig = DatabaseConfig()
    smtp: SmtpConfig = SmtpConfig()
    http: HttpConfig = HttpConfig()
    console: ConsoleConfig = ConsoleConfig()
    admin: AdminConfig = AdminConfig()
    locate: LocateConfig = LocateConfig()
    gpg: GpgConfig = GpgConfig()
    outbound: OutboundConfig = OutboundConfig()
    routing: RoutingConfig = RoutingConfig()
    assessment: AssessmentConfig = AssessmentConfig()
    retention: RetentionConfig = RetentionConfig()
    intake: IntakeConfig = IntakeConfig()

    @model_validator(mode="after")
    def _home_is_not_a_partner(self) -> Config:
        if self.gateway.home_country in self.routing.hotlines:
            raise ValueError(
                f"routing.hotlines.{self.gateway.home_country}: the home country's reports go "
                "to the national police (routing.destinations.police), not to a partner hotline"
            )
        return self

    @model_validator(mode="after")
    def _archive_key_is_used(self) -> Config:
        if self.gpg.archive_key and not self.outbound.encrypt_to_self:
            raise ValueError("gpg.archive_key: set, but outbound.encrypt_to_self is false: "
                             "nothing would be encrypted to it")
        return self

    def archive_key(self) -> str | None:
        """The hotline's own key every referral is also encrypted to, or None (not wanted).
        Empty when wanted but no key is configured: a referral is then held."""
        if not self.outbound.encrypt_to_self:
            return None
        return self.gpg.archive_key or self.gpg.signing_key

    @model_validator(mode="after")
    def _helo_name(self) -> Config:
        """Unset, ``outbound.helo_name`` is the [smtp] hostname: the one name the hotline's
        mail already answers to. With the file transport no SMTP is spoken: nothing to name."""
        if self.outbound.helo_name is not None:
            return self
        try:
            helo = _fqdn(self.smtp.hostname)
        except ValueError as exc:
            if self.outbound.transport == "file":
                return self
            raise ValueError(f"outbound.helo_name: not set, and smtp.hostname {exc}; set "
                             "outbound.helo_name to the gateway's fully-qualified name") from None
        outbound = self.outbound.model_copy(update={"helo_name": helo})
        return self.model_copy(update={"outbound": outbound})


def _describe(error: Mapping[str, Any]) -> str:
    parts = [str(p) for p in error["loc"] if not str(p).startswith("function-") and p != "[key]"]
    key = ".".join(parts)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def parse(data: Mapping[str, Any], *, base: Path, path: Path | None = None) -> Config:
    """Validate a config mapping; relative paths resolve against ``base``."""
    if "path" in data:
        raise ConfigError(["path: unknown key"])
    # Every section is validated, even when absent, so that default paths resolve against base.
    sections: dict[str, Any] = {name: {} for name in Config.model_fields if name != "path"}
    try:
        return Config.model_validate({**sections, **data, "path": path}, context={"base": base})
    except ValidationError as exc:
        problems = list(dict.fromkeys(_describe(e) for e in exc.errors()))
        raise ConfigError(problems) from exc


def load(path: Path) -> Config:
    """Read and validate one config file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such file"]) from exc
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    path = path.resolve()
    return parse(data, base=path.parent, path=path)


def find(explicit: Path | None) -> Path:
    """The config file to use: ``--config``, else ./config.toml, else the system one."""
    if explicit is not None:
        return explicit
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_PATHS[0]


def file_problems(config: Config) -> list[str]:
    """Problems with files the configuration refers to (checked at start and by check-config)."""
    problems: list[str] = []
    for section, name in (("smtp", config.smtp), ("http", config.http)):
        for key in ("tls_cert", "tls_key"):
            value = getattr(name, key)
            if value is not None and not value.is_file():
                problems.append(f"{section}.{key}: {value} does not exist")
    for key in ("geoip_db", "asn_db"):
        value = getattr(config.locate, key)
        if isinstance(value, Path) and not value.is_file():
            problems.append(f"locate.{key}: {value} does not exist")
        elif isinstance(value, Path):
            from routing.geo import GeoError, MmdbDatabase

            try:
                MmdbDatabase(value).close()
            except GeoError as exc:
                problems.append(f"locate.{key}: not a MaxMind-format database ({exc})")
    passphrase = config.gpg.passphrase_file
    if passphrase is not None and not passphrase.is_file():
        problems.append(f"gpg.passphrase_file: {passphrase} does not exist")
    return problems
