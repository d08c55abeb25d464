"""The interpreter of one suite script: testscript's built-in commands plus the
harness's own (`cog`, `curl`, `wait-for`, the webhook and upload receivers...),
with the semantics of Cog's harness/harness.go. `cog X` runs `cogkit X`; how a
`cog` line maps onto cogkit in each mode (local, image) is `CogCommand`'s job."""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.cog_suite.receivers import UploadReceiver, WebhookReceiver
from tests.cog_suite.txtar import Line, expand, parse_archive, parse_line

COMMAND_TIMEOUT = 900  # seconds for one command; an image build on 2 loaded cores is the slowest
SERVER_READY_TIMEOUT = 120  # as the harness's waitForServer
REGISTRY = "127.0.0.1:5050"  # the project's real OCI registry stands in for registry-start's container
# $TEST_REGISTRY as the harness's registry container reports it (localhost:PORT): tests match "localhost" in
# what `cog push` prints. /etc/hosts maps localhost to 127.0.0.1, the address the registry listens on.
REGISTRY_HOST = "localhost:" + REGISTRY.rsplit(":", 1)[1]


class ScriptFailed(AssertionError):
    pass


class ScriptSkipped(Exception):
    pass


class ScriptStopped(Exception):
    pass


@dataclass
class Result:
    stdout: str = ""
    stderr: str = ""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


class Ports:
    """Free ports on 127.0.0.1, never the same one twice: scripts run side by side in one
    process (tests/cog_suite/pool.py), and a port picked but not yet bound by one script's
    server must not be handed to another's."""

    def __init__(self) -> None:
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            while True:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                if port not in self._given:
                    self._given.add(port)
                    return port


def _conditions() -> dict[str, bool]:
    linux = sys.platform.startswith("linux")
    amd64 = platform.machine() in ("x86_64", "AMD64")
    return {"short": False, "linux": linux, "amd64": amd64, "linux_amd64": linux and amd64,
            "darwin": sys.platform == "darwin", "windows": False, "unix": os.name == "posix"}


@dataclass
class Script:
    """One test: its work directory, environment, last output and background processes."""

    name: str
    text: str
    work: Path
    mode: str  # "local" or "image"
    repo_root: Path
    rewrite_python: Callable[[str, str], str]
    ports: Ports = field(default_factory=Ports)
    env: dict[str, str] = field(default_factory=dict)
    last: Result = field(default_factory=Result)
    stdin_file: str | None = None
    server: Server | None = None
    webhooks: WebhookReceiver | None = None
    uploads: UploadReceiver | None = None
    built: str | None = None  # the project's fingerprint when $TEST_IMAGE was last built for a line
    cwd: Path | None = None
    transcript: list[str] = field(default_factory=list)

    @property
    def host_seen_by_model(self) -> str:
        return "host.docker.internal" if self.mode == "image" else "127.0.0.1"

    @property
    def here(self) -> Path:
        return self.cwd or self.work

    def getenv(self, name: str) -> str:
        return self.env.get(name, "")

    def setup(self) -> str:
        archive = parse_archive(self.text)
        self.work.mkdir(parents=True, exist_ok=True)
        for name, content in archive.files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.rewrite_python(name, content))
        (self.work / ".tmp").mkdir(exist_ok=True)
        self.cwd = self.work
        image = f"cog-test-{os.urandom(5).hex()}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "WORK": str(self.work), "TMPDIR": str(self.work / ".tmp"), "REPO_ROOT": str(self.repo_root),
            "TEST_IMAGE": image, "COG_NO_UPDATE_CHECK": "1", "COG_SKIP_DOCKER_CHECK": "1",
            # `python -m cogkit.cli` from $WORK must import this checkout's cogkit.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.repo_root), os.environ.get("PYTHONPATH")])),
        }
        return archive.script

    def run(self) -> None:
        script = self.setup()
        try:
            for number, text in enumerate(script.splitlines(), 1):
                line = parse_line(number, text, self.getenv)
                if line is None or not self._applies(line):
                    continue
                self.transcript.append(f"> {text.strip()}")
                self._execute(line)
        except ScriptStopped:
            pass
        finally:
            self.cleanup()

    def _applies(self, line: Line) -> bool:
        known = _conditions()
        for cond in line.conditions:
            neg = cond.startswith("!")
            name = cond.lstrip("!")
            if name.startswith("exec:"):
                value = shutil.which(name[5:]) is not None
            elif name in known:
                value = known[name]
            else:
                raise ScriptFailed(f"line {line.number}: unknown condition [{cond}]")
            if value == neg:
                return False
        return True

    def fail(self, line: Line, message: str) -> None:
        raise ScriptFailed(f"{self.name} line {line.number}: {' '.join(line.words)}\n  {message}")

    # --- dispatch ------------------------------------------------------------------

    def _execute(self, line: Line) -> None:
        from tests.cog_suite.commands import BUILTINS

        name = line.words[0]
        handler = BUILTINS.get(name)
        if handler is None:
            self.fail(line, f"unknown command {name!r}")
            return
        handler(self, line, line.words[1:])

    def exec(self, line: Line, argv: list[str], *, expect_failure: bool, timeout: float = COMMAND_TIMEOUT,
             what: str = "command") -> int:
        """Run argv in $WORK with stdin from a preceding `stdin` line; keep its output."""
        stdin = None
        if self.stdin_file:
            stdin = (self.here / self.stdin_file).read_bytes()
            self.stdin_file = None
        try:
            proc = subprocess.run(argv, check=False, cwd=self.here, env=self.env, input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout)
        except FileNotFoundError:
            self.last = Result("", f"{argv[0]}: not found")
            code = 127
        except subprocess.TimeoutExpired as e:
            self.last = Result((e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace"))
            self.fail(line, f"{what} did not finish within {timeout}s")
            return -1
        else:
            self.last = Result(proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
            code = proc.returncode
        self.transcript.append(_indent("stdout", self.last.stdout) + _indent("stderr", self.last.stderr))
        if expect_failure and code == 0:
            self.fail(line, f"{what} succeeded unexpectedly")
        if not expect_failure and code != 0:
            self.fail(line, f"{what} failed (exit {code})")
        return code

    # --- cog serve -----------------------------------------------------------------------

    def start_server(self, line: Line, argv: list[str], port: int) -> None:
        if self.server is not None:
            self.fail(line, "server already running")
        log = self.work / ".tmp" / f"server-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.here, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.server = Server(proc, port, log)
        url = f"http://127.0.0.1:{port}"
        self.env["SERVER_URL"] = url
        healthy = self._wait_for_server(url)
        self.last = Result("", log.read_text(errors="replace"))
        self.transcript.append(_indent("server", self.last.stderr))
        if healthy and line.negate:
            self.fail(line, "server became healthy, but expected setup failure")
        if not healthy and not line.negate:
            self.stop_server()
            self.fail(line, "server did not become healthy within timeout")

    def _wait_for_server(self, url: str) -> bool:
        assert self.server is not None
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.server.proc.poll() is not None:
                    return False
                try:
                    response = client.get(url + "/health-check")
                    status = response.json().get("status") if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    status = None
                if status in ("READY", "UNHEALTHY", "BUSY"):
                    return True
                if status in ("SETUP_FAILED", "DEFUNCT"):
                    return False
                time.sleep(0.2)
        return False

    def stop_server(self) -> None:
        """As the harness: POST /shutdown, 5 s to exit, then kill (the whole process group)."""
        server, self.server = self.server, None
        if server is None:
            return
        try:
            httpx.post(f"http://127.0.0.1:{server.port}/shutdown", timeout=5)
        except httpx.HTTPError:
            pass
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(server.proc.pid, 15)
                server.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(server.proc.pid, 9)
                except ProcessLookupError:
                    pass
                server.proc.wait()

    def cleanup(self) -> None:
        self.stop_server()
        for receiver in (self.webhooks, self.uploads):
            if receiver is not None:
                receiver.close()
        image = self.env.get("TEST_IMAGE")
        if image and self.mode == "image":
            out = subprocess.run(check=False, args=["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                                  "--filter", f"reference={image}*"], capture_output=True, text=True)
            for ref in out.stdout.split():
                # --no-prune: the untagged parents are layer cache that a build of another script,
                # running beside this one, may be about to use ("unknown parent image ID" otherwise).
                subprocess.run(check=False, args=["docker", "rmi", "--no-prune", "-f", ref], capture_output=True)

    def expand_again(self, words: list[str]) -> list[str]:
        """The harness runs os.Expand over cog/curl arguments once more (single quotes included)."""
        return [expand(w, self.getenv) for w in words]


def _indent(label: str, text: str) -> str:
    if not text.strip():
        return ""
    body = "\n".join("    " + t for t in text.rstrip().splitlines()[-60:])
    return f"  [{label}]\n{body}\n"
