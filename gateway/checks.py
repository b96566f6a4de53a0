"""What a valid configuration can still get wrong: the files it names.

``gateway.config`` reads and validates config.toml and knows none of the packages; whether a
named file exists, and whether an ``.mmdb`` file is one that ``routing.geo`` can read, is checked
here, by ``check-config``, ``serve`` (at start and at each reload) and ``doctor``.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config
from routing.geo import GeoError, MmdbDatabase


def file_problems(config: Config) -> list[str]:
    """Problems with files the configuration refers to (checked at start and by check-config)."""
    problems: list[str] = []
    for section, name in (("smtp", config.smtp), ("http", config.http),
                          ("console", config.console)):
        for key in ("tls_cert", "tls_key"):
            value = getattr(name, key)
            if value is not None and not value.is_file():
                problems.append(f"{section}.{key}: {value} does not exist")
    for key in ("geoip_db", "asn_db"):
        value = getattr(config.locate, key)
        if isinstance(value, Path) and not value.is_file():
            problems.append(f"locate.{key}: {value} does not exist")
        elif isinstance(value, Path):
            try:
                MmdbDatabase(value).close()
            except GeoError as exc:
                problems.append(f"locate.{key}: not a MaxMind-format database ({exc})")
    passphrase = config.gpg.passphrase_file
    if passphrase is not None and not passphrase.is_file():
        problems.append(f"gpg.passphrase_file: {passphrase} does not exist")
    return problems
