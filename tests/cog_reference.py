"""Cog 0.23's own server as a reference: its virtualenv (made once, cached,
safe to ask for from several processes at once) and starting/stopping the
reference server and `cogkit serve` side by side. Used by the differential
test and by benchmarks/cog_runtime.py."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

COG_VERSION = "0.23.1"
REPO = Path(__file__).resolve().parent.parent


class ReferenceUnavailable(Exception):
    """Cog's package could not be installed (no registry reachable, say)."""


def cache_dir() -> Path:
    """Kept across test runs (not the per-run COGKIT_CACHE_DIR): installing Cog is the slow part."""
    return Path(os.environ.get("COGKIT_REFERENCE_CACHE") or Path.home() / ".cache" / "cogkit-reference")


def reference_venv() -> Path:
    """The virtualenv holding only cog==COG_VERSION, made on first use. A file
    lock lets parallel test runs share it; it appears under its final name
    only once complete (built aside, then renamed)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"cog-{COG_VERSION}"
    if (venv / ".complete").exists():
        return venv
    with open(root / f"cog-{COG_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return venv
        building = root / f"cog-{COG_VERSION}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)  # an incomplete one, left by a crash
        steps = [[sys.executable, "-m", "venv", str(building)],
                 [str(building / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  f"cog=={COG_VERSION}"]]
        for step in steps:
            done = subprocess.run(step, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise ReferenceUnavailable(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
        # We only ever run `bin/python -m ...`, which finds pyvenv.cfg beside it: renaming is safe.
        building.rename(venv)
        (venv / ".complete").write_text(COG_VERSION)
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    health: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_cog(project: Path, ref: str, mode: str = "predict", env: dict[str, str] | None = None,
              concurrency: int = 1) -> Server:
    venv = reference_venv()
    port = free_port()
    stub = "COG_TRAIN_TYPE_STUB" if mode == "train" else "COG_PREDICT_TYPE_STUB"
    full_env = {**os.environ, **(env or {}), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
                stub: ref, "PORT": str(port), "COG_MAX_CONCURRENCY": str(concurrency), "COG_LOG_LEVEL": "warn"}
    full_env.pop("VIRTUAL_ENV", None)
    log_path = project.parent / f"{project.name}.cog-{mode}.log"
    args = [str(venv / "bin" / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"]
    if mode == "train":
        args += ["--x-mode", "train"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=project, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Server(f"cog-{mode}", f"http://127.0.0.1:{port}", proc, log_path)


def start_cogkit(project: Path, env: dict[str, str] | None = None) -> Server:
    """What `cogkit serve --project P` runs: the project's managed environment, then the
    runtime's server (`python -m cogkit.runtime`), started directly: the CLI's own start-up
    (typer, its command plugins) was a third of the differential test's time, 150 times over."""
    from cogkit.config import ConfigError, load_config
    from cogkit.venv import EnvError, ensure_env

    port = free_port()
    log_path = project.parent / f"{project.name}.cogkit.log"
    try:
        python = ensure_env(load_config(project))
    except (ConfigError, EnvError) as e:  # as `cogkit serve` would: it says why and exits
        log_path.write_text(f"Error: {e}\n")
        python = ""
    args = [sys.executable, "-m", "cogkit.runtime", "--project", str(project), "--python", python,
            "--host", "127.0.0.1", "--port", str(port)]
    if not python:
        args = [sys.executable, "-c", "raise SystemExit(1)"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server("cogkit", f"http://127.0.0.1:{port}", proc, log_path)


def wait_settled(server: Server, timeout: float = 90.0) -> dict[str, Any]:
    """Poll /health-check until setup has finished (either way) or the process died."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                server.health = {"status": "EXITED", "code": server.proc.returncode}
                return server.health
            try:
                health = client.get(f"{server.url}/health-check").json()
                if health.get("status") not in (None, "STARTING"):
                    server.health = health
                    return health
            except (httpx.HTTPError, json.JSONDecodeError):
                pass
            time.sleep(0.05)  # polling a condition (health), not waiting a fixed time
    server.health = {"status": "TIMEOUT"}
    return server.health


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, 15)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, 9)
            server.proc.wait()


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[tuple[Server, ...]]:
    try:
        yield servers
    finally:
        for server in servers:
            stop(server)


def reference_schema(project: Path, ref: str) -> dict[str, Any]:
    """Cog's own view of the project's Input and Output (tests/cog_reference_schema.py)."""
    venv = reference_venv()
    done = subprocess.run([str(venv / "bin" / "python"), str(REPO / "tests" / "cog_reference_schema.py"),
                           str(project), ref], check=False, capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result
