"""Usage records, spend reports, credits and rate limits.

All methods are synchronous (they hit the database or Redis): from async code
call them via `fastapi.concurrency.run_in_threadpool` / `anyio.to_thread`.

Rate limits are fixed 60 s windows per key, counted with one atomic
upsert-and-return per check in the shared store (or INCRBY in Redis), so
they hold across every gateway process sharing that store. Convention:
`check_rate(key, estimated_input_tokens)` before the upstream call, then
`count_tokens(key, output_tokens)` once they are known.

Credits are kept in integer micro-USD so reservations add up exactly. A
reservation lives in the process that made it: settle it in a `finally`; a
process killed in between leaves its reservation held (visible as
`reserved`, cleared by `set_credits(..., reset_reserved=True)`).
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

from sqlalchemy import case, delete, func, select, text, update

from .auth import KeyInfo
from .status import FINAL, OK, Status
from .store import Store, pow2_batches
from .store.tables import credits, rate_counters, tenants, usage, utcnow

STATUSES = FINAL        # what a usage row may say (server/status.py)
GROUPS = ("model", "provider", "key")
METADATA_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MICROS = 1_000_000
WINDOW_S = 60


class RateLimited(Exception):
    """-> HTTP 429 with Retry-After: retry_after (whole seconds)."""

    def __init__(self, retry_after: int, kind: str, limit: int) -> None:
        super().__init__(f"rate limit exceeded: {limit} {kind} per minute; retry after {retry_after}s")
        self.retry_after, self.kind, self.limit = retry_after, kind, limit


class InsufficientCredits(Exception):
    """-> HTTP 402."""

    def __init__(self, tenant_id: str, available: float, needed: float) -> None:
        super().__init__(f"insufficient credits: {available:.6f} USD available, {needed:.6f} USD needed")
        self.tenant_id, self.available, self.needed = tenant_id, available, needed


@dataclass
class UsageRecord:
    request_id: str
    tenant_id: str
    key_id: str | None = None
    model: str = ""                       # the model string the caller asked for
    provider: str | None = None           # the deployment that answered
    upstream_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0                     # USD
    latency_ms: float | None = None
    ttft_ms: float | None = None
    status: Status = OK                   # ok | error | partial | canceled
    failovers: int = 0
    attempted: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    stream_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def public(self) -> dict:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass
class Reservation:
    tenant_id: str
    micros: int                           # held; 0 when the tenant is unlimited
    limited: bool
    settled: bool = False

    @property
    def amount(self) -> float:
        return self.micros / MICROS


@dataclass
class RateState:
    """What check_rate saw (for x-ratelimit-* headers). None = no such limit."""
    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_s: float = 0.0


def _micros(amount: float) -> int:
    return int(round(amount * MICROS))


class Ledger:
    def __init__(self, store: Store, redis_url: str | None = None, clock=time.time) -> None:
        self.store = store
        self.clock = clock
        self.redis = None
        if redis_url:
            import redis
            self.redis = redis.Redis.from_url(redis_url)
        self._next_purge = 0.0
        self._lock = threading.Lock()

    # -- rate limits -------------------------------------------------------------
    def check_rate(self, key: KeyInfo, tokens: int = 0) -> RateState:
        """Count one request and `tokens` against the key's current window;
        raise RateLimited when that goes over its rpm or tpm."""
        now = self.clock()
        window = int(now // WINDOW_S) * WINDOW_S
        state = RateState(limit_requests=key.rpm, limit_tokens=key.tpm, reset_s=window + WINDOW_S - now)
        if key.rpm is None and key.tpm is None:
            return state
        retry_after = max(1, math.ceil(state.reset_s))
        self._maybe_purge(now)
        if key.rpm is not None:
            used = self._incr(key.id, "requests", window, 1)
            if used > key.rpm:  # no undo: once over, the rest of the window is over too
                raise RateLimited(retry_after, "requests", key.rpm)
            state.remaining_requests = key.rpm - used
        if key.tpm is not None:
            tokens = max(0, int(tokens))
            used = self._incr(key.id, "tokens", window, tokens)
            if used > key.tpm or (tokens == 0 and used >= key.tpm):
                # Undo, so a big rejected request doesn't block smaller ones that fit.
                self._incr(key.id, "tokens", window, -tokens)
                if key.rpm is not None:
                    self._incr(key.id, "requests", window, -1)
                raise RateLimited(retry_after, "tokens", key.tpm)
            state.remaining_tokens = key.tpm - used
        return state

    def count_tokens(self, key: KeyInfo, tokens: int) -> None:
        """Add tokens learned after the call (e.g. output tokens) to the current window."""
        if key.tpm is not None and tokens > 0:
            self._incr(key.id, "tokens", int(self.clock() // WINDOW_S) * WINDOW_S, int(tokens))

    def _incr(self, key_id: str, kind: str, window: int, amount: int) -> int:
        if self.redis is not None:
            name = f"cogkit:rate:{key_id}:{kind}:{window}"
            pipe = self.redis.pipeline()
            pipe.incrby(name, amount)
            pipe.expire(name, WINDOW_S * 2)
            return int(pipe.execute()[0])
        stmt = self.store.insert(rate_counters).values(key_id=key_id, kind=kind, window_start=window, count=amount)
        stmt = stmt.on_conflict_do_update(index_elements=["key_id", "kind", "window_start"],
                                          set_={"count": rate_counters.c.count + stmt.excluded.count})
        with self.store.begin(immediate=True) as conn:
            return int(conn.execute(stmt.returning(rate_counters.c.count)).scalar_one())

    def _maybe_purge(self, now: float) -> None:
        """Drop counters of past windows now and then (Redis expires its own)."""
        if self.redis is not None or now < self._next_purge:
            return
        with self._lock:
            if now < self._next_purge:
                return
            self._next_purge = now + 300
        with self.store.begin(immediate=True) as conn:
            conn.execute(delete(rate_counters).where(rate_counters.c.window_start < now - 2 * WINDOW_S))

    # -- credits -----------------------------------------------------------------
    def set_credits(self, tenant_id: str, balance: float | None, reset_reserved: bool = False) -> dict:
        """Set the tenant's balance in USD (None = unlimited)."""
        now = utcnow()
        value = None if balance is None else _micros(balance)
        with self.store.begin(immediate=True) as conn:
            if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is None:
                raise LookupError(f"no tenant {tenant_id!r}")
            updates = {"balance_micros": value, "updated_at": now} | ({"reserved_micros": 0} if reset_reserved else {})
            stmt = self.store.insert(credits).values(tenant_id=tenant_id, balance_micros=value, reserved_micros=0,
                                                     spent_micros=0, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=updates))
        return self.credits(tenant_id)

    def add_credits(self, tenant_id: str, amount: float) -> dict:
        """Top up (or, negative, take away); the tenant must have a balance."""
        with self.store.begin(immediate=True) as conn:
            done = conn.execute(update(credits).where(credits.c.tenant_id == tenant_id,
                                                      credits.c.balance_micros.is_not(None))
                                .values(balance_micros=credits.c.balance_micros + _micros(amount),
                                        updated_at=utcnow())).rowcount
        if not done:
            raise LookupError(f"tenant {tenant_id!r} has unlimited credits (or does not exist): set a balance first")
        return self.credits(tenant_id)

    def credits(self, tenant_id: str) -> dict:
        """{"balance", "reserved", "available", "spent"} in USD; balance/available None = unlimited."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(credits).where(credits.c.tenant_id == tenant_id)).mappings().first()
        if row is None:
            return {"balance": None, "reserved": 0.0, "available": None, "spent": 0.0}
        balance = row["balance_micros"]
        return {"balance": None if balance is None else balance / MICROS,
                "reserved": row["reserved_micros"] / MICROS,
                "available": None if balance is None else (balance - row["reserved_micros"]) / MICROS,
                "spent": row["spent_micros"] / MICROS}

    def reserve(self, tenant_id: str, amount: float) -> Reservation:
        """Hold `amount` USD of the tenant's credits, or raise InsufficientCredits."""
        micros = max(0, math.ceil(amount * MICROS))
        avail = credits.c.balance_micros - credits.c.reserved_micros
        with self.store.begin(immediate=True) as conn:
            # One conditional UPDATE: atomic on both backends, no read-modify-write race.
            held = conn.execute(update(credits).where(credits.c.tenant_id == tenant_id,
                                                      credits.c.balance_micros.is_not(None),
                                                      avail >= micros, avail > 0)
                                .values(reserved_micros=credits.c.reserved_micros + micros,
                                        updated_at=utcnow())).rowcount
            if held:
                return Reservation(tenant_id, micros, limited=True)
            row = conn.execute(select(credits.c.balance_micros, credits.c.reserved_micros)
                               .where(credits.c.tenant_id == tenant_id)).first()
        if row is None or row.balance_micros is None:
            return Reservation(tenant_id, 0, limited=False)
        raise InsufficientCredits(tenant_id, (row.balance_micros - row.reserved_micros) / MICROS, amount)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Release the reservation and charge `cost` USD (0 on failure). Once per reservation."""
        self.settle_many([(reservation, cost)])

    def settle_many(self, items: list[tuple[Reservation, float]]) -> None:
        """settle() for many reservations in one transaction: one UPDATE per tenant."""
        todo = [(r, cost) for r, cost in items if not r.settled]
        if todo:
            with self.store.begin(immediate=True) as conn:
                self._settle(conn, todo)
            for r, _cost in todo:
                r.settled = True

    def _settle(self, conn, items: list[tuple[Reservation, float]]) -> None:
        per_tenant: dict[str, list[int]] = {}            # tenant -> [held, charge]
        for r, cost in items:
            sums = per_tenant.setdefault(r.tenant_id, [0, 0])
            sums[0] += r.micros
            sums[1] += max(0, _micros(cost))
        # Releasing a + b at once is releasing a then b: both clamp the reserved amount at 0.
        for tenant_id, (held, charge) in sorted(per_tenant.items()):   # one lock order for every writer
            conn.execute(update(credits).where(credits.c.tenant_id == tenant_id).values(
                reserved_micros=case((credits.c.reserved_micros >= held, credits.c.reserved_micros - held), else_=0),
                balance_micros=credits.c.balance_micros - charge,   # NULL (unlimited) stays NULL
                spent_micros=credits.c.spent_micros + charge,
                updated_at=utcnow()))

    # -- usage -------------------------------------------------------------------
    def record(self, rec: UsageRecord) -> bool:
        """Write the request's usage row; False (and no change) if request_id was recorded before."""
        return bool(self.record_many([rec]))

    def record_many(self, recs: list[UsageRecord]) -> set[str]:
        """record() for many requests in one transaction; the request_ids that were new
        (one recorded before is left as it was: recording is idempotent on request_id)."""
        rows = self._usage_rows(recs)
        if not rows:
            return set()
        with self.store.begin(immediate=True) as conn:
            return self._record(conn, rows)

    def bill_many(self, bills: list[tuple[Reservation | None, UsageRecord]]) -> set[str]:
        """Finished requests, billed in one transaction: their usage rows, then the settlement of the
        reservations of those rows that were new. A request recorded before moves no money again, so
        a batch retried after an unclear failure still bills each request exactly once."""
        rows = self._usage_rows([rec for _r, rec in bills])
        if not rows:
            return set()
        with self.store.begin(immediate=True) as conn:
            new = self._record(conn, rows)
            todo, seen = [], set()
            for r, rec in bills:
                if rec.request_id in new and rec.request_id not in seen:
                    seen.add(rec.request_id)
                    if r is not None and not r.settled and (r.micros or rec.cost):   # else nothing to move
                        todo.append((r, rec.cost))
            if todo:
                self._settle(conn, todo)
        for r, _cost in todo:
            r.settled = True
        return new

    def _usage_rows(self, recs: list[UsageRecord]) -> list[dict]:
        rows = []
        for rec in recs:
            if rec.status not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {rec.status!r}")
            # A shallow copy (asdict deep-copies every value: a measurable cost per billed request).
            row = {name: getattr(rec, name) for name in USAGE_FIELDS}
            row["attempted"] = list(rec.attempted or [])
            row["metadata"] = dict(rec.metadata or {})
            rows.append(row)
        return rows

    def _record(self, conn, rows: list[dict]) -> set[str]:
        # RETURNING, not rowcount (see auth.create_tenant): the rows a conflict skipped don't come back.
        stmt = (self.store.insert(usage).on_conflict_do_nothing(index_elements=["request_id"])
                .returning(usage.c.request_id))
        new: set[str] = set()
        for batch in pow2_batches(rows):     # one multi-row INSERT per batch: few sizes, a bounded cache
            new.update(conn.execute(stmt, list(batch)).scalars())
        return new

    def spend(self, tenant_id: str, group_by: str = "model", start: datetime | None = None,
              end: datetime | None = None) -> list[dict]:
        """Rows {group, requests, input_tokens, output_tokens, cost} for start <= created_at < end,
        most expensive first. group_by: model | provider | key | metadata.<name>."""
        if group_by == "model":
            column = usage.c.model
        elif group_by == "provider":
            column = usage.c.provider
        elif group_by == "key":
            column = usage.c.key_id
        elif group_by.startswith("metadata.") and METADATA_NAME_RE.match(group_by[len("metadata."):]):
            column = usage.c["metadata"][group_by[len("metadata."):]].as_string()  # ->> / JSON_EXTRACT
        else:
            raise ValueError(f"group_by must be model, provider, key or metadata.<name>, not {group_by!r}")
        query = (select(column.label("grp"), func.count().label("requests"),
                        func.coalesce(func.sum(usage.c.input_tokens), 0).label("input_tokens"),
                        func.coalesce(func.sum(usage.c.output_tokens), 0).label("output_tokens"),
                        func.coalesce(func.sum(usage.c.cost), 0.0).label("cost"))
                 .where(usage.c.tenant_id == tenant_id)
                 .group_by(text("1"))   # by position: PostgreSQL won't match two `->> $n` binds
                 .order_by(text("5 DESC"), text("1")))
        if start is not None:
            query = query.where(usage.c.created_at >= start)
        if end is not None:
            query = query.where(usage.c.created_at < end)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"group": None if r.grp is None else str(r.grp), "requests": int(r.requests),
                 "input_tokens": int(r.input_tokens), "output_tokens": int(r.output_tokens),
                 "cost": float(r.cost)} for r in rows]

    def requests(self, tenant_id: str, limit: int = 50) -> list[UsageRecord]:
        """The tenant's most recent usage rows, newest first."""
        query = (select(usage).where(usage.c.tenant_id == tenant_id)
                 .order_by(usage.c.created_at.desc(), usage.c.request_id.desc()).limit(limit))
        with self.store.engine.connect() as conn:
            return [UsageRecord(**row) for row in conn.execute(query).mappings()]
