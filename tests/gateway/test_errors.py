"""The domain's refusals are mapped to HTTP statuses and exit codes at the edges, once each."""

from __future__ import annotations

import argparse

import pytest

from gateway.console.refusals import fields, http_status
from gateway.exits import EXIT_FAILURE, EXIT_USAGE, refused
from gateway.store.errors import (
    Conflict,
    Damaged,
    GatewayError,
    Invalid,
    NotAllowed,
    NotFound,
    Unavailable,
)
from gateway.store.sealing.cipher import TagMismatch, WrongKeyring
from gateway.store.sealing.keyring import KeyringError


def test_each_refusal_has_its_http_status() -> None:
    """NotFound 404, Conflict 409, NotAllowed 403, Invalid 422 (with its fields),
    Unavailable 503, Damaged 500 (a broken seal or keyring: not the request's fault); the bare
    root 400."""
    assert [http_status(cls("x")) for cls in (NotFound, Conflict, NotAllowed, Invalid,
                                               Unavailable, Damaged, GatewayError)] == [
        404, 409, 403, 422, 503, 500, 400]
    assert http_status(TagMismatch(None, "the tag fails")) == 500
    assert http_status(WrongKeyring("another keyring")) == 500
    assert http_status(KeyringError("missing")) == 500
    assert fields(Invalid("bad", {"country": "two letters"})) == {"country": "two letters"}
    assert fields(Conflict("no")) == {}


def test_the_cli_says_why_and_exits_by_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input exits 2, the other refusals 1; the account commands 2 for any refusal."""
    relocate = argparse.Namespace(command="cases", cases_command="relocate")
    assert refused(relocate, NotFound("no case 1")) == EXIT_FAILURE
    assert capsys.readouterr().err == "cases relocate: no case 1\n"
    assert refused(relocate, Invalid("bad")) == EXIT_USAGE
    users = argparse.Namespace(command="users", users_command="disable")
    assert refused(users, NotFound("no user named 'ana'")) == EXIT_USAGE
    assert capsys.readouterr().err.endswith("users disable: no user named 'ana'\n")
