"""The ``users`` and ``tokens`` commands: staff accounts and API tokens from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from gateway.config_values import PositiveDuration
from gateway.console import people
from gateway.console.accounts import (
    ROLES,
    add_user,
    create_token,
    list_tokens,
    revoke_tokens,
    utcnow,
)
from gateway.console.passwords import Passwords
from gateway.exits import EXIT_OK
from gateway.store.audit import CLI_ACTOR as ACTOR
from gateway.store.backend import WriteBackend
from gateway.store.errors import Invalid

T = TypeVar("T")
#: Runs a coroutine on a write backend opened for the command (the CLI's composition root).
_DURATION: TypeAdapter[float] = TypeAdapter(PositiveDuration)
Run = Callable[[Callable[[WriteBackend], Awaitable[T]]], T]


def add_parsers(commands: Any) -> None:
    """``users`` and ``tokens`` under the CLI's command parsers."""
    users_cmd = commands.add_parser("users", help="staff accounts")
    users_commands = users_cmd.add_subparsers(dest="users_command", required=True,
                                              metavar="ACTION")
    users_add = users_commands.add_parser(
        "add", help="create an account; prints a one-time password and the TOTP secret")
    users_add.add_argument("name")
    users_add.add_argument("--role", required=True, choices=list(ROLES))
    users_commands.add_parser("list", help="accounts with their state and last login")
    for action, text in MANAGE.items():
        users_commands.add_parser(action, help=text).add_argument("name")
    role = users_commands.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=list(ROLES))
    tokens_cmd = commands.add_parser("tokens", help="API tokens")
    tokens_commands = tokens_cmd.add_subparsers(dest="tokens_command", required=True,
                                                metavar="ACTION")
    create = tokens_commands.add_parser(
        "create", help="print a new API token for a user (alone on stdout)")
    create.add_argument("name")
    create.add_argument("--name", dest="token_name", metavar="TOKEN_NAME",
                        help="what the token is for (default: token-N)")
    create.add_argument("--expires", metavar="DURATION",
                        help='it stops working after this long, e.g. "90d"')
    create.add_argument("--survive-password-change", action="store_true",
                        help="keep working when the user's password is changed or reset")
    listing = tokens_commands.add_parser(
        "list", help="tokens with their state, expiry and last use (never the token)")
    listing.add_argument("name", nargs="?")
    revoke = tokens_commands.add_parser("revoke", help="revoke one token of a user, or all")
    revoke.add_argument("name")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token_name", nargs="?", metavar="TOKEN_NAME")
    which.add_argument("--all", action="store_true", help="every live token of the user")


MANAGE = {
    "disable": "refuse the user's logins and tokens; their sessions end",
    "enable": "let a disabled user in again",
    "unlock": "clear the wait after wrong codes",
    "reset-totp": "a new TOTP secret, shown once; sessions end",
    "reset-password": "a new one-time password, shown once; sessions end, tokens too "
                      "(unless made to survive it)",
    "logout": "end every session of the user",
    "remove-keys": "remove every security key of the user (a lost key); sessions end",
    "remove": "remove the account, its sessions and tokens (the audit keeps the name)",
}


def cmd_users(args: argparse.Namespace, run: Run[Any], passwords: Passwords) -> int:
    if args.users_command != "add":
        return _manage(args, run, passwords)
    new = run(lambda backend: add_user(backend, args.name, args.role, now=utcnow(),
                                       passwords=passwords))
    print(f"user:            {new.name} ({new.role})")
    print(f"password:        {new.password}   (works once: a new one is chosen at first login)")
    print(f"TOTP secret:     {new.totp_secret}")
    print(f"authenticator:   {new.otpauth_uri}")
    return EXIT_OK


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def cmd_tokens(args: argparse.Namespace, run: Run[Any]) -> int:
    if args.tokens_command == "revoke":
        token_name = None if args.all else args.token_name
        count = run(lambda backend: revoke_tokens(backend, args.name, now=utcnow(),
                                                  token_name=token_name))
        print(f"{count} token(s) of {args.name} revoked")
        return EXIT_OK
    if args.tokens_command == "list":
        return _list(run, args.name)
    expires = None
    if args.expires is not None:
        try:
            expires = timedelta(seconds=_DURATION.validate_python(args.expires))
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise Invalid(f"--expires: {message}", {"expires": message}) from exc
    token = run(lambda backend: create_token(
        backend, args.name, now=utcnow(), token_name=args.token_name, expires=expires,
        survive_password_change=args.survive_password_change))
    print(token)
    return EXIT_OK


def _list(run: Run[Any], name: str | None) -> int:
    tokens = run(lambda backend: list_tokens(backend, name))
    now = utcnow()
    rows = [("USER", "TOKEN", "STATE", "CREATED", "EXPIRES", "LAST USED", "PASSWORD CHANGE")]
    rows += [(t.user, t.name, t.state(now), _when(t.created_at), _when(t.expires_at),
              _when(t.last_used_at), "survives" if t.survives_password_change else "ends it")
             for t in tokens]
    _table(rows)
    return EXIT_OK


def _manage(args: argparse.Namespace, run: Run[Any], passwords: Passwords) -> int:
    action, now = args.users_command, utcnow()
    name: str = getattr(args, "name", "")
    if action == "list":
        found = run(people.list_users)
        rows = [("NAME", "ROLE", "STATE", "LAST LOGIN", "CREATED", "KEYS")]
        rows += [(u.name, u.role, u.state(now), _when(u.last_login_at), _when(u.created_at),
                  str(u.keys)) for u in found]
        _table(rows)
    elif action in ("disable", "enable"):
        run(lambda backend: people.set_disabled(backend, name, action == "disable",
                                                actor=ACTOR, now=now))
        print(f"{name} {action}d")
    elif action == "unlock":
        run(lambda backend: people.unlock(backend, name, actor=ACTOR, now=now))
        print(f"{name} unlocked")
    elif action == "reset-totp":
        new = run(lambda backend: people.reset_totp(backend, name, actor=ACTOR, now=now))
        print(f"TOTP secret:     {new.totp_secret}")
        print(f"authenticator:   {new.otpauth_uri}")
    elif action == "reset-password":
        password = run(lambda backend: people.reset_password(backend, name, actor=ACTOR,
                                                             now=now, passwords=passwords))
        print(f"password:        {password}   (works once: a new one is chosen at login)")
    elif action == "role":
        run(lambda backend: people.set_role(backend, name, args.role, actor=ACTOR, now=now))
        print(f"{name} is now {args.role}")
    elif action == "logout":
        count = run(lambda backend: people.end_sessions(backend, name, actor=ACTOR, now=now))
        print(f"{count} session(s) of {name} ended")
    elif action == "remove-keys":
        count = run(lambda backend: people.remove_keys(backend, name, actor=ACTOR, now=now))
        print(f"{count} security key(s) of {name} removed; their sessions ended")
    else:
        run(lambda backend: people.remove_user(backend, name, actor=ACTOR, now=now))
        print(f"{name} removed")
    return EXIT_OK


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
