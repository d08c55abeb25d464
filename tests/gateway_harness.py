"""The gateway test harness: the real gateway in its own process, on fake upstreams.
Its fixtures (`fakes`, `gateway`) are registered in conftest.py; `provider()` builds a config entry."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent


class GatewayProc:
    """`python -m server.gateway_cli --config FILE --port N` with a temp SQLite (or a given database URL)."""

    def __init__(self, config: dict | None, workdir: Path, name: str = "gw", env: dict | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        args = []
        if config is not None:  # None: the embedded default, as `cogkit gateway` with no --config
            self.config_path = workdir / f"{name}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
            args = ["--config", str(self.config_path)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COGKIT_HOME": str(workdir), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.gateway_cli", *args, "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.stdout: list[str] = []
        self.admin_key: str | None = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._wait()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            if line.startswith("Admin key"):
                self.admin_key = line.rsplit(" ", 1)[-1].strip()

    def _wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("gateway did not start")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def http(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        with self.http(self.admin_key) as c:
            resp = c.request(method, path, json=body)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def new_key(self, tenant: str, credits: float | None = None, **limits) -> str:
        """A tenant (made if missing) and a fresh key for it."""
        with self.http(self.admin_key) as c:
            c.post("/admin/tenants", json={"id": tenant, **({"credits": credits} if credits is not None else {})})
        return self.admin("POST", "/admin/keys", {"tenant_id": tenant, **limits})["key"]

    def openai(self, key: str, **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def anthropic(self, key: str, **kw):
        import anthropic
        return anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0, **kw)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def usage(self, key: str, expect: int, timeout: float = 10) -> list[dict]:
        """The tenant's usage rows, once `expect` of them are recorded (billing runs after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.http(key) as c:
                rows = c.get("/v1/spend/requests", params={"limit": 200}).json()["data"]
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def one_model_gateway(workdir: Path, fake, tenant: str, credits: float, **config) -> GatewayProc:
    """A gateway with one model, gpt-4o-mini, on the fake OpenAI provider `fake`, and `.key`: a key of
    `tenant` holding `credits`. `config`: more of the gateway's config (limits, ...)."""
    gw = GatewayProc({"state_dir": str(workdir / "state"), "providers": [provider("openai", fake)],
                      "models": [{"name": "gpt-4o-mini", "input_price": 0.15, "output_price": 0.6,
                                  "deployments": [{"provider": "openai"}]}], **config}, workdir)
    gw.key = gw.new_key(tenant, credits=credits)
    return gw


def provider(name: str, fake, kind: str | None = None, **extra) -> dict:
    kind = kind or {"gemini": "google"}.get(fake.kind, fake.kind)
    return {"name": name, "kind": kind, "base_url": fake.base_url, "api_key": fake.api_key, **extra}


@pytest.fixture
def fakes():
    """start(kind, **kw) -> a fake provider, closed after the test."""
    from tests.fakes import start_fake
    started = []

    def start(kind: str = "openai", **kw):
        fake = start_fake(kind, **kw)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


@pytest.fixture
def gateway(tmp_path):
    """start(config_dict, name="gw", env=None) -> GatewayProc on a temp SQLite, closed after the test."""
    procs = []

    def start(config: dict | None, name: str = "gw", env: dict | None = None) -> GatewayProc:
        if config is not None:
            config = {"state_dir": str(tmp_path / "state"), **config}
        gw = GatewayProc(config, tmp_path, name, env)
        procs.append(gw)
        return gw

    yield start
    for gw in procs:
        gw.close()
