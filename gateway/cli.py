"""``hotline-gateway [--config PATH] COMMAND``: the only place that exits the process.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error; a refusal of the domain
(``gateway.store.errors``) is mapped once, by ``gateway.exits.refused``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import cases_cli, checks, data_keys_cli, doctor, keys_cli, logs, report, staff_cli
from gateway import config as config_module
from gateway.app import GatewayFailed, normalise, serve
from gateway.backup import BackupError, backup
from gateway.config import Config, ConfigError
from gateway.console.accounts import utcnow
from gateway.console.passwords import passwords_for
from gateway.database import load_sealer, open_database
from gateway.demo import setup_demo
from gateway.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, refused
from gateway.notify import Notifier
from gateway.progress import Progress
from gateway.retention import purge
from gateway.stats import collect_stats
from gateway.store.audit import CLI_ACTOR
from gateway.store.audit import verify as verify_audit
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.errors import GatewayError
from gateway.store.figures import Period, period_problem
from gateway.store.lifecycle import Actor
from gateway.store.report import build_report
from gateway.store.resealing import BATCH
from gateway.store.sealing import KeyringError, WrongKeyring
from gateway.store.upgrade import NotSealed, Upgraded, require_sealed, upgrade_database
from outbound.outbox import retry_failed
from routing.geo import GeoError

T = TypeVar("T")

log = structlog.get_logger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotline-gateway", description=__doc__)
    parser.add_argument(
        "--config", type=Path, default=None,
        help="config file (default: ./config.toml, then /etc/hotline-gateway/config.toml)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the daemon in the foreground")
    serve_cmd.add_argument("--no-migrate", action="store_true",
                           help="do not apply database migrations at start")
    commands.add_parser("check-config", help="validate the config and the files it names")
    normalise_cmd = commands.add_parser(
        "normalise", help='file stored reports into cases (for [intake] normalise = "separate")')
    normalise_cmd.add_argument("--once", action="store_true",
                               help="work until the backlog is empty, then exit")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_upgrade = db_commands.add_parser(
        "upgrade", help="apply migrations, and seal what an older release wrote in clear "
                        "(resumable)")
    db_upgrade.add_argument("--batch-size", type=int, default=BATCH,
                            help="rows sealed per transaction")
    commands.add_parser("setup-demo", help="make the local directories and database (idempotent)")
    cases_cmd = commands.add_parser("cases", help="inspect cases")
    cases_commands = cases_cmd.add_subparsers(dest="cases_command", required=True, metavar="ACTION")
    cases_list = cases_commands.add_parser("list", help="cases, oldest first")
    cases_list.add_argument("--status", help="only cases in this state (awaiting_outcome: "
                            "referred or acknowledged)")
    cases_list.add_argument("--overdue", action="store_true",
                            help="only cases with a referral past a deadline it has not met")
    cases_list.add_argument("--limit", type=int, default=1000, help="at most this many")
    cases_list.add_argument("--json", action="store_true", help="print a JSON array")
    cases_show = cases_commands.add_parser("show", help="one case and the reports behind it")
    cases_show.add_argument("id", help="the case id")
    cases_show.add_argument("--json", action="store_true", help="print JSON")
    cases_relocate = cases_commands.add_parser(
        "relocate", help="look the case's host up again now and add the evidence")
    cases_relocate.add_argument("id", help="the case id")
    cases_relocate.add_argument("--json", action="store_true", help="print JSON")
    cases_reopen = cases_commands.add_parser(
        "reopen", help="send a case back to the analysts' queue (a closed, held or moved "
                       "case), audited with the reason")
    cases_reopen.add_argument("id", help="the case id")
    cases_reopen.add_argument("--reason", required=True, help="why, for the audit trail")
    cases_reopen.add_argument("--json", action="store_true", help="print the case as JSON")
    staff_cli.add_parsers(commands)
    data_keys_cli.add_parsers(commands)
    keys_cmd = commands.add_parser("keys", help="OpenPGP keys: ours and our destinations'")
    keys_commands = keys_cmd.add_subparsers(dest="keys_command", required=True,
                                            metavar="ACTION")
    keys_import = keys_commands.add_parser("import", help="import keys from an armored file")
    keys_import.add_argument("file", type=Path)
    keys_commands.add_parser("list", help="every key in the gpg home, with its state")
    keys_commands.add_parser(
        "check", help="the configured keys: exit 1 if one is missing, expired, revoked, weak "
                      "or expires within warn_days")
    referrals_cmd = commands.add_parser("referrals", help="referrals")
    referrals_commands = referrals_cmd.add_subparsers(dest="referrals_command", required=True,
                                                      metavar="ACTION")
    referrals_retry = referrals_commands.add_parser(
        "retry", help="queue a failed referral again (once its cause is fixed)")
    referrals_retry.add_argument("id")
    commands.add_parser("doctor", help="check the install end to end: config, database, "
                                       "keys, DNS, the way out, the running daemon")
    commands.add_parser("purge", help="apply [retention] now (serve also does it daily)")
    backup_cmd = commands.add_parser(
        "backup", help="a consistent copy of the SQLite database, while the daemon runs")
    backup_cmd.add_argument("path", type=Path)
    audit_cmd = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit_cmd.add_subparsers(dest="audit_command", required=True,
                                              metavar="ACTION")
    audit_commands.add_parser("verify", help="check the trail's hash chain")
    report.add_parser(commands)
    stats = commands.add_parser("stats", help="counts of submissions, cases and referrals")
    stats.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _load(args: argparse.Namespace) -> Config:
    return config_module.load(config_module.find(args.config))


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = config_module.find(args.config)
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    problems = checks.file_problems(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    problems = checks.file_problems(config)
    if problems:
        raise ConfigError(problems)
    logs.configure(config.gateway.log_level, config.gateway.log_format)
    notifier = Notifier()
    try:
        asyncio.run(_serve(config, notifier, upgrade_db=not args.no_migrate))
    finally:
        notifier.close()
    return EXIT_OK


def _cmd_normalise(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.gateway.log_level, config.gateway.log_format)

    async def run() -> int:
        if args.once:
            return await normalise(config, shutdown_trigger=asyncio.Event().wait, once=True)
        stop = _stop_on_signals()
        return await normalise(config, shutdown_trigger=stop.wait)

    processed = asyncio.run(run())
    if args.once:
        print(f"{processed} submissions normalised")
    return EXIT_OK


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or Ctrl-C; a second Ctrl-C exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            # A second Ctrl-C: the operator wants out now. Acknowledged reports are committed.
            log.warning("gateway.forced_exit")
            sys.stdout.flush()
            os._exit(EXIT_FAILURE)
        log.info("gateway.signal", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _serve(config: Config, notifier: Notifier, *, upgrade_db: bool) -> None:
    stop = _stop_on_signals()
    reload_requested = asyncio.Event()

    def on_hangup() -> None:
        log.info("gateway.signal", signal="SIGHUP")
        if config.path is None:
            log.warning("gateway.reload_impossible", reason="no config file to read again")
            notifier.ready("serving; reload impossible: no config file")
            return
        reload_requested.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hangup)
    path = config.path
    await serve(config, shutdown_trigger=stop.wait, notifier=notifier, upgrade_db=upgrade_db,
                reload_requested=reload_requested,
                load_config=(lambda: config_module.load(path)) if path is not None else None)


def _cmd_db(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.batch_size < 1:
        print("db upgrade: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> Upgraded:
        sealer = await load_sealer(config)
        engine = await open_database(config, sealer=sealer)
        try:
            return await upgrade_database(engine, sealer, batch=args.batch_size,
                                          progress=Progress())
        finally:
            await engine.dispose()

    done = asyncio.run(run())
    print(f"database at revision {done.after}"
          + ("" if done.before == done.after else f" (was {done.before})"))
    if done.sealed is not None:
        sealed = ", ".join(f"{t} {n}" for t, n in done.sealed.changed.items()) or "none"
        print(f"sealed rows: {sealed}; audit trail: {done.sealed.trail}")
        if done.sealed.broken:
            broken = ", ".join(f"{t} {n}" for t, n in done.sealed.broken.items())
            print(f"values that did not open, left as they are: {broken}", file=sys.stderr)
        print(done.cleared)
    for merged in done.merged:
        print(f"case {merged.removed} was filed again while the database was half sealed: "
              f"merged into case {merged.kept} ({merged.reports} reports moved)")
    if done.resealed is not None:
        print(f"audit trail: the chain before sealing ended at entry {done.resealed.seq} with "
              f"hash {done.resealed.old_hash}; that entry's hash is now "
              f"{done.resealed.new_hash} (recorded in the trail as audit.resealed)")
    if done.trail_altered is not None:
        print(f"db upgrade: audit trail entry {done.trail_altered.seq}: "
              f"{done.trail_altered.reason}: the trail was altered before the upgrade; it and "
              "the entries after it were left as they are (`audit verify` names it)"
              + (" [found by an earlier upgrade]" if done.found_earlier else ""),
              file=sys.stderr)
        # Once found, later runs say it again but do not fail (a package's upgrade step runs
        # db upgrade every time: the altered entry is evidence that stays, not a fault).
        return EXIT_OK if done.found_earlier else EXIT_FAILURE
    return EXIT_OK


def _cmd_setup_demo(args: argparse.Namespace) -> int:
    config = _load(args)
    for line in asyncio.run(setup_demo(config)):
        print(line)
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    config = _load(args)

    async def run() -> dict[str, object]:
        engine = await open_database(config)
        try:
            return await collect_stats(engine)
        finally:
            await engine.dispose()

    stats = asyncio.run(run())
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        for key, value in stats.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for name, count in sorted(value.items()):
                    print(f"  {name}: {count}")
            else:
                print(f"{key}: {value}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    problem = period_problem(args.first, args.last)
    if problem is not None:
        print(f"report: --to {problem.replace('from (', '--from (')}", file=sys.stderr)
        return EXIT_USAGE
    if args.top < 1:
        print("report: --top must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    config = _load(args)
    period = Period(args.first, args.last)
    made = asyncio.run(_with_connection(config, lambda conn: build_report(
        conn, period, home_country=config.gateway.home_country, now=utcnow(), top=args.top)))
    sys.stdout.write(report.RENDER[args.format](made))
    return EXIT_OK


async def _with_connection(config: Config, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = await open_database(config)
    try:
        async with engine.connect() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def _with_backend(config: Config, work: Callable[[WriteBackend], Awaitable[T]]) -> T:
    engine = await open_database(config)
    try:
        await require_sealed(engine)  # a command that writes waits for db upgrade to finish
    except NotSealed:
        await engine.dispose()
        raise
    backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
    try:
        return await work(backend)
    finally:
        await backend.close()
        await engine.dispose()


def _cmd_cases(args: argparse.Namespace) -> int:
    config = _load(args)
    return cases_cli.cmd_cases(
        args, config, lambda work: asyncio.run(_with_connection(config, work)),
        lambda work: asyncio.run(_with_backend(config, work)))


def _cmd_users(args: argparse.Namespace) -> int:
    config = _load(args)
    return staff_cli.cmd_users(args, lambda work: asyncio.run(_with_backend(config, work)),
                               passwords_for(config.console.password_hashing))


def _cmd_tokens(args: argparse.Namespace) -> int:
    config = _load(args)
    return staff_cli.cmd_tokens(args, lambda work: asyncio.run(_with_backend(config, work)))


def _cmd_keys(args: argparse.Namespace) -> int:
    return keys_cli.cmd_keys(args, _load(args))


def _cmd_referrals(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        referral_id = uuid.UUID(args.id)
    except ValueError:
        print(f"referrals retry: {args.id!r} is not a referral id", file=sys.stderr)
        return EXIT_USAGE
    asyncio.run(_with_backend(config, lambda backend: retry_failed(
        backend, referral_id, actor=Actor(CLI_ACTOR, "system"), now=utcnow())))
    print(f"referral {referral_id} queued again")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure("error", config.gateway.log_format, stream=sys.stderr)
    results = asyncio.run(doctor.run(config))
    print(doctor.report(results))
    return EXIT_OK if all(passed for _, passed, _ in results) else EXIT_FAILURE


def _cmd_purge(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.gateway.log_level, config.gateway.log_format, stream=sys.stderr)
    purged = asyncio.run(_with_backend(config, lambda backend: purge(
        backend, config.retention, now=utcnow(), actor=CLI_ACTOR)))
    print(f"removed the raw message of {purged.raw_messages} report(s) and the contact "
          f"details of {purged.contacts}, and {purged.untrusted_replies} untrusted "
          "reply(ies) handled more than untrusted_reply_days ago")
    if config.retention.anonymise_after_days is not None:
        print(f"anonymised {purged.anonymised_cases} case(s) closed more than "
              f"anonymise_after_days ago, and {purged.anonymised_submissions} report(s)")
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        count = backup(config.database.url, args.path)
    except BackupError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.path}: {count} reports, integrity ok")
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args)
    checked, broken, last_hash = asyncio.run(_with_connection(config, verify_audit))
    if broken is not None:
        print(f"audit verify: entry {broken.seq}: {broken.reason} "
              f"({checked} entries before it hold)", file=sys.stderr)
        return EXIT_FAILURE
    print(f"audit verify: {checked} entries, chain intact; last hash {last_hash}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "users": _cmd_users,
    "tokens": _cmd_tokens,
    "audit": _cmd_audit,
    "keys": _cmd_keys,
    "purge": _cmd_purge,
    "doctor": _cmd_doctor,
    "backup": _cmd_backup,
    "referrals": _cmd_referrals,
    "normalise": _cmd_normalise,
    "cases": _cmd_cases,
    "serve": _cmd_serve,
    "check-config": _cmd_check_config,
    "db": _cmd_db,
    "setup-demo": _cmd_setup_demo,
    "stats": _cmd_stats,
    "report": _cmd_report,
    "data-keys": lambda args: data_keys_cli.cmd_data_keys(args, _load),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyringError, WrongKeyring) as exc:
        # A keyring that is missing, unusable or not the database's: fix the configuration
        # (or restore the right file) before anything reads or seals.
        print(f"hotline-gateway: data keys: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotSealed as exc:
        print(f"hotline-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        return refused(args, exc)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except GatewayFailed as exc:
        print(f"hotline-gateway: stopped: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except GeoError as exc:
        print(f"hotline-gateway: locate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, SQLAlchemyError) as exc:
        print(f"hotline-gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
