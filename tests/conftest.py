"""Shared fixtures: real servers on 127.0.0.1, real child processes.

Every fixture a test module uses comes from here (or is registered here), so test modules import no
fixtures: `pg_url`/`store_url`/`store` (tests/pg.py, one PostgreSQL per run), `fakes`/`gateway`
(tests/gateway_harness.py), the Docker `engine`, and one `free_port()`."""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Imported here, these are fixtures of every test module (which then import none themselves).
from tests.gateway_harness import fakes, gateway  # noqa: F401
from tests.net import free_port
from tests.pg import pg_url, store, store_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"


@pytest.fixture(scope="session")
def engine():
    """The Docker engine of .ci/docker-services.sh (a docker.APIClient) for the tests that need it; without
    it they fail (not skip), saying how to start it."""
    from cogkit.build import builder
    try:
        return builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"this test needs the Docker engine: {e}. Here: "
                    f'`eval "$(bash .ci/docker-services.sh --env)"`', pytrace=False)


def build_example(engine, name: str, tag: str) -> None:
    """`cogkit build` of examples/models/NAME as TAG on the test engine; a failure fails the test with the build's tail."""
    from cogkit.build import builder
    lines: list[str] = []
    try:
        builder.build(EXAMPLES / name, tag, prefix=os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/",
                      progress=lines.append, client=engine)
    except builder.BuildError as e:
        pytest.fail(f"building {name} failed: {e}\n" + "\n".join(lines[-20:]), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def cogkit_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Managed environments for the whole run, apart from the user's own cache."""
    cache = Path(os.environ.get("COGKIT_TEST_CACHE") or tmp_path_factory.mktemp("cogkit-cache"))
    os.environ["COGKIT_CACHE_DIR"] = str(cache)
    return cache


class ModelServer:
    def __init__(self, project: Path, env: dict[str, str] | None = None, upload_url: str | None = None) -> None:
        from cogkit.config import load_config
        from cogkit.venv import ensure_env

        self.project = project
        python = ensure_env(load_config(project))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "cogkit.runtime", "--project", str(project), "--python", python,
                "--host", "127.0.0.1", "--port", str(self.port)]
        if upload_url:
            args += ["--upload-url", upload_url]
        self.proc = subprocess.Popen(args, env={**os.environ, **(env or {})})
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait(self, status: str | tuple[str, ...] = "READY", timeout: float = 120) -> dict:
        wanted = (status,) if isinstance(status, str) else status
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}")
            try:
                last = self.client.get("/health-check").json()
                if last["status"] in wanted:
                    return last
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server never reached {wanted}: last health {last}")

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def serve_project() -> Iterator:
    servers: list[ModelServer] = []

    def start(project: Path | str, wait: bool = True, **kwargs) -> ModelServer:
        server = ModelServer(Path(project), **kwargs)
        servers.append(server)
        if wait:
            server.wait()
        return server

    yield start
    for server in servers:
        server.close()


class Receiver:
    """A real HTTP server recording every request it gets (webhooks, uploads)
    and serving files for file inputs."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_POST(self) -> None:  # noqa: N802
                receiver.requests.append({"method": "POST", "path": self.path, "body": self._body(),
                                          "time": time.monotonic()})
                self.send_response(200)
                self.end_headers()

            def do_PUT(self) -> None:  # noqa: N802
                receiver.files[self.path] = self._body()
                receiver.requests.append({"method": "PUT", "path": self.path})
                self.send_response(201)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                data = receiver.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("content-length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The Cog suite's skips, grouped by reason: the list is meant to stay short."""
    skips: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if "test_cog_suite" not in report.nodeid or not isinstance(report.longrepr, tuple):
            continue
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        skips.setdefault(reason, []).append(report.nodeid.split("[", 1)[-1].rstrip("]"))
    if not skips:
        return
    total = sum(len(names) for names in skips.values())
    terminalreporter.section(f"Cog suite: {total} skipped, by reason")
    for reason, names in sorted(skips.items(), key=lambda kv: -len(kv[1])):
        terminalreporter.write_line(f"{len(names):3d}  {reason}")
        terminalreporter.write_line(f"       {', '.join(sorted(names))}")
