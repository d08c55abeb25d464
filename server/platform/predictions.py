"""Predictions of the Replicate API: created at once, run in the background on a replica of the
deployment (waiting through a cold start), followed by polling, `Prefer: wait`, an SSE stream
URL and webhooks. The replica runs it as PUT /predictions/{id}, so cancel reaches the same one.

Status values and fields are Replicate's: starting -> processing -> succeeded | failed | canceled.
Each prediction is billed once, through the gateway's Call, when it ends.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import mimetypes
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from server.platform.tables import predictions
from server.providers.base import UpstreamError
from server.store.tables import utcnow

log = logging.getLogger("cogkit.platform")
TERMINAL = ("succeeded", "failed", "canceled")
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
WEBHOOK_INTERVAL = 0.5       # seconds between output/logs webhooks of one prediction (as Replicate)
MEMORY_RETENTION = 600.0     # seconds a finished prediction stays in memory (then: the store)
MEMORY_MAX_ENDED = 1000      # and at most this many of them (a busy platform ends thousands a minute)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass
class Prediction:
    id: str
    tenant_id: str
    model: str
    version: str
    deployment: str
    input: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: tuple[str, ...] = WEBHOOK_EVENTS
    stream: bool = False
    status: str = "starting"
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    events: list[tuple[str, str]] = field(default_factory=list)      # for the stream URL, replayed to each reader
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    replica_url: str | None = None
    task: asyncio.Task[None] | None = None
    ended_at: float | None = None
    saved: bool = False          # its final state is in the store: it may leave memory

    def view(self, base_url: str) -> dict[str, Any]:
        urls = {"get": f"{base_url}/v1/predictions/{self.id}", "cancel": f"{base_url}/v1/predictions/{self.id}/cancel"}
        if self.stream:
            urls["stream"] = f"{base_url}/v1/predictions/{self.id}/stream"
        return {"id": self.id, "model": self.model, "version": self.version, "input": self.input, "logs": self.logs,
                "output": self.output, "data_removed": False, "error": self.error, "status": self.status,
                "source": "api", "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "completed_at": _iso(self.completed_at), "urls": urls, "metrics": self.metrics}

    def emit(self, event: str, data: str) -> None:
        self.events.append((event, data))
        self.notify()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Files:
    """File outputs (data URIs from a replica) kept on disk and served at /v1/files/{name}."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, value: Any, base_url: str) -> Any:
        if isinstance(value, list):
            return [self.keep(v, base_url) for v in value]
        if isinstance(value, dict):
            return {k: self.keep(v, base_url) for k, v in value.items()}
        if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value[:200]:
            return value
        head, _, payload = value.partition(";base64,")
        return f"{base_url}/v1/files/{self.save(base64.b64decode(payload), head[5:])}"

    def save(self, data: bytes, mime: str) -> str:
        """The file's name: its content hash (unguessable, and the same bytes are kept once)."""
        name = hashlib.sha256(data).hexdigest()[:32] + (mimetypes.guess_extension(mime or "") or "")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        if not path.exists():
            path.write_bytes(data)
        return name

    def inline(self, value: Any, base_url: str) -> Any:
        """Our own file URLs in inputs (the replicate client uploads files first) as data URIs, so a
        replica never has to call the platform back with a key."""
        if isinstance(value, list):
            return [self.inline(v, base_url) for v in value]
        if isinstance(value, dict):
            return {k: self.inline(v, base_url) for k, v in value.items()}
        prefix = f"{base_url}/v1/files/"
        if not isinstance(value, str) or not value.startswith(prefix):
            return value
        path = self.path(value[len(prefix):])
        if path is None:
            return value        # not ours after all: the replica fetches it, or says why not
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()

    def path(self, name: str) -> Path | None:
        if "/" in name or name.startswith("."):
            return None
        path = self.root / name
        return path if path.is_file() else None


class PredictionRunner:
    def __init__(self, platform: Any, files: Files, write: Callable[..., Any]) -> None:
        self.platform, self.files, self.write = platform, files, write
        self.live: dict[str, Prediction] = {}
        self.ended: OrderedDict[str, Prediction] = OrderedDict()     # of `live`, the finished, oldest first
        self.http = httpx.AsyncClient(timeout=10)

    async def aclose(self) -> None:
        for p in list(self.live.values()):
            if p.task is not None and not p.task.done():
                p.task.cancel()
        await self.http.aclose()

    def start(self, p: Prediction, base_url: str, on_end: Callable[[Prediction], None]) -> None:
        self.live[p.id] = p
        self._forget_old()
        self.write(self._save, p)
        p.task = asyncio.create_task(self._run(p, base_url, on_end))

    def _forget_old(self) -> None:
        """Finished predictions leave memory past MEMORY_RETENTION or MEMORY_MAX_ENDED, oldest first, but
        only once their final state is in the store (readers then find it there): nothing is lost."""
        now = time.monotonic()
        while self.ended:
            oldest = next(iter(self.ended.values()))
            expired = oldest.ended_at is not None and now - oldest.ended_at > MEMORY_RETENTION
            if not oldest.saved or not (expired or len(self.ended) > MEMORY_MAX_ENDED):
                return
            del self.ended[oldest.id]
            self.live.pop(oldest.id, None)

    def _ended(self, p: Prediction) -> None:
        p.ended_at = time.monotonic()
        self.write(self._save_final, p)
        self.ended[p.id] = p
        self._forget_old()

    async def _run(self, p: Prediction, base_url: str, on_end: Callable[[Prediction], None]) -> None:
        hooks = _Webhooks(self.http, p, base_url) if p.webhook else None
        if hooks:
            hooks.send("start")
        iterator_output: list[Any] | None = None
        try:
            from server.platform.service import supports_sse
            sse = supports_sse(self.platform.version(p.version))
            async for event, value in self.platform.predict_stream(
                    p.deployment, {"input": p.input, "id": p.id}, prediction_id=p.id, on_replica=self._on_replica(p),
                    sse=sse):
                if event == "output":
                    value = self.files.keep(value, base_url)
                    iterator_output = [*(iterator_output or []), value]
                    p.output = iterator_output
                    p.emit("output", value if isinstance(value, str) else json.dumps(value))
                    if hooks:
                        hooks.send("output")
                elif event == "logs":
                    p.logs += value if isinstance(value, str) else json.dumps(value)
                    p.emit("logs", value if isinstance(value, str) else json.dumps(value))
                    if hooks:
                        hooks.send("logs")
                elif event == "completed" and isinstance(value, dict):
                    self._complete(p, value, base_url, iterator_output)
        except UpstreamError as e:
            if p.status not in TERMINAL:
                p.status, p.error = "failed", e.message
        except asyncio.CancelledError:
            p.status = "canceled"
        finally:
            if p.status not in TERMINAL:
                p.status, p.error = "failed", p.error or "the prediction ended without a result"
            p.completed_at = p.completed_at or utcnow()
            if p.status == "failed":
                p.emit("error", json.dumps({"detail": p.error}))
            p.emit("done", json.dumps({"reason": "canceled"} if p.status == "canceled" else {}))
            self._ended(p)
            on_end(p)
            if hooks:
                hooks.send("completed")
                await hooks.drain()

    def _on_replica(self, p: Prediction) -> Callable[[str, float], None]:
        def started(url: str, waited_s: float) -> None:
            p.replica_url, p.status, p.started_at = url, "processing", utcnow()
            if waited_s > 0:
                p.metrics["cold_start_time"] = round(waited_s, 3)
            p.notify()
        return started

    def _complete(self, p: Prediction, prediction: dict[str, Any], base_url: str, streamed: list[Any] | None) -> None:
        status = prediction.get("status")
        p.status = status if status in TERMINAL else "failed"
        output = prediction.get("output")
        p.output = self.files.keep(output, base_url) if streamed is None or output is not None else streamed
        p.error = prediction.get("error")
        p.logs = prediction.get("logs") or p.logs
        p.metrics.update(prediction.get("metrics") or {})
        p.completed_at = utcnow()

    async def cancel(self, p: Prediction) -> None:
        if p.status in TERMINAL:
            return
        if p.replica_url:
            try:
                await self.http.post(f"{p.replica_url}/predictions/{p.id}/cancel")
            except httpx.HTTPError:
                pass   # the replica is gone: stopping our side is all that is left
            try:
                await asyncio.wait_for(asyncio.shield(p.task), 5) if p.task else None
            except (TimeoutError, asyncio.CancelledError):
                pass
        if p.status not in TERMINAL and p.task is not None:
            p.task.cancel()
            await asyncio.gather(p.task, return_exceptions=True)

    async def wait(self, p: Prediction, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while p.status not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(p.changed.wait(), left)
            except TimeoutError:
                return

    # ---- the store ----
    def _save(self, p: Prediction) -> None:
        values = {"tenant_id": p.tenant_id, "model": p.model, "version_id": p.version, "status": p.status,
                  "input": p.input, "output": p.output, "error": p.error, "logs": p.logs, "metrics": p.metrics,
                  "webhook": p.webhook, "webhook_events_filter": list(p.webhook_events_filter),
                  "created_at": p.created_at, "started_at": p.started_at, "completed_at": p.completed_at}
        store = self.platform.store
        with store.begin() as conn:
            conn.execute(store.insert(predictions).values(id=p.id, **values)
                         .on_conflict_do_update(index_elements=["id"], set_=values))

    def _save_final(self, p: Prediction) -> None:
        self._save(p)
        p.saved = True           # (on the writer thread; read on the event loop: a plain flag)

    def get(self, pid: str, tenant_id: str | None) -> Prediction | None:
        p = self.live.get(pid)
        if p is None:
            with self.platform.store.engine.connect() as conn:
                row = conn.execute(select(predictions).where(predictions.c.id == pid)).first()
            if row is None:
                return None
            p = Prediction(row.id, row.tenant_id, row.model, row.version_id, "", row.input or {}, row.webhook,
                           tuple(row.webhook_events_filter or ()), False, row.status, row.output, row.error,
                           row.logs or "", row.metrics or {}, row.created_at, row.started_at, row.completed_at)
            if p.status not in TERMINAL:   # its runner is gone (a restart): it will not finish
                p.status, p.error = "failed", "the platform restarted while this prediction ran"
        if tenant_id is not None and p.tenant_id != tenant_id:
            return None
        return p

    def list(self, tenant_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(predictions.c.id).order_by(predictions.c.created_at.desc()).limit(limit)
        if tenant_id is not None:
            query = query.where(predictions.c.tenant_id == tenant_id)
        with self.platform.store.engine.connect() as conn:
            return [{"id": pid} for pid in conn.execute(query).scalars().all()]


def new_id() -> str:
    return uuid.uuid4().hex[:26]


class _Webhooks:
    """One prediction's webhooks, in order, output/logs at most every WEBHOOK_INTERVAL."""

    def __init__(self, http: httpx.AsyncClient, p: Prediction, base_url: str) -> None:
        self.http, self.p, self.base_url = http, p, base_url
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.last = 0.0
        self.task = asyncio.create_task(self._sender())

    def send(self, event: str) -> None:
        if event in self.p.webhook_events_filter:
            self.queue.put_nowait(event)

    async def drain(self) -> None:
        self.queue.put_nowait(None)
        await asyncio.gather(self.task, return_exceptions=True)

    async def _sender(self) -> None:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if event in ("output", "logs") and (time.monotonic() - self.last < WEBHOOK_INTERVAL
                                                or not self.queue.empty()):
                continue     # a later webhook carries this one's state too
            self.last = time.monotonic()
            assert self.p.webhook is not None
            try:
                await self.http.post(self.p.webhook, json=self.p.view(self.base_url))
            except httpx.HTTPError as e:
                log.warning("webhook %s for prediction %s failed: %s", event, self.p.id, type(e).__name__)
