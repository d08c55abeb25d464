"""The gateway test harness (the real gateway, in its own process, on fake upstreams), plus the
unit tests of the parts that need no server: config, catalog, router ordering."""
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

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# ---------------------------------------------------------------- unit tests: no server
def _config(**over):
    from server.config import load_config
    data = {
        "providers": [{"name": "openai", "kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"},
                      {"name": "backup", "kind": "openai", "base_url": "http://127.0.0.1:2/v1", "api_key": "k",
                       "passthrough": True},
                      {"name": "cog", "kind": "platform", "base_url": "http://127.0.0.1:3"}],
        "models": [{"name": "gpt-4o-mini", "aliases": ["mini"], "input_price": 0.15, "output_price": 0.6,
                    "deployments": [{"provider": "backup", "priority": 1}, {"provider": "openai", "priority": 0}]},
                   {"name": "openai/gpt-4o"},
                   {"name": "@acme/echo", "deployments": [{"provider": "cog"}]}],
    }
    data.update(over)
    return load_config(data=data)


def test_catalog_resolves_names_aliases_passthrough_and_platform():
    from server.catalog import Catalog, UnknownModel
    cat = Catalog(_config())
    r = cat.resolve("mini")
    assert r.name == "gpt-4o-mini" and [t.provider for t in r.targets] == ["openai", "backup"]
    assert r.targets[0].upstream_model == "gpt-4o-mini"
    assert r.targets[0].cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cat.resolve("openai/gpt-4o").targets[0].upstream_model == "gpt-4o"
    assert cat.resolve("backup/anything").targets[0].upstream_model == "anything"
    v = cat.resolve("@acme/echo:v2")
    assert v.kind == "platform" and v.version == "v2" and v.targets[0].provider == "cog"
    with pytest.raises(UnknownModel) as e:
        cat.resolve("gpt-4o-minii")
    assert "gpt-4o-mini" in e.value.suggestions
    with pytest.raises(UnknownModel):
        cat.resolve("openai/not-listed")    # openai is not passthrough


def test_config_errors_are_clear(tmp_path):
    from server.config import ConfigError, load_config
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: x\n    kind: nope\n    base_url: http://x\n")
    with pytest.raises(ConfigError, match="providers.0.kind"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown provider"):
        load_config(data={"models": [{"name": "m", "deployments": [{"provider": "ghost"}]}]})


def test_router_cooldown_and_reprobe():
    from server.catalog import Catalog
    from server.metrics import Metrics
    from server.providers import UpstreamError
    from server.router import Router
    cfg = _config(routing={"cooldown": 0.05})
    router = Router(Catalog(cfg), {}, cfg.routing, Metrics())
    r = Catalog(cfg).resolve("gpt-4o-mini")
    first = r.targets[0]
    router.failed(first, UpstreamError("down", None, "connect"))
    assert [t.provider for t in router.order(r)] == ["backup"]
    time.sleep(0.06)
    assert [t.provider for t in router.order(r)] == ["openai", "backup"]   # half-open: re-probe
    router._begin(first)
    assert [t.provider for t in router.order(r)] == ["backup"]             # one probe at a time
    router.failed(first, UpstreamError("still down", 503, "http"))
    assert router.health[first.key].cooldown == pytest.approx(0.1)        # doubled
    router.failed(first, UpstreamError("bad request", 400, "http"))       # the caller's fault: no change
    assert router.health[first.key].failures == 2
