"""Normalise throughput: the normalise stage against the bare stdlib MIME parser, on one core.

The corpus is generated deterministically (seeded): typical e-mailed reports of 2-5 KB with CRLF
line ends, plain-text, HTML-only, multipart/alternative or forwarded (message/rfc822), in 7-bit,
8-bit, quoted-printable or base64 and us-ascii, UTF-8, ISO-8859-1 or windows-1252; ~5% carry a
PNG, stored as intake stores it (its placeholder, by ``intake.mime.strip_attachments``); ~3% have
no URL. URLs are written as people write them (scheme-less, www., hxxp and [.], <...>, tracking
parameters, inside an Outlook safelink or a Google /url?q= redirect) and drawn from a skewed pool,
so reports share cases. Reported hosts are reserved names only (example.com/.net/.org, .test,
.invalid, 192.0.2.0/24); the two wrappers keep the real host names that unwrapping recognises.

Each round measures in turn, in this process pinned to one CPU: (a) the floor, stdlib
``BytesParser(policy=default).parsebytes`` plus ``get_content()`` on every text part; (b)
``normalise_message`` per submission; (c) the stage end to end, ``NormaliseStage.run_once()``
until it finds no work, on a fresh SQLite database (WAL, synchronous=FULL) holding the corpus as
submissions (stored beforehand with ``SubmissionWriter``, not timed): claim, parse in the loop's
default executor, case insert-or-attach, commit; logs go to a file as JSON at level info. Then it
checks every submission is parsed and the cases and case reports are exactly those implied by the
generator's own record of the URLs it wrote. Run from the project root, on an idle machine:

    .venv/bin/python bench/normalise.py [--count N] [--rounds R] [--against TREE]

With ``--against TREE`` (another checkout, e.g. ``git worktree add --detach ../base REV``) it
then runs the stage of both checkouts round by round in one window (``bench/against.py``).

Exit status 0 when every check passed; the goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import html
import os
import quopri
import random
import sqlite3
import statistics
import struct
import sys
import tempfile
import textwrap
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import structlog

from gateway import logs
from gateway.config import DatabaseConfig
from gateway.store import migrate
from gateway.store.backend import open_write_backend
from gateway.store.engine import open_engine
from gateway.store.references import ReferenceAllocator
from gateway.store.sealed import bind_sealer
from gateway.store.sealing import Keyring, Sealer
from gateway.store.writer import NewSubmission, SubmissionWriter
from intake.canonical import canonicalize
from intake.mime import strip_attachments
from intake.normalise import Normalised, NormaliseStage, normalise_message

GOAL_RATE = 2000.0  # submissions/s on one core (the issue)
GOAL_RATIO = 0.5  # of the bare parser's rate (the issue)
BASE_DATE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

HOSTS = ["example.com", "www.example.com", "gallery.example.net", "img.example.org",
         "forum.example.com", "www.example.net", "share.example.org", "pics.test",
         "www.board.test", "files.host.invalid", "cdn.upload.test"]
PATHS = ["/gallery/{n}", "/t/{n}-photos", "/album.php?id={n}&p={k}", "/u/user{n}/", "/v/{h}",
         "/i/{h}.jpg", "/s/{h}?ref=share"]
TRACKING = ["utm_source=newsletter&utm_medium=email", "fbclid=IwAR{h}",
            "utm_campaign=spring&gclid={h}"]
SAYINGS = ["Please look at {} thanks.", "I found this: {}", "{}", "The link is {}.",
           "Someone posted {} in a group chat.", "This one too: {} (sent to my son)"]
NO_URL = ("There is a site with pictures of children that I think is illegal, but I closed it "
          "and cannot find the address again.")
ASCII = ["My nephew showed me this yesterday evening and I did not know who else to tell.",
         "I am not sure this is the right place to report it, but it looked very wrong.",
         "The page had many pictures of young children and the comments were disgusting.",
         "I only looked for a second and closed it, I did not download anything.",
         "It was shared in a chat group for parents of the school, which is scary.",
         "Please let me know if you need more information from me, I can call you."]
LATIN = ["Merci d'avance, je suis très inquiète pour ma fille.",
         "Mit freundlichen Grüßen, ich hoffe Sie können etwas tun.",
         "Ik heb het gezien op zaterdag, het café had wifi en mijn zoon keek mee."]
CP1252 = ["I\u2019m really worried \u2013 please help, it\u2019s the second time I see this.",
          "He said \u201cit\u2019s a joke\u201d but it isn\u2019t, they sell it for 20 \u20ac."]
SENTENCES = {"us-ascii": ASCII, "iso-8859-1": ASCII + LATIN,
             "windows-1252": ASCII + LATIN + CP1252, "utf-8": ASCII + LATIN + CP1252}
CODECS = {"us-ascii": "ascii", "iso-8859-1": "latin-1", "windows-1252": "cp1252",
          "utf-8": "utf-8"}
PLAIN_ENCODINGS = [("us-ascii", "7bit"), ("utf-8", "quoted-printable"), ("utf-8", "base64"),
                   ("iso-8859-1", "8bit"), ("iso-8859-1", "quoted-printable"),
                   ("windows-1252", "quoted-printable")]
SUBJECTS = ["Report", "Suspicious website", "FW: look at this", "Please check this link",
            "=?utf-8?q?Signalement_d=E2=80=99un_site?=", "=?iso-8859-1?q?Verd=E4chtige_Seite?="]
NAMES = ["Jan Peeters", "Marie Dubois", "Sam Taylor", "Anna Janssens", "Lukas Meier"]


@dataclass(frozen=True, slots=True)
class Report:
    raw: bytes
    message_id: str
    shape: str
    urls: tuple[str, ...]  # what the generator wrote, each plainly, before any spelling


def key(url: str) -> str:
    canonical = canonicalize(url)
    assert canonical is not None, url
    return canonical


def url_pool(rng: random.Random, size: int) -> list[str]:
    """Distinct URLs (by canonical form) on reserved hosts, some http, some https."""
    pool: dict[str, str] = {}
    while len(pool) < size:
        host = rng.choice(HOSTS) if rng.random() < 0.9 else f"192.0.2.{rng.randint(1, 254)}"
        path = rng.choice(PATHS).format(n=rng.randint(1, 99999), k=rng.randint(1, 9),
                                        h=f"{rng.getrandbits(40):010x}")
        url = f"{'https' if rng.random() < 0.4 else 'http'}://{host}{path}"
        pool.setdefault(key(url), url)
    return list(pool.values())


def wrapped(rng: random.Random, url: str) -> str:
    """`url` perhaps with tracking parameters, perhaps in a safelink or Google redirect."""
    h = f"{rng.getrandbits(48):012x}"
    if rng.random() < 0.25:
        url += ("&" if "?" in url else "?") + rng.choice(TRACKING).format(h=h)
    r, target = rng.random(), quote(url, safe="")
    if r < 0.15:
        return (f"https://eur0{rng.randint(1, 5)}.safelinks.protection.outlook.com/?url={target}"
                f"&data=05%7C02%7C%7C{h}%7C0%7C0%7C638662000000000000&sdata={h}%3D&reserved=0")
    if r < 0.25:
        return (f"https://www.google.com/url?q={target}&sa=D&source=editors"
                f"&ust=1700000000000000&usg=AOvVaw{h}")
    return url


def spelled(rng: random.Random, url: str) -> str:
    """`url` as a reporter might type it in plain text."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    r = rng.random()
    if r < 0.2 and scheme == "http" and (host.endswith((".com", ".net", ".org"))
                                         or host.startswith("www.")):
        text = rest
    elif r < 0.35:
        text = scheme.replace("tt", "xx") + "://" + host.replace(".", "[.]") + rest[len(host):]
    else:
        text = wrapped(rng, url)
    return f"<{text}>" if rng.random() < 0.15 else text


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def text_part(subtype: str, text: str, charset: str, cte: str) -> bytes:
    data = text.encode(CODECS[charset])
    if cte == "quoted-printable":
        data = quopri.encodestring(data)
    elif cte == "base64":
        data = base64.encodebytes(data)
    head = f'Content-Type: text/{subtype}; charset="{charset}"\nContent-Transfer-Encoding: {cte}\n'
    return crlf(head.encode("ascii") + b"\n" + data)


def multipart(subtype: str, parts: list[bytes], boundary: str) -> bytes:
    out = [f'Content-Type: multipart/{subtype};\r\n\tboundary="{boundary}"\r\n\r\n'.encode()]
    out += [b"--%s\r\n%s\r\n" % (boundary.encode(), part) for part in parts]
    return b"".join([*out, b"--%s--\r\n" % boundary.encode()])


def png(seed: int, size: int = 16) -> bytes:
    rows = b"".join(b"\0" + bytes((x * y + seed) % 256 for x in range(size * 3))
                    for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def headers(rng: random.Random, index: int, message_id: str, *, inner: bool) -> bytes:
    name = rng.choice(NAMES)
    date = format_datetime(BASE_DATE + timedelta(minutes=7 * index - (600 if inner else 0)))
    lines = [] if inner else [
        "Received: from mail.example.net (mail.example.net [192.0.2.25])",
        f"\tby mx.hotline.test with ESMTPS id {rng.getrandbits(40):010x}",
        f"\tfor <report@hotline.test>; {date}"]
    address = f"{name.lower().replace(' ', '.')}@example.{rng.choice(['com', 'net', 'org'])}"
    lines += [f"From: {name} <{address}>",
              "To: " + ("Lisa <lisa@example.net>" if inner else "Hotline <report@hotline.test>"),
              f"Subject: {rng.choice(SUBJECTS)}",
              f"Date: {date}", f"Message-ID: {message_id}", "MIME-Version: 1.0", ""]
    return "\r\n".join(lines).encode("ascii")


def build(seed: int, index: int, message_id: str, urls: tuple[str, ...], k: int
          ) -> tuple[bytes, str]:
    """One report with `k` filler sentences; the same bytes for the same arguments."""
    rng = random.Random(seed)
    shape = rng.choices(["plain", "html", "alternative", "forward"], [52, 10, 28, 10])[0]
    charset, cte = rng.choices(PLAIN_ENCODINGS, [35, 20, 12, 10, 10, 13])[0]
    attach = rng.random() < 0.05
    if shape != "plain":
        charset, cte = "utf-8", "quoted-printable"
    words = random.Random(~seed)  # filler of its own, so that `k` changes nothing else
    filler = [words.choice(SENTENCES[charset]) for _ in range(k)]
    half = len(filler) // 2
    paragraphs = [" ".join(filler[:half]), " ".join(filler[half:])]
    said = [rng.choice(SAYINGS).format(spelled(rng, u)) for u in urls] or [NO_URL]
    text = "\n\n".join(["Hello,", textwrap.fill(paragraphs[0], 76), "\n".join(said),
                        textwrap.fill(paragraphs[1], 76), f"Kind regards,\n{rng.choice(NAMES)}"])
    links = [f'<p>Please look at <a href="{html.escape(wrapped(rng, u))}">'
             f'{html.escape(u if rng.random() < 0.5 else "this page")}</a>.</p>' for u in urls]
    markup = "\n".join(['<html><head><meta charset="utf-8"><style>p{margin:0}</style></head>',
                        '<body><div dir="ltr"><p>Hello,</p>',
                        f"<p>{html.escape(paragraphs[0])}</p>",
                        *(links or [f"<p>{NO_URL}</p>"]), f"<p>{html.escape(paragraphs[1])}</p>",
                        "<p>Kind regards</p></div></body></html>"])
    boundary = f"----=_Part_{index}_{rng.getrandbits(32):08x}"
    if shape == "plain":
        entity = text_part("plain", text, charset, cte)
    elif shape == "html":
        entity = text_part("html", markup, "utf-8", rng.choice(["quoted-printable", "base64"]))
    else:
        entity = multipart("alternative", [text_part("plain", text, charset, cte),
                                           text_part("html", markup, charset, cte)], boundary)
    if shape == "forward":
        inner = headers(rng, index, f"<f{index}@mail.example.net>", inner=True) + entity
        note = text_part("plain", "Forwarding the message below that my daughter received.\n",
                         "us-ascii", "7bit")
        entity = multipart("mixed", [note, b"Content-Type: message/rfc822\r\n\r\n" + inner],
                           boundary + "_fwd")
    if attach:
        picture = crlf(b'Content-Type: image/png; name="screenshot.png"\n'
                       b'Content-Disposition: attachment; filename="screenshot.png"\n'
                       b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(png(seed)))
        entity = multipart("mixed", [entity, picture], boundary + "_att")
    raw = headers(rng, index, message_id, inner=False) + entity
    if attach:
        raw, _ = strip_attachments(raw)  # as intake stores it: the placeholder, not the bytes
    return raw, shape + (" +attachment" if attach else "")


def make_report(seed: int, index: int, urls: tuple[str, ...]) -> Report:
    """A report padded with filler sentences to a size drawn from 2.0-4.8 KB."""
    target = random.Random(seed + 1).randint(2000, 4800)
    message_id = f"<r{index}.{seed:08x}@mail.example.net>"
    base = len(build(seed, index, message_id, urls, 0)[0])
    per = max(1.0, (len(build(seed, index, message_id, urls, 8)[0]) - base) / 8)
    k = max(0, int((target - base) / per) - 1)
    raw, shape = build(seed, index, message_id, urls, k)
    while len(raw) < target:
        k += 1
        raw, shape = build(seed, index, message_id, urls, k)
    return Report(raw, message_id, shape, urls)


def generate(count: int, seed: int) -> list[Report]:
    rng = random.Random(seed)
    pool = url_pool(rng, max(20, count // 5))
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(pool))]
    reports = []
    for index in range(count):
        urls: list[str] = []
        if rng.random() >= 0.03:
            wanted = rng.choices((1, 2, 3), (60, 28, 12))[0]
            while len(urls) < wanted:
                if (url := rng.choices(pool, weights)[0]) not in urls:
                    urls.append(url)
        reports.append(make_report(rng.getrandbits(32), index, tuple(urls)))
    return reports


# --- measurements -------------------------------------------------------------------------


def run_floor(raws: list[bytes]) -> float:
    parser = BytesParser(policy=policy.default)
    start = time.perf_counter()
    for raw in raws:
        for part in parser.parsebytes(raw).walk():
            if part.get_content_maintype() == "text":
                part.get_content()
    return time.perf_counter() - start


def run_normalise(raws: list[bytes]) -> tuple[float, list[Normalised]]:
    start = time.perf_counter()
    results = [normalise_message(raw) for raw in raws]
    return time.perf_counter() - start, results


async def run_stage(reports: list[Report], database: Path,
                    stored: Callable[[], None] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds for the stage to drain a fresh database holding `reports`
    (stored first, untimed, through the writer as SMTP intake stores them; then `stored` is
    called, where given, before the stage starts)."""
    engine = await open_engine(
        DatabaseConfig(url=f"sqlite+aiosqlite:///{database}").settings())
    bind_sealer(engine, Sealer(Keyring.generate(datetime.now(UTC))))
    try:
        await migrate.upgrade(engine)
        backend = await open_write_backend(engine)
        try:
            writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
            task = asyncio.create_task(writer.run())
            now = datetime.now(UTC)
            await asyncio.gather(*(writer.submit(NewSubmission(
                channel="smtp", received_at=now + timedelta(microseconds=i), raw=r.raw,
                body_sha256=hashlib.sha256(r.raw).hexdigest(), message_id=r.message_id,
            )) for i, r in enumerate(reports)))
            await writer.stop()
            await task
            if stored is not None:
                stored()
            stage = NormaliseStage(backend, None, worker="bench",
                                   legal_window=timedelta(days=180), batch_size=64)
            cpu, start = time.process_time(), time.perf_counter()
            while await stage.run_once():
                pass
            return time.perf_counter() - start, time.process_time() - cpu
        finally:
            await backend.close()
    finally:
        await engine.dispose()


def check(database: Path, reports: list[Report]) -> tuple[str, bool]:
    """Statuses, cases and case reports against what the generator's record implies."""
    cases = len({key(u) for r in reports for u in r.urls}) + sum(not r.urls for r in reports)
    links = sum(max(1, len(r.urls)) for r in reports)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM submissions GROUP BY status"))
        got_cases, = conn.execute("SELECT count(*) FROM cases").fetchone()
        got_links, = conn.execute("SELECT count(*) FROM case_reports").fetchone()
    ok = statuses == {"parsed": len(reports)} and (got_cases, got_links) == (cases, links)
    return (f"statuses {statuses}; {got_cases} cases (expected {cases}), {got_links} case"
            f" reports (expected {links}): {'ok' if ok else 'MISMATCH'}"), ok


def verdict(rate: float, ratio: float) -> str:
    return (f">= {GOAL_RATE:,.0f}/s: {'PASS' if rate >= GOAL_RATE else 'MISS'} ({rate:,.0f}/s);"
            f" >= {GOAL_RATIO}x parser: {'PASS' if ratio >= GOAL_RATIO else 'MISS'}"
            f" ({ratio:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="reports (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="then the stage of another checkout (e.g. a git worktree of the "
                             "release before a change) against this one's, round by round; "
                             "'no-sealing': this checkout with the plaintext door")
    parser.add_argument("--paired", action="store_true",
                        help="with --against: run the two stages at the same time on one CPU "
                             "(each starts once both have stored their corpus), so that the "
                             "machine's noise falls on both alike; compares CPU time")
    args = parser.parse_args(argv)
    if args.paired and args.against is None:
        parser.error("--paired compares two stages: give --against too")
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be positive")
    # Before any thread starts: the loop's executor and the SQLite writer inherit the mask.
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[-1]})
    started = time.perf_counter()
    reports = generate(args.count, args.seed)
    raws, n = [r.raw for r in reports], len(reports)
    sizes = sorted(map(len, raws))
    print(f"normalise benchmark: {n} reports (seed {args.seed}, generated in"
          f" {time.perf_counter() - started:.1f} s), {sizes[0]}-{sizes[-1]} B (median"
          f" {sizes[n // 2]} B), {sum(len(r.urls) for r in reports)} URLs,"
          f" {len({key(u) for r in reports for u in r.urls})} distinct canonical,"
          f" {sum(not r.urls for r in reports)} without URL")
    print("  shapes: " + ", ".join(f"{s} {c}" for s, c in sorted(Counter(
        r.shape for r in reports).items())))
    print(f"  pinned to CPU {allowed[-1]} of {allowed} (loop, executor and SQLite threads);"
          f" python {sys.version.split()[0]}")
    rows: list[tuple[float, float, float]] = []
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="normalise-bench-") as tmp:
        log_path = Path(tmp) / "gateway.log"
        with log_path.open("w") as log_file:
            logs.configure("info", "json")
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(log_file))
            run_floor(raws[:100])  # warm-up, not counted
            run_normalise(raws[:100])
            for round_no in range(1, args.rounds + 1):
                floor = n / run_floor(raws)
                seconds, results = run_normalise(raws)
                if round_no == 1:
                    wrong = sum(r.error is not None or {u.canonical for u in r.urls}
                                != {key(u) for u in rep.urls}
                                for rep, r in zip(reports, results, strict=True))
                    all_ok &= wrong == 0
                    print(f"  generator check: {n - wrong}/{n} reports give exactly the"
                          " canonical URLs the generator wrote")
                database = Path(tmp) / f"round{round_no}.db"
                wall, cpu = asyncio.run(run_stage(reports, database))
                summary, ok = check(database, reports)
                all_ok &= ok
                rows.append((floor, n / seconds, n / wall))
                print(f"round {round_no}  a parser {floor:6.0f}/s   b normalise_message"
                      f" {n / seconds:6.0f}/s {n / seconds / floor:.2f}x   c stage"
                      f" {n / wall:6.0f}/s {n / wall / floor:.2f}x"
                      f" (CPU {cpu / n * 1e6:.0f} us/submission)\n         check: {summary}",
                      flush=True)
        log_lines = log_path.read_text().count("\n")
    a, b, c = (statistics.median(column) for column in zip(*rows, strict=True))
    print(f"\nmedians of {args.rounds} rounds ({log_lines} log lines written)\n"
          f"  a  stdlib parser + get_content  {a:7.0f}/s   1.00x\n"
          f"  b  normalise_message            {b:7.0f}/s   {b / a:.2f}x\n"
          f"  c  normalise stage, end to end  {c:7.0f}/s   {c / a:.2f}x\n"
          "goals (issue): >= 2,000 submissions/s on one core, and >= 0.5x the bare parser\n"
          f"  c  stage:             {verdict(c, c / a)}\n"
          f"  b  normalise_message: {verdict(b, b / a)}  (for reference)\n"
          f"checks: {'all passed' if all_ok else 'FAILED'}")
    if args.against is not None:
        import against

        all_ok &= against.compare(args.against, count=n, seed=args.seed, rounds=args.rounds,
                                  paired=args.paired)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
