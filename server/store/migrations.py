"""Versioned schema migrations, applied on start by every gateway process.

Why not alembic: the schema is a handful of tables, every gateway process
applies it on start against SQLite or PostgreSQL with no separate step, and
alembic would add a dependency plus an env.py/versions/ layout to ship and
configure for that. A list of (version, SQL) and a `schema_version` table
does the job in a few lines; PostgreSQL's transactional DDL and an advisory
lock (SQLite: BEGIN IMMEDIATE) make concurrent starts safe.

To change the schema: append a new (version, statements) entry, never edit
an applied one, and update tables.py to the new shape.
"""
from __future__ import annotations

from sqlalchemy import text

from server.platform.ddl import ENGINES_MIGRATION
from server.platform.ddl import MIGRATION as PLATFORM_MIGRATION

from .tables import schema_version, utcnow

# Column types differing between the two backends; DDL below uses the placeholders.
TYPES = {
    "sqlite": {"ts": "TIMESTAMP", "json": "TEXT", "blob": "BLOB", "float": "REAL", "bigint": "INTEGER",
               "bool": "BOOLEAN"},
    "postgresql": {"ts": "TIMESTAMPTZ", "json": "JSONB", "blob": "BYTEA", "float": "DOUBLE PRECISION",
                   "bigint": "BIGINT", "bool": "BOOLEAN"},
}

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at {ts} NOT NULL)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            admin {bool} NOT NULL,
            rpm INTEGER,
            tpm INTEGER,
            revoked {bool} NOT NULL,
            created_at {ts} NOT NULL,
            revoked_at {ts})""",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
        """CREATE TABLE provider_secrets (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            ciphertext TEXT NOT NULL,
            last4 TEXT NOT NULL,
            created_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (tenant_id, name))""",
        """CREATE TABLE usage (
            request_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            key_id TEXT,
            model TEXT NOT NULL,
            provider TEXT,
            upstream_model TEXT,
            input_tokens {bigint} NOT NULL,
            output_tokens {bigint} NOT NULL,
            cost {float} NOT NULL,
            latency_ms {float},
            ttft_ms {float},
            status TEXT NOT NULL,
            failovers INTEGER NOT NULL,
            attempted {json} NOT NULL,
            metadata {json} NOT NULL,
            stream_id TEXT,
            created_at {ts} NOT NULL)""",
        "CREATE INDEX usage_tenant_time ON usage (tenant_id, created_at)",
        """CREATE TABLE credits (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
            balance_micros {bigint},
            reserved_micros {bigint} NOT NULL,
            spent_micros {bigint} NOT NULL,
            updated_at {ts} NOT NULL)""",
        """CREATE TABLE rate_counters (
            key_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            window_start {bigint} NOT NULL,
            count {bigint} NOT NULL,
            PRIMARY KEY (key_id, kind, window_start))""",
        """CREATE TABLE streams (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            format TEXT NOT NULL,
            meta {json} NOT NULL,
            status TEXT NOT NULL,
            created_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            finished_at {ts})""",
        """CREATE TABLE stream_events (
            stream_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            data {blob} NOT NULL,
            PRIMARY KEY (stream_id, idx))""",
    ]),
    # Stream events in chunks (one row per flush per stream, not one per event); one spelling of
    # the canceled status.
    (2, [
        """CREATE TABLE stream_chunks (
            stream_id TEXT NOT NULL,
            first_idx INTEGER NOT NULL,
            count INTEGER NOT NULL,
            sizes TEXT NOT NULL,
            data {blob} NOT NULL,
            PRIMARY KEY (stream_id, first_idx))""",
        """INSERT INTO stream_chunks (stream_id, first_idx, count, sizes, data)
            SELECT stream_id, idx, 1, CAST(LENGTH(data) AS TEXT), data FROM stream_events""",
        "DROP TABLE stream_events",
        "UPDATE streams SET status = 'canceled' WHERE status = 'cancelled'",
    ]),
    # The conversations behind the Responses API's previous_response_id.
    (3, [
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            messages {json} NOT NULL,
            created_at {ts} NOT NULL)""",
        "CREATE INDEX conversations_created ON conversations (created_at)",
    ]),
    (4, PLATFORM_MIGRATION),      # the platform's registry and deployments (server/platform/tables.py)
    (5, ENGINES_MIGRATION),       # engine: vllm deployments in the store, beside Cog ones
]

LATEST = MIGRATIONS[-1][0]
_PG_LOCK_ID = 0x636B6D67  # "ckmg": one advisory lock id for all cogkit migrations


def current_version(conn) -> int:
    row = conn.execute(text("SELECT MAX(version) FROM schema_version")).first()
    return int(row[0] or 0)


def migrate(store) -> int:
    """Bring the schema to LATEST; a no-op when it is there. Returns the version."""
    dialect = store.engine.dialect.name
    types = TYPES[dialect]
    with store.begin(immediate=True) as conn:  # one writer at a time across processes
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version ("
                          f"version INTEGER PRIMARY KEY, applied_at {types['ts']} NOT NULL)"))
        version = current_version(conn)
        for number, statements in MIGRATIONS:
            if number <= version:
                continue
            for statement in statements:
                conn.execute(text(statement.format(**types)))
            conn.execute(schema_version.insert().values(version=number, applied_at=utcnow()))
            version = number
    return version
