"""The gateway's tables, as SQLAlchemy Core objects used to build queries.

The DDL that creates them lives in `migrations.py` (hand-written, versioned);
keep both in step. Money in `credits` is integer micro-USD so that reserve and
settle add up exactly; `usage.cost` is the float USD a request was billed.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Float, Integer, LargeBinary, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, whatever the backend.

    PostgreSQL stores timestamptz; SQLite has no time zones, so it stores the
    naive UTC value. Naive datetimes given to us are taken as UTC already."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL so `metadata ->> 'name'` can be grouped on; JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()


# The column shapes every table repeats (server/platform/tables.py uses them too).
def tenant_column() -> Column:
    return Column("tenant_id", Text, nullable=False)


def created_column() -> Column:
    return Column("created_at", UTCDateTime, nullable=False)


def updated_column() -> Column:
    return Column("updated_at", UTCDateTime, nullable=False)


schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", UTCDateTime, nullable=False),
)

tenants = Table(
    "tenants", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    created_column(),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Text, primary_key=True),
    tenant_column(),
    Column("name", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),   # sha256 hex of the plaintext key
    Column("prefix", Text, nullable=False),                  # e.g. "ck-AbCdEfG", for display
    Column("admin", Boolean, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("revoked", Boolean, nullable=False),
    created_column(),
    Column("revoked_at", UTCDateTime),
)

provider_secrets = Table(
    "provider_secrets", metadata,
    # "" means global (a NULL would not be unique in (tenant_id, name) on either backend).
    Column("tenant_id", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("ciphertext", Text, nullable=False),              # Fernet token
    Column("last4", Text, nullable=False),
    created_column(),
    updated_column(),
)

usage = Table(
    "usage", metadata,
    Column("request_id", Text, primary_key=True),
    tenant_column(),
    Column("key_id", Text),
    Column("model", Text, nullable=False),
    Column("provider", Text),
    Column("upstream_model", Text),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
    Column("latency_ms", Float),
    Column("ttft_ms", Float),
    Column("status", Text, nullable=False),
    Column("failovers", Integer, nullable=False),
    Column("attempted", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=False),
    Column("stream_id", Text),
    created_column(),
)

credits = Table(
    "credits", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("balance_micros", BigInteger),                    # NULL = unlimited
    Column("reserved_micros", BigInteger, nullable=False),
    Column("spent_micros", BigInteger, nullable=False),
    updated_column(),
)

rate_counters = Table(
    "rate_counters", metadata,
    Column("key_id", Text, primary_key=True),
    Column("kind", Text, primary_key=True),                  # "requests" | "tokens"
    Column("window_start", BigInteger, primary_key=True),    # unix seconds, multiple of 60
    Column("count", BigInteger, nullable=False),
)

streams = Table(
    "streams", metadata,
    Column("id", Text, primary_key=True),
    tenant_column(),
    Column("format", Text, nullable=False),
    Column("meta", JSONType, nullable=False),
    Column("status", Text, nullable=False),                  # "running" until finish()
    created_column(),
    updated_column(),
    Column("finished_at", UTCDateTime),
)

# The conversations behind previous_response_id (OpenAI Responses API), see server/conversations.py.
conversations = Table(
    "conversations", metadata,
    Column("id", Text, primary_key=True),                    # the response id, resp_...
    tenant_column(),
    Column("messages", JSONType, nullable=False),            # canonical messages, the answer last
    created_column(),
)

# A stream's events in chunks: whatever one flush had for the stream, one row (a row per event
# was a quarter of the gateway's CPU under load). Chunks of one stream never overlap.
stream_chunks = Table(
    "stream_chunks", metadata,
    Column("stream_id", Text, primary_key=True),
    Column("first_idx", Integer, primary_key=True),          # the index of its first event
    Column("count", Integer, nullable=False),                # events in it
    Column("sizes", Text, nullable=False),                   # their lengths in bytes, comma separated
    Column("data", LargeBinary, nullable=False),             # the events' bytes, back to back
)
