"""Durable stream buffers: the encoded events of a streamed response, by index,
so a client can reconnect (or another gateway process can serve it) and
read from where it left off. The live fan-out is `server/streams.py`'s job;
this is only its storage.

Events are stored in chunks (table stream_chunks): the consecutive events of one stream that one
write has, as one row (their bytes back to back, and their lengths), not a row each: a row per
event was about a quarter of the gateway's CPU under streaming load. A write retried after an
unclear failure starts at the same index and replaces the chunk only with a longer one (events
never change once made), so chunks never overlap and nothing is stored twice.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from ..status import CANCELED, RUNNING
from . import Store, in_list
from .tables import stream_chunks, streams, utcnow


@dataclass
class StreamInfo:
    id: str
    tenant_id: str
    format: str
    status: str                      # "running" until finish(id, status)
    meta: dict = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    next_index: int = 0              # one past the highest stored event index


class StreamRepo:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, id: str, tenant_id: str, format: str, meta: dict | None = None) -> None:
        """Start a stream record ("running"); creating an existing id again is a no-op."""
        now = utcnow()
        with self.store.begin() as conn:
            conn.execute(self.store.insert(streams).values(id=id, tenant_id=tenant_id, format=format, meta=meta or {},
                                                           status=RUNNING, created_at=now, updated_at=now)
                         .on_conflict_do_nothing())

    def append(self, id: str, events: list[tuple[int, bytes]]) -> None:
        """Store events by index; an index already stored is kept (appends may be retried)."""
        self.append_many([(id, i, data) for i, data in events])

    def append_many(self, events: list[tuple[str, int, bytes]]) -> None:
        """append() for many streams in one transaction: (stream id, index, bytes) rows."""
        if events:
            with self.store.begin() as conn:
                self._append(conn, events, utcnow())

    def save_many(self, created: Sequence[tuple[str, str, str, dict | None]] = (),
                  events: Sequence[tuple[str, int, bytes]] = (), finished: Sequence[tuple[str, str]] = ()) -> None:
        """What the gateway's flusher has for every stream since its last pass, in one transaction:
        new streams (id, tenant_id, format, meta), events (id, index, bytes), ends (id, status).
        Idempotent like create/append/finish, so a failed pass can simply be done again."""
        if not (created or events or finished):
            return
        now = utcnow()
        with self.store.begin() as conn:
            if created:
                conn.execute(self.store.insert(streams).on_conflict_do_nothing(),
                             [{"id": id, "tenant_id": tenant_id, "format": fmt, "meta": meta or {},
                               "status": RUNNING, "created_at": now, "updated_at": now}
                              for id, tenant_id, fmt, meta in created])
            self._append(conn, events, now)
            by_status: dict[str, list[str]] = {}
            for id, status in finished:
                by_status.setdefault(status, []).append(id)
            for status, ids in by_status.items():
                for chunk in in_list(ids):
                    conn.execute(update(streams).where(streams.c.id.in_(chunk))
                                 .values(status=status, finished_at=now, updated_at=now))

    def _append(self, conn: Connection, events: Sequence[tuple[str, int, bytes]], now: datetime) -> None:
        if not events:
            return
        rows = _chunk_rows(events)
        stmt = self.store.insert(stream_chunks)
        stmt = stmt.on_conflict_do_update(
            index_elements=["stream_id", "first_idx"],
            set_={"count": stmt.excluded["count"], "sizes": stmt.excluded.sizes, "data": stmt.excluded.data},
            where=stream_chunks.c["count"] < stmt.excluded["count"])
        conn.execute(stmt, rows)
        # No updated_at here: a running stream's row is kept fresh by its owner's heartbeat
        # (Streams._heartbeat -> touch), which is what recovery and purging read, once per lease/3
        # rather than once per flush per stream.

    def finish(self, id: str, status: str, only_running: bool = False) -> bool:
        """Set the stream's final status; with only_running, only if it is still "running"
        (a DELETE from another replica must not rewrite a stream that already ended)."""
        now = utcnow()
        query = update(streams).where(streams.c.id == id)
        if only_running:
            query = query.where(streams.c.status == RUNNING)
        with self.store.begin() as conn:
            return conn.execute(query.values(status=status, finished_at=now, updated_at=now)).rowcount > 0

    def canceled(self, ids: list[str]) -> set[str]:
        """Which of these streams someone marked canceled (e.g. a DELETE on another replica)."""
        if not ids:
            return set()
        with self.store.engine.connect() as conn:
            return {row[0] for chunk in in_list(ids) for row in conn.execute(
                select(streams.c.id).where(streams.c.id.in_(chunk), streams.c.status == CANCELED))}

    def get(self, id: str) -> StreamInfo | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(streams).where(streams.c.id == id)).mappings().first()
            if row is None:
                return None
            top = conn.execute(select(func.max(stream_chunks.c.first_idx + stream_chunks.c["count"]))
                               .where(stream_chunks.c.stream_id == id)).scalar()
        return StreamInfo(id=row["id"], tenant_id=row["tenant_id"], format=row["format"], status=row["status"],
                          meta=row["meta"] or {}, created_at=row["created_at"], updated_at=row["updated_at"],
                          finished_at=row["finished_at"], next_index=top or 0)

    def read(self, id: str, from_index: int = 0, limit: int | None = None) -> list[bytes]:
        """Events with index >= from_index, in index order."""
        query = (select(stream_chunks.c.first_idx, stream_chunks.c.sizes, stream_chunks.c.data)
                 .where(stream_chunks.c.stream_id == id,
                        stream_chunks.c.first_idx + stream_chunks.c["count"] > from_index)
                 .order_by(stream_chunks.c.first_idx))
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        out: list[bytes] = []
        next_index = from_index
        for first, sizes, data in rows:
            data, pos = bytes(data), 0
            for i, size in enumerate(map(int, sizes.split(",")), start=first):
                if i >= next_index:
                    out.append(data[pos:pos + size])
                    next_index = i + 1
                pos += size
        return out if limit is None else out[:limit]

    def purge_expired(self, retention_s: float) -> int:
        """Delete streams finished (or, if never finished, last touched) more than
        retention_s ago, with their events. Returns how many streams went."""
        cutoff = utcnow() - timedelta(seconds=retention_s)
        old = or_(streams.c.finished_at < cutoff, (streams.c.finished_at.is_(None)) & (streams.c.updated_at < cutoff))
        with self.store.begin(immediate=True) as conn:
            ids = list(conn.execute(select(streams.c.id).where(old)).scalars())
            for chunk in in_list(ids):
                conn.execute(delete(stream_chunks).where(stream_chunks.c.stream_id.in_(chunk)))
                conn.execute(delete(streams).where(streams.c.id.in_(chunk)))
        return len(ids)

    # ---- crash recovery (server/recovery.py) ----
    def touch(self, ids: list[str]) -> None:
        """A heartbeat: the process pumping these running streams is alive."""
        now = utcnow()
        with self.store.begin() as conn:
            for chunk in in_list(ids):
                conn.execute(update(streams).where(streams.c.id.in_(chunk), streams.c.status == RUNNING)
                             .values(updated_at=now))

    def orphaned(self, lease_s: float, limit: int = 100) -> list[StreamInfo]:
        """Running streams untouched for lease_s seconds: the process pumping them is gone."""
        cutoff = utcnow() - timedelta(seconds=lease_s)
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(streams).where(streams.c.status == RUNNING, streams.c.updated_at < cutoff)
                                .order_by(streams.c.updated_at).limit(limit)).mappings().all()
        return [StreamInfo(id=row["id"], tenant_id=row["tenant_id"], format=row["format"], status=row["status"],
                           meta=row["meta"] or {}, created_at=row["created_at"], updated_at=row["updated_at"])
                for row in rows]

    def settle(self, id: str, events: list[tuple[int, bytes]], status: str, meta: dict[str, Any]) -> bool:
        """End an orphaned stream in one transaction, if it is still running: its closing events (after
        what survived), its final status and meta. False: someone else settled (or it ended) first."""
        now = utcnow()
        with self.store.begin(immediate=True) as conn:
            ended = conn.execute(update(streams).where(streams.c.id == id, streams.c.status == RUNNING)
                                 .values(status=status, meta=meta, finished_at=now, updated_at=now)).rowcount > 0
            if ended:
                self._append(conn, [(id, i, data) for i, data in events], now)
        return bool(ended)


def _chunk_rows(events: Sequence[tuple[str, int, bytes]]) -> list[dict[str, Any]]:
    """(stream id, index, bytes) rows -> one stream_chunks row per run of consecutive indexes."""
    rows: list[dict[str, Any]] = []
    last: tuple[str, int] | None = None          # (stream id, index) of the previous event
    parts: list[bytes] = []
    sizes: list[int] = []
    for id, i, data in sorted(events, key=lambda e: (e[0], e[1])):
        if last is None or last != (id, i - 1):
            if parts:
                rows[-1].update(count=len(parts), sizes=",".join(map(str, sizes)), data=b"".join(parts))
            rows.append({"stream_id": id, "first_idx": int(i)})
            parts, sizes = [], []
        parts.append(bytes(data))
        sizes.append(len(data))
        last = (id, i)
    if parts:
        rows[-1].update(count=len(parts), sizes=",".join(map(str, sizes)), data=b"".join(parts))
    return rows
