"""The worker: a child process, started with the model's own Python, that
imports the user's code and runs setup() and predict().

Standard library only (plus the SDK): it lives in the model's environment, so
the server's FastAPI/pydantic never meet the model's pins. Control messages
arrive on stdin; events leave on a dedicated pipe (fd given by --events-fd).
Python-level prints are tagged with the prediction that made them; anything a C
extension or subprocess writes to fd 1/2 is read by the runner instead.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import importlib.util
import inspect
import io
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import traceback
import typing
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cogkit.runtime import messages as m
from cogkit.sdk import predictor as sdk_predictor
from cogkit.sdk.scope import Scope, reset_scope, use_scope
from cogkit.sdk.types import CancelationException, File, Path, Secret

_prediction_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("prediction_id", default=None)


class Events:
    """The write end of the event pipe, shared by every thread and task.

    In an async model's event loop, events are gathered and written once the loop has run
    what is ready (a prediction's outputs, metrics and end come out of one loop pass
    together): one write and one wake-up of the runner instead of one per event. A send
    from any other thread writes at once, after what is gathered, so the order holds."""

    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()
        self.before_done: list[Any] = []  # called with the id a DONE/SETUP_DONE ends: flush its logs first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._gathered: list[bytes] = []

    def gather_in(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called from the thread that runs `loop`: gather that thread's events (see above)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def send(self, kind: str, **fields: Any) -> None:
        if kind in (m.DONE, m.SETUP_DONE):
            for flush in self.before_done:
                flush(fields.get("id"))
        data = m.encode(kind, **fields)
        with self._lock:
            if self._loop is not None and threading.get_ident() == self._loop_thread:
                if not self._gathered:
                    self._loop.call_soon(self.write_gathered)
                self._gathered.append(data)
                return
            if self._gathered:
                data = b"".join(self._gathered) + data
                self._gathered.clear()
            self._out.write(data)

    def write_gathered(self) -> None:
        """Write what was gathered (also called once the loop has stopped, for what is left)."""
        with self._lock:
            data = b"".join(self._gathered)
            self._gathered.clear()
            if data:
                self._out.write(data)


class LogStream(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: each line written becomes a log event of the
    prediction running in this context (None during setup). Line-buffered, as
    Cog's log writer is: print() writes its text and its "\n" separately, and one
    event per line halves the events of the commonest log. A line not yet ended
    goes out on flush() and before its prediction's (or setup's) end."""

    def __init__(self, events: Events, name: str) -> None:
        self._events = events
        self.name = name
        self._pending: dict[str | None, str] = {}  # prediction id -> text after its last newline
        self._lock = threading.Lock()
        events.before_done.append(self.flush_for)

    def write(self, text: str) -> int:
        if not text:
            return 0
        pid = _prediction_id.get()
        with self._lock:
            buffered = self._pending.pop(pid, "") + text
            end = buffered.rfind("\n") + 1
            if end < len(buffered):
                self._pending[pid] = buffered[end:]
        if end:
            self._events.send(m.LOG, id=pid, text=buffered[:end])
        return len(text)

    def flush_for(self, pid: str | None) -> None:
        with self._lock:
            text = self._pending.pop(pid, "")
        if text:
            self._events.send(m.LOG, id=pid, text=text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for pid, text in pending.items():
            self._events.send(m.LOG, id=pid, text=text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


def load_object(project: str, ref: str) -> Any:
    file_name, _, attr = ref.partition(":")
    path = os.path.join(project, file_name)
    module_name = os.path.splitext(os.path.basename(file_name))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, attr):
        raise AttributeError(f"{file_name} has no attribute {attr!r} (from {ref!r})")
    return getattr(module, attr)


def weights_argument(setup: Any) -> dict[str, Any]:
    """setup(weights=...) is fed from COG_WEIGHTS, as Cog does."""
    if "weights" not in inspect.signature(setup).parameters:
        return {}
    value = os.environ.get("COG_WEIGHTS")
    if value and os.path.exists(value):
        return {"weights": Path(value)}
    return {"weights": value}


# --- values in and out -------------------------------------------------------

def coerce(annotation: Any, value: Any) -> Any:
    """Turn a JSON input value into the type the predictor declared."""
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        return [coerce(args[0] if args else Any, v) for v in value]
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return coerce(args[0] if len(args) == 1 else Any, value)
    if isinstance(value, dict) and m.PATH_KEY in value:
        local = value[m.PATH_KEY]
        if annotation is File:
            return open(local, "rb")
        return Path(local)
    if annotation is Secret:
        return Secret(value)
    # A float input sent as a JSON integer reaches the model as that int, as in Cog 0.23.
    return value


def encode_output(value: Any) -> Any:
    """Make a predictor's return value JSON-safe; files become path markers."""
    if isinstance(value, os.PathLike):
        return {m.PATH_KEY: os.path.abspath(os.fspath(value))}
    if isinstance(value, io.IOBase):
        name = getattr(value, "name", None)
        if isinstance(name, str) and os.path.exists(name):
            return {m.PATH_KEY: os.path.abspath(name)}
        data = value.read()
        fd, tmp = tempfile.mkstemp(prefix="output-")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return {m.PATH_KEY: tmp}
    if isinstance(value, Secret):
        return "**********"
    if isinstance(value, (list, tuple)):
        return [encode_output(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_output(v) for k, v in value.items()}
    for method in ("model_dump", "dict"):  # cog.BaseModel and pydantic models
        if callable(getattr(value, method, None)) and not isinstance(value, type):
            return encode_output(getattr(value, method)())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return str(value)


def is_stream(result: Any) -> bool:
    return isinstance(result, (Iterator, AsyncIterator)) and not isinstance(result, (str, bytes, io.IOBase))


# --- the worker --------------------------------------------------------------

class Worker:
    def __init__(self, project: str, predict_ref: str | None, train_ref: str | None, events: Events) -> None:
        self.project = project
        self.predict_ref = predict_ref
        self.train_ref = train_ref
        self.events = events
        self.predictor: Any = None
        self.entries: dict[str, Any] = {}
        self._type_hints: dict[str, dict[str, Any]] = {}  # mode -> its entry's annotations, resolved once
        self.is_async = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._running: str | None = None  # sync mode: the prediction in the main thread
        self._cancel_requested: str | None = None

    # setup
    def setup(self) -> None:
        sys.path.insert(0, self.project)
        os.chdir(self.project)
        coroutines = []
        for mode, ref in (("predict", self.predict_ref), ("train", self.train_ref)):
            if not ref:
                continue
            obj = load_object(self.project, ref)
            if inspect.isclass(obj):
                instance = obj()
                if hasattr(instance, "setup"):
                    result = instance.setup(**weights_argument(instance.setup))
                    if inspect.isawaitable(result):
                        coroutines.append(result)
                if mode == "predict":
                    self.predictor = instance
                self.entries[mode] = sdk_predictor.entry_method(instance, mode)
            else:
                self.entries[mode] = obj
        self.is_async = any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in self.entries.values())
        if self.is_async:
            self.loop = asyncio.new_event_loop()
            for coro in coroutines:
                self.loop.run_until_complete(coro)
        else:
            for coro in coroutines:
                asyncio.run(coro)

    def healthcheck(self) -> None:
        check = getattr(self.predictor, "healthcheck", None)
        try:
            ok = True if check is None else check()
            if inspect.isawaitable(ok):
                ok = asyncio.run(ok) if self.loop is None else asyncio.run_coroutine_threadsafe(ok, self.loop).result(10)
            self.events.send(m.HEALTH, ok=bool(ok), error=None if ok else "user-defined healthcheck returned False")
        except Exception as e:  # noqa: BLE001 - reported as UNHEALTHY
            self.events.send(m.HEALTH, ok=False,
                             error=f"user-defined healthcheck raised an exception: {type(e).__name__}: {e}")

    # one prediction
    def _start(self, msg: dict[str, Any]) -> tuple[Any, dict[str, Any], contextvars.Token[Scope]]:
        pid = msg["id"]
        _prediction_id.set(pid)
        scope = Scope(lambda name, value, mode: self.events.send(m.METRIC, id=pid, name=name, value=value, mode=mode),
                      msg.get("context") or {})
        token = use_scope(scope)
        fn = self.entries.get(msg.get("mode", "predict"))
        if fn is None:
            raise RuntimeError(f"this model has no {msg.get('mode')} entry point")
        hints = self._hints(msg.get("mode", "predict"), fn)
        kwargs = {k: coerce(hints.get(k, Any), v) for k, v in (msg.get("input") or {}).items()}
        return fn, kwargs, token

    def _hints(self, mode: str, fn: Any) -> dict[str, Any]:
        """The entry point's resolved annotations (get_type_hints is slow: once per mode, not per call)."""
        if mode not in self._type_hints:
            try:
                self._type_hints[mode] = typing.get_type_hints(fn)
            except Exception:  # noqa: BLE001 - unresolvable annotations: pass values as they are
                self._type_hints[mode] = {}
        return self._type_hints[mode]

    def _fail(self, pid: str, exc: BaseException) -> None:
        sys.stderr.write(traceback.format_exc())
        if isinstance(exc, SystemExit):  # as Cog: the prediction fails, the worker lives on
            error = f"SystemExit: predict called sys.exit({exc.code!r})"
        else:
            error = f"{exc}" or type(exc).__name__
        self.events.send(m.DONE, id=pid, status="failed", error=error)

    def predict_sync(self, msg: dict[str, Any]) -> None:
        pid = msg["id"]
        token = None
        self._running = pid
        try:
            if self._cancel_requested == pid:
                raise CancelationException()
            fn, kwargs, token = self._start(msg)
            result = fn(**kwargs)
            if is_stream(result):
                for item in result:
                    self.events.send(m.OUTPUT, id=pid, value=encode_output(item))
                self._done(pid, streamed=True)
            else:
                self._done(pid, output=encode_output(result))
        except CancelationException:
            self.events.send(m.DONE, id=pid, status="canceled")
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failed prediction, not a failed worker
            self._fail(pid, e)
        finally:
            self._running = None
            if token is not None:
                reset_scope(token)
            _prediction_id.set(None)

    async def predict_async(self, msg: dict[str, Any]) -> None:
        pid = msg["id"]
        token = None
        try:
            fn, kwargs, token = self._start(msg)
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                result = fn(**kwargs)
            else:  # a sync entry point beside an async one: keep the loop free
                result = await asyncio.to_thread(contextvars.copy_context().run, fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, AsyncIterator):
                async for item in result:
                    self.events.send(m.OUTPUT, id=pid, value=encode_output(item))
                self._done(pid, streamed=True)
            elif is_stream(result):
                for item in result:
                    self.events.send(m.OUTPUT, id=pid, value=encode_output(item))
                self._done(pid, streamed=True)
            else:
                self._done(pid, output=encode_output(result))
        except (asyncio.CancelledError, CancelationException):
            self.events.send(m.DONE, id=pid, status="canceled")
        except (Exception, SystemExit) as e:  # noqa: BLE001 - sys.exit() in predict fails only that prediction
            self._fail(pid, e)
        finally:
            if token is not None:
                reset_scope(token)

    def _done(self, pid: str, output: Any = None, streamed: bool = False) -> None:
        self.events.send(m.DONE, id=pid, status="succeeded", output=output, streamed=streamed)

    # loops
    def serve_sync(self, control: typing.BinaryIO) -> None:
        inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def on_cancel_signal(signum: int, frame: Any) -> None:
            if self._running is not None and self._running == self._cancel_requested:
                raise CancelationException()

        signal.signal(signal.SIGUSR1, on_cancel_signal)

        def read_control() -> None:
            while (msg := m.read(control)) is not None:
                if msg["type"] == m.CANCEL:
                    self._cancel_requested = msg["id"]
                    if self._running == msg["id"]:
                        os.kill(os.getpid(), signal.SIGUSR1)
                elif msg["type"] == m.HEALTHCHECK:
                    threading.Thread(target=self.healthcheck, daemon=True).start()
                elif msg["type"] == m.SHUTDOWN:
                    break  # stop reading: a thread blocked on stdin would crash interpreter exit
                else:
                    inbox.put(msg)
            inbox.put(None)

        threading.Thread(target=read_control, daemon=True).start()
        while (msg := inbox.get()) is not None:
            self.predict_sync(msg)

    async def serve_async(self, control: typing.BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        self.events.gather_in(loop)
        reader = asyncio.StreamReader(limit=1 << 30)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), control)
        tasks: dict[str, asyncio.Task[None]] = {}
        canceled_early: set[str] = set()  # cancel sent while the runner still fetched inputs
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["type"] == m.SHUTDOWN:
                break
            if msg["type"] == m.PREDICT and msg["id"] in canceled_early:
                self.events.send(m.DONE, id=msg["id"], status="canceled")
            elif msg["type"] == m.PREDICT:
                task = asyncio.create_task(self.predict_async(msg), context=contextvars.Context())
                tasks[msg["id"]] = task
                task.add_done_callback(lambda _t, pid=msg["id"]: tasks.pop(pid, None))
            elif msg["type"] == m.CANCEL and msg["id"] in tasks:
                tasks[msg["id"]].cancel()
            elif msg["type"] == m.CANCEL:
                canceled_early.add(msg["id"])
            elif msg["type"] == m.HEALTHCHECK:
                loop.run_in_executor(None, self.healthcheck)
        for task in tasks.values():
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="cogkit worker (started by the runner, not by hand)")
    parser.add_argument("--project", required=True)
    parser.add_argument("--predict")
    parser.add_argument("--train")
    parser.add_argument("--events-fd", type=int, required=True)
    args = parser.parse_args()

    events = Events(args.events_fd)
    control = sys.stdin.buffer
    sys.stdin = open(os.devnull)  # noqa: SIM115 - user code must not read our control pipe
    sys.stdout = LogStream(events, "stdout")
    sys.stderr = LogStream(events, "stderr")

    worker = Worker(args.project, args.predict, args.train, events)
    try:
        worker.setup()
    except BaseException as e:  # noqa: BLE001 - any setup failure is reported, then we exit
        sys.stderr.write(traceback.format_exc())
        events.send(m.SETUP_DONE, ok=False, error=f"{type(e).__name__}: {e}", is_async=False)
        sys.exit(1)
    # @cog.concurrent(max=N) on the entry point: Cog 0.23's way to ask for several slots.
    concurrent_max = max((getattr(getattr(f, "__func__", f), "__cog_concurrent_max__", 0)
                          for f in worker.entries.values()), default=0)
    events.send(m.SETUP_DONE, ok=True, error=None, is_async=worker.is_async, concurrent_max=concurrent_max)
    if worker.is_async:
        assert worker.loop is not None
        try:
            worker.loop.run_until_complete(worker.serve_async(control))
        finally:
            events.write_gathered()
    else:
        worker.serve_sync(control)


if __name__ == "__main__":
    main()
