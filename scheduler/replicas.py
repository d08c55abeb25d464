"""What the gateway sees of a deployment: a set of replicas to acquire one from.

    lease = await replicas.acquire()     # a ready replica, waiting through a cold start if need be
    ... POST lease.replica.url/predictions ...
    replicas.release(lease)              # or release(lease, busy=True) on its 409, then acquire again
    replicas.failed(lease, "connection refused")

Routing is least outstanding requests among ready replicas, never more than a replica's
`concurrency.max` at once. With no capacity, a request waits in a bounded FIFO queue (QueueFull
past its limit, ColdStartTimeout past the wait) and the controller is told there is demand.
Everything here runs on the gateway's event loop; nothing blocks.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Chooser = Callable[[list["Replica"]], "Replica"]


class Unavailable(Exception):
    """No replica for this request: the caller answers 503 with Retry-After."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


class QueueFull(Unavailable):
    pass


class ColdStartTimeout(Unavailable):
    pass


@dataclass
class Replica:
    id: str
    url: str
    max_concurrency: int = 1
    outstanding: int = 0
    draining: bool = False
    full: bool = False                 # it answered 409: no more until one of ours finishes
    served: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def has_room(self) -> bool:
        return not self.draining and not self.full and self.outstanding < self.max_concurrency


@dataclass
class Lease:
    replica: Replica
    waited_s: float = 0.0              # time spent queued (a cold start when there was no replica)
    cold: bool = False


class ReplicaSet:
    def __init__(self, name: str, queue_limit: int = 64, timeout: float = 300.0,
                 on_demand: Callable[[], None] | None = None) -> None:
        self.name, self.queue_limit, self.timeout = name, queue_limit, timeout
        self.on_demand = on_demand or (lambda: None)
        self.replicas: dict[str, Replica] = {}
        self._waiters: deque[asyncio.Future[Replica]] = deque()
        self._idle: dict[str, asyncio.Event] = {}     # replica id -> set when nothing is in flight on it

    # ---- the gateway's side ----
    async def acquire(self, timeout: float | None = None, chooser: Chooser | None = None) -> Lease:
        """chooser: picks among the replicas with room (engine load, prefix affinity); default least outstanding."""
        replica = self._pick(chooser)
        if replica is not None and not self._waiters:
            replica.outstanding += 1
            return Lease(replica)
        if len(self._waiters) >= self.queue_limit:
            raise QueueFull(f"{self.name}: {len(self._waiters)} requests are already waiting for a replica",
                            self.retry_after())
        cold = not any(not r.draining for r in self.replicas.values())
        future: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        started = time.monotonic()
        self.on_demand()
        wait = self.timeout if timeout is None else timeout
        try:
            replica = await asyncio.wait_for(asyncio.shield(future), wait)
        except (TimeoutError, asyncio.CancelledError) as e:
            self._abandon(future)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise ColdStartTimeout(f"{self.name}: no replica was ready within {wait:g}s",
                                   self.retry_after()) from None
        return Lease(replica, time.monotonic() - started, cold)

    def _abandon(self, future: asyncio.Future[Replica]) -> None:
        if future.done() and not future.cancelled():
            self._finish(future.result())      # handed a replica just as we gave up: give it back
        else:
            future.cancel()
        try:
            self._waiters.remove(future)
        except ValueError:
            pass

    def release(self, lease: Lease, busy: bool = False) -> None:
        """The request is done with the replica; busy=True: it refused (409), skip it until one of ours ends."""
        replica = lease.replica
        if busy:
            replica.full = True
        self._finish(replica, count=not busy)

    def failed(self, lease: Lease) -> None:
        """The replica broke under this request: no more requests until the controller looks at it."""
        lease.replica.draining = True
        self._finish(lease.replica)
        self.on_demand()

    def _finish(self, replica: Replica, count: bool = True) -> None:
        replica.outstanding = max(0, replica.outstanding - 1)
        if count:
            replica.served += 1
            replica.full = False
        if replica.outstanding == 0:
            replica.idle_since = time.monotonic()
            idle = self._idle.pop(replica.id, None)
            if idle is not None:
                idle.set()
        self._dispatch()

    def _pick(self, chooser: Chooser | None = None) -> Replica | None:
        candidates = [r for r in self.replicas.values() if r.has_room()]
        if chooser is not None and candidates:
            return chooser(candidates)
        return min(candidates, key=lambda r: (r.outstanding / r.max_concurrency, r.outstanding)) if candidates else None

    def _dispatch(self) -> None:
        """Hand free capacity to the queue, oldest first."""
        while self._waiters:
            replica = self._pick()
            if replica is None:
                return
            future = self._waiters.popleft()
            if future.done():
                continue
            replica.outstanding += 1
            future.set_result(replica)

    def retry_after(self) -> float:
        return 5.0 if self.ready_count() == 0 else 1.0

    # ---- the controller's side ----
    def add(self, replica_id: str, url: str, max_concurrency: int) -> Replica:
        replica = self.replicas.get(replica_id)
        if replica is None:
            replica = self.replicas[replica_id] = Replica(replica_id, url, max(1, max_concurrency))
        self._dispatch()
        return replica

    def drain(self, replica_id: str) -> None:
        if replica_id in self.replicas:
            self.replicas[replica_id].draining = True

    async def drained(self, replica_id: str) -> None:
        """Returns once the replica has nothing in flight (drain it first, or more may come)."""
        replica = self.replicas.get(replica_id)
        if replica is None or replica.outstanding == 0:
            return
        await self._idle.setdefault(replica_id, asyncio.Event()).wait()

    def remove(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)
        idle = self._idle.pop(replica_id, None)
        if idle is not None:
            idle.set()

    def fail_waiters(self, message: str, retry_after: float) -> None:
        """The deployment cannot start a replica now (crash back-off, no room): tell the queue at once."""
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(Unavailable(message, retry_after))

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if not r.draining)

    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas.values())

    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())
