"""The sections of config.toml, one frozen, typed model each (``gateway.config`` puts them
together into ``Config``, reads the file and names every problem); each section turns into the
settings object of the package that uses it. Kept apart from ``gateway.config`` only to keep
both files short.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from gateway.config_values import (
    WEEKDAYS,
    ClockTime,
    Country,
    CredentialName,
    DatabaseUrl,
    DeadlineDuration,
    Domain,
    Duration,
    Email,
    Fingerprint,
    HostName,
    Listen,
    MmdbPath,
    Nameserver,
    Network,
    OptionalEmail,
    OptionalFullyQualified,
    OptionalPath,
    Origin,
    PositiveDuration,
    PositiveInt,
    RpId,
    Seconds,
    TimeZoneName,
    WorkdayEnd,
    Workdays,
)
from gateway.store import classification
from gateway.store.engine import DatabaseSettings
from gateway.store.leases import LEASE
from intake.smtp import SmtpSettings
from intake.web import HttpSettings
from outbound.transports import OutboundSettings
from routing import destinations as routes
from routing.deadlines import BusinessCalendar, DeadlinePolicy

#: The parts of ``serve`` (``[gateway] parts``).
Part = Literal["smtp", "http", "console", "admin", "stages"]
PARTS: tuple[Part, ...] = ("smtp", "http", "console", "admin", "stages")


#: ``[gateway] stage_lease`` unless set (``gateway.store.leases``).
LEASE_SECONDS = LEASE.total_seconds()


def _lease_or_default(seconds: float) -> float:
    if seconds == 0:  # what older configs said for "each stage's own"
        return LEASE_SECONDS
    if seconds < 1:
        raise ValueError("is at least 1s (a stage renews what it holds every third of it)")
    return seconds


def _each_once(parts: list[Part]) -> list[Part]:
    twice = sorted({part for part in parts if parts.count(part) > 1})
    if twice:
        raise ValueError(f"names {', '.join(twice)} more than once")
    return parts


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- sections ----------------------------------------------------------------------------


class GatewayConfig(Section):
    home_country: Country = "BE"
    #: The hotline's name, as referrals give it ("from").
    hotline_name: Annotated[str, Field(min_length=1, max_length=80)] = "Child Focus"
    data_dir: OptionalPath = Field(default="var", validate_default=True)
    reference_prefix: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{0,7}$")] = "CF"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_grace: Duration = 10.0
    #: Below this many free bytes on the database's or the data folder's filesystem, no new
    #: report is taken (SMTP 452 4.3.1, web 503) until there is again (0: no watermark).
    min_free_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024
    #: What this instance runs (several instances on one PostgreSQL may each run a part):
    #: the SMTP and public web intake, the console, the admin endpoints, the stages.
    parts: Annotated[list[Part], AfterValidator(_each_once)] = Field(
        default=list(PARTS), min_length=1)
    #: How long an item a stage claimed stays claimed when the instance holding it dies
    #: (another instance takes it after that). A stage renews what it holds every third of
    #: it while it works, so it bounds no batch. "0s" (older configs): the default.
    stage_lease: Annotated[Duration, AfterValidator(_lease_or_default)] = LEASE_SECONDS

    def runs(self, part: Part) -> bool:
        return part in self.parts


class DatabaseConfig(Section):
    url: DatabaseUrl = Field(default="sqlite+aiosqlite:///var/gateway.db", validate_default=True)
    busy_timeout: PositiveDuration = 5.0
    #: How long an SMTP transaction or a web request waits for its report's commit before
    #: the client is told to try again (451, 503): under the 30 s many HTTP clients give up.
    commit_deadline: PositiveDuration = 20.0
    statement_timeout: PositiveDuration = 30.0
    pool_size: PositiveInt = 5
    batch_max: Annotated[int, Field(gt=0, le=2000)] = 512

    def settings(self) -> DatabaseSettings:
        return DatabaseSettings(url=self.url, busy_timeout=self.busy_timeout,
                                statement_timeout=self.statement_timeout,
                                pool_size=self.pool_size)


class TlsFiles(Section):
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
    timeout: Seconds = 300.0
    #: The longest one session may last, whatever it sends (NOOP does not extend it).
    max_session_time: Seconds = 600.0

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

    def settings(self) -> SmtpSettings:
        return SmtpSettings(
            listen=tuple(self.listen), hostname=self.hostname,
            max_message_bytes=self.max_message_bytes, max_line_bytes=self.max_line_bytes,
            max_connections=self.max_connections,
            max_connections_per_source=self.max_connections_per_source,
            trusted_relays=tuple(self.trusted_relays), timeout=self.timeout,
            max_session_time=self.max_session_time, tls_cert=self.tls_cert, tls_key=self.tls_key)


class HttpConfig(TlsFiles):
    listen: list[Listen] = Field(default=["127.0.0.1:8080"], validate_default=True)
    trusted_proxies: list[Network] = []
    #: Reports one client may send per minute (a burst of as many, then that rate).
    reports_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: Largest request body accepted; larger ones get 413 before they are read.
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 64 * 1024
    #: The origin browsers see the form at (``https://report.hotline.test``), when a TLS
    #: proxy serves it; empty: the origin each request was addressed to.
    public_origin: Origin = None

    def settings(self) -> HttpSettings:
        return HttpSettings(
            listen=tuple(self.listen), trusted_proxies=tuple(self.trusted_proxies),
            reports_per_minute=self.reports_per_minute, max_body_bytes=self.max_body_bytes,
            public_origin=self.public_origin, tls_cert=self.tls_cert, tls_key=self.tls_key)


#: How staff passwords are hashed (``gateway.console.passwords``).
PasswordHashing = Literal["argon2id", "insecure-for-tests"]


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
    #: for security keys (WebAuthn); empty: keys work only at http://localhost:PORT (a local
    #: demo), never at the origin a request's Host names.
    public_origin: Origin = None
    #: The WebAuthn relying party id security keys are registered for: the origin's host or
    #: a domain it is under; empty: public_origin's host. Needs public_origin.
    rp_id: RpId = None
    #: Supervisors and admins log in with a security key, not with a TOTP code alone (one
    #: without a key may log in with a code only to register one).
    require_security_key: bool = False
    #: "argon2id" (64 MiB, 3 passes: the only choice for a console staff use); the test
    #: suite's "insecure-for-tests" hashes at argon2's cheapest, on a loopback console only.
    password_hashing: PasswordHashing = "argon2id"  # noqa: S105 (a name, not a password)

    @model_validator(mode="after")
    def _rp_id_of_origin(self) -> ConsoleConfig:
        # The expected origin is never taken from a request's Host: with rp_id alone, a
        # lookalike name under it (evil.<rp_id>) pointed at the console could use a key.
        if self.rp_id is not None and self.public_origin is None:
            raise ValueError("rp_id needs public_origin (the origin staff browsers reach the "
                             "console at): set [console] public_origin")
        if self.require_security_key and self.public_origin is None and not all(
                _loopback(host) for host, _ in self.listen):
            raise ValueError("require_security_key needs public_origin when the console "
                             "listens beyond loopback (keys work only at the configured "
                             "origin): set [console] public_origin")
        if self.password_hashing == "insecure-for-tests" and (  # noqa: S105
                self.public_origin is not None
                or not all(_loopback(host) for host, _ in self.listen)):
            # A console on loopback with a public origin is one behind a reverse proxy: staff
            # reach it, so it is not the test suite's.
            raise ValueError('password_hashing "insecure-for-tests" is for the test suite: '
                             "a console listening beyond loopback, or with a public_origin, "
                             "hashes with argon2id")
        host = urllib.parse.urlsplit(self.public_origin or "").hostname
        if self.rp_id is not None and host is not None and not (
                host == self.rp_id or host.endswith("." + self.rp_id)):
            raise ValueError(f"rp_id {self.rp_id!r} is neither public_origin's host nor a "
                             "domain it is under")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminConfig(Section):
    listen: list[Listen] = Field(default=["127.0.0.1:9100"], validate_default=True)


class LocateOverride(Section):
    network: Network | None = None
    domain: Domain | None = None
    country: Country

    @model_validator(mode="after")
    def _one_target(self) -> LocateOverride:
        if (self.network is None) == (self.domain is None):
            raise ValueError("an override names exactly one of network or domain")
        return self


class LocateConfig(Section):
    nameservers: list[Nameserver] = []
    geoip_db: MmdbPath = "builtin"
    asn_db: MmdbPath = "builtin"
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
    #: Referred cases not closed are looked up again this often (``routing.recheck``);
    #: "0s" turns the re-check off.
    recheck_every: Duration = 43200.0


class GpgConfig(Section):
    home: OptionalPath = Field(default="var/gnupg", validate_default=True)
    signing_key: Fingerprint = ""
    #: The key referrals are also encrypted to (``outbound.encrypt_to_self``), so that the
    #: hotline's staff can read what was sent; empty: the signing key's encryption subkey.
    archive_key: Fingerprint = ""
    passphrase_file: OptionalPath = None
    warn_days: PositiveInt = 30


class OutboundConfig(Section):
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
    helo_name: OptionalFullyQualified = None
    #: Every referral is also encrypted to the hotline's own key (``gpg.archive_key``, else
    #: ``gpg.signing_key``); a referral is held while that key cannot encrypt.
    encrypt_to_self: bool = True
    #: Where destinations send their replies to referrals (signed, encrypted: read
    #: automatically, ``outbound.reply_stage``); the SMTP listener takes mail for it besides
    #: ``[smtp] recipients``. Unset: no replies are taken.
    reply_address: OptionalEmail = None

    def settings(self) -> OutboundSettings:
        return OutboundSettings(
            transport=self.transport, file_dir=self.file_dir, smtp_host=self.smtp_host,
            smtp_port=self.smtp_port, tls=self.tls, tls_ca_file=self.tls_ca_file,
            timeout=self.timeout, helo_name=self.helo_name)


class Destination(Section):
    email: Email
    key: Fingerprint
    #: Referrals to it carry the verdict's ICCAM details (age group, gender, media, site type,
    #: flags): optional fields of referral/v1 that a reader validating against the schema
    #: shipped before them refuses, so off until its reader takes them (this release's does).
    iccam_details: bool = False
    #: The durations below count working hours ([deadlines]) instead of elapsed time.
    #: (Declared before them: their check reads it.)
    business_hours: bool = False
    #: The destination is to acknowledge a referral, and have the content removed, within
    #: these of its being sent; unset: no such deadline.
    acknowledge_within: DeadlineDuration = None
    remove_within: DeadlineDuration = None
    #: Past a deadline, a reminder at once and then every remind_every, up to max_reminders;
    #: then a supervisor is told (at once when remind_every is unset or max_reminders is 0).
    remind_every: DeadlineDuration = None
    max_reminders: Annotated[int, Field(ge=0, le=100)] = 3

    @model_validator(mode="after")
    def _deadlines_fit_together(self) -> Destination:
        if self.acknowledge_within is not None and self.remove_within is not None \
                and self.remove_within < self.acknowledge_within:
            raise ValueError("remove_within is shorter than acknowledge_within: content "
                             "cannot be due for removal before the referral is acknowledged")
        has_deadline = self.acknowledge_within is not None or self.remove_within is not None
        for name in ("remind_every", "business_hours"):
            if not has_deadline and getattr(self, name) not in (None, False):
                raise ValueError(f"{name}: set, but neither acknowledge_within nor "
                                 "remove_within is: there is no deadline to apply it to")
        return self

    def settings(self) -> routes.Destination:
        return routes.Destination(email=self.email, key=self.key,
                                  iccam_details=self.iccam_details)

    def deadline_policy(self, calendar: BusinessCalendar | None) -> DeadlinePolicy:
        """This destination's deadlines; ``calendar`` is what business hours mean, used only
        when ``business_hours`` is set."""
        return DeadlinePolicy(
            acknowledge_within=_timedelta(self.acknowledge_within),
            remove_within=_timedelta(self.remove_within),
            remind_every=_timedelta(self.remind_every), max_reminders=self.max_reminders,
            calendar=calendar if self.business_hours else None)


class HotlineDestination(Destination):
    """A partner hotline: also where our replies about its referrals to us go (outcome/v1,
    ``outbound.partner_outcomes``): ``reply_to``, else its ``email``."""

    reply_to: OptionalEmail = None

    @property
    def reply_address(self) -> str:
        return self.reply_to or self.email


def _timedelta(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


class RoutingConfig(Section):
    destinations: dict[Literal["police", "police_international"], Destination] = {}
    hotlines: dict[Country, HotlineDestination] = {}
    #: Corrections to the shipped INHOPE membership list: true adds a country, false removes.
    membership: dict[Country, bool] = {}

    def settings(self) -> routes.Destinations:
        return routes.Destinations(
            named={name: d.settings() for name, d in self.destinations.items()},
            hotlines={country: d.settings() for country, d in self.hotlines.items()})

    def uses_business_hours(self) -> bool:
        return any(d.business_hours for d in (*self.destinations.values(),
                                              *self.hotlines.values()))

    def deadline_policies(self, calendar: BusinessCalendar | None) -> dict[str, DeadlinePolicy]:
        """Each destination's deadlines by the name decisions give it (``police``,
        ``hotline:NL``), for those that have any."""
        named: dict[str, Destination] = {name: d for name, d in self.destinations.items()}
        named.update({f"hotline:{country}": d for country, d in self.hotlines.items()})
        policies = {name: d.deadline_policy(calendar) for name, d in named.items()}
        return {name: policy for name, policy in policies.items() if policy.active}


class DeadlinesConfig(Section):
    """What business hours mean, for destinations with ``business_hours = true``: these hours
    of these weekdays, in this time zone, less ``gateway.home_country``'s public holidays."""

    timezone: TimeZoneName = "Europe/Brussels"
    workday_start: ClockTime = time(9, 0)
    workday_end: WorkdayEnd = Field(default=time(17, 0), validate_default=True)
    workdays: Workdays = ["mon", "tue", "wed", "thu", "fri"]

    def calendar(self, home_country: str) -> BusinessCalendar:
        """The business calendar; ``LookupError`` when the holidays library does not know
        ``home_country``."""
        return BusinessCalendar.for_country(
            home_country, timezone=self.timezone, workday_start=self.workday_start,
            workday_end=self.workday_end,
            workdays=[WEEKDAYS.index(day) for day in self.workdays])


def _requirable(name: str) -> str:
    if name not in classification.REQUIRABLE:
        raise ValueError(f"unknown field {name!r}: "
                         f"one of {', '.join(classification.REQUIRABLE)}")
    return name


class AssessmentConfig(Section):
    four_eyes: bool = False
    #: The classification fields a verdict must carry (each for its own verdict: age_group,
    #: gender, media and site_type for illegal; reason for legal). [] requires none.
    require: list[Annotated[str, AfterValidator(_requirable)]] = list(
        classification.DEFAULT_REQUIRE)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.require)


class RetentionConfig(Section):
    #: How often the retention runs (once per such period across the instances on one
    #: database, periods counted from 1970-01-01 00:00 UTC): a day unless a test compresses it.
    every: PositiveDuration = 86400.0
    raw_message_days: PositiveInt = 30
    reporter_contact_days: PositiveInt = 90
    #: Mail at ``[outbound] reply_address`` that was not trusted (anyone can send it) is
    #: deleted this long after an analyst handled it; one still waiting for an analyst, and
    #: trusted and unread replies, are kept.
    untrusted_reply_days: PositiveInt = 30
    #: A case closed (closed_legal, removed, content_unavailable, not_actionable) this long
    #: is anonymised: it keeps its figures and loses its URLs, hosts, addresses and
    #: reporters' data (``gateway.store.anonymise``). None: never.
    anonymise_after_days: PositiveInt | None = None


class IntakeConfig(Section):
    attachments: Literal["hash-and-discard", "reject"] = "hash-and-discard"
    keep_reporter_ip: bool = False
    legal_window_days: PositiveInt = 180
    normalise: Literal["serve", "separate"] = "serve"


class DataConfig(Section):
    """The keys that seal what the database holds (gateway/store/sealing, docs/encryption.md)."""

    #: The keyring file (mode 0600; refused if group or others may read it).
    keyring: OptionalPath = Field(default="var/data-keys.json", validate_default=True)
    #: Under systemd, a credential of this name (``LoadCredentialEncrypted=NAME:FILE``) read
    #: from ``$CREDENTIALS_DIRECTORY`` instead of the file; empty: none.
    credential: CredentialName = None
