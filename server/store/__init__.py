"""The gateway's store: SQLite by default, PostgreSQL by URL (SQLAlchemy 2 Core).

    store = Store()                                       # ~/.cogkit/gateway.db (or $COGKIT_HOME/gateway.db)
    store = Store("sqlite:////var/lib/cogkit/gw.db")      # or a plain file path
    store = Store("postgresql+psycopg://u:p@host/db")     # postgres:// and postgresql:// work too

The schema is migrated on construction (see migrations.py). Several gateway
processes may share one store: SQLite in WAL mode with a busy timeout (one
host), or PostgreSQL (many hosts). All timestamps are aware UTC datetimes.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from . import tables
from .migrations import migrate as _migrate

__all__ = ["Store", "default_url", "in_list", "pow2_batches", "tables"]

SQLITE_BUSY_TIMEOUT_MS = 10_000
# The WAL is checkpointed every 1000 pages (SQLite's default), but a checkpoint that a reader holds
# back lets it grow, and it never shrinks by itself: truncated back to this size after a checkpoint.
SQLITE_WAL_LIMIT_BYTES = 16 * 1024 * 1024

T = TypeVar("T")

# Statement shapes. A statement's text is its key in pysqlite's per-connection statement cache (128
# statements, counted, not sized) and in psycopg's prepared statements (PostgreSQL keeps each plan
# per connection). A multi-row INSERT ... RETURNING of n rows, or an IN list of n values, has a new
# text for every n, and the usage INSERT of a few hundred rows compiles to hundreds of KB: in a
# 5-minute soak at 64 streams SQLite's memory (nearly all of it the pool's statement caches) swung
# between 30 and 60 MB, glibc kept the pages that churn left behind, and the gateway's RSS rose
# +106 MiB. So batches go out in power-of-two sizes, and IN lists are padded to one: a few shapes per
# statement, a bounded cache (SQLite's memory then stayed at 3-9 MB).
BATCH_MAX = 64


def pow2_batches(rows: Sequence[T], most: int = BATCH_MAX) -> Iterator[Sequence[T]]:
    """`rows` in consecutive pieces whose sizes are powers of two, at most `most` (one): 45 rows go
    as 32 + 8 + 4 + 1, so an executemany that compiles to one statement per size has few sizes."""
    start, n = 0, len(rows)
    while start < n:
        size = min(most, 1 << ((n - start).bit_length() - 1))
        yield rows[start:start + size]
        start += size


def in_list(values: Sequence[T], most: int = 512) -> Iterator[list[T]]:
    """`values` for `column.in_(...)`, in pieces of at most `most` (a power of two), each padded to a
    power of two by repeating its last value (IN is a set: the answer is the same)."""
    for start in range(0, len(values), most):
        piece = list(values[start:start + most])
        piece += piece[-1:] * ((1 << (len(piece) - 1).bit_length()) - len(piece))
        yield piece


def cogkit_home() -> Path:
    return Path(os.environ.get("COGKIT_HOME") or "~/.cogkit").expanduser()


def default_url() -> str:
    return f"sqlite:///{cogkit_home() / 'gateway.db'}"


def normalize_url(url: str | os.PathLike | None) -> str:
    """None -> the default SQLite file; a bare path -> SQLite; postgres URLs -> psycopg 3."""
    if url is None or str(url) == "":
        return default_url()
    url = str(url)
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Store:
    # hide_parameters: error messages and logs never carry bound values (key hashes, ciphertexts).
    def __init__(self, url: str | os.PathLike | None = None, *, migrate: bool = True) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported store URL {parsed.render_as_string(hide_password=True)}: "
                             "use sqlite:///path or postgresql+psycopg://...")
        self.sqlite_path: Path | None = None
        if self.dialect == "sqlite":
            self.engine = self._sqlite_engine(parsed)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                        hide_parameters=True)
        self.version = self.migrate() if migrate else 0

    def _sqlite_engine(self, parsed):
        database = parsed.database
        if database and database != ":memory:":
            self.sqlite_path = Path(database).expanduser().resolve()
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(f"sqlite:///{self.sqlite_path}",
                                   connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                                   hide_parameters=True)
        else:  # in-memory: one shared connection, or every connection would see its own empty DB
            engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool,
                                   hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:
            # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred and
            # skips SELECTs), so a read-then-write transaction can ask for IMMEDIATE.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")      # readers don't block the writer
            cur.execute("PRAGMA synchronous=NORMAL")    # safe with WAL, much faster commits
            cur.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_LIMIT_BYTES}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front (waiting up to busy_timeout) instead
            # of failing with SQLITE_BUSY when a deferred reader later tries to write.
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def migrate(self) -> int:
        """Apply pending migrations (idempotent, safe from several processes at once)."""
        return _migrate(self)

    def session(self) -> Session:
        return Session(self.engine)

    @contextmanager
    def begin(self, immediate: bool = False) -> Iterator[Connection]:
        """A Core connection in a transaction, committed on success. `immediate`:
        the transaction will read then write (on SQLite: take the write lock first)."""
        with self.engine.connect() as conn:
            if immediate and self.is_sqlite:
                conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    def insert(self, table: Table) -> Any:      # the dialect's Insert (sqlite's or postgresql's)
        """The backend's INSERT construct, with on_conflict_do_nothing/do_update (same API on both)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"
