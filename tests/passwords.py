"""The password hashing the tests use: argon2id at its cheapest (``[console] password_hashing
= "insecure-for-tests"``), so that making and checking accounts costs microseconds, not 64 MiB
and a tenth of a second each. What ships is proved once, in
tests/gateway/test_console_passwords.py."""

from __future__ import annotations

from gateway.console.passwords import passwords_for

CHEAP = passwords_for("insecure-for-tests")
