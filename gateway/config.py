"""The gateway's configuration: config.toml read once into frozen, typed objects.

Unknown keys and bad values are errors that name the key (``smtp.max_message_bytes: ...``).
Relative paths resolve against the folder of the config file, so a checkout runs from anywhere.
The sections are in ``gateway.config_sections`` and their value types in
``gateway.config_values``; each section turns into the settings object of the package that uses
it (``SmtpConfig.settings()``...), so that no package below the composition root imports this
module.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator

from gateway.config_sections import (
    AdminConfig,
    AssessmentConfig,
    ConsoleConfig,
    DatabaseConfig,
    DataConfig,
    DeadlinesConfig,
    GatewayConfig,
    GpgConfig,
    HttpConfig,
    IntakeConfig,
    LocateConfig,
    LocateOverride,
    OutboundConfig,
    RetentionConfig,
    RoutingConfig,
    Section,
    SmtpConfig,
)
from gateway.config_values import fully_qualified
from outbound.refer import ReferSettings
from routing.deadlines import DeadlinePolicy

# The composition root and the console import these sections from here.
__all__ = ["AdminConfig", "Config", "ConfigError", "ConsoleConfig", "DatabaseConfig",
           "LocateOverride", "RetentionConfig", "find", "load", "parse"]

DEFAULT_PATHS = (Path("config.toml"), Path("/etc/hotline-gateway/config.toml"))


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one ``key: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Config(Section):
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
    data: DataConfig = DataConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()

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

    @model_validator(mode="after")
    def _holidays_are_known(self) -> Config:
        if self.routing.uses_business_hours():
            try:
                self.deadlines.calendar(self.gateway.home_country)
            except LookupError as exc:
                raise ValueError(f"gateway.home_country: {exc}, which business_hours "
                                 "needs") from None
        return self

    def deadline_policies(self) -> dict[str, DeadlinePolicy]:
        """The deadlines of each destination that has any, by the name decisions give it
        (``police``, ``hotline:NL``): business time by ``[deadlines]`` where asked for."""
        calendar = self.deadlines.calendar(self.gateway.home_country) \
            if self.routing.uses_business_hours() else None
        return self.routing.deadline_policies(calendar)

    @model_validator(mode="after")
    def _reply_address_is_not_for_reports(self) -> Config:
        if self.outbound.reply_address in self.smtp.recipients:
            raise ValueError("outbound.reply_address: also in smtp.recipients; replies and "
                             "reports need addresses of their own")
        return self

    def archive_key(self) -> str | None:
        """The hotline's own key every referral is also encrypted to, or None (not wanted).
        Empty when wanted but no key is configured: a referral is then held."""
        if not self.outbound.encrypt_to_self:
            return None
        return self.gpg.archive_key or self.gpg.signing_key

    def refer_settings(self) -> ReferSettings:
        return ReferSettings(
            home_country=self.gateway.home_country, hotline_name=self.gateway.hotline_name,
            destinations=self.routing.settings(), signing_key=self.gpg.signing_key,
            archive_key=self.archive_key(), from_address=self.outbound.from_address,
            reply_address=self.outbound.reply_address)

    @model_validator(mode="after")
    def _helo_name(self) -> Config:
        """Unset, ``outbound.helo_name`` is the [smtp] hostname: the one name the hotline's
        mail already answers to. With the file transport no SMTP is spoken: nothing to name."""
        if self.outbound.helo_name is not None:
            return self
        try:
            helo = fully_qualified(self.smtp.hostname)
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
