"""`keys import`, `keys list` and `keys check` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from tests.outbound.conftest import Keys, run_gpg, stop_agent


def test_keys_import_list_and_check(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """Import the partners' keys; check passes for good pinned keys and fails (exit 1, naming
    the key and the problem) for an expired one or one that expires within warn_days."""
    home = tmp_path / "gnupg"
    config = tmp_path / "config.toml"
    exported = tmp_path / "partners.asc"
    run_gpg(keys.partner_home, "--armor", "--output", str(exported), "--export",
            keys.recipient, keys.expired)
    body = f"""
[gpg]
home = "{home}"
warn_days = 30
[routing.destinations.police]
email = "cp@police.test"
key = "{keys.recipient}"
"""
    config.write_text(body)
    try:
        assert main(["--config", str(config), "keys", "import", str(exported)]) == 0
        out = capsys.readouterr().out
        assert f"imported {keys.recipient}" in out and f"imported {keys.expired}" in out
        assert main(["--config", str(config), "keys", "list"]) == 0
        listing = capsys.readouterr().out
        assert f"public {keys.recipient}  usable" in listing
        assert f"public {keys.expired}  expired 2020-12-31" in listing
        # The signing key is not set: that alone fails the check.
        assert main(["--config", str(config), "keys", "check"]) == 1
        captured = capsys.readouterr()
        assert "gpg.signing_key: not set" in captured.err
        assert f"routing.destinations.police: {keys.recipient}: ok (encrypt)" in captured.out
        config.write_text(body + f"""[routing.hotlines.NL]
email = "nl@hotline-nl.test"
key = "{keys.expired}"
""")
        assert main(["--config", str(config), "keys", "check"]) == 1
        assert f"routing.hotlines.NL: {keys.expired}: expired 2020-12-31" in \
            capsys.readouterr().err
        # The good key expires within two years: a warn_days beyond that warns.
        config.write_text(body.replace("warn_days = 30", "warn_days = 800"))
        assert main(["--config", str(config), "keys", "check"]) == 1
        assert "expires in" in capsys.readouterr().err
        assert main(["--config", str(config), "keys", "import", str(config)]) == 1
    finally:
        stop_agent(home)


def test_keys_check_covers_the_hotlines_own_encryption_key(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """With encrypt_to_self (the default) `keys check` checks the hotline's own key for
    encryption too: the signing key's subkey, or gpg.archive_key, which fails by name when
    it cannot encrypt; with encrypt_to_self off it is not checked."""
    config = tmp_path / "config.toml"
    body = f"""
[gpg]
home = "{keys.hotline_home}"
signing_key = "{keys.hotline}"
[routing.destinations.police]
email = "cp@police.test"
key = "{keys.recipient}"
"""
    config.write_text(body)
    assert main(["--config", str(config), "keys", "check"]) == 0
    out = capsys.readouterr().out
    assert f"outbound.encrypt_to_self: {keys.hotline}: ok (encrypt)" in out
    config.write_text(body.replace("[routing", f'archive_key = "{keys.sign_only}"\n[routing', 1))
    assert main(["--config", str(config), "keys", "check"]) == 1
    assert f"gpg.archive_key: {keys.sign_only}: no valid encryption subkey" in \
        capsys.readouterr().err
    config.write_text(body + "[outbound]\nencrypt_to_self = false\n")
    assert main(["--config", str(config), "keys", "check"]) == 0
    assert "encrypt_to_self" not in capsys.readouterr().out
