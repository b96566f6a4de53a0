"""The database schema, as SQLAlchemy Core tables (the migrations create exactly this)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)

#: Marks of the columns whose values are sealed at rest (``gateway.store.sealed``): each is a
#: LargeBinary column holding the sealed bytes; the mark says what was sealed (text as UTF-8,
#: bytes as they are, a JSON document as compact JSON).
SEALED_TEXT = {"sealed": "text"}
SEALED_BYTES = {"sealed": "bytes"}
SEALED_JSON = {"sealed": "json"}

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

# One row per report as it arrived, before any parsing: the durable record of what we were sent.
# ``dedup_key`` is set for channels where a sender may deliver the same report twice (SMTP
# retries): the same Message-ID with the same body hash gets the first reference back.
submissions = Table(
    "submissions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("reference", String(32), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("status", String(24), nullable=False, server_default="received"),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("mail_from", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("rcpt_tos", JSON, nullable=False),
    Column("helo", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("peer_ip", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("message_id", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("body_sha256", String(64), nullable=False),
    Column("dedup_key", String(72), nullable=True, unique=True),
    Column("raw_size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=True, info=SEALED_BYTES),
    # Normalising (one worker at a time holds a submission, until claimed_until).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("parsed_at", DateTime(timezone=True), nullable=True),
    Column("parse_error", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("subject", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("report_text", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("attachments", LargeBinary, nullable=True, info=SEALED_JSON),
    Column("url_count", Integer, nullable=True),
    # For the report, kept as the report is filed (``gateway.store.report_facts``): NULL
    # while it is in no case; else 2 if it is the first report of at least one of its cases,
    # plus 1 if one of them has no URL.
    Column("filed_code", Integer, nullable=True),
    # What normalising could not file, and why, for the analysts: a list of objects such as
    # {"flag": "urls_over_cap", "found": 10000, "filed": 200} (intake.normalise says which).
    Column("flags", LargeBinary, nullable=True, info=SEALED_JSON),
    Index(None, "status", "received_at"),
    # The report: reports received in a period by kind (state, channel, filed code) and day,
    # each kind's days a range of it (``gateway.store.report.received_counts``).
    Index("ix_submissions_kind", "status", "channel", "filed_code", "received_at"),
)

# One case per reported item: a canonical URL, or a submission in which no URL was found.
# ``url_key`` (an HMAC of the canonical URL under the lookup key: ``gateway.store.case_urls``)
# is what makes two reports one case; a hash keeps the unique index small whatever the URL's
# length, and a keyed one lets nobody test a guessed URL against a stolen database.
cases = Table(
    "cases",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("status", String(24), nullable=False),
    Column("url_key", String(72), nullable=False, unique=True),
    Column("url", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("canonical_url", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("report_count", Integer, nullable=False),
    Column("first_reported", DateTime(timezone=True), nullable=False),
    Column("last_reported", DateTime(timezone=True), nullable=False),
    Column("reappeared", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status_changed_at", DateTime(timezone=True), nullable=False),
    # Locating (one worker at a time holds a case, until claimed_until). A failed lookup
    # counts an attempt, keeps its error and is not tried again before locate_after.
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("locate_attempts", Integer, nullable=False, server_default="0"),
    Column("locate_after", DateTime(timezone=True), nullable=True),
    Column("locate_error", LargeBinary, nullable=True, info=SEALED_TEXT),
    # The analyst a supervisor gave the case to (anyone may take it when empty).
    Column("assigned_to", Uuid, nullable=True),
    # Why a case is ``held`` (the rule id: hold-unknown-hosting, hold-no-key, …).
    Column("hold_reason", String(32), nullable=True),
    # Milestones, for statistics: when the case first reached each (``gateway.store.lifecycle``;
    # ``removed_at`` is when the content went down, as its outcome says).
    Column("located_at", DateTime(timezone=True), nullable=True),
    Column("assessed_at", DateTime(timezone=True), nullable=True),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("referred_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("removed_at", DateTime(timezone=True), nullable=True),
    # Why the last hosting re-check of a referred case needs a person (``routing.recheck``:
    # unresolvable, failed, cdn, mixed), and since when; cleared when it is found again.
    Column("recheck_flag", String(16), nullable=True),
    Column("recheck_flagged_at", DateTime(timezone=True), nullable=True),
    # When the retention pass anonymised the closed case (``gateway.anonymise``): its URLs,
    # hosts, addresses and reporters' words are gone; its key, state and figures stay.
    Column("anonymised_at", DateTime(timezone=True), nullable=True),
    # What the stages' polls read (``gateway.store.due``): set only while the case has work
    # waiting, NULL otherwise, each with a partial index of the set ones, so that a poll reads
    # what is due and not every case of years. ``route_due_at``: since when the case waits
    # for routing (``routing.decide``); ``recheck_since``: while the hosting re-check watches
    # the case (``routing.recheck``), the time of its latest lookup.
    Column("route_due_at", DateTime(timezone=True), nullable=True),
    Column("recheck_since", DateTime(timezone=True), nullable=True),
    Index(None, "status", "first_reported"),
    Index(None, "status", "status_changed_at"),
    # The report selects cases by the milestone that puts them in a period; each index
    # covers what it reads of them (migration 0025), and by id a case's first report and
    # when it was first referred (the overdue cases of a period: migration 0029).
    Index("ix_cases_assessed", "assessed_at", "id"),
    Index("ix_cases_referred", "referred_at", "status", "first_reported", "removed_at"),
    Index("ix_cases_removed", "removed_at", "referred_at"),
    Index("ix_cases_first_report", "id", "first_reported", "kind", "referred_at"),
    # The stages' polls (migration 0028): each a range of the few rows with work waiting.
    Index("ix_cases_route_due", "route_due_at", sqlite_where=text("route_due_at IS NOT NULL"),
          postgresql_where=text("route_due_at IS NOT NULL")),
    Index("ix_cases_recheck", "recheck_since", sqlite_where=text("recheck_since IS NOT NULL"),
          postgresql_where=text("recheck_since IS NOT NULL")),
    # What a worker holds (a stage hands back its leases when it stops).
    Index("ix_cases_claimed", "claimed_by", sqlite_where=text("claimed_by IS NOT NULL"),
          postgresql_where=text("claimed_by IS NOT NULL")),
)

#: The URL cases waiting to be located (``routing.stage``: ``new`` and ``locate_failed``), as
#: the locating poll's index names them. Written out rather than bound: a partial index serves
#: a query only where the query's condition is the index's, values included, and a bound
#: parameter's value is not known when a statement is planned (SQLite; PostgreSQL's generic
#: plans).
LOCATE_WAITING = "status IN ('new', 'locate_failed') AND kind = 'url'"

# The locating poll (migration 0030): the cases waiting to be located, by state and when each
# is due (its next attempt, or its first report when none is scheduled): the due ones are an
# index range, not every case that ever failed a lookup tested for its next retry. The state
# leads so that SQLite, which has no statistics unless someone runs ANALYZE, prefers it to
# the other indexes that start with the state.
Index("ix_cases_locate_due", cases.c.status,
      func.coalesce(cases.c.locate_after, cases.c.first_reported),
      sqlite_where=text(LOCATE_WAITING), postgresql_where=text(LOCATE_WAITING))

# Every lookup of a case's host, as it was answered: never updated, never replaced. A case's
# hosting is its latest evidence whose status is not ``failed``.
hosting_evidence = Table(
    "hosting_evidence",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    Column("trigger", String(16), nullable=False),  # "auto" or "relocate"
    Column("host", LargeBinary, nullable=False, info=SEALED_TEXT),
    Column("resolver", Text, nullable=False),
    # answer | nxdomain | no_answer | failed | ip_literal
    Column("outcome", String(16), nullable=False),
    # located | mixed | cdn | unresolvable | failed
    Column("status", String(16), nullable=False),
    Column("country", String(2), nullable=True),
    Column("asn", BigInteger, nullable=True),
    Column("org", Text, nullable=True),
    Column("cdn", Boolean, nullable=False),
    Column("source", String(16), nullable=True),  # geoip | override
    Column("ips", LargeBinary, nullable=False, info=SEALED_JSON),
    # DNS answers, with their TTLs.
    Column("records", LargeBinary, nullable=False, info=SEALED_JSON),
    # Per address: country, ASN, where from.
    Column("addresses", LargeBinary, nullable=False, info=SEALED_JSON),
    # Which databases, built when; and the operator's override by domain, which names a host.
    Column("databases", LargeBinary, nullable=False, info=SEALED_JSON),
    Column("error", LargeBinary, nullable=True, info=SEALED_TEXT),
    # A case's lookups in time order, with what the report reads of them.
    Index("ix_hosting_evidence_lookup", "case_id", "checked_at", "id", "status", "country",
          "asn", "org", "cdn"),
)

# Which submissions reported which case, and how the reporter wrote the URL.
case_reports = Table(
    "case_reports",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("submission_id", Uuid, ForeignKey("submissions.id"), nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    Column("written_as", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("url", LargeBinary, nullable=True, info=SEALED_TEXT),
    UniqueConstraint("case_id", "submission_id"),
    Index("ix_case_reports_submission", "submission_id", "case_id", "reported_at"),
)

# Provenance of a report that a partner hotline's gateway referred to us: a
# ``hotline-gateway/referral/v1`` document signed by the key pinned for that partner
# (``[routing.hotlines.XX]``). Their reference stays plain; their document (the URL, their
# hosting facts, hashes) is sealed: it is what they reported, never our evidence.
partner_referrals = Table(
    "partner_referrals",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("submission_id", Uuid, ForeignKey("submissions.id"), nullable=False, unique=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("partner", String(2), nullable=False),  # the country code of [routing.hotlines.XX]
    Column("their_reference", String(40), nullable=False),
    Column("signer", String(40), nullable=False),  # the pinned key's fingerprint
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("document", LargeBinary, nullable=False, info=SEALED_JSON),
    Column("message_id", Text, nullable=True),  # their referral's, for our replies' thread
    # The partner-outcome stage's lease (one process at a time tells the partner).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Index(None, "case_id"),
    # Delivered twice (a resend, a retry after a lost acknowledgement): filed once.
    UniqueConstraint("partner", "their_reference"),
)

# Outcomes told to a partner hotline of a case it referred to us (``outbound.partner_outcomes``):
# each an outcome/v1 reply queued in the outbox; one per partner referral and outcome.
partner_outcomes = Table(
    "partner_outcomes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("partner_referral_id", Uuid, ForeignKey("partner_referrals.id"), nullable=False),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("outcome", String(24), nullable=False),
    Column("reason_code", String(32), nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("outbox_id", Uuid, ForeignKey("outbox.id"), nullable=False, unique=True),
    Column("message_id", Text, nullable=False),
    UniqueConstraint("partner_referral_id", "outcome"),
)

# Hi/lo reference allocation: each process reserves a block of sequence numbers per
# prefix and year in a short transaction of its own, then hands them out from memory.
reference_counters = Table(
    "reference_counters",
    metadata,
    Column("scope", String(32), primary_key=True),
    Column("next_value", BigInteger, nullable=False),
)

# Staff: analysts, supervisors and admins of the console. Passwords are argon2id hashes; the
# TOTP secret is sealed (a login opens it to check the code), and ``totp_last_step`` refuses a
# code twice.
users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # analyst | supervisor | admin
    Column("password_hash", Text, nullable=False),
    Column("totp_secret", LargeBinary, nullable=False, info=SEALED_TEXT),
    Column("totp_last_step", BigInteger, nullable=True),
    # Set for the one-time password ``users add`` prints: changed at the first login.
    Column("must_change_password", Boolean, nullable=False, server_default=false()),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_login_at", DateTime(timezone=True), nullable=True),
)

# API tokens, kept as their SHA-256 (a token is 32 random bytes: no need for a slow hash).
# A token has a name its user's other live tokens do not have; it may expire; a password
# change or reset revokes it unless it was made to survive that.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, server_default=false()),
    Column("name", String(64), nullable=False, server_default=""),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("survives_password_change", Boolean, nullable=False, server_default=false()),
)

# Console sessions, server-side; the cookie holds a random id whose SHA-256 is the key here.
staff_sessions = Table(
    "staff_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    # How the login was made: "totp" or "key" (a security key); NULL for older sessions (TOTP).
    Column("factor", String(8), nullable=True),
)

# Staff security keys (WebAuthn credentials): the authenticator's credential id, its public
# key (COSE) and the last signature counter it reported, which must grow (a clone is refused).
staff_security_keys = Table(
    "staff_security_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("credential_id", LargeBinary(1024), nullable=False, unique=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("sign_count", BigInteger, nullable=False, server_default="0"),
    Column("name", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

# Secrets the console keeps across restarts: ``webauthn_stand_in`` makes the credential ids
# the login's key step offers for a name without keys (alike before and after a restart).
console_secrets = Table(
    "console_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", LargeBinary(64), nullable=False),
)

# An analyst's verdict on a case. With four-eyes, an illegal verdict waits for a second,
# different user's approval before it is routed.
assessments = Table(
    "assessments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("verdict", String(16), nullable=False),  # illegal | legal
    Column("classification", String(16), nullable=False),
    Column("hosting_country", String(2), nullable=True),
    Column("note", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # pending_approval | final | superseded (a reopened case's earlier verdict)
    Column("status", String(24), nullable=False),
    Column("approved_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    # ICCAM's classification details (``gateway.store.classification``): category codes, not
    # about anyone or anywhere, so plain for statistics. NULL where not recorded: the fields
    # of the other verdict, and verdicts from before these columns.
    Column("age_group", String(16), nullable=True),
    Column("gender", String(8), nullable=True),
    Column("media", String(8), nullable=True),
    Column("site_type", String(24), nullable=True),
    Column("computer_generated", Boolean, nullable=True),
    Column("self_generated", Boolean, nullable=True),
    Column("commercial", Boolean, nullable=True),
    Column("reason", String(24), nullable=True),  # a legal verdict's reason code
    # A case's verdicts in time order, with the codes the report counts.
    Index("ix_assessments_verdict", "case_id", "created_at", "id", "verdict", "classification",
          "hosting_country", "age_group", "gender", "media", "site_type", "computer_generated",
          "self_generated", "commercial", "reason"),
)

# Four-eyes on routing: a country proposed for a case that has a final verdict (held for
# unknown hosting, say) waits here until a different user approves it; the row keeps who
# proposed it on which facts, and who decided.
routing_changes = Table(
    "routing_changes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("assessment_id", Uuid, ForeignKey("assessments.id"), nullable=False),
    Column("country", String(2), nullable=False),
    Column("facts", LargeBinary, nullable=False, info=SEALED_JSON),
    Column("status", String(16), nullable=False),  # pending|approved|rejected|applied|superseded
    # None: proposed by the hosting re-check (the hosting moved), until a person endorses it.
    Column("proposed_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Index(None, "case_id", "created_at"),
)

# The audit trail: append-only, each entry holding the hash of the one before it.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(80), nullable=False),  # a user's name, or "system:<stage>"
    Column("action", String(40), nullable=False),
    Column("case_id", Uuid, nullable=True),
    Column("details", LargeBinary, nullable=False, info=SEALED_JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index(None, "case_id"),
)

# Where a case goes, decided by the protocol table: the rule, the facts it used, and why.
# A re-route (the hosting moved, an analyst set the country) supersedes the earlier decision.
routing_decisions = Table(
    "routing_decisions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),  # refer | iccam | hold | close
    Column("destination", String(32), nullable=True),  # police | police_international | hotline:NL
    Column("facts", LargeBinary, nullable=False, info=SEALED_JSON),
    Column("explanation", LargeBinary, nullable=False, info=SEALED_TEXT),
    Column("superseded", Boolean, nullable=False, server_default=false()),
    Index(None, "case_id", "created_at"),
    # One live decision per case, enforced by the database: with the referrals' unique
    # (decision, destination), one live referral per case and destination even when two
    # instances file the same case at once; a case reopened gets a new decision (the old one
    # superseded) and may be referred to the same destination again.
    Index("uq_routing_decisions_live_case", "case_id", unique=True,
          sqlite_where=text("superseded = 0"), postgresql_where=text("NOT superseded")),
    Index("ix_routing_decisions_held", "outcome", "created_at", "rule", "case_id"),  # report
)

#: The partial indexes' conditions of the open referrals with a deadline (a query that reads
#: one says the same, word for word: SQLite uses a partial index only then).
ACKNOWLEDGE_DUE = "acknowledge_by IS NOT NULL AND outcome IS NULL"
REMOVE_DUE = "remove_by IS NOT NULL AND (outcome IS NULL OR outcome = 'acknowledged')"

# One referral per routing decision and destination (a case reopened after a removal may be
# referred to the same destination again, on a new decision): the encrypted message lives in
# the outbox.
referrals = Table(
    "referrals",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("decision_id", Uuid, ForeignKey("routing_decisions.id"), nullable=False),
    # Its own: the case's reference for its first referral, then a fresh one of the same
    # form (``gateway.store.referral_refs``), so that a reply names one referral.
    Column("reference", String(32), nullable=False, unique=True),
    Column("destination", String(32), nullable=False),
    Column("email", Text, nullable=True),  # None for a referral made through ICCAM by hand
    Column("key_fingerprint", String(40), nullable=True),
    Column("message_id", Text, nullable=True, unique=True),
    Column("iccam_reference", Text, nullable=True),
    # queued | sent | failed | acknowledged; "iccam" for one an analyst made by hand
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("error", LargeBinary, nullable=True, info=SEALED_TEXT),
    # What became of it (``gateway.store.outcomes``): None while nothing is known, then
    # acknowledged | removed | content_unavailable | not_actionable | moved, with its time
    # (when the content went down, for a removal). The history is ``referral_outcomes``.
    Column("outcome", String(24), nullable=True),
    Column("outcome_at", DateTime(timezone=True), nullable=True),
    # For the report's per-destination times: microseconds from the referral's creation to
    # its acknowledgement and to its content going down (each outcome's ``occurred_at``), set
    # with the outcome (``gateway.store.outcomes``), so that a year's medians read one index.
    Column("acknowledged_micros", BigInteger, nullable=True),
    Column("removed_micros", BigInteger, nullable=True),
    # Its deadlines, as the follow-up stage computed them from the destination's policy
    # (``routing.deadlines``; None: no such deadline), so that "overdue" is a query; when a
    # supervisor was told, and about which chase (acknowledge | remove); the stage's lease.
    Column("acknowledge_by", DateTime(timezone=True), nullable=True),
    Column("remove_by", DateTime(timezone=True), nullable=True),
    Column("supervisor_flagged_at", DateTime(timezone=True), nullable=True),
    Column("supervisor_flag", String(16), nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    # When the follow-up stage looks at it next (``outbound.follow_up``): set when it is
    # delivered and when an acknowledgement is recorded, moved on by each look to the next
    # moment a deadline, reminder or flag falls due; NULL when nothing will.
    Column("follow_up_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("decision_id", "destination"),
    # The report: referrals made in a period, by destination (in the index's order: no sort;
    # SQLite skips from one destination to the next range of the period), with their state
    # and times.
    Index("ix_referrals_made", "destination", "created_at", "status", "acknowledged_micros",
          "removed_micros"),
    # What is overdue (``gateway.store.follow_ups``): the referrals without an outcome, or
    # only acknowledged, read by their outcome instead of every referral of years.
    Index("ix_referrals_open", "outcome", "status", "acknowledge_by", "remove_by", "case_id",
          "decision_id"),
    # A case's referrals (its page, the re-check, the outcomes), and what a worker holds.
    Index("ix_referrals_case", "case_id", "created_at"),
    Index("ix_referrals_claimed", "claimed_by", sqlite_where=text("claimed_by IS NOT NULL"),
          postgresql_where=text("claimed_by IS NOT NULL")),
    Index("ix_referrals_follow_up", "follow_up_at",
          sqlite_where=text("follow_up_at IS NOT NULL"),
          postgresql_where=text("follow_up_at IS NOT NULL")),
    # The open referrals with a deadline (the overdue ones are a range of them), and those
    # flagged for a supervisor (``gateway.stats``).
    Index("ix_referrals_acknowledge_due", "acknowledge_by",
          sqlite_where=text(ACKNOWLEDGE_DUE), postgresql_where=text(ACKNOWLEDGE_DUE)),
    Index("ix_referrals_remove_due", "remove_by",
          sqlite_where=text(REMOVE_DUE), postgresql_where=text(REMOVE_DUE)),
    Index("ix_referrals_flagged", "case_id",
          sqlite_where=text("supervisor_flagged_at IS NOT NULL"),
          postgresql_where=text("supervisor_flagged_at IS NOT NULL")),
)

# Every reminder queued for a referral: what it chases (acknowledge | remove), its number in
# that chase (unique: never queued twice), when, and the outbox item that carries it.
referral_reminders = Table(
    "referral_reminders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("referral_id", Uuid, ForeignKey("referrals.id"), nullable=False),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("chase", String(16), nullable=False),
    Column("number", Integer, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("outbox_id", Uuid, ForeignKey("outbox.id"), nullable=False, unique=True),
    # A reply to a reminder names it (In-Reply-To): the reply stage finds the referral by it.
    Column("message_id", Text, nullable=False, index=True),
    UniqueConstraint("referral_id", "chase", "number"),
)

# Every outcome recorded for a referral, never updated: what, why (``reason_code`` for
# not_actionable), when it happened and when it was recorded, and who said so: an analyst
# (``recorded_by``), or a destination's verified reply (``destination`` and the key that
# signed it).
referral_outcomes = Table(
    "referral_outcomes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("referral_id", Uuid, ForeignKey("referrals.id"), nullable=False),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=False),
    Column("outcome", String(24), nullable=False),
    Column("reason_code", String(32), nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("recorded_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("source", String(16), nullable=False),  # analyst | reply | partner
    Column("destination", String(32), nullable=True),
    Column("signer_fingerprint", String(40), nullable=True),
    Column("note", LargeBinary, nullable=True, info=SEALED_TEXT),
    Index("ix_referral_outcomes_referral", "referral_id", "recorded_at", "outcome",
          "occurred_at"),
    Index(None, "case_id"),
    # The report: outcomes in a period, by outcome and reason (in the index's order: no sort;
    # SQLite skips from one outcome and reason to the next range of the period).
    Index("ix_referral_outcomes_kind", "outcome", "reason_code", "occurred_at"),
)

# Destinations' replies to referrals, as they arrived at ``[outbound] reply_address``: kept
# whatever they say (``gateway.store.replies``). ``received`` until the reply stage has read
# one; then ``read`` (trusted: what it said is recorded as the referral's outcomes) or
# ``needs_attention`` (not trusted, or not all of it could be recorded: ``reason``), which an
# analyst marks ``handled``. Never deleted, never trusted on anything but its signature.
replies = Table(
    "replies",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(24), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("mail_from", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("message_id", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("body_sha256", String(64), nullable=False),
    # The same Message-ID and body again (an SMTP retry): the first reply's id back.
    Column("dedup_key", String(72), nullable=True, unique=True),
    Column("raw_size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=True, info=SEALED_BYTES),
    # Reading (one worker at a time holds a reply, until claimed_until).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("read_at", DateTime(timezone=True), nullable=True),
    # Why it was not trusted or not all recorded (outbound.replies' reasons, and
    # ``outcome_refused``), with one line saying what failed (never the message's content).
    Column("reason", String(32), nullable=True),
    Column("detail", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("signer", String(40), nullable=True),
    # The referral it names, when one was found; and the outcome it recorded.
    Column("referral_id", Uuid, ForeignKey("referrals.id"), nullable=True),
    Column("case_id", Uuid, ForeignKey("cases.id"), nullable=True),
    Column("outcome", String(24), nullable=True),
    Column("document", LargeBinary, nullable=True, info=SEALED_JSON),
    Column("handled_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("handled_at", DateTime(timezone=True), nullable=True),
    Column("handled_note", LargeBinary, nullable=True, info=SEALED_TEXT),
    # A trusted reply's signed content (signer, signature time, bytes signed) as a lookup
    # key: unique, so that a copy of it, however re-wrapped, is never trusted again.
    Column("signed_key", String(72), nullable=True, unique=True),
    Index(None, "status", "received_at"),
    Index(None, "referral_id"),
)

# The durable outbox: every message that must leave, until it has: a referral (one per
# referral), or a reminder about one (``referral_reminders``).
outbox = Table(
    "outbox",
    metadata,
    Column("id", Uuid, primary_key=True),
    # None for a reply to a partner (``partner_referral_id``: the referral it answers).
    Column("referral_id", Uuid, ForeignKey("referrals.id"), nullable=True, index=True),
    Column("partner_referral_id", Uuid, ForeignKey("partner_referrals.id"), nullable=True,
           index=True),
    # referral | reminder | partner_outcome
    Column("kind", String(16), nullable=False, server_default="referral"),
    Column("mail_from", Text, nullable=False),
    Column("rcpt_to", Text, nullable=False),
    Column("message", LargeBinary, nullable=False),  # encrypted PGP/MIME, ready to send
    Column("status", String(16), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("last_error", LargeBinary, nullable=True, info=SEALED_TEXT),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index(None, "status", "next_attempt_at"),
)

# Every delivery attempt, as it went.
outbox_attempts = Table(
    "outbox_attempts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("outbox_id", Uuid, ForeignKey("outbox.id"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(16), nullable=False),  # sent | deferred | failed
    Column("detail", LargeBinary, nullable=True, info=SEALED_TEXT),
    Index(None, "outbox_id"),
)

# What sealing keeps in the database: the keyring check value (``check``), and the progress of
# sealing an older database or re-sealing under a new key (``gateway.store.sealing``).
sealing_state = Table(
    "sealing_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The periodic jobs of ``serve`` (the daily retention): one row per job and period, claimed by
# the instance that runs it (``gateway.store.periodic``), so that several instances on one
# database run each job once per period; a holder that dies or fails leaves the row to be
# taken again once ``claimed_until`` has passed.
periodic_runs = Table(
    "periodic_runs",
    metadata,
    Column("job", String(32), primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("claimed_until", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("error", String(200), nullable=True),  # the failure's type: never data
)

# The report's verdicts, kept as the writes that change them happen (``gateway.store.
# report_facts``): each assessed case's figures (its latest verdict's codes and, if illegal,
# its hosting) as they stand for a report whose last day is from ``from_day`` to the day
# before ``to_day``, one row per such state; ``items`` (a JSON array) lists what it counts.
report_verdicts = Table(
    "report_verdicts",
    metadata,
    Column("case_id", Uuid, primary_key=True),
    Column("from_day", Date, primary_key=True),
    Column("to_day", Date, nullable=False),
    Column("assessed_on", Date, nullable=False),
    Column("items", Text, nullable=False),
)

# The same, counted by day: how many cases first assessed on ``assessed_on`` count ``item``
# for a report whose last day is from ``from_day`` to the day before ``to_day``. A year is
# some thousands of rows, whatever the number of cases.
report_verdict_days = Table(
    "report_verdict_days",
    metadata,
    Column("assessed_on", Date, primary_key=True),
    Column("from_day", Date, primary_key=True),
    Column("to_day", Date, primary_key=True),
    Column("item", Text, primary_key=True),
    Column("cases", Integer, nullable=False),
)

# Counts kept as the data changes (migration 0031's triggers add a row for each change that
# moves one; ``gateway.store.tallies`` sums and folds them): ``figure``, ``key`` and ``n``.
tallies = Table(
    "tallies",
    metadata,
    Column("figure", String(16), nullable=False),
    Column("key", String(80), nullable=False),
    Column("n", BigInteger, nullable=False),
)
