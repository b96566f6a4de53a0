"""A history of known shape for the report's tests: cases over two quarters that take every
route and outcome, each made through the gateway's own code paths (filing, the lifecycle,
the console's assessment and ICCAM record, routing's store, the outcome recorder) at the
times its spec says, so that the expected figures follow from the specs alone.

``specs()`` says what happens to each case and when; ``build()`` makes it in a database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import Staff
from gateway.console.assess import Assessment, assess, record_iccam, reopen
from gateway.store.backend import WriteBackend
from gateway.store.classification import (
    AGE_GROUPS,
    GENDERS,
    MEDIA,
    REASONS,
    SITE_TYPES,
    Classification,
)
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import cases, hosting_evidence, referrals, submissions, users
from intake.cases import Filing, ReportedUrl
from routing.decide import store
from routing.locate import HostingEvidence
from routing.protocol import RoutingDecision
from routing.stage import evidence_row

HOME = "BE"
#: The two quarters the history covers, and how many cases each gets.
QUARTERS = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
PER_QUARTER = 120
CHANNELS = ("smtp", "web", "api")
#: Where each illegal route is hosted: country, AS number, organisation, destination, rule.
HOSTS = {
    "BE": (5432, "Proximus", "police", "protocol-1-domestic"),
    "NL": (1136, "KPN", "hotline:NL", "protocol-2-inhope"),
    "DE": (3320, "Deutsche Telekom", "hotline:DE", "protocol-2-inhope"),
    "US": (15169, "Google", "hotline:US", "protocol-2-inhope"),
    "FR": (16276, "OVH", "iccam:FR", "protocol-2-iccam"),
    "RU": (12389, "Rostelecom", "police_international", "protocol-2-police"),
}
#: How long after its referral the content of each removed case went down (i % 8), in
#: hours: on and either side of the 1, 3 and 7 day marks.
REMOVAL_HOURS = (6, 24, 25, 47, 72, 73, 168, 200)
ANA = Staff(uuid.UUID("00000000-0000-7000-8000-00000000a0a0"), "ana", "analyst")
SUE = Staff(uuid.UUID("00000000-0000-7000-8000-00000000a0a1"), "sue", "supervisor")


@dataclass(frozen=True)
class Spec:
    """One case's story. Times are None for what never happens to it."""

    quarter: int
    index: int
    channel: str
    received: datetime
    url: str | None  # None: a report without a URL
    duplicate: datetime | None  # a second report of the same URL (channel "web")
    route: str  # legal | unassessed | refer | iccam | hold
    country: str | None = None  # where the illegal content is (None: not found)
    status: str = "located"  # the hosting lookup's: located | cdn | unresolvable
    cdn: bool = False
    asn: int | None = None
    org: str | None = None
    destination: str | None = None
    rule: str | None = None
    assessed: datetime | None = None
    reason: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    referred: datetime | None = None
    acknowledged: datetime | None = None
    closed: str | None = None  # removed | not_actionable | content_unavailable
    closed_at: datetime | None = None
    na_reason: str | None = None
    acknowledge_by: datetime | None = None
    remove_by: datetime | None = None
    failed_lookup: bool = False  # a failed lookup after the good one (ignored)
    named: str | None = None  # the country the analyst named with the verdict
    failed: bool = False  # the referral's delivery failed (no outcome can follow)
    #: A legal verdict reopened by a supervisor and assessed illegal then (not routed yet).
    reassessed: datetime | None = None

    @property
    def host(self) -> str | None:
        """The host its URL names (every lookup of the case asks about it)."""
        return None if self.url is None else f"q{self.quarter}-{self.index}.example.test"

    @property
    def reporters(self) -> tuple[str, ...]:
        """The addresses its reports came from: the first's, then the duplicate's."""
        first = f"reporter-q{self.quarter}-{self.index}@mail.test"
        if self.duplicate is None:
            return (first,)
        return first, f"reporter-q{self.quarter}-{self.index}-again@mail.test"

    @property
    def illegal(self) -> bool:
        return self.route in ("refer", "iccam", "hold")

    def illegal_before(self, end: datetime) -> bool:
        """Whether its latest verdict recorded before ``end`` is illegal."""
        return self.illegal or (self.reassessed is not None and self.reassessed < end)


def spec(quarter: int, i: int) -> Spec:
    """The ``i``-th case of ``quarter``: its route is ``i % 12``, its details other moduli."""
    start = QUARTERS[quarter]
    # Spread over 90 days, so that the last ones' referrals and removals fall after the
    # quarter's end.
    received = start + timedelta(days=i * 3 // 4, hours=9 + i % 2)
    r, round_ = i % 12, i // 12
    url = f"http://q{quarter}-{i}.example.test/p/{i}"
    base = {"quarter": quarter, "index": i, "channel": CHANNELS[i % 3], "received": received,
            "url": url, "duplicate": received + timedelta(minutes=30) if i % 4 == 0 else None}
    assessed = received + timedelta(hours=2 + i % 5)
    if r == 1:
        if round_ % 2:
            return Spec(**base, route="unassessed")  # type: ignore[arg-type]
        base.update(url=None, duplicate=None)
        return Spec(**base, route="legal", assessed=assessed,  # type: ignore[arg-type]
                    reason="other")
    details: dict[str, object] = {
        "classification": "national" if i % 5 == 0 else "baseline",
        "age_group": list(AGE_GROUPS)[round_ % 3], "gender": list(GENDERS)[i % 4],
        "media": list(MEDIA)[i % 4], "site_type": list(SITE_TYPES)[i % len(SITE_TYPES)],
        "flags": frozenset(flag for flag, on in (("self_generated", i % 3 == 0),
                                                  ("computer_generated", i % 7 == 0),
                                                  ("commercial", i % 2 == 0)) if on)}
    if r == 0:
        reasons = list(REASONS)
        # One legal verdict a round is reassessed illegal 12 days on: in the next quarter for
        # the first quarter's (the quarter's report keeps the legal verdict).
        return Spec(**base, route="legal", assessed=assessed,  # type: ignore[arg-type]
                    reason=reasons[round_ % len(reasons)], country="NL", asn=1136, org="KPN",
                    details=details,
                    reassessed=assessed + timedelta(days=12) if round_ == 9 else None)
    extra = {"assessed": assessed, "details": details, "failed_lookup": i % 5 == 0}
    cdn = {"status": "cdn", "cdn": True, "asn": 13335, "org": "Cloudflare"}
    if r == 8 and round_ % 2:  # located, but the destination's key is missing
        return Spec(**base, route="hold", rule="hold-no-key",  # type: ignore[arg-type]
                    country="NL", asn=1136, org="KPN", **extra)
    if r in (8, 9) and not round_ % 2:
        hosting = {"status": "unresolvable"} if r == 8 else cdn
        return Spec(**base, route="hold", rule="hold-unknown-hosting",  # type: ignore[arg-type]
                    **hosting, **extra)
    country = {2: "BE", 3: "NL", 4: "DE", 5: "US", 6: "FR", 7: "RU", 9: "DE", 10: "NL",
               11: "BE"}[r]
    asn, org, destination, rule = HOSTS[country]
    if r == 9:  # behind a CDN, the analyst names the country: referred there
        extra.update(status="cdn", cdn=True, named=country)
        asn, org = 13335, "Cloudflare"
    iccam = destination.startswith("iccam:")
    referred = assessed + timedelta(hours=1 + i % 7 + (2 if iccam else 0))
    story: dict[str, object] = {}
    if r == 4 and round_ % 5 == 3:
        story = {"failed": True}
    elif r in (2, 3, 4, 6, 9):
        story = {"closed": "removed",
                 "closed_at": referred + timedelta(hours=REMOVAL_HOURS[i % 8])}
    elif r == 5:
        story = {"closed": "not_actionable", "na_reason": "no_jurisdiction",
                 "closed_at": referred + timedelta(hours=48)}
    elif r == 11 and round_ % 3 == 1:
        story = {"closed": "moved", "closed_at": referred + timedelta(hours=10)}
    elif r == 11:
        story = {"closed": "content_unavailable", "closed_at": referred + timedelta(hours=30)}
    if r in (3, 7):
        story["acknowledged"] = referred + timedelta(hours=4)
    if r == 7:  # acknowledged, never removed: overdue for removal
        story.update(acknowledge_by=referred + timedelta(days=1),
                     remove_by=referred + timedelta(days=3))
    if r == 10 and round_ % 2:  # never acknowledged: overdue for that
        story.update(acknowledge_by=referred + timedelta(days=1))
    return Spec(**base, route="iccam" if iccam else "refer", country=country,  # type: ignore[arg-type]
                asn=asn, org=org, destination=destination, rule=rule, referred=referred,
                **story, **extra)


def specs() -> list[Spec]:
    return [spec(q, i) for q in range(len(QUARTERS)) for i in range(PER_QUARTER)]


#: Reports that never became cases: per quarter, one still waiting and one unreadable.
UNFILED = tuple((QUARTERS[q] + timedelta(days=40, hours=h), status, CHANNELS[h % 3])
                for q in range(len(QUARTERS)) for h, status in ((3, "received"),
                                                                (4, "parse_failed")))


def unfiled_reporter(n: int) -> str:
    """The address the ``n``-th of ``UNFILED`` came from."""
    return f"reporter-unfiled-{n}@mail.test"


#: When the report is made: after everything in the history.
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _submission(conn: Connection, *, channel: str, at: datetime, status: str, urls: int,
                sender: str, url: str | None = None) -> uuid.UUID:
    """A report from ``sender``, its message naming ``url``."""
    sid = uuid7()
    raw = f"From: <{sender}>\r\nSubject: a report\r\n\r\n{url or 'no link'}\r\n".encode()
    row = {"id": sid, "reference": f"CF-2026-{sid.hex[-10:]}", "channel": channel,
           "status": status, "received_at": at, "mail_from": sender,
           "rcpt_tos": ["report@hotline.test"], "body_sha256": "0" * 64, "raw_size": len(raw),
           "raw": raw, "parsed_at": at if status != "received" else None,
           "url_count": urls if status == "parsed" else None}
    conn.execute(insert(submissions).values(seal_values(sealer_of(conn), submissions, sid,
                                                        row)))
    return sid


def _file(conn: Connection, *, channel: str, at: datetime, url: str | None,
          sender: str) -> uuid.UUID:
    """A report received at ``at``, filed as the normaliser files it; its case's id."""
    sid = _submission(conn, channel=channel, at=at, status="parsed",
                      urls=0 if url is None else 1, sender=sender, url=url)
    filing = Filing(conn, now=at, legal_window=timedelta(days=30))
    filing.attach(sid, at, [] if url is None else [ReportedUrl(url, url, url)])
    (case_id,) = filing.flush()[sid]
    return case_id


def _locate(conn: Connection, case_id: uuid.UUID, s: Spec, at: datetime) -> None:
    hosting = HostingEvidence(
        host=s.host, checked_at=at, resolver="test",
        outcome="nxdomain" if s.status == "unresolvable" else "answer", status=s.status,
        country=None if s.status != "located" else s.country, asn=s.asn, org=s.org,
        cdn=s.cdn, source="geoip" if s.status == "located" else None,
        ips=[] if s.status == "unresolvable" else ["192.0.2.7"])
    conn.execute(insert(hosting_evidence).values(
        evidence_row(sealer_of(conn), case_id, hosting, "auto")))
    move(conn, case_id, "locate", actor=Actor.system("locate"), at=at)


def _failed_lookup(conn: Connection, *, case_id: uuid.UUID, s: Spec, at: datetime) -> None:
    """A later lookup that failed: evidence kept, the hosting stays the earlier one's."""
    failed = HostingEvidence(host=s.host, checked_at=at, resolver="test",
                             outcome="failed", status="failed", error="timeout")
    conn.execute(insert(hosting_evidence).values(
        evidence_row(sealer_of(conn), case_id, failed, "relocate")))


async def build(backend: WriteBackend, history: list[Spec]) -> dict[tuple[int, int], uuid.UUID]:
    """Make every case of ``history`` (and the unfiled reports); each case's id."""
    await backend.transaction(lambda conn: conn.execute(insert(users), [
        seal_values(sealer_of(conn), users, staff.id, {
            "id": staff.id, "name": staff.name, "role": staff.role, "password_hash": "x",
            "totp_secret": "x", "created_at": QUARTERS[0]}) for staff in (ANA, SUE)]))
    for n, (at, status, channel) in enumerate(UNFILED):
        await backend.transaction(partial(_submission, channel=channel, at=at, status=status,
                                          urls=0, sender=unfiled_reporter(n)))
    made: dict[tuple[int, int], uuid.UUID] = {}
    for s in history:
        made[s.quarter, s.index] = await _make(backend, s)
    return made


async def _make(backend: WriteBackend, s: Spec) -> uuid.UUID:
    case_id = await backend.transaction(partial(_file, channel=s.channel, at=s.received,
                                                url=s.url, sender=s.reporters[0]))
    if s.duplicate is not None:
        again = await backend.transaction(partial(_file, channel="web", at=s.duplicate,
                                                  url=s.url, sender=s.reporters[1]))
        assert again == case_id
    if s.url is not None:
        await backend.transaction(partial(_locate, case_id=case_id, s=s,
                                          at=s.received + timedelta(hours=1)))
    if s.failed_lookup:
        await backend.transaction(partial(_failed_lookup, case_id=case_id, s=s,
                                          at=s.received + timedelta(hours=1, minutes=30)))
    if s.assessed is None:
        return case_id
    done = await assess(backend, ANA, case_id, _verdict(s, illegal=s.illegal),
                        four_eyes=False, now=s.assessed)
    assessment_id = uuid.UUID(done.assessment["id"]) if done.assessment else None
    routed = s.assessed + timedelta(hours=1)
    if s.route == "legal":
        decision = RoutingDecision("protocol-3-legal", "close", None, "legal", {})
        await backend.transaction(partial(_route, case_id=case_id, status="closed_legal",
                                          decision=decision, at=routed,
                                          assessment_id=assessment_id))
        if s.reassessed is not None:
            await reopen(backend, SUE, case_id, reason="looked at again",
                         now=s.reassessed - timedelta(hours=1))
            await assess(backend, ANA, case_id, _verdict(s, illegal=True), four_eyes=False,
                         now=s.reassessed)
        return case_id
    if s.route == "hold":
        decision = RoutingDecision(s.rule or "", "hold", None, "no country", {"country": None})
        await backend.transaction(partial(_route, case_id=case_id, status="assessed",
                                          decision=decision, at=routed,
                                          assessment_id=assessment_id))
        return case_id
    assert s.referred is not None and s.destination is not None
    facts = {"country": s.country}
    if s.route == "iccam":
        decision = RoutingDecision(s.rule or "", "iccam", None, "by ICCAM", facts)
        await backend.transaction(partial(_route, case_id=case_id, status="assessed",
                                          decision=decision, at=routed,
                                          assessment_id=assessment_id))
        await record_iccam(backend, ANA, case_id, f"ICCAM-{s.quarter}-{s.index}",
                           now=s.referred)
    else:
        decision = RoutingDecision(s.rule or "", "refer", s.destination, "referred", facts)
        await backend.transaction(partial(_refer, case_id=case_id, decision=decision,
                                          at=s.referred, assessment_id=assessment_id,
                                          failed=s.failed))
    referral_id = await backend.transaction(partial(_deadlines, case_id=case_id, s=s))
    if s.failed:
        return case_id
    analyst = Recorder.analyst(ANA.id, ANA.name, ANA.role)
    for outcome, at, reason in (("acknowledged", s.acknowledged, None),
                                (s.closed, s.closed_at, s.na_reason)):
        if outcome is not None and at is not None:
            await record_outcome(backend, referral_id, outcome, reason=reason, occurred_at=at,
                                 who=analyst, now=at)
    return case_id


def _verdict(s: Spec, *, illegal: bool) -> Assessment:
    """The verdict the spec gives, as the console takes it."""
    if not illegal:
        return Assessment("legal", "not_illegal" if s.reason != "other" else "doubtful",
                          details=Classification(reason=s.reason))
    d = s.details
    return Assessment("illegal", str(d["classification"]), hosting_country=s.named,
                      details=Classification(
                          age_group=str(d["age_group"]), gender=str(d["gender"]),
                          media=str(d["media"]), site_type=str(d["site_type"]),
                          content_flags=d["flags"]))  # type: ignore[arg-type]


def _route(conn: Connection, *, case_id: uuid.UUID, status: str, decision: RoutingDecision,
           at: datetime, assessment_id: uuid.UUID | None) -> uuid.UUID | None:
    """Routing's store, for a case routing's worker claimed."""
    conn.execute(update(cases).where(cases.c.id == case_id)
                 .values(claimed_by="route-test", claimed_until=at + timedelta(minutes=5)))
    stored = store(conn, case_id=case_id, status=status, decision=decision,
                   worker="route-test", now=at, assessment_id=assessment_id)
    assert stored.filed
    return stored.decision_id


def _refer(conn: Connection, *, case_id: uuid.UUID, decision: RoutingDecision, at: datetime,
           assessment_id: uuid.UUID | None, failed: bool) -> None:
    """Routed to refer, and the referral made and delivered, or its delivery failed (as
    outbound stores it)."""
    decision_id = _route(conn, case_id=case_id, status="assessed", decision=decision, at=at,
                         assessment_id=assessment_id)
    referral_id = uuid7()
    conn.execute(insert(referrals).values(
        id=referral_id, case_id=case_id, decision_id=decision_id,
        reference=f"CF-2026-R{referral_id.hex[-10:]}", destination=decision.destination,
        email="referrals@destination.test", key_fingerprint="A" * 40,
        message_id=f"<referral-{referral_id}@hotline.test>",
        status="failed" if failed else "sent", created_at=at, sent_at=None if failed else at))


def _deadlines(conn: Connection, *, case_id: uuid.UUID, s: Spec) -> uuid.UUID:
    """The case's referral, with the deadlines the follow-up stage would have set."""
    referral_id: uuid.UUID = conn.execute(
        update(referrals).where(referrals.c.case_id == case_id)
        .values(acknowledge_by=s.acknowledge_by, remove_by=s.remove_by)
        .returning(referrals.c.id)).scalar_one()
    return referral_id
