"""The prediction lifecycle on the server side: starts the worker process,
admits predictions into `concurrency.max` slots, pumps the worker's events
into each prediction's state, and tells listeners (webhooks, SSE streams)."""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cogkit.runtime import files
from cogkit.runtime import messages as m
from cogkit.runtime.webhooks import WebhookSender
from cogkit.sdk.scope import merge_metric

# Health states, as Cog reports them.
STARTING, READY, BUSY, SETUP_FAILED, DEFUNCT, UNHEALTHY = (
    "STARTING", "READY", "BUSY", "SETUP_FAILED", "DEFUNCT", "UNHEALTHY")
KEEP_FINISHED = 1000


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _int_setting(env: dict[str, str], name: str, default: int) -> int:
    """A non-negative integer from cog.yaml's environment or ours (the model's settings reach both)."""
    raw = env.get(name, os.environ.get(name))
    try:
        return max(0, int(raw)) if raw is not None else default
    except ValueError:
        return default


class Busy(Exception):
    """Every slot is taken (HTTP 409)."""


class NotReady(Exception):
    """Setup has not finished, or failed (HTTP 503)."""


@dataclass
class Prediction:
    id: str
    input: dict[str, Any]
    mode: str = "predict"
    status: str = "starting"
    output: Any = None
    logs: str = ""
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    completed_at: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    output_file_prefix: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    secret_inputs: set[str] = field(default_factory=set)  # shown as ********** in every response
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[str, Any], None]] = field(default_factory=list)
    started_monotonic: float = 0.0
    streamed: bool = False
    workdir: str | None = None
    sse_capacity: int = 1024
    sse_history: list[tuple[str, Any]] = field(default_factory=list)
    sse_skipped: int = 0
    sse_outputs: int = 0
    sse_listeners: list[Callable[[tuple[str, Any]], None]] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id, "output": self.output,
            "input": {k: "**********" if k in self.secret_inputs and v is not None else v for k, v in self.input.items()}, "status": self.status,
            "logs": self.logs, "error": self.error, "metrics": self.metrics,
            "created_at": self.created_at, "started_at": self.started_at,
            "completed_at": self.completed_at, "webhook": self.webhook,
            "webhook_events_filter": self.webhook_events_filter,
            "output_file_prefix": self.output_file_prefix,
        }

    def emit(self, event: str, data: Any = None) -> None:
        for listener in list(self.listeners):
            listener(event, data)
        sse = self._sse_event(event, data)
        if sse is None:
            return
        if self.sse_capacity > 0:  # kept for late subscribers, as Cog's COG_STREAM_HISTORY_CAPACITY
            if len(self.sse_history) >= self.sse_capacity:
                self.sse_history.pop(0)
                self.sse_skipped += 1
            self.sse_history.append(sse)
        for sse_listener in list(self.sse_listeners):
            sse_listener(sse)

    def _sse_event(self, event: str, data: Any) -> tuple[str, Any] | None:
        """A prediction event as Cog's server-sent event (name, payload)."""
        if event == "start":
            return "start", {"id": self.id, "status": self.status}
        if event == "output":
            self.sse_outputs += 1
            return "output", {"chunk": data, "index": self.sse_outputs - 1}
        if event == "logs":
            return "log", {"source": "stdout", "data": data}
        if event == "metric":
            return "metric", data
        if event == "completed":
            return "completed", data
        return None


@dataclass
class SetupResult:
    started_at: str | None = None
    completed_at: str | None = None
    logs: str = ""
    status: str | None = None  # succeeded | failed


class Runner:
    def __init__(self, project: str, python: str, predict_ref: str | None, train_ref: str | None,
                 file_fields: dict[str, dict[str, str]], concurrency: int = 1,
                 upload_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.project = os.path.abspath(project)
        self.python = python
        self.predict_ref = predict_ref
        self.train_ref = train_ref
        self.file_fields = file_fields  # mode -> {field: "uri" | "uri-list"}
        self.max_concurrency = concurrency
        self.upload_url = upload_url
        self.env = env or {}
        self.stream_history_capacity = _int_setting(self.env, "COG_STREAM_HISTORY_CAPACITY", 1024)
        self.setup = SetupResult()
        self.state = STARTING
        self.error: str | None = None
        self.predictions: dict[str, Prediction] = {}
        self.running: dict[str, Prediction] = {}
        self._finished: collections.deque[str] = collections.deque()  # ids, oldest first
        self.slots = 1
        self._proc: asyncio.subprocess.Process | None = None
        self._setup_done = asyncio.Event()
        self._health: asyncio.Future[dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workdir = tempfile.mkdtemp(prefix="cogkit-run-")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10))

    # --- worker process --------------------------------------------------
    async def start(self) -> None:
        self.setup.started_at = now_iso()
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        args = [self.python, "-m", "cogkit.runtime.worker", "--project", self.project,
                "--events-fd", str(write_fd)]
        if self.predict_ref:
            args += ["--predict", self.predict_ref]
        if self.train_ref:
            args += ["--train", self.train_ref]
        self._proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, pass_fds=(write_fd,), env=env, cwd=self.project,
            start_new_session=True)
        os.close(write_fd)
        self._spawn(self._pump_events(os.fdopen(read_fd, "rb", buffering=0)))
        self._spawn(self._pump_stdout())
        setup_timeout = _int_setting(self.env, "COG_SETUP_TIMEOUT", 0)
        if setup_timeout:
            self._spawn(self._limit_setup(setup_timeout))

    async def _limit_setup(self, seconds: int) -> None:
        """COG_SETUP_TIMEOUT, as Cog: setup that runs longer fails, and the worker is stopped."""
        try:
            await asyncio.wait_for(self._setup_done.wait(), seconds)
        except TimeoutError:
            self.setup.completed_at = now_iso()
            self.setup.status = "failed"
            self.state, self.error = SETUP_FAILED, f"setup timed out after {seconds} seconds (COG_SETUP_TIMEOUT)"
            self.setup.logs += f"{self.error}\n"
            self._setup_done.set()
            if self._proc and self._proc.returncode is None:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        await asyncio.wait_for(self._setup_done.wait(), timeout)
        return self.state not in (SETUP_FAILED, DEFUNCT)

    def _send(self, kind: str, **fields: Any) -> None:
        if self._proc and self._proc.stdin and not self._proc.stdin.is_closing():
            self._proc.stdin.write(m.encode(kind, **fields))

    async def _pump_stdout(self) -> None:
        assert self._proc and self._proc.stdout
        while chunk := await self._proc.stdout.read(65536):
            self._log(None, chunk.decode(errors="replace"))

    async def _pump_events(self, pipe: Any) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 30)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        while line := await reader.readline():
            await self._on_event(m.read_line(line))
        await self._on_worker_exit()

    async def _on_event(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == m.LOG:
            self._log(msg.get("id"), msg["text"])
        elif kind == m.SETUP_DONE and not self._setup_done.is_set():  # not after a setup timeout
            self.setup.completed_at = now_iso()
            self.setup.status = "succeeded" if msg["ok"] else "failed"
            if msg["ok"]:
                # A synchronous predictor runs one prediction at a time, as in Cog.
                wanted = msg.get("concurrent_max") or self.max_concurrency
                self.max_concurrency = wanted
                self.slots = wanted if msg.get("is_async") else 1
                if self.slots < self.max_concurrency:
                    self.setup.logs += (f"concurrency.max is {self.max_concurrency}, but predict() is synchronous: "
                                        "running one prediction at a time (make it async to run several)\n")
                self.state = READY
            else:
                self.state, self.error = SETUP_FAILED, msg.get("error")
            self._setup_done.set()
        elif kind == m.OUTPUT:
            p = self.running.get(msg["id"])
            if p:
                item = await files.encode_files(self._http, msg["value"], self._upload_url(p))
                p.streamed = True
                p.output = [*(p.output or []), item]
                p.emit("output", item)
        elif kind == m.METRIC:
            p = self.running.get(msg["id"])
            if p:
                merge_metric(p.metrics, msg["name"], msg["value"], msg["mode"])
                p.emit("metric", {"name": msg["name"], "value": msg["value"], "mode": msg["mode"]})
        elif kind == m.DONE:
            await self._finish(msg)
        elif kind == m.HEALTH and self._health and not self._health.done():
            self._health.set_result(msg)

    def _log(self, pid: str | None, text: str) -> None:
        # Output with no owner (fd-level writes, background threads) goes to the
        # sole running prediction if there is exactly one, else to setup logs.
        p = self.running.get(pid) if pid else None
        if p is None and pid is None and self._setup_done.is_set() and len(self.running) == 1:
            p = next(iter(self.running.values()))
        if p is not None:
            p.logs += text
            p.emit("logs", text)
        elif not self._setup_done.is_set() or pid is None:
            self.setup.logs += text
            if self._setup_done.is_set():
                sys.stderr.write(text)

    async def _on_worker_exit(self) -> None:
        code = await self._proc.wait() if self._proc else None
        reason = f"the model's worker process exited unexpectedly (exit code {code})"
        if not self._setup_done.is_set():
            self.setup.completed_at = now_iso()
            self.setup.status = "failed"
            self.state, self.error = SETUP_FAILED, reason
            self._setup_done.set()
        elif self.state != SETUP_FAILED:
            self.state, self.error = DEFUNCT, reason
        for p in list(self.running.values()):
            await self._finish({"id": p.id, "status": "failed", "error": reason})

    # --- predictions ---------------------------------------------------------
    def _upload_url(self, p: Prediction) -> str | None:
        return p.output_file_prefix or self.upload_url

    def busy(self) -> bool:
        return len(self.running) >= self.slots

    def health_status(self) -> str:
        if self.state == READY and self.busy():
            return BUSY
        return self.state

    async def check_health(self, timeout: float = 5.0) -> str:
        """Run the predictor's own healthcheck(), if any; UNHEALTHY when it fails."""
        if self.state not in (READY, UNHEALTHY):
            return self.health_status()
        loop = asyncio.get_running_loop()
        self._health = loop.create_future()
        self._send(m.HEALTHCHECK)
        try:
            result = await asyncio.wait_for(self._health, timeout)
            ok, error = result["ok"], result.get("error")
        except TimeoutError:
            ok, error = False, f"user-defined healthcheck timed out after {timeout:.1f} seconds"
        if self.state in (READY, UNHEALTHY):
            self.state, self.error = (READY, None) if ok else (UNHEALTHY, error)
        return self.health_status()

    async def submit(self, prediction: Prediction, webhook_client: httpx.AsyncClient | None = None) -> Prediction:
        """Admit a validated prediction and start it. Raises NotReady or Busy."""
        if self.state not in (READY, UNHEALTHY):
            raise NotReady(self.error or "setup has not finished")
        if prediction.id in self.predictions:
            return self.predictions[prediction.id]
        if self.busy():
            raise Busy("Already running a prediction" if self.slots == 1 else
                       f"All {self.slots} prediction slots are busy")
        if prediction.webhook:
            sender = WebhookSender(webhook_client or self._http, prediction.webhook,
                                   prediction.webhook_events_filter, prediction.response)
            prediction.listeners.append(lambda event, _data: sender.notify(event))
        prediction.sse_capacity = self.stream_history_capacity
        self.predictions[prediction.id] = prediction
        self.running[prediction.id] = prediction
        if self.file_fields.get(prediction.mode):  # a directory only for downloaded inputs: two syscalls saved
            prediction.workdir = tempfile.mkdtemp(dir=self._workdir)
        prediction.status = "processing"
        prediction.started_at = now_iso()
        prediction.started_monotonic = time.monotonic()
        prediction.emit("start")
        if self.file_fields.get(prediction.mode):
            self._spawn(self._dispatch(prediction))  # inputs to download first
        else:  # nothing to fetch: straight to the worker, without a task and a loop turn in between
            self._send(m.PREDICT, id=prediction.id, mode=prediction.mode, input=prediction.input,
                       context=prediction.context)
        return prediction

    async def _dispatch(self, p: Prediction) -> None:
        try:
            worker_input = await files.fetch_inputs(self._http, p.input, self.file_fields.get(p.mode, {}), p.workdir or self._workdir)
        except files.FileInputError as e:
            await self._finish({"id": p.id, "status": "failed", "error": str(e)})
            return
        self._send(m.PREDICT, id=p.id, mode=p.mode, input=worker_input, context=p.context)

    async def _finish(self, msg: dict[str, Any]) -> None:
        p = self.running.get(msg["id"])
        if p is None:
            return
        if msg["status"] == "succeeded" and not msg.get("streamed"):
            try:
                p.output = await files.encode_files(self._http, msg.get("output"), self._upload_url(p))
            except (httpx.HTTPError, OSError) as e:
                msg = {**msg, "status": "failed", "error": f"could not deliver the output file: {e}"}
        p.status = msg["status"]
        p.error = msg.get("error")
        if p.status == "failed":
            p.output = None  # as Cog: a failed prediction has no output, even one that streamed some
        p.completed_at = now_iso()
        p.metrics["predict_time"] = round(time.monotonic() - p.started_monotonic, 6)
        del self.running[p.id]
        if p.workdir:
            shutil.rmtree(p.workdir, ignore_errors=True)
        p.done.set()
        p.emit("completed", p.response())
        self._forget_old(p.id)

    def _forget_old(self, finished: str) -> None:
        # Finished predictions are kept for idempotent PUTs, but not forever. A queue in
        # order of finishing makes this O(1) per prediction (scanning them all was not).
        self._finished.append(finished)
        while len(self._finished) > KEEP_FINISHED:
            self.predictions.pop(self._finished.popleft(), None)

    def cancel(self, prediction_id: str) -> bool:
        p = self.predictions.get(prediction_id)
        if p is None:
            return False
        if p.id in self.running:
            self._send(m.CANCEL, id=p.id)
        return True

    def new_id(self) -> str:
        return uuid.uuid4().hex

    async def stop(self) -> None:
        self._send(m.SHUTDOWN)
        if self._proc and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                os.killpg(self._proc.pid, signal.SIGKILL)
                await self._proc.wait()
        for task in list(self._tasks):
            task.cancel()
        await self._http.aclose()
        shutil.rmtree(self._workdir, ignore_errors=True)
