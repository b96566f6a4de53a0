"""The normalise stage: committed submissions become reported URLs, attached to cases.

Each submission is processed exactly once, restartably, by any number of workers:

1. *claim*: one statement marks a batch of unprocessed submissions as ours until a lease runs
   out (PostgreSQL skips rows another worker has locked; SQLite has one writer at a time);
2. *parse*: MIME and URL extraction in the executor, off the event loop, never raising;
3. *apply*: one transaction per batch marks each submission ``parsed`` (or ``parse_failed``
   with its error) only if it is still unprocessed and ours, and attaches its URLs to cases.

Nothing is dropped silently: what a submission holds but cannot be filed is recorded on it as
a flag, which every case it reports shows: URLs beyond :data:`MAX_URLS` (how many were found,
how many filed), URLs longer than ``intake.urls.MAX_URL_LENGTH``, and a report that could not
be read at all, which becomes a ``no_url`` case of its own with the reason, for an analyst.

A crash anywhere before the apply commits leaves the submissions unprocessed; their lease runs
out and a worker takes them again. A worker whose lease ran out finds its guard fails and
applies nothing, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, StatementError

from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.errors import retryable
from gateway.store.key_holders import KEY_WAIT, KeyWaits, open_or_reload
from gateway.store.polling import PollingStage
from gateway.store.sealed import open_value, seal_values
from gateway.store.sealing import SealBroken, Sealer, UnknownKey
from gateway.store.tables import submissions
from intake import partners
from intake.cases import Filing, ReportedUrl
from intake.encrypted import Decrypt, NotForUs, decrypted_message, encrypted_payload, opened_mime
from intake.mime import MimeError, MimeLimits, parse_message
from intake.partners import Provenance, ReadReferral
from intake.urls import scan_urls
from intake.webreport import field_urls, read_back

log = structlog.get_logger("intake.normalise")

#: Reporter text kept for analysts, per submission.
MAX_REPORT_TEXT = 20_000
#: Submissions filed per transaction while reports are arriving.
APPLY_GROUP = 8

# A claimed submission's outcome, built once: per submission only the parameters change. It
# applies only while the submission is still ours to process.
_MARK_PARSED = (
    update(submissions)
    .where(submissions.c.id == bindparam("sid"), submissions.c.status == "received",
           submissions.c.claimed_by == bindparam("worker"))
    .values(status=bindparam("new_status"), parsed_at=bindparam("new_parsed_at"),
            parse_error=bindparam("new_parse_error"), subject=bindparam("new_subject"),
            report_text=bindparam("new_report_text"), attachments=bindparam("new_attachments"),
            url_count=bindparam("new_url_count"), flags=bindparam("new_flags"),
            claimed_by=None, claimed_until=None)
)
#: The key of a claimed submission's outcome that holds its provenance row, if any.
_PROVENANCE = "provenance"
#: URLs taken from one submission; more is not a report but a list, and is cut here (the
#: submission is flagged with how many there were).
MAX_URLS = 200
#: Distinct URLs counted in one submission for that flag; past it the flag says "at least".
#: Each costs about 20 us to read, so a 10 MB list of them costs at most ~0.4 s per text part
#: (instead of ~2 s to count all of its ~400,000).
MAX_COUNTED = 20_000


@dataclass(frozen=True, slots=True)
class Normalised:
    """What one submission reports; ``error`` set means it could not be parsed."""

    urls: list[ReportedUrl] = field(default_factory=list)
    subject: str | None = None
    report_text: str | None = None
    attachments: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None
    #: What could not be filed, and why (stored as the submission's ``flags``).
    flags: list[dict[str, object]] = field(default_factory=list)
    #: A partner hotline's referral, signed by its pinned key (``intake.partners``).
    provenance: Provenance | None = None


_LIMITS = MimeLimits()
# An HTML link meant as a web address (not mailto:, tel:, cid: or "#top"): when it holds no URL
# (``http://hello/``), the report's text shows it, since the text has only the anchor's words.
_WEB_LINK = re.compile(r"\s*(?:[a-z][a-z0-9+.-]*://|www\.)", re.IGNORECASE)


def normalise_message(raw: bytes, limits: MimeLimits = _LIMITS,
                      decrypt: Decrypt | None = None,
                      read_referral: ReadReferral | None = None) -> Normalised:
    """Parse an e-mailed report (decrypting it first when it is encrypted to us and
    ``decrypt`` is given; reading a partner hotline's referral in it with ``read_referral``);
    never raises (a failure is returned as ``error``)."""
    reading = None
    if read_referral is not None and (payload := encrypted_payload(raw)) and payload[0] == "mime":
        try:
            reading = read_referral(raw)
        except Exception as exc:  # a reader bug must mark the submission, not stop the stage
            return Normalised(error=f"internal: {type(exc).__name__}")
    if reading is not None and reading.undecryptable is not None:
        # gpg has tried already: asking it again (``decrypt``) would only fail again.
        return Normalised(error=f"pgp: cannot decrypt ({reading.undecryptable})")
    if reading is not None:
        raw = opened_mime(raw, reading.plaintext)
    elif decrypt is not None:
        try:
            inner = decrypted_message(raw, decrypt)
        except NotForUs as exc:
            return Normalised(error=f"pgp: cannot decrypt ({exc})")
        except Exception as exc:
            return Normalised(error=f"pgp: {type(exc).__name__}")
        if inner is not None:
            raw = inner
    try:
        message = parse_message(raw, limits)
    except MimeError as exc:
        return Normalised(error=f"mime: {exc}")
    except Exception as exc:  # a parser bug must mark the submission, not stop the stage
        return Normalised(error=f"internal: {type(exc).__name__}")
    found: dict[str, ReportedUrl] = {}
    too_long: Counter[int] = Counter()
    unfiled: dict[str, None] = {}
    # Links behind HTML anchors first: they are what the reporter clicked or pasted.
    for index, source in enumerate([*message.links, *message.texts]):
        scan = scan_urls(source, limit=MAX_COUNTED)
        # An HTML part's links and its text name the same URLs: count each length once.
        too_long |= Counter(scan.too_long)
        for url in scan.urls:
            if url.canonical not in found and len(found) < MAX_COUNTED:
                found[url.canonical] = ReportedUrl(url.text, url.url, url.canonical)
        if index < len(message.links) and not scan.urls and _WEB_LINK.match(source):
            unfiled[source] = None
    urls = list(found.values())
    flags: list[dict[str, object]] = []
    provenance = None
    if reading is not None and reading.candidate:
        provenance = partners.provenance_of(reading)
        named = partners.document_urls(reading.document)
        if provenance is not None:
            urls, too_long = named, Counter()  # their document says what they refer
        else:
            # Untrusted: an ordinary report, whose document's URL counts as written in it.
            flags.append(partners.untrusted_flag(reading))
            urls += [u for u in named if u.canonical not in found]
    texts = [t.strip() for t in message.texts if t.strip()]
    if unfiled:  # a link's target is not in the text: show the analyst what it was
        texts.append("Links that are not web addresses:\n" + "\n".join(unfiled))
    text = "\n\n".join(texts)
    return Normalised(
        urls=urls[:MAX_URLS],
        subject=message.subject,
        report_text=text[:MAX_REPORT_TEXT] or None,
        attachments=[a.to_json() for a in message.attachments],
        flags=_flags(len(urls), too_long) + flags,
        provenance=provenance,
    )


def _flags(found: int, too_long: Counter[int]) -> list[dict[str, object]]:
    """The flags for URLs found beyond the cap, and for URLs too long to take."""
    flags: list[dict[str, object]] = []
    if found > MAX_URLS:
        over: dict[str, object] = {"flag": "urls_over_cap", "found": found, "filed": MAX_URLS}
        if found >= MAX_COUNTED:
            over["more"] = True  # counting stopped: there are at least this many
        flags.append(over)
    if too_long:
        flags.append({"flag": "url_too_long", "length": max(too_long),
                      "count": too_long.total()})
    return flags


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    reference: str
    channel: str
    received_at: datetime
    raw: bytes | None  # as stored: sealed (opened in the executor)


def normalise_web(raw: bytes) -> Normalised:
    """A report from the web form or the API; never raises."""
    try:
        report = read_back(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Normalised(error=f"web: {type(exc).__name__}")
    found: dict[str, ReportedUrl] = {}
    for text in report.urls:
        # Each field holds one URL as the reporter typed it (defanged, wrapped, bare host…).
        for url in field_urls(text):
            if url.canonical not in found:
                found[url.canonical] = ReportedUrl(text, url.url, url.canonical)
    return Normalised(urls=list(found.values()), report_text=report.text)


#: Raw messages up to this size (sealed) are opened together before the batch is parsed.
_OPEN_AHEAD = 256 * 1024


def _opened(claimed: _Claimed, sealer: Sealer) -> bytes | Normalised:
    """``claimed``'s raw message opened, or the outcome of one that does not open.
    ``UnknownKey`` when it is under a key this process lacks even after reading its keyring
    again (a rotation under way elsewhere): not damage, tried later."""
    if claimed.raw is None:
        return Normalised(error="raw message no longer stored")
    stored = claimed.raw
    try:
        raw: bytes = open_or_reload(sealer, lambda: open_value(
            sealer, submissions.c.raw, claimed.id, stored))
    except UnknownKey:
        raise
    except SealBroken as exc:  # altered or copied in: the message names the record, not the value
        return Normalised(error=f"sealed: {exc}")
    return raw


def _parsed(claimed: _Claimed, raw: bytes, decrypt: Decrypt | None = None,
            read_referral: ReadReferral | None = None) -> Normalised:
    if claimed.channel == "smtp":
        return normalise_message(raw, decrypt=decrypt, read_referral=read_referral)
    if claimed.channel in ("web", "api"):
        return normalise_web(raw)
    return Normalised(error=f"no normaliser for channel {claimed.channel!r}")


def _outcome(claimed: _Claimed, result: Normalised, sealer: Sealer) -> dict[str, Any]:
    """What ``_MARK_PARSED`` writes back for ``claimed``, sealed for its record."""
    flags = (result.flags if result.error is None
             else [{"flag": "parse_failed", "error": result.error}])
    sealed = seal_values(sealer, submissions, claimed.id, {
        "parse_error": result.error,
        "subject": result.subject,
        "report_text": result.report_text,
        # None rather than an empty list: one value fewer to seal, and readers take None as [].
        "attachments": result.attachments or None,
        "flags": flags or None,
    })
    outcome: dict[str, Any] = {
        "sid": claimed.id,
        "new_status": "parse_failed" if result.error else "parsed",
        "new_parse_error": sealed["parse_error"],
        "new_subject": sealed["subject"],
        "new_report_text": sealed["report_text"],
        "new_attachments": sealed["attachments"],
        "new_url_count": len(result.urls),
        "new_flags": sealed["flags"],
    }
    if result.provenance is not None and result.error is None:
        outcome[_PROVENANCE] = partners.provenance_row(sealer, result.provenance, claimed.id,
                                                       claimed.received_at)
    return outcome


def _normalise_all(batch: Sequence[_Claimed], sealer: Sealer, decrypt: Decrypt | None = None,
                   read_referral: ReadReferral | None = None,
                   ) -> list[tuple[Normalised, dict[str, Any]] | UnknownKey]:
    """Each submission opened, parsed, and its outcome sealed (in the executor: a raw
    message and a report's text are too large to seal or open on the event loop); in place
    of one under a key this process lacks, that ``UnknownKey``.

    In three passes over the batch, every opening, then every parse, then every sealing,
    rather than the three for each submission in turn: parsing a message pushes the cipher's
    code and tables out of the CPU's caches, and a call into it that finds them gone costs
    several times one that follows another (bench/normalise.py: about 6 of the 7 us each
    of the outcome's values cost in the stage when sealed after their own parse)."""
    def opening(claimed: _Claimed) -> bytes | Normalised | UnknownKey:
        try:
            return _opened(claimed, sealer)
        except UnknownKey as exc:
            return exc

    # A large message is opened just before its parse: opened ahead, the batch's would all be
    # held in clear at once beside their sealed copies.
    ahead = [opening(claimed) if claimed.raw is None or len(claimed.raw) <= _OPEN_AHEAD
             else None for claimed in batch]
    parsed: list[Normalised | UnknownKey] = []
    for claimed, raw in zip(batch, ahead, strict=True):
        if raw is None:
            raw = opening(claimed)
        parsed.append(raw if isinstance(raw, (Normalised, UnknownKey))
                      else _parsed(claimed, raw, decrypt, read_referral))
    return [result if isinstance(result, UnknownKey)
            else (result, _outcome(claimed, result, sealer))
            for claimed, result in zip(batch, parsed, strict=True)]


class NormaliseStage(PollingStage):
    """Moves submissions from ``received`` to ``parsed`` / ``parse_failed``, making cases."""

    name = "normalise"
    holding: leases.Holding

    def __init__(
        self,
        backend: WriteBackend,
        executor: Executor | None,
        *,
        worker: str,
        legal_window: timedelta,
        batch_size: int = 32,
        lease: timedelta = leases.LEASE,
        idle_poll: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        intake_busy: Callable[[], bool] = lambda: False,
        max_defer: float = 1.0,
        decrypt: Decrypt | None = None,
        read_referral: ReadReferral | None = None,
    ) -> None:
        self._backend = backend
        self._sealer = backend.sealer
        self._executor = executor
        #: Decrypts reports encrypted to the hotline (runs in the executor, blocking).
        self._decrypt = decrypt
        #: Reads partner hotlines' referrals in PGP/MIME reports (in the executor, blocking);
        #: a reload of the config replaces it (the partners' keys may change).
        self.read_referral = read_referral
        self._worker = worker
        self._legal_window = legal_window
        self._batch_size = batch_size
        self._lease = lease
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        self.holding = leases.Holding(backend, submissions, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self._intake_busy = intake_busy
        self._max_defer = max_defer
        #: Called after a batch filed reports into cases (the locate stage's wake-up).
        self.on_filed: Callable[[], None] | None = None
        self.processed = 0
        self.failed = 0
        #: Partner hotlines' referrals filed with their provenance, and candidates not trusted.
        self.partner_referrals = 0
        self.partner_untrusted = 0
        #: Partner referrals delivered again (filed once), and those of the current batch.
        self.partner_repeats = 0
        self._repeated: set[uuid.UUID] = set()
        #: Submissions put off because their message is under a key this process lacks.
        self.key_waits = KeyWaits("normalise")

    async def release(self) -> int:
        """Hand back every unprocessed submission this worker has claimed; how many."""
        return await self._backend.transaction(partial(
            leases.release, table=submissions, worker=self._worker,
            where=submissions.c.status == "received"))

    async def before_batch(self) -> None:
        """Intake comes first: while reports are arriving, a batch waits for a quiet moment,
        but never longer than ``max_defer``, so the stage always makes progress."""
        # "Busy" is a time window, not an event: look again every 50 ms, up to max_defer.
        for _ in range(round(self._max_defer / 0.05)):
            if self._stopping or not self._intake_busy():
                return
            await asyncio.sleep(0.05)

    async def after_failure(self) -> None:
        await self.release_quietly()  # taken again at once, not when the lease runs out

    async def run_once(self) -> int:
        """Claim, parse and apply one batch; the number of submissions it took."""
        now = self._clock()
        until = now + self._lease
        claimed = await self._backend.transaction(partial(self._claim, now=now, until=until))
        if not claimed:
            return 0
        async with self.holding.keep([item.id for item in claimed], until):
            return await self._work(claimed)

    async def _work(self, claimed: list[_Claimed]) -> int:
        """Parse and apply the claimed batch (held meanwhile); how many it took."""
        loop = asyncio.get_running_loop()
        # One executor call per batch: each hand-off between threads costs a GIL switch.
        results = await loop.run_in_executor(
            self._executor, partial(_normalise_all, claimed, self._sealer, self._decrypt,
                                     self.read_referral))
        pairs = []
        later: list[tuple[_Claimed, UnknownKey]] = []
        for item, done in zip(claimed, results, strict=True):
            if isinstance(done, UnknownKey):
                later.append((item, done))
            else:
                pairs.append((item, *done))
                self.key_waits.done(item.id)
        if later:  # not damaged: under a key a rotation elsewhere added; tried again later
            await self._backend.transaction(partial(
                leases.put_off, table=submissions, worker=self._worker,
                ids=[item.id for item, _ in later], until=self._clock() + KEY_WAIT))
            for item, error in later:
                self.key_waits.met(item.id, error, self._clock())
        applied = 0
        start = 0
        while start < len(pairs):
            # While reports are arriving, short transactions of a few submissions each:
            # intake's commits interleave with them instead of waiting behind a whole batch
            # (they share the database's one writer). Otherwise the rest of the batch goes in
            # one transaction: one sync, and reports naming the same case share one statement.
            group = APPLY_GROUP if self._intake_busy() else len(pairs)
            applied += await self._apply_group(pairs[start : start + group])
            start += group
        failed = 0
        for item, result, _ in pairs:
            if result.error is not None:
                failed += 1
                log.warning("normalise.parse_failed", reference=item.reference,
                            error=result.error)
            repeat = item.id in self._repeated
            self._repeated.discard(item.id)
            trusted, untrusted = partners.log_filed(item.reference, result.provenance,
                                                    result.flags, repeat=repeat)
            self.partner_referrals += trusted
            self.partner_repeats += repeat
            self.partner_untrusted += untrusted
        self.processed += applied
        self.failed += failed
        if applied and self.on_filed is not None:
            self.on_filed()
        log.info("normalise.batch", claimed=len(claimed), applied=applied, parse_failed=failed)
        return len(claimed)

    async def _apply_group(self, group: list[tuple[_Claimed, Normalised, dict[str, Any]]]
                           ) -> int:
        """File a group in one transaction; if the database refuses what one submission
        holds, file the others one by one and mark that one parse_failed with the reason."""
        try:
            return await self._apply_racing(group)
        except StatementError as exc:
            if retryable(exc):
                raise  # the database is unavailable or chose us to lose a race: try later
            if len(group) > 1:
                applied = 0
                for pair in group:
                    applied += await self._apply_group([pair])
                return applied
            claimed, _, _ = group[0]
            refused = Normalised(error=f"store: {type(exc).__name__}")
            outcome = _outcome(claimed, refused, self._sealer)
            return await self._backend.transaction(
                partial(self._apply, results=[(claimed, refused, outcome)], now=self._clock())
            )

    async def _apply_racing(self, group: list[tuple[_Claimed, Normalised, dict[str, Any]]]
                            ) -> int:
        """File a group; when another worker filed the same partner referral meanwhile (a
        copy delivered twice, read at once: the unique key refuses the second), once more:
        this time it is seen as filed, and filed once."""
        try:
            return await self._backend.transaction(partial(
                self._apply, results=group, now=self._clock(), repeated=self._repeated))
        except IntegrityError:
            if not any(_PROVENANCE in outcome for _, _, outcome in group):
                raise
            log.info("normalise.partner_referral_race")
            return await self._backend.transaction(partial(
                self._apply, results=group, now=self._clock(), repeated=self._repeated))

    def _claim(self, conn: Connection, *, now: datetime, until: datetime) -> list[_Claimed]:
        rows = leases.claim(
            conn, submissions, worker=self._worker, now=now, until=until,
            where=[submissions.c.status == "received"], order_by=submissions.c.received_at,
            limit=self._batch_size,
            returning=[submissions.c.id, submissions.c.reference, submissions.c.channel,
                       submissions.c.received_at, submissions.c.raw])
        return [_Claimed(*row) for row in rows]

    def _apply(
        self, conn: Connection, *,
        results: Sequence[tuple[_Claimed, Normalised, dict[str, Any]]], now: datetime,
        repeated: set[uuid.UUID] | None = None,
    ) -> int:
        """File ``results``; a partner's referral filed already (by an earlier delivery, or
        earlier in this batch) is not filed again: its id goes in ``repeated``."""
        applied = 0
        filing = Filing(conn, now=now, legal_window=self._legal_window)
        provenance = []
        known = partners.filed_keys(conn, [o[_PROVENANCE] for _, _, o in results
                                           if _PROVENANCE in o])
        repeats: list[dict[str, Any]] = []
        for claimed, result, outcome in results:
            values = {**outcome, "worker": self._worker, "new_parsed_at": now}
            row = values.pop(_PROVENANCE, None)
            repeat = row is not None and partners.key_of(row) in known
            if repeat:
                values["new_flags"] = seal_values(self._sealer, submissions, claimed.id, {
                    "flags": [*result.flags, partners.repeat_flag(row)]})["flags"]
            if conn.execute(_MARK_PARSED, values).rowcount != 1:
                continue  # our lease ran out and another worker has taken it
            applied += 1
            if repeat:  # filed once: this delivery only goes in the case's history
                repeats.append(row)
                continue
            # Unreadable, it is still a report: a no_url case carries it to an analyst.
            filing.attach(claimed.id, claimed.received_at, result.urls)
            if row is not None:
                provenance.append(row)
                known.add(partners.key_of(row))
        partners.record(conn, provenance, filing.flush(), now=now)
        partners.record_repeats(conn, repeats, now=now)
        if repeated is not None:
            repeated.update(row["submission_id"] for row in repeats)
        return applied
