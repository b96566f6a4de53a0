"""The CLI's exit codes, and its one mapping from the domain's refusals
(``gateway.store.errors``) to a message on stderr and an exit code."""

from __future__ import annotations

import argparse
import sys

from gateway.store.errors import GatewayError, Invalid

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Commands whose every refusal is about the names the operator typed (no such user, a name
#: taken, the last admin): a usage error, as these commands always answered.
USAGE_COMMANDS = frozenset({"users", "tokens"})


def command_of(args: argparse.Namespace) -> str:
    """The command as typed, e.g. ``cases relocate``."""
    command = str(args.command)
    action = getattr(args, command.replace("-", "_") + "_command", None)
    return f"{command} {action}" if action else command


def refused(args: argparse.Namespace, exc: GatewayError) -> int:
    """Say why, prefixed with the command; 2 for bad input (and the account commands), else 1
    (no such thing, not in a state for this, not allowed, a part unavailable)."""
    print(f"{command_of(args)}: {exc}", file=sys.stderr)
    if isinstance(exc, Invalid) or args.command in USAGE_COMMANDS:
        return EXIT_USAGE
    return EXIT_FAILURE
