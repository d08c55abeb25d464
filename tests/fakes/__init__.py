"""Local fake LLM providers that speak the real OpenAI, Anthropic and Gemini wire protocols.

    fake = start_fake("openai")            # or "anthropic", "gemini" ("google" is an alias)
    client = openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key)
    fake.set_fault("rate_limit", times=1)  # the next request gets a 429
    fake.stats()["requests"]
    fake.close()

Replies are deterministic (see faults.plan_reply): "Echo: <last user text>" one token per
stream chunk; a tool call when the request has tools and the user text says "call <tool>"
(arguments from key=value pairs in the text); "Tool result: <result>" after a tool result.
Usage counts whitespace-separated tokens. Each fake runs uvicorn in a background thread on a
free 127.0.0.1 port, or in a child process with process=True (for benchmarks, away from the
GIL of the process under test): `python -m tests.fakes.openai_server --port N`.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from tests.fakes.faults import FakeState, protocol_for

KINDS = {"openai": "openai_server", "anthropic": "anthropic_server", "gemini": "gemini_server",
         "google": "gemini_server"}
ROOT = Path(__file__).resolve().parents[2]


def create_app(kind: str, state: FakeState):
    module = __import__(f"tests.fakes.{KINDS[kind]}", fromlist=["create_app"])
    return module.create_app(state)


def _listen(port: int = 0) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # TCP, and without it Nagle + delayed ACK add 40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


class FakeProvider:
    """A running fake. `url` is the root; `base_url` what the provider's SDK takes
    (openai: <url>/v1, anthropic: <url>, gemini: <url>/v1beta)."""

    def __init__(self, kind: str, api_key: str | None = "test-key", token_delay: float = 0.0,
                 context_window: int | None = None, models: list[str] | None = None, port: int = 0,
                 process: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fake kind {kind!r}; one of {sorted(KINDS)}")
        self.kind = "gemini" if kind == "google" else kind
        self.api_key = api_key
        self._settings = {"api_key": api_key, "token_delay": token_delay, "context_window": context_window,
                          "models": set(models or ())}
        self._proc: subprocess.Popen | None = None
        self._server: uvicorn.Server | None = None
        self.state: FakeState | None = None
        if process:
            self.port = port or _free_port()
            self._spawn()
        else:
            self.state = FakeState(self.kind, **self._settings)
            self.port = port
            self.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + {"openai": "/v1", "anthropic": "", "gemini": "/v1beta"}[self.kind]

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Listen (again, on the same port after stop())."""
        if self.state is None or (self._server is not None and not self._server.should_exit):
            return
        sock = _listen(self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.kind, self.state), log_level="warning", access_log=False,
                                http=protocol_for(self.state), lifespan="off", timeout_graceful_shutdown=1,
                                timeout_keep_alive=30, backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"fake-{self.kind}-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fake {self.kind} did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until start()."""
        if self._server is not None and not self._server.should_exit:
            self._server.should_exit = True
            self._thread.join(10)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        self.stop()

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ run-time control
    def set_fault(self, mode: str | None = None, delay: float = 0.0, times: int | None = None,
                  retry_after: float = 1.0, refuse: bool = False) -> None:
        """See faults.py for the modes. refuse=True with mode "down" stops the listener instead
        (connection refused) until clear_fault(); not available with process=True."""
        if mode == "down" and refuse:
            if self.state is None:
                raise ValueError("refuse=True needs an in-thread fake")
            self.stop()
            return
        if mode is None:
            self.start()
        if self.state is not None:
            self.state.set_fault(mode, delay, times, retry_after)
        else:
            self._admin("POST", "/_fault", {"mode": mode, "delay": delay, "times": times, "retry_after": retry_after})

    def clear_fault(self) -> None:
        self.set_fault(None)

    def configure(self, **settings) -> None:
        """token_delay, context_window, api_key, models (at run time)."""
        if "api_key" in settings:
            self.api_key = settings["api_key"]
        if self.state is not None:
            self.state.configure(**settings)
        else:
            self._admin("POST", "/_config", {k: list(v) if k == "models" else v for k, v in settings.items()})

    def stats(self) -> dict:
        """{"requests": n, "by_path": {path: n}, "in_flight", "streams_completed", "streams_aborted", "fault"}"""
        return self.state.stats() if self.state is not None else self._admin("GET", "/_stats")

    def requests(self) -> list[dict]:
        """The last 200 provider requests: {"method", "path", "query", "headers", "json", "time"}."""
        return list(self.state.log) if self.state is not None else self._admin("GET", "/_requests")

    def last_request(self) -> dict | None:
        log = self.requests()
        return log[-1] if log else None

    def reset(self) -> None:
        if self.state is not None:
            self.start()
            self.state.reset()
        else:
            self._admin("POST", "/_reset")

    def _admin(self, method: str, path: str, body: dict | None = None):
        resp = httpx.request(method, self.url + path, json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def _spawn(self) -> None:
        args = [sys.executable, "-m", f"tests.fakes.{KINDS[self.kind]}", "--port", str(self.port),
                "--token-delay", str(self._settings["token_delay"])]
        if self.api_key is not None:
            args += ["--api-key", self.api_key]
        if self._settings["context_window"] is not None:
            args += ["--context-window", str(self._settings["context_window"])]
        for model in self._settings["models"]:
            args += ["--model", model]
        self._proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=1)
                return
            except httpx.TransportError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"fake {self.kind} exited with {self._proc.returncode}")
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"fake {self.kind} did not start")


def start_fake(kind: str, **kwargs) -> FakeProvider:
    """Start a fake provider: kind is "openai", "anthropic" or "gemini". Keyword arguments:
    api_key ("test-key"; None accepts any key), token_delay (s before each streamed token),
    context_window (prompt tokens; above it the provider's context-length error), models (extra
    accepted model names), port, process (run in a child process)."""
    return FakeProvider(kind, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_main(kind: str) -> None:
    """Command line for one fake: used by process=True and by hand for benchmarks."""
    parser = argparse.ArgumentParser(description=f"fake {kind} provider")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="accepted key (default: any key)")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--context-window", type=int, default=None)
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args()
    state = FakeState(kind, api_key=args.api_key, token_delay=args.token_delay,
                      context_window=args.context_window, models=set(args.model))
    sock = _listen(args.port)
    print(f"fake {kind} listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(kind, state), log_level="warning", access_log=False,
                            http=protocol_for(state), lifespan="off", backlog=2048)
    uvicorn.Server(config).run(sockets=[sock])
