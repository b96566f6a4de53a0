"""Config: the repository's config.toml works, and every mistake is an error naming its key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import checks
from gateway import config as config_module
from gateway.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def problems_of(data: dict[str, object], base: Path = Path("/srv/hotline")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_module.parse(data, base=base)
    return info.value.problems


def test_repository_config_is_valid_and_resolves_paths_against_its_folder() -> None:
    """The shipped config.toml loads, and its relative paths point inside the checkout."""
    config = config_module.load(REPO / "config.toml")
    assert config.gateway.home_country == "BE"
    assert config.gateway.data_dir == REPO / "var"
    assert config.database.url == f"sqlite+aiosqlite:///{REPO}/var/gateway.db"
    assert config.gpg.home == REPO / "var" / "gnupg"
    assert config.smtp.listen == [("127.0.0.1", 2525)]
    assert config.smtp.tls_cert is None
    assert config.outbound.transport == "file"


def test_empty_file_takes_documented_defaults() -> None:
    """Every key has a default: an empty config is a working one."""
    config = config_module.parse({}, base=Path("/srv/hotline"))
    assert config.smtp.recipients == ["report@hotline.test"]
    assert config.smtp.max_message_bytes == 10 * 1024 * 1024
    assert config.outbound.max_attempt_age == 3 * 86400
    assert config.gateway.reference_prefix == "CF"
    assert config.locate.cdn_asns == [13335, 16509, 54113, 20940]
    assert config.gateway.data_dir == Path("/srv/hotline/var")


def test_unknown_keys_are_errors_naming_them() -> None:
    """A misspelt key is never ignored: it is reported with its section."""
    assert problems_of({"smtp": {"max_mesage_bytes": 5}}) == ["smtp.max_mesage_bytes: unknown key"]
    assert problems_of({"nonsense": {}}) == ["nonsense: unknown key"]


def test_every_problem_is_reported_at_once() -> None:
    """All bad values are listed together, each with its dotted key."""
    problems = problems_of({
        "gateway": {"home_country": "be", "shutdown_grace": "soon"},
        "smtp": {"listen": ["localhost"], "max_message_bytes": "10"},
        "database": {"url": "mysql://x"},
        "outbound": {"tls": "maybe"},
    })
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == [
        "database.url", "gateway.home_country", "gateway.shutdown_grace", "outbound.tls",
        "smtp.listen.0", "smtp.max_message_bytes",
    ]


def test_types_are_not_coerced() -> None:
    """A string where a number or a boolean belongs is an error, not a guess."""
    assert problems_of({"assessment": {"four_eyes": "yes"}})[0].startswith("assessment.four_eyes:")
    assert problems_of({"retention": {"raw_message_days": 0}})[0].startswith(
        "retention.raw_message_days:")


def test_tls_cert_needs_its_key() -> None:
    """tls_cert without tls_key (or the reverse) is refused."""
    assert problems_of({"smtp": {"tls_cert": "cert.pem"}}) == [
        "smtp: tls_cert and tls_key are set together or not at all"]


def test_destinations_pin_keys_by_full_fingerprint() -> None:
    """A destination's key must be a 40-hex-digit fingerprint; names are the protocol's."""
    good = {"email": "cp@police.test", "key": "0123 4567 89AB CDEF 0123 4567 89ab cdef 0123 4567"}
    config = config_module.parse({"routing": {"destinations": {"police": good}}}, base=Path("/"))
    assert config.routing.destinations["police"].key == "0123456789ABCDEF0123456789ABCDEF01234567"
    problems = problems_of({"routing": {
        "destinations": {"cops": good, "police": {"email": "cp@police.test", "key": "ABCD1234"}},
        "hotlines": {"nl": good},
    }})
    assert any(p.startswith("routing.destinations.cops:") for p in problems)
    assert any(p.startswith("routing.destinations.police.key:") for p in problems)
    assert any(p.startswith("routing.hotlines.nl:") for p in problems)


def test_locate_overrides_name_a_network_or_a_domain() -> None:
    """An override is by network (v4 or v6) or by domain, exactly one."""
    config = config_module.parse({"locate": {"override": [
        {"network": "203.0.113.0/24", "country": "BE"},
        {"network": "2001:db8::/32", "country": "NL"},
        {"domain": "example.be", "country": "BE"},
    ], "nameservers": ["127.0.0.1:5353", "::1"]}}, base=Path("/"))
    assert config.locate.override[0].network == ipaddress.ip_network("203.0.113.0/24")
    assert config.locate.nameservers == [("127.0.0.1", 5353), ("::1", 53)]
    problems = problems_of({"locate": {"override": [
        {"country": "BE"}, {"network": "10.0.0.0/8", "domain": "x.be", "country": "BE"}]}})
    assert problems == [
        "locate.override.0: an override names exactly one of network or domain",
        "locate.override.1: an override names exactly one of network or domain",
    ]


def test_listen_addresses_accept_ipv6_in_brackets() -> None:
    """IPv6 listen addresses are written [addr]:port."""
    config = config_module.parse({"smtp": {"listen": ["[::1]:25", "0.0.0.0:2525"]}}, base=Path("/"))
    assert config.smtp.listen == [("::1", 25), ("0.0.0.0", 2525)]
    assert problems_of({"smtp": {"listen": ["127.0.0.1:70000"]}})[0].startswith("smtp.listen.0:")


@pytest.mark.parametrize(("data", "key"), [
    ({"smtp": {"recipients": []}}, "smtp.recipients"),
    ({"smtp": {"listen": []}}, "smtp.listen"),
    ({"smtp": {"timeout": "0s"}}, "smtp.timeout"),
    ({"database": {"busy_timeout": "0s"}}, "database.busy_timeout"),
    ({"smtp": {"hostname": "a\r\n250 evil"}}, "smtp.hostname"),
    ({"smtp": {"hostname": "mail.hotline.test\n"}}, "smtp.hostname"),
    ({"smtp": {"listen": ["127.0.0.1:\u0662\u0665"]}}, "smtp.listen.0"),
    ({"smtp": {"listen": ["::1:2525"]}}, "smtp.listen.0"),
    ({"smtp": {"listen": ["not a host:25"]}}, "smtp.listen.0"),
    ({"database": {"url": "postgresql+asyncpg://u@localhost"}}, "database.url"),
    ({"database": {"url": "sqlite+aiosqlite:///:memory:"}}, "database.url"),
    ({"smtp": {"recipients": ["report@hotline.test\x00"]}}, "smtp.recipients.0"),
])
def test_values_that_would_break_the_daemon_are_refused(data: dict[str, object], key: str) -> None:
    """Values that parse but cannot work (no listener, no recipient, zero timeouts, header
    injection, a database that is not a file) are refused, naming the key."""
    problems = problems_of(data)
    assert [p.split(":")[0] for p in problems] == [key], problems


def test_the_home_country_is_not_a_partner_hotline() -> None:
    """Reports hosted at home go to the national police, so hotlines.<home> is a mistake."""
    good = {"email": "x@hotline-be.test", "key": "0" * 40}
    problems = problems_of(
        {"gateway": {"home_country": "BE"}, "routing": {"hotlines": {"BE": good}}})
    assert problems[0].startswith("routing.hotlines.BE:")


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    """No file, or a file that is not TOML, is a config error that names the file."""
    with pytest.raises(ConfigError, match="no such file"):
        config_module.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp\nlisten = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_module.load(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        config_module.load(tmp_path)  # a directory


def test_referenced_files_are_checked(tmp_path: Path) -> None:
    """Certificates and databases the config names must exist."""
    config = config_module.parse(
        {"smtp": {"tls_cert": "c.pem", "tls_key": "k.pem"}, "locate": {"geoip_db": "geo.mmdb"},
         "console": {"tls_cert": "console.pem", "tls_key": "console.key"}},
        base=tmp_path,
    )
    assert checks.file_problems(config) == [
        f"smtp.tls_cert: {tmp_path / 'c.pem'} does not exist",
        f"smtp.tls_key: {tmp_path / 'k.pem'} does not exist",
        f"console.tls_cert: {tmp_path / 'console.pem'} does not exist",
        f"console.tls_key: {tmp_path / 'console.key'} does not exist",
        f"locate.geoip_db: {tmp_path / 'geo.mmdb'} does not exist",
    ]


toml_scalars = st.one_of(
    st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False),
    st.lists(st.text(max_size=10), max_size=3),
)


@given(
    section=st.sampled_from(["gateway", "database", "smtp", "http", "locate", "gpg", "outbound",
                             "routing", "retention", "intake", "nope"]),
    key=st.text(min_size=1, max_size=20),
    value=toml_scalars,
)
def test_arbitrary_values_load_or_fail_with_a_keyed_error(
    section: str, key: str, value: object
) -> None:
    """Whatever a config holds, loading gives a Config or a ConfigError whose lines name keys."""
    try:
        config_module.parse({section: {key: value}}, base=Path("/srv"))
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith(section) or p.startswith("routing.") for p in exc.problems)


def test_the_archive_key_is_pinned_and_used() -> None:
    """gpg.archive_key is a fingerprint, and only with encrypt_to_self; unset, referrals are
    also encrypted to the signing key (the default), or to nobody else when turned off."""
    key, other = "AB" * 20, "CD" * 20
    config = config_module.parse({"gpg": {"signing_key": key}}, base=Path("/"))
    assert config.outbound.encrypt_to_self is True and config.archive_key() == key
    config = config_module.parse({"gpg": {"signing_key": key, "archive_key": other.lower()}},
                                 base=Path("/"))
    assert config.archive_key() == other
    config = config_module.parse({"gpg": {"signing_key": key},
                                  "outbound": {"encrypt_to_self": False}}, base=Path("/"))
    assert config.archive_key() is None
    assert problems_of({"gpg": {"archive_key": "alice@hotline.test"}})[0].startswith(
        "gpg.archive_key:")
    assert problems_of({"gpg": {"archive_key": other},
                        "outbound": {"encrypt_to_self": False}})[0].startswith(
        "gpg.archive_key: set, but outbound.encrypt_to_self is false")


def test_the_reply_address_is_an_address_of_its_own() -> None:
    """outbound.reply_address: unset by default (no replies taken), an address (lower-cased),
    and never one of the report recipients."""
    assert config_module.parse({}, base=Path("/")).outbound.reply_address is None
    assert config_module.parse({"outbound": {"reply_address": ""}},
                               base=Path("/")).outbound.reply_address is None
    config = config_module.parse({"outbound": {"reply_address": "Replies@Hotline.test"}},
                                 base=Path("/"))
    assert config.outbound.reply_address == "replies@hotline.test"
    assert problems_of({"outbound": {"reply_address": "not an address"}})[0].startswith(
        "outbound.reply_address:")
    assert problems_of({"outbound": {"reply_address": "report@hotline.test"}})[0] == (
        "outbound.reply_address: also in smtp.recipients; replies and reports need "
        "addresses of their own")
