"""The gateway's exceptions: one tree for the domain, and which database errors mean "try again".

Domain code raises these; only the edges turn them into answers (the console and API into HTTP
statuses, the CLI into messages and exit codes). Nothing below knows about HTTP::

    GatewayError                 anything the gateway refuses or cannot do, said in words
    ├── NotFound                 no such case, referral, user, token, key
    ├── Conflict                 the thing exists, but its state does not allow this now
    │                            (a case already decided, a transition the lifecycle refuses)
    ├── NotAllowed               this person may not do this (role, four-eyes, own work)
    ├── Invalid                  the input is refused; ``fields`` names each field and why
    ├── Unavailable              a part the action needs is down (database, gpg, DNS);
    │                            the same request may succeed later
    └── Damaged                  what is stored, or the keys to read it, is broken: a fault
        │                        of the gateway's (corruption, tampering, a wrong or missing
        │                        keyring), not of the request; an operator must act
        ├── sealing.cipher.SealBroken     a sealed value does not open (FormatBroken,
        │                                 UnknownKey, TagMismatch)
        ├── sealing.cipher.WrongKeyring   not the keyring the database was sealed with
        └── sealing.keyring.KeyringError  missing, unreadable, readable by others, malformed

Specific refusals that callers tell apart are subclasses: ``people.UnknownUser`` (NotFound),
``routing.stage.CaseNotFound`` (NotFound), ``outbound.outbox.NotRetryable`` (Conflict), and
the sealing errors above (Damaged, under ``gateway.store.sealing``).

The edges, one mapping each: ``gateway.console.refusals.http_status`` (NotFound 404,
Conflict 409, NotAllowed 403, Invalid 422 with ``fields``, Unavailable 503, Damaged 500, any
other 400) for the console's pages and API, and ``gateway.exits.refused`` for the CLI (a
message on stderr; exit 2 for Invalid, 1 for the rest, 2 for every refusal of ``users`` and
``tokens``, which are about the names the operator typed).

Outside the tree, on purpose:

- Parsers of hostile input keep their own narrow errors and are caught where they are parsed
  (``intake.mime.MimeError``, ``intake.webreport.Invalid``, ``intake.encrypted.NotForUs``):
  a bad message or form is an answer to its sender (an SMTP reply, a form page), not a refusal
  of a staff action.
- Errors of a tool or a peer that the caller handles on the spot: ``routing.geo.GeoError``
  (a GeoIP database unreadable at start), ``outbound.gpg.GpgError`` (gpg said no),
  ``outbound.transports.Deferred``/``Rejected`` (the relay's 4xx/5xx, which the outbox turns
  into a retry or a failed referral), ``routing.resolve``'s private ``_Failed``/``_Final``.
- ``gateway.console.securitykeys.NoRelyingParty``: the console is reached by an address
  security keys cannot work with; the sign-in pages answer it on the spot.
- Start-up and tooling: ``gateway.config.ConfigError`` (exit 2 with every problem),
  ``gateway.backup.BackupError``, ``gateway.doctor.Failed``, ``gateway.app.GatewayFailed``
  (a part died while serving), ``gateway.store.writer.WriterClosed`` (shutdown under way).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


class GatewayError(Exception):
    """The root of the domain tree: the message is fit to show to the person who asked."""


class NotFound(GatewayError):
    """No such thing (a case, a referral, a user, a token)."""


class Conflict(GatewayError):
    """The thing exists but its current state does not allow the action."""


class NotAllowed(GatewayError):
    """The actor may not do this: their role, four-eyes, or their own earlier work forbids it."""


class Invalid(GatewayError):
    """The input is refused. ``fields`` maps each refused field to the reason."""

    def __init__(self, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields: dict[str, str] = dict(fields or {})


class Unavailable(GatewayError):
    """A part the action needs is down; trying again later may succeed."""


class Damaged(GatewayError):
    """Stored data, or the keys to read it, are broken (corruption, tampering, a keyring that
    is missing or not this database's): the gateway's fault, not the request's; trying again
    will not help until an operator acts."""


#: PostgreSQL: serialization failure and deadlock (the transaction was chosen to lose).
RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def retryable(exc: BaseException) -> bool:
    """The database is unavailable or made this transaction lose a race: nothing is wrong
    with the data, and the same work may succeed when tried again."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES
    return False
