"""What each kept shortcut into a dependency's private API buys, against its public path.

The project keeps such a shortcut only where the dependency is pinned to the tested range in
pyproject.toml (the stdlib: by the Python that runs the tests) and a test holds it equal to the
public path. This prints, for each, what the public path would cost instead:

  addresses    ``intake.smtp._Session._getaddr`` (aiosmtpd's private ``SMTP._getaddr``
               overridden: the plain form read directly) against aiosmtpd's own reading, per
               MAIL FROM / RCPT TO argument; held equal by tests/intake/test_smtp_address.py.
  parameters   ``intake.mime._Headers._get_params_preserve`` (the stdlib's private accessor
               under ``get_params``/``get_param``/``get_boundary``..., cached per entity) against
               the same reader without that cache, over bench/normalise.py's corpus through
               ``normalise_message``; held equal by tests/intake/test_mime.py.
  read buffer  ``intake.smtpstream.set_limit`` (asyncio's private ``StreamReader._limit``,
               reached through aiosmtpd's ``_reader``) against the public path, a reader made
               with the DATA limit for the whole session: how much of a client's pipelined
               commands one session buffers before the socket is paused; held equal by
               tests/intake/test_smtp_lines.py.

Run from the project root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python bench/private_paths.py [--rounds N]

Figures are the best of N rounds (the least disturbed); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from types import SimpleNamespace

import normalise as corpus  # bench/normalise.py: the script's folder is on sys.path
from aiosmtpd.smtp import SMTP

from intake import mime
from intake.normalise import normalise_message
from intake.smtpaddress import plain_address
from intake.smtpstream import set_limit

ARGUMENTS = ["<reporter@example.test>", "<report@hotline.test>",
             "<first.last+tag@mail.example.org> SIZE=2048 BODY=8BITMIME"]
#: The gateway's default smtp.max_message_bytes, and aiosmtpd's command line limit.
DATA_LIMIT = 10 * 1024 * 1024
COMMAND_LIMIT = SMTP.line_length_limit


def _best(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def addresses(rounds: int) -> None:
    stub = SimpleNamespace(local_part_limit=0)

    def aiosmtpd(arg: str) -> object:
        return SMTP._getaddr(stub, arg)  # type: ignore[arg-type]

    def gateway(arg: str) -> object:
        return plain_address(arg) or aiosmtpd(arg)

    def timed(read: Callable[[str], object], calls: int = 20_000) -> float:
        start = time.perf_counter()
        for i in range(calls):
            read(ARGUMENTS[i % len(ARGUMENTS)])
        return (time.perf_counter() - start) / calls * 1e6

    public, shortcut = _best(rounds, lambda: timed(aiosmtpd)), _best(rounds, lambda: timed(gateway))
    print(f"addresses    aiosmtpd's reading {public:6.1f} us/argument, the direct path "
          f"{shortcut:5.1f} us: {2 * (public - shortcut):5.1f} us of CPU saved per message "
          "(MAIL FROM and RCPT TO)")


class _NoParamCache(mime._Headers):
    """The gateway's header reader without its cache of parsed parameters (public accessors
    only: each reads the parameters anew, as the stdlib does)."""

    _get_params_preserve = EmailMessage._get_params_preserve  # type: ignore[assignment]


@contextlib.contextmanager
def _parser(factory: type[EmailMessage]) -> Iterator[None]:
    kept = mime._PARSER
    mime._PARSER = BytesParser(policy=kept.parser.policy.clone(message_factory=factory))
    try:
        yield
    finally:
        mime._PARSER = kept


def parameters(rounds: int, count: int) -> None:
    raws = [report.raw for report in corpus.generate(count, seed=1)]

    def timed(factory: type[EmailMessage]) -> float:
        with _parser(factory):
            start = time.perf_counter()
            for raw in raws:
                normalise_message(raw)
            return (time.perf_counter() - start) / len(raws) * 1e6

    shortcut = _best(rounds, lambda: timed(mime._Headers))
    public = _best(rounds, lambda: timed(_NoParamCache))
    print(f"parameters   normalise_message without the cache {public:6.0f} us/report, with it "
          f"{shortcut:6.0f} us: {public - shortcut:5.0f} us ({(public - shortcut) / public:.1%}) "
          f"saved per report ({len(raws)} reports)")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True


def _buffered_before_pause(reader: asyncio.StreamReader) -> int:
    """Bytes of pipelined commands a reader takes before it pauses the socket."""
    transport = _Transport()
    reader.set_transport(transport)
    fed = 0
    while not transport.paused:
        reader.feed_data(b"NOOP\r\n" * 100)
        fed += 600
    return fed


def read_buffer() -> None:
    async def measure() -> tuple[int, int]:
        raised_and_put_back = asyncio.StreamReader(limit=COMMAND_LIMIT)
        set_limit(raised_and_put_back, DATA_LIMIT + 3)
        set_limit(raised_and_put_back, COMMAND_LIMIT)
        one_limit = asyncio.StreamReader(limit=DATA_LIMIT + 3)
        return _buffered_before_pause(raised_and_put_back), _buffered_before_pause(one_limit)

    shortcut, public = asyncio.run(measure())
    print(f"read buffer  commands buffered per session before the socket pauses: "
          f"{shortcut / 1024:,.1f} KiB with the limit put back after DATA, "
          f"{public / 1024 / 1024:,.1f} MiB with one limit for the session "
          f"(x 100 sessions: {100 * public / 1024 ** 3:.1f} GiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--count", type=int, default=1000, help="reports (default 1000)")
    args = parser.parse_args(argv)
    addresses(args.rounds)
    parameters(args.rounds, args.count)
    read_buffer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
