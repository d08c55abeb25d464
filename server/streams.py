"""Buffered, resumable streams.

Every streamed response is read from its upstream by a background task ("pump") to its
end, whether or not the client stays. The pump turns upstream items into client-format SSE
events (through a Relay, one per client format), numbers them (SSE `id:` = index) and keeps
them in memory for this process, while a flusher writes them in batches through StreamRepo
so another replica sharing the store can serve a resume. A client that reconnects with
`?from=N` (or Last-Event-ID) gets exactly the events from index N, byte for byte.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from server.config import StreamsConfig, Timeouts
from server.logs import log_event
from server.metrics import Metrics
from server.providers import UpstreamError
from server.relays import Event, Relay
from server.router import UpstreamStream
from server.status import CANCELED, ERROR, OK, PARTIAL, RUNNING, Status
from server.translate.sse import encode_sse

__all__ = ["Buffer", "Event", "Relay", "Streams"]   # Event, Relay: re-exported for old imports

CANCEL_CHECK_INTERVAL = 1.0            # seconds between checks for DELETEs made on other replicas
# What a finished buffer costs beyond its events' bytes (measured with tracemalloc: the Buffer and its
# attributes, and per event the bytes object's header and its list slot), to count it against
# `StreamsConfig.memory_max_bytes`.
BUFFER_OVERHEAD = 1200
EVENT_OVERHEAD = 48
PACKED_EVENT_OVERHEAD = 4             # a packed buffer's: one offset per event


class Packed:
    """A finished stream's events in one bytes object and an array of where each ends: read like
    the list it replaces (len, [i], [i:j]). Why: a list of small bytes objects, each one allocated
    as its event came, pins memory pages shared with short-lived objects of the same moment; under
    load that fragmentation grew the gateway's RSS for minutes after the buffers themselves were
    bounded. One allocation per kept stream, made when it is kept, frees those pages together."""
    __slots__ = ("blob", "ends")

    def __init__(self, events: list[bytes]) -> None:
        self.blob = b"".join(events)
        self.ends = array("I")            # 4 bytes each: a stream is at most max_bytes (< 4 GiB)
        end = 0
        for raw in events:
            end += len(raw)
            self.ends.append(end)

    def __len__(self) -> int:
        return len(self.ends)

    def _span(self, i: int, j: int) -> bytes:
        return self.blob[self.ends[i - 1] if i > 0 else 0:self.ends[j - 1]] if j > i else b""

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            i, j, _step = key.indices(len(self.ends))
            return [self._span(i, j)] if j > i else []     # one piece: callers join what they get
        if key < 0:
            key += len(self.ends)
        if not 0 <= key < len(self.ends):
            raise IndexError(key)
        return self._span(key, key + 1)


class Buffer:
    def __init__(self, id: str, tenant_id: str, fmt: str, t: Timeouts) -> None:
        self.id, self.tenant_id, self.format = id, tenant_id, fmt
        self.events: list[bytes] | Packed = []   # Packed once finished and kept (Streams._keep)
        self.size = 0
        self.done = False
        self.status: Status = RUNNING
        self.flushed = 0                # events already written to the store
        self.created = False            # its row exists in the store
        self.stored_final = False
        self.finished_at: float | None = None
        self.last_activity = time.monotonic()
        self.deadline = self.last_activity + t.total
        self.idle = t.idle
        self.timed_out: str | None = None
        self.task: asyncio.Task | None = None
        self.tag: Callable[[str | None, Any, str], Any] | None = None   # the relay's: marks the first event
        self.data_only = False          # `data:` lines only: no id, no comment (the relay's choice)
        self.meta: dict[str, Any] = {}  # stored with the row: what settling it after a crash needs (recovery.py)
        # Made when a follower waits, resolved by the next change: no future per event (the pump appends
        # many events per upstream read, and a follower wakes once for all of them).
        self._changed: asyncio.Future[None] | None = None

    def append(self, event: str | None, data: Any) -> None:
        index = len(self.events)
        if index == 0 and self.tag is not None:   # the stream id travels in the first event
            data = self.tag(event, data, self.id)
        raw = encode_sse(data, event, None if self.data_only else str(index))
        if index == 0 and not self.data_only:   # and as a comment, for clients that only read raw lines
            raw = f": stream {self.id}\n".encode() + raw
        self.events.append(raw)  # type: ignore[union-attr]   # a Packed buffer is done: nothing appends
        self.size += len(raw)
        self.last_activity = time.monotonic()
        self._wake()

    def footprint(self) -> int:
        """About what this buffer holds in memory, in bytes."""
        per_event = PACKED_EVENT_OVERHEAD if isinstance(self.events, Packed) else EVENT_OVERHEAD
        return BUFFER_OVERHEAD + self.size + per_event * len(self.events)

    def release(self) -> None:
        """The pump is over: let go of what only it needed. The task keeps its context, which holds
        the request's Call (and so its reservation, relay, ...): a finished stream keeps its events only."""
        self.task = None
        self.tag = None

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def wait(self) -> None:
        """Until the next event or the end (the caller checked for both first: nothing runs in between)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)   # shielded: one follower leaving must not cancel the others' wait


class Streams:
    def __init__(self, cfg: StreamsConfig, repo: Any, metrics: Metrics, logger: logging.Logger,
                 writer: Executor | None = None, reader: Executor | None = None) -> None:
        self.cfg, self.repo, self.metrics, self.log = cfg, repo, metrics, logger
        self.writer = writer              # the executor for store writes
        self.reader = reader              # and for reads (None: asyncio's default pool)
        self.live: dict[str, Buffer] = {}
        self.pending: dict[str, Buffer] = {}    # running, or not yet all in the store: what the loops look at
        # Finished and in the store, oldest first: kept for a fast resume from this replica for
        # `memory_retention` seconds, and at most `memory_max_bytes` in all (then only the store has them).
        self.kept: OrderedDict[str, Buffer] = OrderedDict()
        self.kept_bytes = 0
        self._tasks: list[asyncio.Task] = []
        self._cancel_checked = 0.0
        self._heartbeat = 0.0

    # ---- lifecycle ----
    def start_background(self) -> None:
        self._tasks = [asyncio.create_task(self._flusher()), asyncio.create_task(self._watchdog()),
                       asyncio.create_task(self._purger())]

    async def close(self) -> None:
        for buf in list(self.live.values()):
            if buf.task and not buf.done:
                buf.task.cancel()
        pumps = [b.task for b in self.live.values() if b.task]
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._flush_once()
        except Exception:  # noqa: BLE001 - the gateway's shutdown (its bills) goes on
            self.log.exception("final stream flush failed")

    # ---- producing ----
    def start(self, tenant_id: str, t: Timeouts, relay: Relay, upstream: UpstreamStream,
              on_done: Callable[[Status, str | None], Awaitable[None]],
              meta: dict[str, Any] | None = None) -> Buffer:
        buf = Buffer("strm_" + secrets.token_hex(16), tenant_id, relay.format, t)
        buf.tag = relay.tag
        buf.meta = meta or {}
        buf.data_only = relay.data_only
        self.live[buf.id] = self.pending[buf.id] = buf
        # The opening and what the upstream already sent (its first token) go in now, not on the pump's
        # first turn: the response finds them at once (two event-loop turns sooner to the first byte).
        head_error: BaseException | None = None
        try:
            self._add(buf, relay.start())
            for item in upstream.head:
                self._add(buf, relay.events(item))
        except Exception as e:  # noqa: BLE001 - raised again inside the pump, which ends every stream
            head_error = e
        buf.task = asyncio.create_task(self._pump(buf, relay, upstream, on_done, head_error))
        return buf

    async def _pump(self, buf: Buffer, relay: Relay, upstream: UpstreamStream,
                    on_done: Callable[[Status, str | None], Awaitable[None]],
                    head_error: BaseException | None = None) -> None:
        self.metrics.streams_active.inc()
        status: Status = OK
        error: str | None = None
        try:
            if head_error is not None:
                raise head_error
            async for item in upstream.rest():
                self._add(buf, relay.events(item))
            self._add(buf, relay.end())
        except UpstreamError as e:       # after the first token: never a silent truncation
            status, error = PARTIAL, e.message
            self._add(buf, relay.fail(e.message, e.kind), check=False)
        except _TooBig as e:
            status, error = PARTIAL, str(e)
            self._add(buf, relay.fail(str(e), "size"), check=False)
        except asyncio.CancelledError:   # the watchdog (a timeout), DELETE, or shutdown
            if buf.timed_out:
                upstream.broke(buf.timed_out)     # the deployment's fault: its health hears of it
            status = PARTIAL if buf.timed_out else CANCELED
            error = buf.timed_out or "stream canceled"
            self._add(buf, relay.fail(error, "timeout" if buf.timed_out else CANCELED), check=False)
        except Exception as e:  # noqa: BLE001 - a bug must still close the client's stream and bill
            status, error = ERROR, f"internal error: {type(e).__name__}"
            self.log.exception("stream pump failed", extra={"fields": {"stream_id": buf.id}})
            self._add(buf, relay.fail("internal gateway error", "internal"), check=False)
        finally:
            try:
                await upstream.aclose()
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing a broken upstream
                pass
            buf.done, buf.status, buf.finished_at = True, status, time.monotonic()
            buf._wake()
            self.metrics.streams_active.dec()
        try:
            await on_done(status, error)
        finally:
            buf.release()

    async def persist(self, buf: Buffer) -> None:
        """Write the stream's row (and its events so far) now rather than at the next flush: a stream
        holding credit must be in the store before its client sees a byte, so that a crash of this
        process can be settled (server/recovery.py)."""
        if self.repo is not None and not buf.created:
            await self._write_call(self._write, [(buf, buf.flushed, len(buf.events), False)])

    def _add(self, buf: Buffer, events: list[Event], check: bool = True) -> None:
        for event, data in events:
            buf.append(event, data)
        if check and (len(buf.events) > self.cfg.max_events or buf.size > self.cfg.max_bytes):
            raise _TooBig(f"stream exceeded the gateway's limit ({self.cfg.max_events} events, "
                          f"{self.cfg.max_bytes} bytes)")

    # ---- consuming ----
    def local(self, id: str, tenant_id: str) -> Buffer | None:
        buf = self.live.get(id)
        return buf if buf is not None and buf.tenant_id == tenant_id else None

    async def follow(self, buf: Buffer, start: int = 0) -> AsyncIterator[tuple[bytes, bool]]:
        """(events, last) from index `start` as they arrive, until the stream ends; `last`: nothing
        follows (the response can end with these bytes, in one write)."""
        i = start
        while True:
            n = len(buf.events)
            if i < n:
                chunk = b"".join(buf.events[i:n]) if n - i > 1 else buf.events[i]
                i = n
                yield chunk, buf.done and i == len(buf.events)
                continue
            if buf.done:
                return
            await buf.wait()

    async def find(self, id: str, tenant_id: str) -> tuple[str, Any] | None:
        """("local", Buffer) or ("store", StreamInfo) for a stream this tenant owns; None otherwise."""
        buf = self.local(id, tenant_id)
        if buf is not None:
            return "local", buf
        if id in self.live or self.repo is None:
            return None                 # another tenant's: the same answer as a stream that doesn't exist
        info = await self._read_call(self.repo.get, id)
        if info is None:   # perhaps so new that its owner has not flushed it yet
            await asyncio.sleep(self.cfg.flush_interval * 2)
            info = await self._read_call(self.repo.get, id)
        if info is None or info.tenant_id != tenant_id:
            return None
        return "store", info

    async def follow_store(self, id: str, start: int, max_wait: float) -> AsyncIterator[bytes]:
        """A stream another process is (or was) pumping: what is stored, then poll for more."""
        i, last_new = start, time.monotonic()
        while True:
            info = await self._read_call(self.repo.get, id)
            events = await self._read_call(self.repo.read, id, i)
            if events:
                i += len(events)
                last_new = time.monotonic()
                yield b"".join(events)
            if info is None or info.status != RUNNING:   # read after get: nothing can be missing
                survived = (info.meta or {}).get("survived") if info is not None else None
                if isinstance(survived, int) and start > survived and i == start:
                    # Settled after a crash, and this client had more than survived: it gets the
                    # in-band ending, which says how many events survived (server/recovery.py).
                    yield b"".join(await self._read_call(self.repo.read, id, survived))
                return
            if time.monotonic() - last_new > max_wait:     # its owner died without finishing it
                return
            await asyncio.sleep(self.cfg.poll_interval)

    async def cancel(self, id: str, tenant_id: str) -> bool:
        buf = self.local(id, tenant_id)
        if buf is not None:
            if buf.task and not buf.done:
                buf.task.cancel()
                await asyncio.gather(buf.task, return_exceptions=True)
            return True
        found = await self.find(id, tenant_id)
        if found is None:
            return False
        # Pumped by another replica: mark it (if still running); that replica sees the mark and
        # stops its upstream.
        await self._write_call(self.repo.finish, id, CANCELED, True)
        return True

    # ---- background work ----
    async def _write_call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def _read_call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.reader, fn, *args)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_interval)
            try:
                await self._flush_once()
            except Exception:  # noqa: BLE001 - the store being down must not stop serving live streams
                self.log.exception("stream flush failed")

    async def _flush_once(self) -> None:
        if self.repo is None:
            for id in [id for id, buf in self.pending.items() if buf.done]:
                self._keep(self.pending.pop(id))
            return
        try:
            await self._stop_canceled_elsewhere()
        except Exception:  # noqa: BLE001 - checked again next time; the flush goes on
            self.log.exception("checking for streams canceled elsewhere failed")
        batch = []
        for buf in list(self.pending.values()):
            n = len(buf.events)
            final = buf.done and not buf.stored_final
            if n > buf.flushed or final or not buf.created:
                batch.append((buf, buf.flushed, n, final))
        if batch:
            await self._write_call(self._write, batch)
            for buf, _start, _end, final in batch:
                if final and buf.stored_final and self.pending.pop(buf.id, None) is not None:
                    self._keep(buf)
        await self._beat()

    async def _beat(self) -> None:
        """The heartbeat of this process's running streams (every lease / 3): a row left untouched for
        `lease` is taken for a dead process's, and settled by another gateway (server/recovery.py)."""
        now = time.monotonic()
        if now - self._heartbeat < self.cfg.lease / 3:
            return
        self._heartbeat = now
        # Every one, written this pass or not: flushing events does not touch the row (store/streams.py).
        running = [b.id for b in self.pending.values() if b.created and not b.done]
        if running:
            await self._write_call(self.repo.touch, running)

    async def _stop_canceled_elsewhere(self) -> None:
        """A DELETE that reached another replica marks the stream in the store; the replica
        that pumps it checks its running streams in one query, about once a second."""
        now = time.monotonic()
        if now - self._cancel_checked < CANCEL_CHECK_INTERVAL:
            return
        self._cancel_checked = now
        running = [b.id for b in self.pending.values() if b.created and not b.done and b.task]
        for id in await self._read_call(self.repo.canceled, running) if running else ():
            buf = self.live.get(id)
            if buf is not None and buf.task and not buf.done:
                log_event(self.log, "stream canceled by another replica", stream_id=id)
                buf.task.cancel()

    def _write(self, batch: list[tuple[Buffer, int, int, bool]]) -> None:
        """Runs in the writer thread: every stream with something new, in one transaction
        (a failed one is done again next pass: the writes are idempotent)."""
        self.repo.save_many([(b.id, b.tenant_id, b.format, b.meta) for b, _s, _e, _f in batch if not b.created],
                            [(b.id, i, b.events[i]) for b, start, end, _f in batch for i in range(start, end)],
                            [(b.id, b.status) for b, _s, _e, final in batch if final])
        for buf, _start, end, final in batch:
            buf.created = True
            buf.flushed = max(buf.flushed, end)
            if final:
                buf.stored_final = True

    async def _watchdog(self) -> None:
        """Idle and total timeouts of every running stream, checked in one place (no timer per event)."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for buf in list(self.pending.values()):
                if buf.done or buf.task is None or buf.timed_out:
                    continue
                if now - buf.last_activity > buf.idle:
                    buf.timed_out = f"upstream stream idle for more than {buf.idle:g}s"
                elif now > buf.deadline:
                    buf.timed_out = "upstream stream exceeded the total timeout"
                if buf.timed_out:
                    log_event(self.log, "stream timeout", logging.WARNING, stream_id=buf.id, reason=buf.timed_out)
                    buf.task.cancel()

    def _keep(self, buf: Buffer) -> None:
        """A finished stream that needs nothing more from this process: kept a while, within the budget."""
        if not isinstance(buf.events, Packed):
            buf.events = Packed(buf.events)
        self.kept[buf.id] = buf
        self.kept_bytes += buf.footprint()
        while self.kept_bytes > self.cfg.memory_max_bytes and self.kept:
            self._forget()

    def _forget(self) -> None:
        """The oldest kept stream leaves memory (a resume of it reads the store)."""
        _id, buf = self.kept.popitem(last=False)
        self.kept_bytes -= buf.footprint()
        self.live.pop(buf.id, None)

    async def _purger(self) -> None:
        """Finished streams leave memory after a short while (the store keeps them for `retention`)."""
        last_store_purge = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            keep = self.cfg.memory_retention if self.repo is not None else self.cfg.retention
            while self.kept:
                oldest = next(iter(self.kept.values()))
                if oldest.finished_at is not None and now - oldest.finished_at <= keep:
                    break
                self._forget()
            if self.repo is not None and now - last_store_purge > 60:
                last_store_purge = now
                try:
                    await self._write_call(self.repo.purge_expired, self.cfg.retention)
                except Exception:  # noqa: BLE001 - retried in a minute
                    self.log.exception("stream purge failed")


class _TooBig(Exception):
    pass
