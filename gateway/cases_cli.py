"""The ``cases`` commands (``list``, ``show``, ``relocate``, ``reopen``), and how every command
prints stored text: escaped, so that nothing a reporter wrote can steer the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import logs
from gateway.compose import make_locator
from gateway.config import Config
from gateway.console.accounts import utcnow
from gateway.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from gateway.store.audit import CLI_ACTOR, free_text
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, hosting_json, list_cases
from gateway.store.classification import labels
from gateway.store.lifecycle import Actor, move
from gateway.store.text import defang, plain_text, visible
from routing.locate import HostingEvidence
from routing.stage import relocate

T = TypeVar("T")
#: Runs a coroutine on a connection (``Connect``) or a write backend (``Run``) opened for the
#: command (the CLI's composition root).
Connect = Callable[[Callable[[AsyncConnection], Awaitable[T]]], T]
Run = Callable[[Callable[[WriteBackend], Awaitable[T]]], T]


def say(line: str) -> None:
    """Print one line of text output: stored text (what reporters wrote, URLs, names from
    keys and databases) never reaches the terminal with a control or bidi character in it."""
    print(visible(line))


def json_text(document: object, indent: int | None = None) -> str:
    """JSON for a terminal or a pipe: ``ensure_ascii`` writes every non-ASCII character
    (bidi controls and C1 included) as a ``\\uXXXX`` escape, as json writes C0; DEL, which
    JSON allows raw, is escaped too. A JSON reader gets the exact stored text back."""
    return json.dumps(document, indent=indent, ensure_ascii=True).replace("\x7f", "\\u007f")


def cmd_cases(args: argparse.Namespace, config: Config, connect: Connect[Any],
              run: Run[Any]) -> int:
    if args.cases_command == "list":
        found = connect(lambda conn: list_cases(conn, status=args.status, limit=args.limit,
                                                overdue=args.overdue))
        if args.json:
            print(json_text(found, indent=1))
        else:
            for item in found:
                target = defang(item["canonical_url"]) if item["canonical_url"] else ""
                if item.get("damaged"):  # what of it does not open, naming the record
                    target = f"(damaged: {'; '.join(item['damaged'])}) {target}".rstrip()
                target = target or "(no URL)"
                say(f"{item['id']}  {item['status']:<20} {_where(item['hosting']):<12} "
                    f"{item['report_count']:>4}  {item['first_reported']}  {target}")
        return EXIT_OK
    try:
        case_id = uuid.UUID(args.id)
    except ValueError:
        print(f"cases {args.cases_command}: {args.id!r} is not a case id", file=sys.stderr)
        return EXIT_USAGE
    if args.cases_command == "relocate":
        return _relocate(config, run, case_id, as_json=args.json)
    if args.cases_command == "reopen":
        reason = args.reason.strip()
        if not reason or len(reason) > MAX_REASON or not plain_text(reason):
            print(f"cases reopen: --reason must be text of 1 to {MAX_REASON} characters",
                  file=sys.stderr)
            return EXIT_USAGE
        status = run(lambda backend: reopen(backend, case_id, reason=reason))
        if not args.json:
            say(f"case {case_id} reopened: {status}")
            return EXIT_OK
    case: dict[str, Any] | None = connect(lambda conn: get_case(conn, case_id))
    if case is None:
        print(f"cases show: no case {case_id}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json_text(case, indent=1))
    else:
        _print_case(case)
    return EXIT_OK


#: The longest reason a reopening takes (as the console's).
MAX_REASON = 500


async def reopen(backend: WriteBackend, case_id: uuid.UUID, *, reason: str) -> str:
    """The operator sends a case back to the queue as a supervisor would (the lifecycle's
    ``reopen``: verdicts, routing decisions and referrals superseded, kept), audited as
    ``system:cli`` with the reason; the case's state after it. Refused (Conflict) in a state
    it cannot be reopened from; NotFound for no such case."""

    def work(conn: Connection) -> str:
        return move(conn, case_id, "reopen", actor=Actor(CLI_ACTOR, "system"), at=utcnow(),
                    details={"reason": free_text(reason)}).next

    return await backend.transaction(work)


def _print_case(case: dict[str, Any]) -> None:
    """``cases show`` as text, every line escaped. What reporters wrote is not printed: it holds
    URLs that a terminal would make links of (the console and ``--json`` show it)."""
    for key in ("id", "status", "kind", "report_count", "first_reported", "last_reported",
                "reappeared"):
        say(f"{key}: {case[key]}")
    if case["anonymised"]:
        say(f"anonymised: {case['anonymised']} (no URL, host or reporter data kept)")
    missing = "(anonymised)" if case["anonymised"] else "(no URL)"
    say(f"url: {defang(case['url']) if case['url'] else missing}")
    say(f"canonical_url: {defang(case['canonical_url']) if case['canonical_url'] else '-'}")
    say(f"hosting: {_hosting_line(case['hosting'])}")
    for referred in case.get("partner_referrals") or []:
        say(f"{referred['summary']} (report {referred['report']})")
    if case["assessment"]:
        a = case["assessment"]
        say(f"assessment: {a['verdict']} {a['classification']} by {a['by']} ({a['status']})")
        if labels(a):
            say(f"classification: {'; '.join(labels(a))}")
    if case["decision"]:
        d = case["decision"]
        say(f"decision: {d['rule']}: {d['explanation']}")
    for referral in case["referrals"]:
        say(f"referral: {referral['destination']} {referral['status']} "
            f"{referral['sent_at'] or ''}".rstrip())
        deadlines = referral["deadlines"]
        for chase in ("acknowledge", "remove"):
            if deadlines[f"{chase}_by"]:
                late = " (overdue)" if chase in deadlines["overdue"] else ""
                say(f"  {chase} by: {deadlines[f'{chase}_by']}{late}")
        for reminder in deadlines["reminders"]:
            say(f"  reminder: {reminder['chase']} #{reminder['number']} queued "
                f"{reminder['queued_at']}, {reminder['status']}")
        if deadlines["supervisor_flagged"]:
            flagged = deadlines["supervisor_flagged"]
            say(f"  supervisor flagged: {flagged['at']} ({flagged['chase']})")
        for outcome in referral["outcomes"]:
            reason = f" ({outcome['reason']})" if outcome["reason"] else ""
            who = outcome["recorded_by"] or f"{outcome['source']}:{outcome['destination']}"
            say(f"  outcome: {outcome['outcome']}{reason} at {outcome['occurred_at']}, "
                f"recorded {outcome['recorded_at']} by {who}")
    reached = [f"{name}={at}" for name, at in case["milestones"].items() if at]
    say("milestones: " + " ".join(reached))
    print("reports:")
    for report in case["reports"]:
        say(f"  {report['reference']}  {report['reported_at']}  {report['channel']}")
    print("hosting evidence:")
    for evidence in case["hosting_evidence"]:
        say(f"  {evidence['checked_at']}  {evidence['trigger']:<8} {_hosting_line(evidence)}")


def _where(hosting: dict[str, Any] | None) -> str:
    """A case's hosting in a word: its country, or its status when it has none."""
    if hosting is None:
        return "-"
    return str(hosting.get("country") or hosting["status"])


def _hosting_line(hosting: dict[str, Any] | None) -> str:
    if hosting is None:
        return "-"
    parts = [hosting["status"]]
    for key in ("country", "asn", "org", "source", "error", "damaged"):
        if hosting.get(key) is not None:
            parts.append(f"{key}={hosting[key]}")
    if hosting.get("ips"):
        parts.append("ips=" + ",".join(hosting["ips"]))
    return " ".join(parts)


def _relocate(config: Config, run_on: Run[HostingEvidence], case_id: uuid.UUID, *, as_json: bool
              ) -> int:
    logs.configure(config.gateway.log_level, config.gateway.log_format, stream=sys.stderr)

    async def run(backend: WriteBackend) -> HostingEvidence:
        locator = await make_locator(config)
        try:
            return await relocate(backend, locator, case_id, actor=CLI_ACTOR)
        finally:
            await locator.resolver.close()

    hosting = run_on(run)
    document = hosting_json(hosting, error=hosting.error)
    if as_json:
        print(json_text(document, indent=1))
    else:
        say(_hosting_line(document))
    return EXIT_OK if not hosting.failed else EXIT_FAILURE
