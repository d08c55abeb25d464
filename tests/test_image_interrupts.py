"""Ctrl-C at any moment of serving a model image (`cogkit serve --image`) or of
running one (`cogkit run IMAGE`) stops it cleanly and leaves no container: before
the container exists, while it starts, while it serves, and a second Ctrl-C while
it is being stopped. Each moment is reached by waiting on a condition (a line on
stderr, the container in the engine, /health-check), never by sleeping."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest
from conftest import build_example, free_port

from cogkit.build import container

COGKIT = [sys.executable, "-m", "cogkit.cli"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hello_image(engine) -> Iterator[str]:
    tag = f"cogkit-test/interrupts:{uuid.uuid4().hex[:8]}"
    build_example(engine, "hello-world", tag)
    yield tag
    with contextlib.suppress(docker.errors.APIError):  # a leftover test image is harmless
        engine.remove_image(tag, force=True)


class Command:
    """A cogkit process whose stderr is read line by line as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([*COGKIT, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.err: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.err.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_stderr(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.err):
                assert self.proc.poll() is None or not self._reading(), f"exited before {text!r}:\n{self.stderr}"
                assert time.monotonic() < deadline, f"no {text!r} on stderr in {timeout}s:\n{self.stderr}"
                self._changed.wait(0.5)

    def _reading(self) -> bool:
        return self.proc.stderr is not None and not self.proc.stderr.closed

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)  # polling a condition, not waiting out a guess
    raise AssertionError(f"timed out waiting for {what}")


def containers_on_port(engine, port: int) -> list[dict]:
    return [c for c in engine.containers(all=True, filters={"label": container.LABEL})
            if str(port) in c["Command"]]


def health(port: int) -> dict:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health-check", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


@pytest.mark.parametrize("moment", ["as-it-starts", "container-created", "while-serving", "again-while-stopping"])
def test_ctrl_c_while_serving_an_image_leaves_no_container(moment: str, engine, hello_image: str) -> None:
    port = free_port()
    cmd = Command(["serve", "--image", hello_image, "--port", str(port)])
    try:
        if moment == "as-it-starts":
            cmd.wait_for_stderr("Starting")
        elif moment == "container-created":
            wait_until(lambda: containers_on_port(engine, port), "the container to exist")
        else:
            wait_until(lambda: health(port).get("status") == "READY", "the model to be READY")
        cmd.interrupt()
        if moment == "again-while-stopping":
            cmd.wait_for_stderr("Stopping")
            cmd.interrupt()
        code = cmd.finish()
    finally:
        if cmd.proc.poll() is None:
            cmd.proc.kill()
    assert code == 0, cmd.stderr
    assert "Traceback" not in cmd.stderr and "Aborted" not in cmd.stderr, cmd.stderr
    leftovers = containers_on_port(engine, port)
    assert not leftovers, f"left behind: {[c['Names'] for c in leftovers]}\n{cmd.stderr}"


def test_ctrl_c_while_running_an_image_stops_it(engine, hello_image: str) -> None:
    mark = f"COGKIT_TEST_MARK={uuid.uuid4().hex}"  # finds this run's container among others' (-e reaches its env)
    cmd = Command(["run", hello_image, "-i", "name=x", "-e", mark])

    def ours() -> list[dict]:
        found = []
        for c in engine.containers(all=True, filters={"label": container.LABEL}):
            with contextlib.suppress(docker.errors.NotFound):  # gone between listing and inspecting
                if mark in (engine.inspect_container(c["Id"])["Config"]["Env"] or []):
                    found.append(c)
        return found

    try:
        started = wait_until(ours, "the run's container to exist")
        cmd.interrupt()
        code = cmd.finish()
    finally:
        if cmd.proc.poll() is None:
            cmd.proc.kill()
    assert code == 130, cmd.stderr
    assert "interrupted" in cmd.stderr and "Traceback" not in cmd.stderr, cmd.stderr
    left = {c["Id"] for c in engine.containers(all=True, filters={"label": container.LABEL})}
    assert not ({c["Id"] for c in started} & left), cmd.stderr  # type: ignore[union-attr]
