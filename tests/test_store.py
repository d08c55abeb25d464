"""The gateway store on a real SQLite file and a real PostgreSQL: migrations,
UTC timestamps, stream buffers."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, select, text, update

from server.ledger import Ledger, UsageRecord
from server.store import Store, in_list, normalize_url, pow2_batches
from server.store.migrations import LATEST, MIGRATIONS
from server.store.streams import StreamRepo
from server.store.tables import streams, tenants

TABLES = {"schema_version", "tenants", "api_keys", "provider_secrets", "usage", "credits", "rate_counters",
          "streams", "stream_chunks"}


def test_url_normalization(tmp_path: Path) -> None:
    assert normalize_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalize_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url(None).startswith("sqlite:///")
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://u@h/db")


def test_migrations_create_all_tables_and_run_twice(store: Store, store_url: str) -> None:
    assert store.version == LATEST
    assert TABLES <= set(inspect(store.engine).get_table_names())
    assert store.migrate() == LATEST           # again, same object
    again = Store(store_url)                    # again, as a second process would on start
    try:
        assert again.version == LATEST
        with again.engine.connect() as conn:
            versions = list(conn.execute(text("SELECT version FROM schema_version ORDER BY version")).scalars())
        assert versions == [number for number, _ in MIGRATIONS]
    finally:
        again.close()


def test_concurrent_first_starts_migrate_once(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    from tests.pg import create_database, drop_database
    for url in (f"sqlite:///{tmp_path / 'race.db'}", create_database()):
        errors: list[BaseException] = []
        stores: list[Store] = []

        def start() -> None:
            try:
                stores.append(Store(url))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
        assert all(s.version == LATEST for s in stores)
        with stores[0].engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM schema_version")).scalar() == len(MIGRATIONS)
        for s in stores:
            s.close()
        if url.startswith("postgresql"):
            drop_database(url)


def test_sqlite_is_wal_with_busy_timeout(tmp_path: Path) -> None:
    s = Store(tmp_path / "gw.db")
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert (tmp_path / "gw.db").exists()
    finally:
        s.close()


def test_timestamps_are_utc(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    when = datetime(2024, 5, 1, 14, 30, 0, 123000, tzinfo=plus2)
    tid = f"t{uuid.uuid4().hex[:8]}"
    with store.begin() as conn:
        conn.execute(tenants.insert().values(id=tid, name=tid, created_at=when))
    with store.engine.connect() as conn:
        got = conn.execute(select(tenants.c.created_at).where(tenants.c.id == tid)).scalar_one()
        # Comparisons in SQL use the same conversion, whatever zone the bound value is in.
        found = conn.execute(select(tenants.c.id).where(
            tenants.c.id == tid, tenants.c.created_at == datetime(2024, 5, 1, 12, 30, 0, 123000))).scalar()
    assert got == when and got.tzinfo == timezone.utc and got.hour == 12
    assert found == tid


def test_stream_repo(store: Store) -> None:
    repo = StreamRepo(store)
    sid = f"s-{uuid.uuid4().hex}"
    assert repo.get(sid) is None
    repo.create(sid, "acme", "openai", {"model": "gpt-x"})
    repo.create(sid, "acme", "openai", {"model": "retried"})        # a retried create changes nothing
    info = repo.get(sid)
    assert (info.status, info.tenant_id, info.format, info.meta, info.next_index) == \
        ("running", "acme", "openai", {"model": "gpt-x"}, 0)
    repo.append(sid, [(0, b"data: a\n\n"), (1, b"data: b\n\n")])
    repo.append(sid, [(1, b"data: b\n\n"), (2, b"\x00\xffbinary")])   # index 1 again (a retry): stored once
    repo.append(sid, [])
    assert repo.read(sid, 0) == [b"data: a\n\n", b"data: b\n\n", b"\x00\xffbinary"]
    assert repo.read(sid, 2) == [b"\x00\xffbinary"]
    assert repo.read(sid, 1, limit=1) == [b"data: b\n\n"]
    assert repo.read(sid, 9) == []
    repo.finish(sid, "ok")
    info = repo.get(sid)
    assert info.status == "ok" and info.finished_at is not None and info.next_index == 3
    assert info.created_at.tzinfo == timezone.utc


def test_stream_batches(store: Store) -> None:
    """The flusher's one transaction for many streams: new rows, events, ends; a retried pass changes nothing."""
    repo = StreamRepo(store)
    a, b, c = (f"s-{uuid.uuid4().hex}" for _ in range(3))
    repo.create(c, "acme", "run")
    for _ in range(2):
        repo.save_many([(a, "acme", "openai", None), (b, "beta", "anthropic", {"m": 1})],
                       [(a, 0, b"a0"), (a, 1, b"a1"), (b, 0, b"b0"), (c, 0, b"c0")], [(a, "ok"), (c, "partial")])
    repo.save_many()
    repo.append_many([(b, 1, b"b1"), (b, 0, b"b0"), (c, 1, b"c1")])   # b's index 0 retried, with one more
    assert repo.read(a) == [b"a0", b"a1"] and repo.read(b) == [b"b0", b"b1"] and repo.read(c) == [b"c0", b"c1"]
    got = {sid: repo.get(sid) for sid in (a, b, c)}
    assert [(i.status, i.tenant_id, i.format, i.next_index) for i in got.values()] == \
        [("ok", "acme", "openai", 2), ("running", "beta", "anthropic", 2), ("partial", "acme", "run", 2)]
    assert got[b].meta == {"m": 1} and got[a].finished_at is not None and got[b].finished_at is None


def test_stream_chunks_store_each_flush_as_one_row(store: Store) -> None:
    """One row per stream per write, however many events; a write retried after an unclear failure
    (same first index, more events by now) leaves every event exactly once, in order."""
    repo = StreamRepo(store)
    sid, other = f"s-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}"
    events = [f"id: {i}\ndata: {{\"n\":{i}}}\n\n".encode() for i in range(40)]
    repo.save_many([(sid, "acme", "openai", None), (other, "acme", "openai", None)],
                   [(sid, i, events[i]) for i in range(16)] + [(other, 0, b"o0")])
    repo.save_many([], [(sid, i, events[i]) for i in range(16, 20)])
    repo.save_many([], [(sid, i, events[i]) for i in range(16, 40)])       # the retry, longer
    repo.save_many([], [(sid, i, events[i]) for i in range(16, 30)])       # a shorter one changes nothing
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT stream_id, first_idx, count FROM stream_chunks WHERE stream_id IN (:a, :b)"),
                            {"a": sid, "b": other}).all()
    assert sorted((r[0] == sid, r[1], r[2]) for r in rows) == [(False, 0, 1), (True, 0, 16), (True, 16, 24)]
    assert repo.read(sid) == events and repo.read(other) == [b"o0"]
    assert repo.read(sid, 15) == events[15:] and repo.read(sid, 17, limit=2) == events[17:19]
    assert repo.get(sid).next_index == 40 and repo.read(sid, 40) == []


def test_stream_cancel_marks(store: Store) -> None:
    """A DELETE on a replica that doesn't pump the stream marks it; the pumping one asks, in one query."""
    repo = StreamRepo(store)
    running, done, other = (f"s-{uuid.uuid4().hex}" for _ in range(3))
    for sid in (running, done, other):
        repo.create(sid, "acme", "openai")
    repo.finish(done, "ok")
    assert repo.canceled([running, done, other]) == set()
    assert repo.finish(running, "canceled", only_running=True) is True
    assert repo.finish(done, "canceled", only_running=True) is False     # an ended stream keeps its status
    assert repo.get(done).status == "ok"
    assert repo.canceled([running, done, other]) == {running} and repo.canceled([]) == set()


def test_stream_purge(store: Store) -> None:
    repo = StreamRepo(store)
    old_done, old_open, fresh = (f"s-{uuid.uuid4().hex}" for _ in range(3))
    for sid in (old_done, old_open, fresh):
        repo.create(sid, "acme", "anthropic")
        repo.append(sid, [(0, b"x")])
    repo.finish(old_done, "ok")
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with store.begin() as conn:
        conn.execute(update(streams).where(streams.c.id == old_done).values(finished_at=hour_ago))
        conn.execute(update(streams).where(streams.c.id == old_open).values(updated_at=hour_ago))
    assert repo.purge_expired(600) >= 2
    assert repo.get(old_done) is None and repo.get(old_open) is None
    assert repo.read(old_done, 0) == [] and repo.read(old_open, 0) == []
    assert repo.get(fresh) is not None and repo.read(fresh, 0) == [b"x"]


def test_batch_and_in_list_pieces() -> None:
    for n in (0, 1, 2, 3, 45, 64, 65, 300):
        pieces = list(pow2_batches(list(range(n))))
        assert [x for p in pieces for x in p] == list(range(n))
        assert all(len(p) & (len(p) - 1) == 0 and len(p) <= 64 for p in pieces)
    for n in (1, 3, 5, 64, 65, 600):
        pieces = list(in_list(list(range(n))))
        assert {x for p in pieces for x in p} == set(range(n))
        assert all(len(p) & (len(p) - 1) == 0 and len(p) <= 512 for p in pieces)


def test_batched_statements_keep_few_shapes(store: Store) -> None:
    """Every distinct statement text costs a slot in each connection's statement cache (pysqlite's,
    counted not sized) or a prepared plan (PostgreSQL): billing batches and IN lists of every size
    from 1 to 80 must come out as a few shapes, and still record, find and touch every row."""
    texts: dict[str, set[str]] = {"usage": set(), "in": set()}

    @event.listens_for(store.engine, "before_cursor_execute")
    def seen(_conn, _cursor, statement, _params, _context, _many) -> None:
        if statement.startswith("INSERT INTO usage"):
            texts["usage"].add(statement)
        elif " IN (" in statement and "streams" in statement:
            texts["in"].add(statement)

    ledger, repo = Ledger(store), StreamRepo(store)
    tid = f"t-{uuid.uuid4().hex[:10]}"
    with store.begin() as conn:
        conn.execute(tenants.insert().values(id=tid, name=tid, created_at=datetime.now(timezone.utc)))
    ids = [f"s-{uuid.uuid4().hex}" for _ in range(80)]
    for sid in ids:
        repo.create(sid, tid, "openai")
    repo.finish(ids[7], "canceled")
    for n in range(1, 81):
        recs = [UsageRecord(request_id=f"req-{uuid.uuid4().hex}", tenant_id=tid, model="m") for _ in range(n)]
        assert ledger.bill_many([(None, r) for r in recs]) == {r.request_id for r in recs}
        assert repo.canceled(ids[:n]) == ({ids[7]} if n > 7 else set())
        repo.touch(ids[:n])
    assert len(texts["usage"]) <= 7, len(texts["usage"])        # 1, 2, 4, ... 64 rows
    assert len(texts["in"]) <= 2 * 8, len(texts["in"])          # canceled and touch: 1, 2, 4, ... 128 values
    assert len(ledger.requests(tid, 10_000)) == 80 * 81 // 2
