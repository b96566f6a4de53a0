"""The database schema, as SQLAlchemy Core tables (the migrations create exactly this)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
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
    Column("mail_from", Text, nullable=True),
    Column("rcpt_tos", JSON, nullable=False),
    Column("helo", Text, nullable=True),
    Column("peer_ip", String(45), nullable=True),
    Column("message_id", Text, nullable=True),
    Column("body_sha256", String(64), nullable=False),
    Column("dedup_key", String(64), nullable=True, unique=True),
    Column("raw_size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=True),
    Index(None, "status", "received_at"),
)

# Hi/lo reference allocation: each process reserves a block of sequence numbers per
# prefix and year in a short transaction of its own, then hands them out from memory.
reference_counters = Table(
    "reference_counters",
    metadata,
    Column("scope", String(32), primary_key=True),
    Column("next_value", BigInteger, nullable=False),
)
