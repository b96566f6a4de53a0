"""The systemd unit and its sysusers.d/tmpfiles.d snippets: systemd's own tools accept them,
the sandbox rates 2.0 or lower, and the unit says what the daemon relies on.

The systemd tools run only where they are installed (systemd 252 or later for
`systemd-analyze security --offline=yes`); the static checks run everywhere.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "hotline-gateway.service"
SYSUSERS = SYSTEMD / "hotline-gateway.sysusers.conf"
TMPFILES = SYSTEMD / "hotline-gateway.tmpfiles.conf"
UNIT_NAME = UNIT.name
PROGRAM = "/usr/bin/hotline-gateway"
CREDENTIAL_PATH = "/run/credentials/hotline-gateway.service/gpg-passphrase"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on PATH"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given, in order (systemd
    allows a key more than once, which configparser does not)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def only(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key}= should be set exactly once"
    return values[key][0]


def seconds(duration: str) -> float:
    """A systemd time span such as "30s", "1min 30s" or "90" (seconds) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", duration)
    assert parts, f"not a time span: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@needs_analyze
def test_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=yes` rates the unit's sandbox at 2.0 or lower."""
    # A root of its own, so drop-ins installed on this machine do not change the rating.
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT_NAME)
    result = run("systemd-analyze", "security", "--offline=yes", f"--root={tmp_path}", UNIT_NAME)
    if "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd 250 or later needed)")
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure level in the output:\n{output}"
    level = float(match.group(1))
    print(f"exposure level of {UNIT_NAME}: {level}")
    assert level <= MAX_EXPOSURE, output


@needs_analyze
def test_verify_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports no problem with the unit's own directives."""
    # verify checks that the program exists. It is not installed where the tests run, so a
    # copy of the unit names an executable that is there (the Python running the tests);
    # every other line of the unit is verified as written.
    text = UNIT.read_text()
    assert PROGRAM in text
    (tmp_path / UNIT_NAME).write_text(text.replace(PROGRAM, sys.executable))
    result = run("systemd-analyze", "verify", str(tmp_path / UNIT_NAME))
    # It exits 0 even for unknown keys and bad values, so the messages are what count: any
    # that names the unit is a problem (messages about other units on this host are not).
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if UNIT_NAME in line or str(tmp_path) in line
    ]
    assert problems == [], "\n".join(problems)
    assert result.returncode == 0, result.stderr


def test_unit_speaks_the_notify_protocol() -> None:
    """The unit waits for READY=1, expects watchdog pings from the main process only, and
    reloads with SIGHUP."""
    values = service()
    assert only(values, "Type") == "notify"
    assert only(values, "NotifyAccess") == "main"
    assert seconds(only(values, "WatchdogSec")) > 0
    reload = only(values, "ExecReload").split()
    assert re.fullmatch(r"-(SIG)?HUP", reload[1]), reload
    assert reload[-1] == "$MAINPID"
    assert only(values, "Restart") == "on-failure"
    assert seconds(only(values, "TimeoutStopSec")) > 10  # beyond the default shutdown_grace
    assert only(values, "ExecStart") == (
        f"{PROGRAM} --config /etc/hotline-gateway/config.toml serve"
    )


def test_unit_has_its_directories_and_the_passphrase_credential() -> None:
    """State and configuration directories are systemd-managed and the gpg passphrase comes
    as a credential whose path the unit's comments spell out for the config."""
    values = service()
    assert only(values, "StateDirectory") == "hotline-gateway"
    assert only(values, "ConfigurationDirectory") == "hotline-gateway"
    assert "gpg-passphrase:/etc/hotline-gateway/gpg-passphrase" in values["LoadCredential"]
    # systemd does not expand %d inside config.toml: the comment tells what to write there.
    assert f'passphrase_file = "{CREDENTIAL_PATH}"' in UNIT.read_text()


def test_unit_keeps_only_what_the_daemon_needs() -> None:
    """The daemon runs as its own user with CAP_NET_BIND_SERVICE alone, a read-only system,
    and the socket families it uses."""
    values = service()
    assert only(values, "User") == only(values, "Group") == "hotline-gateway"
    assert only(values, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert only(values, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    # In a user namespace the capability would not reach the host's network namespace.
    assert "PrivateUsers" not in values
    # It must reach DNS, remote mail servers and PostgreSQL wherever they are.
    assert "IPAddressDeny" not in values
    assert "PrivateNetwork" not in values
    assert set(only(values, "RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6"
    }
    assert only(values, "ProtectSystem") == "strict"
    assert only(values, "NoNewPrivileges") == "yes"
    assert only(values, "UMask") == "0077"
    # numpy's OpenBLAS calls mbind() (in @resources) at import: refused, not killed.
    assert only(values, "SystemCallErrorNumber") == "EPERM"
    # gpg and gpg-agent are run from /usr/bin: nothing may forbid executing there.
    assert "NoExecPaths" not in values
    assert "ExecPaths" not in values


def sysusers_entries() -> list[list[str]]:
    """The non-comment lines of the sysusers.d snippet, split like sysusers.d(5) does."""
    return [
        shlex.split(line) for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def create_users(root: Path) -> None:
    """Applies the sysusers.d snippet to an empty root of its own: systemd-sysusers writes
    only root/etc/{passwd,group,shadow,gshadow}."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, root / "usr/lib/sysusers.d/hotline-gateway.conf")
    result = run("systemd-sysusers", f"--root={root}", "hotline-gateway.conf")
    assert result.returncode == 0, result.stderr
    assert "hotline-gateway.conf:" not in result.stderr, result.stderr


def test_sysusers_snippet_declares_the_unit_user(tmp_path: Path) -> None:
    """The sysusers.d snippet creates the user the unit runs as, with the state directory
    as home, and systemd-sysusers accepts it where it is installed."""
    entries = sysusers_entries()
    assert entries == [
        ["u", "hotline-gateway", "-", "hotline-gateway daemon", "/var/lib/hotline-gateway"]
    ]
    assert only(service(), "User") == entries[0][1]
    if shutil.which("systemd-sysusers") is None:
        return  # the parse above is the whole check
    create_users(tmp_path)
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("hotline-gateway:"))
    assert user[5] == "/var/lib/hotline-gateway"
    assert "hotline-gateway:" in (tmp_path / "etc/group").read_text()


def test_tmpfiles_snippet_sets_the_config_modes(tmp_path: Path) -> None:
    """The tmpfiles.d snippet makes the config readable by the service's group and the
    passphrase by root only, and systemd-tmpfiles accepts it where it is installed."""
    entries = [
        line.split() for line in TMPFILES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert all(len(fields) == 7 and len(fields[0]) == 1 for fields in entries), entries
    modes = {fields[1]: (fields[2], fields[3], fields[4]) for fields in entries}
    assert modes["/etc/hotline-gateway/config.toml"] == ("0640", "root", "hotline-gateway")
    assert modes["/etc/hotline-gateway/gpg-passphrase"] == ("0600", "root", "root")
    if shutil.which("systemd-tmpfiles") is None or shutil.which("systemd-sysusers") is None:
        return  # the parse above is the whole check
    # A root of its own with the group in it (from the sysusers snippet) and both files.
    create_users(tmp_path)
    (tmp_path / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(TMPFILES, tmp_path / "usr/lib/tmpfiles.d/hotline-gateway.conf")
    config = tmp_path / "etc/hotline-gateway"
    config.mkdir()
    for name in ("config.toml", "gpg-passphrase"):
        (config / name).write_text("")
        (config / name).chmod(0o644)
    # --clean parses every line (names resolved) and changes nothing here: no line has an
    # age. Only root may chown, so only root also runs --create and checks the result.
    action = "--create" if os.geteuid() == 0 else "--clean"
    result = run("systemd-tmpfiles", f"--root={tmp_path}", action, "hotline-gateway.conf")
    assert result.returncode == 0, result.stderr
    assert "hotline-gateway.conf:" not in result.stderr, result.stderr
    if action == "--create":
        group = next(
            line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()
            if line.startswith("hotline-gateway:")
        )
        assert (config / "config.toml").stat().st_gid == int(group[2])
        assert (config / "config.toml").stat().st_mode & 0o7777 == 0o640
        assert (config / "gpg-passphrase").stat().st_mode & 0o7777 == 0o600
