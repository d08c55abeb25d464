"""The platform on the real Docker engine and OCI registry (.ci/docker-services.sh): example
models built and pushed to 127.0.0.1:5050, registered and deployed on a real gateway process,
whose controller starts, routes to, scales, replaces and adopts their containers.

Every gateway here has its own store and its own replica label (`instance`), so its containers
are told apart from anyone else's; each test removes what it left."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker.errors
import httpx
import pytest
from conftest import EXAMPLES, ROOT

from cogkit.build import builder, registry
from tests.gateway_harness import GatewayProc
from tests.net import until

PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"
REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
RUN_ID = uuid.uuid4().hex[:8]
LABEL_PLATFORM = "run.cogkit.platform"
CRASHER = {"cog.yaml": 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n',
           "predict.py": ("from cog import BasePredictor\n\n\nclass Predictor(BasePredictor):\n"
                          "    def setup(self) -> None:\n        print('loading weights')\n"
                          "        raise RuntimeError('boom: the weights are missing')\n\n"
                          "    def predict(self, name: str = 'x') -> str:\n        return name\n")}


@pytest.fixture(scope="module")
def pushed(engine, tmp_path_factory) -> Iterator[dict[str, dict[str, Any]]]:
    """example name -> {"ref", "digest", "openapi", "cog_config"}: built and pushed once per module."""
    made: list[str] = []

    class Pushed(dict):
        def __missing__(self, name: str) -> dict[str, Any]:
            project = EXAMPLES / name
            if name == "crasher":
                project = tmp_path_factory.mktemp("crasher")
                for file, text in CRASHER.items():
                    (project / file).write_text(text)
            ref = f"{REGISTRY}/h5test-{RUN_ID}/{name}:v1"
            lines: list[str] = []
            try:
                builder.build(project, ref, prefix=PREFIX, progress=lines.append, client=engine)
            except builder.BuildError as e:
                pytest.fail(f"building {name} failed: {e}\n" + "\n".join(lines[-20:]), pytrace=False)
            made.append(ref)
            digest = registry.push(ref, progress=lines.append, client=engine)
            openapi, cog_config = registry.image_metadata(ref, engine)
            self[name] = {"ref": ref, "digest": digest, "openapi": openapi, "cog_config": cog_config}
            return self[name]

    yield Pushed()
    for ref in made:
        try:
            engine.remove_image(ref, force=True)
        except docker.errors.APIError:
            pass


class Platform:
    """A gateway process running the platform, plus what the tests ask of it."""

    def __init__(self, gw: GatewayProc, instance: str, engine, key: str) -> None:
        self.gw, self.instance, self.engine, self.key = gw, instance, engine, key
        self.url = gw.url

    def http(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=timeout)

    def register(self, example: dict[str, Any], model: str, cog_config: dict | None = None) -> dict:
        return registry.register_version(self.url, f"h5test-{RUN_ID}", model, example["ref"], example["digest"],
                                         example["openapi"], self.key,
                                         cog_config=example["cog_config"] if cog_config is None else cog_config)

    def deploy(self, model: str, **fields: Any) -> dict:
        with self.http() as c:
            resp = c.post("/v1/deployments", json={"model": f"h5test-{RUN_ID}/{model}", **fields})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def status(self, model: str) -> dict:
        with self.http() as c:
            return c.get(f"/v1/deployments/h5test-{RUN_ID}/{model}").json()["status"] or {}

    def ready(self, model: str, count: int = 1, timeout: float = 180) -> list[dict]:
        def check() -> list[dict] | None:
            replicas = [r for r in self.status(model).get("replicas", []) if r["state"] == "ready"]
            return replicas if len(replicas) == count else None
        try:
            return until(check, timeout, f"{count} ready replicas of {model}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {self.status(model)}\n{self.gw.logs()[-3000:]}") from None

    def containers(self, running_only: bool = True) -> list[dict]:
        return self.engine.containers(all=not running_only, filters={"label": f"{LABEL_PLATFORM}={self.instance}"})

    def run(self, model: str, inputs: dict, **kw) -> httpx.Response:
        with self.http(timeout=120) as c:
            return c.post(f"/ai/run/@h5test-{RUN_ID}/{model}", json=inputs, **kw)

    def remove_containers(self) -> None:
        for c in self.containers(running_only=False):
            try:
                self.engine.remove_container(c["Id"], force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture
def platform(engine, tmp_path) -> Iterator[Callable[..., Platform]]:
    """start(**platform_config) -> a Platform on a fresh store; restart(p) -> the same store, a new process."""
    started: list[Platform] = []
    instance = f"h5test-{uuid.uuid4().hex[:8]}"
    config = {"state_dir": str(tmp_path / "state"), "platform": {"interval": 0.3, "instance": instance}}

    def start(name: str = "gw", key: str | None = None, **platform_config: Any) -> Platform:
        config["platform"].update(platform_config)
        gw = GatewayProc(config, tmp_path, name)
        procs.append(gw)
        if key is None:
            key = gw.new_key(f"t{RUN_ID}")
        p = Platform(gw, instance, engine, key)
        started.append(p)
        return p

    procs: list[GatewayProc] = []
    yield start
    for gw in procs:
        gw.close()
    if started:
        started[-1].remove_containers()


def _usage(p: Platform, expect: int) -> list[dict]:
    return p.gw.usage(p.key, expect, timeout=20)


# ---------------------------------------------------------------- end to end
def test_push_deploy_call_scale_to_zero_and_cold_start(platform, pushed, tmp_path) -> None:
    """`cogkit push --platform`, a deployment from zero, calls through /ai/run and the replicate client."""
    import replicate
    hello = pushed["hello-world"]
    p = platform()
    pushed_out = subprocess.run(
        [sys.executable, "-m", "cogkit.cli", "push", hello["ref"], "--platform", p.url, "--token", p.key],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert pushed_out.returncode == 0, pushed_out.stderr
    assert f"of h5test-{RUN_ID}/hello-world with {p.url}" in pushed_out.stdout
    p.deploy("hello-world", min_replicas=0, max_replicas=1, idle_timeout=1)
    assert p.containers() == []                                   # min 0: nothing runs before a call

    cold = p.run("hello-world", {"name": "ada"})
    assert cold.status_code == 200, cold.text
    assert cold.json()["output"] == "hello ada" and cold.json()["metrics"]["predict_time"] > 0
    first_wait = float(cold.headers["x-cogkit-cold-start-ms"])
    assert first_wait > 0

    client = replicate.Client(api_token=p.key, base_url=p.url)
    assert client.run(f"h5test-{RUN_ID}/hello-world", input={"name": "bob"}) == "hello bob"

    until(lambda: not p.containers(), 60, "the idle replica to be stopped (scale to zero)")
    again = p.run("hello-world", {"name": "cy"})
    assert again.status_code == 200 and again.json()["output"] == "hello cy"
    assert float(again.headers["x-cogkit-cold-start-ms"]) > 0       # a second cold start, measured
    assert "cogkit_platform_cold_start_seconds_count" in p.gw.metrics()

    rows = _usage(p, 3)
    assert len(rows) == 3 and len({r["request_id"] for r in rows}) == 3   # each billed once


def test_bad_input_is_a_422_and_starts_nothing(platform, pushed) -> None:
    p = platform()
    p.register(pushed["hello-world"], "hello-world")
    p.deploy("hello-world", min_replicas=0, max_replicas=1)
    resp = p.run("hello-world", {"name": 42})
    assert resp.status_code == 422 and "input.name" in resp.json()["error"]["message"]
    resp = p.run("hello-world", {"nme": "x"})
    assert resp.status_code == 422 and "input.nme" in resp.json()["error"]["message"]
    assert p.status("hello-world").get("replicas", []) == [] and p.containers() == []


def test_docker_kill_mid_prediction_then_a_new_replica(platform, pushed) -> None:
    p = platform()
    p.register(pushed["text-stream"], "text-stream")
    p.deploy("text-stream", min_replicas=1, max_replicas=1)
    [replica] = p.ready("text-stream")
    result: dict[str, httpx.Response] = {}
    words = " ".join(f"w{i}" for i in range(40))
    caller = threading.Thread(target=lambda: result.setdefault(
        "r", p.run("text-stream", {"prompt": words, "delay": 0.25})))
    caller.start()
    until(lambda: any(r["outstanding"] for r in _live(p, "text-stream")), 30, "the prediction to be running")
    [container] = p.containers()
    p.engine.kill(container["Id"])
    caller.join(60)
    resp = result["r"]
    assert resp.status_code == 502, resp.text
    assert "stopped during the prediction" in resp.json()["error"]["message"]
    until(lambda: [r for r in _live(p, "text-stream") if r["state"] == "ready" and r["id"] != replica["id"]],
          120, "a new ready replica")
    assert [r["id"] for r in _live(p, "text-stream")] != [replica["id"]]
    failure = p.status("text-stream")["last_failure"]
    assert "exit code 137" in failure["reason"]
    ok = p.run("text-stream", {"prompt": "back again"})
    assert ok.status_code == 200 and "".join(ok.json()["output"]) == "back again"
    rows = {r["request_id"]: r for r in _usage(p, 2)}
    billed = rows[ok.headers["x-cogkit-request-id"]]
    assert billed["output_tokens"] == 2 and billed["metadata"]["predict_time"] > 0   # the model's own metrics
    assert rows[resp.headers["x-cogkit-request-id"]]["status"] == "error"          # the killed one: billed once


def test_openai_sdk_calls_a_chat_shaped_platform_model(platform, pushed) -> None:
    """text-stream takes a `prompt` (and `max_tokens`): /v1/chat/completions maps a chat onto it."""
    import openai
    p = platform()
    p.register(pushed["text-stream"], "text-stream")
    p.register(pushed["hello-world"], "hello-world")
    p.deploy("text-stream", min_replicas=0, max_replicas=1)
    p.deploy("hello-world", min_replicas=0, max_replicas=1)
    client = openai.OpenAI(base_url=p.url + "/v1", api_key=p.key, max_retries=0)
    model = f"@h5test-{RUN_ID}/text-stream"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three four"}]
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=3)
    assert answer.choices[0].message.content == "one two three"
    assert answer.usage.completion_tokens == 3                       # the model's own token metric
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=model, messages=messages, stream=True) if c.choices and c.choices[0].delta.content]
    assert pieces == ["one", " two", " three", " four"]
    with pytest.raises(openai.BadRequestError) as e:                 # hello-world takes a name, not a chat
        client.chat.completions.create(model=f"@h5test-{RUN_ID}/hello-world", messages=messages)
    assert "messages" in str(e.value) and "prompt" in str(e.value)
    assert p.containers() and all("hello-world" not in c["Names"][0] for c in p.containers())


def _live(p: Platform, model: str) -> list[dict]:
    """The controller's live view of the replicas (with their requests in flight)."""
    return p.status(model).get("replicas", [])


def test_kill_9_the_platform_then_replicas_are_adopted(platform, pushed) -> None:
    p = platform()
    p.register(pushed["hello-world"], "hello-world")
    p.deploy("hello-world", min_replicas=1, max_replicas=2)
    p.ready("hello-world")
    assert p.run("hello-world", {"name": "before"}).json()["output"] == "hello before"
    before = sorted(c["Id"] for c in p.containers())
    rows = _usage(p, 1)
    assert len(rows) == 1
    p.gw.proc.send_signal(signal.SIGKILL)
    p.gw.proc.wait(10)
    assert sorted(c["Id"] for c in p.containers()) == before       # the replicas outlive the platform

    again = platform("gw2", key=p.key)
    [adopted] = again.ready("hello-world")
    assert before[0].startswith(adopted["id"])
    after = again.run("hello-world", {"name": "after"})
    assert after.status_code == 200 and after.json()["output"] == "hello after"
    assert "x-cogkit-cold-start-ms" not in after.headers or float(after.headers["x-cogkit-cold-start-ms"]) < 5000
    assert sorted(c["Id"] for c in again.containers()) == before   # adopted, none duplicated
    rows = _usage(again, 2)
    assert len(rows) == 2 and len({r["request_id"] for r in rows}) == 2


def test_gpu_replicas_are_placed_through_the_inventory(platform, pushed, tmp_path) -> None:
    """A simulated inventory (one 24 GiB GPU): a replica needing more fits nowhere, and the reason
    shows; one that fits gets the GPU placement chose, which this engine (no NVIDIA runtime) refuses."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("nodes:\n  - name: sim\n    cpus: 4\n    memory: 16GiB\n"
                         "    gpus: {count: 1, memory: 24GiB}\n")
    p = platform(inventory=str(inventory))
    p.register(pushed["hello-world"], "hello-world")
    p.deploy("hello-world", name=f"h5test-{RUN_ID}/too-big", min_replicas=1, max_replicas=1,
             hardware={"gpus": 1, "gpu_memory_mb": 100_000})
    p.deploy("hello-world", min_replicas=1, max_replicas=1, hardware={"gpus": 1, "gpu_memory_mb": 1000})
    too_big = until(lambda: p.status("too-big").get("last_failure"), 60, "the placement failure")
    assert too_big["reason"].startswith("no room to place a replica")
    fits = until(lambda: p.status("hello-world").get("last_failure"), 60, "the start failure")
    assert "gpu" in fits["reason"].lower() and not fits["reason"].startswith("no room"), fits


# ---------------------------------------------------------------- one test per rule
def test_least_outstanding_over_two_replicas(platform, pushed) -> None:
    p = platform()
    p.register(pushed["async-concurrent"], "async-concurrent")
    p.deploy("async-concurrent", min_replicas=2, max_replicas=2, target_concurrency=4)
    p.ready("async-concurrent", 2)
    served = _concurrently(p, "async-concurrent", [{"text": "abcdefgh", "delay": 0.25}] * 4)
    assert all(r.status_code == 200 for r in served), [r.text for r in served]
    counts = collections.Counter(r.headers["x-cogkit-replica"] for r in served)
    assert sorted(counts.values()) == [2, 2], counts


def _concurrently(p: Platform, model: str, inputs: list[dict]) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * len(inputs)

    def one(i: int) -> None:
        out[i] = p.run(model, inputs[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def test_a_409_goes_back_to_the_queue_not_to_the_caller(platform, pushed) -> None:
    """The version claims concurrency.max 3; the replica (Cog's runtime, max 1) answers 409 to the extra ones."""
    p = platform()
    p.register(pushed["text-stream"], "text-stream", cog_config={**pushed["text-stream"]["cog_config"],
                                                                 "concurrency": {"max": 3}})
    p.deploy("text-stream", min_replicas=1, max_replicas=1, target_concurrency=10)
    p.ready("text-stream")
    served = _concurrently(p, "text-stream", [{"prompt": "a b c d", "delay": 0.2}] * 3)
    assert [r.status_code for r in served] == [200, 200, 200], [r.text for r in served]
    metrics = p.gw.metrics()
    [line] = [x for x in metrics.splitlines() if x.startswith("cogkit_platform_rerouted_total{")]
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_scale_up_under_load(platform, pushed) -> None:
    p = platform()
    p.register(pushed["text-stream"], "text-stream")
    p.deploy("text-stream", min_replicas=1, max_replicas=2, target_concurrency=1)
    p.ready("text-stream")
    words = " ".join(f"w{i}" for i in range(12))
    served: list[httpx.Response] = []
    load = threading.Thread(target=lambda: served.extend(
        _concurrently(p, "text-stream", [{"prompt": words, "delay": 0.5}] * 3)))
    load.start()
    p.ready("text-stream", 2, timeout=120)                            # outstanding/replica stayed above 1
    load.join(180)
    assert [r.status_code for r in served] == [200, 200, 200]


def test_scale_down_with_a_prediction_in_flight(platform, pushed) -> None:
    p = platform()
    p.register(pushed["async-concurrent"], "async-concurrent")
    p.deploy("async-concurrent", min_replicas=2, max_replicas=2, target_concurrency=4)
    p.ready("async-concurrent", 2)
    served: list[httpx.Response] = []
    load = threading.Thread(target=lambda: served.extend(
        _concurrently(p, "async-concurrent", [{"text": "abcdefghijkl", "delay": 0.3}] * 2)))
    load.start()
    until(lambda: sum(r["outstanding"] for r in _live(p, "async-concurrent")) == 2, 30, "both predictions running")
    with p.http() as c:
        assert c.patch(f"/v1/deployments/h5test-{RUN_ID}/async-concurrent",
                       json={"min_replicas": 0, "max_replicas": 1}).status_code == 200
    until(lambda: any(r["state"] == "stopping" for r in _live(p, "async-concurrent")), 30, "a replica draining")
    load.join(180)
    assert [r.status_code for r in served] == [200, 200], [r.text for r in served]   # both completed
    assert ["".join(r.json()["output"]) for r in served] == [">abcdefghijkl"] * 2
    until(lambda: len(p.containers()) == 1, 60, "the drained replica to be stopped")


def test_a_crashing_model_backs_off_and_shows_why(platform, pushed) -> None:
    p = platform()
    p.register(pushed["crasher"], "crasher")
    p.deploy("crasher", min_replicas=1, max_replicas=1)
    status = until(lambda: (s := p.status("crasher")).get("failures", 0) >= 2 and s, 180, "two failed starts")
    failure = status["last_failure"]
    assert failure["reason"] == "SETUP_FAILED" and "boom: the weights are missing" in failure["logs"]
    assert failure["retry_in_s"] >= 2                                  # doubled after the second failure
    resp = p.run("crasher", {"name": "x"})
    assert resp.status_code == 503 and "retry-after" in resp.headers, resp.text


def test_a_full_queue_is_a_503_with_retry_after(platform, pushed) -> None:
    p = platform()
    p.register(pushed["text-stream"], "text-stream")
    p.deploy("text-stream", min_replicas=1, max_replicas=1, queue_limit=1, target_concurrency=10)
    p.ready("text-stream")
    words = " ".join(f"w{i}" for i in range(10))
    results: list[httpx.Response] = []
    load = threading.Thread(target=lambda: results.extend(
        _concurrently(p, "text-stream", [{"prompt": words, "delay": 0.3}] * 2)))
    load.start()
    until(lambda: (s := p.status("text-stream")).get("waiting") == 1
          and sum(r["outstanding"] for r in s["replicas"]) == 1, 30, "one running and one waiting")
    full = p.run("text-stream", {"prompt": "no room"})
    assert full.status_code == 503, full.text
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["type"] == "server_error" and "waiting" in full.json()["error"]["message"]
    load.join(120)
    assert [r.status_code for r in results] == [200, 200]


def test_replicate_api_prefer_wait_stream_cancel_and_webhooks(platform, pushed) -> None:
    import replicate
    received: list[dict] = []
    hook = _webhook_server(received)
    p = platform()
    p.register(pushed["async-concurrent"], "async-concurrent")
    p.deploy("async-concurrent", min_replicas=1, max_replicas=1)
    p.ready("async-concurrent")
    model = f"h5test-{RUN_ID}/async-concurrent"
    with p.http(timeout=90) as c:
        waited = c.post(f"/v1/models/{model}/predictions", headers={"Prefer": "wait"},
                        json={"input": {"text": "hi", "delay": 0.01}, "webhook": hook.url,
                              "webhook_events_filter": ["completed"]})
        assert waited.status_code == 201 and waited.json()["status"] == "succeeded"
        assert waited.json()["output"] == [">h", "i"] and waited.json()["metrics"]["predict_time"] > 0
        bad = c.post("/v1/predictions", json={"version": waited.json()["version"], "input": {"delay": "x"}})
        assert bad.status_code == 422 and bad.json()["invalid_fields"][0]["field"] in ("text", "delay")
    until(lambda: [h for h in received if h["status"] == "succeeded"], 30, "the completed webhook")
    assert {h["status"] for h in received} == {"succeeded"}            # only the filtered event

    client = replicate.Client(api_token=p.key, base_url=p.url)
    streamed = client.predictions.create(model=model, input={"text": "abc", "delay": 0.05}, stream=True)
    events = [(getattr(e.event, "value", e.event), e.data) for e in streamed.stream()]
    assert [d for e, d in events if e == "output"] == [">a", "b", "c"]
    slow = client.predictions.create(model=model, input={"text": "abcdefghijklmnopqrstuvwxyz", "delay": 0.5})
    until(lambda: (slow.reload() or slow.status) == "processing", 30, "the slow prediction running")
    slow.cancel()
    until(lambda: (slow.reload() or slow.status) == "canceled", 30, "cancelled")
    hook.close()
    deployed = client.deployments.predictions.create(model, input={"text": "d", "delay": 0})
    deployed.wait()
    assert deployed.status == "succeeded" and deployed.output == [">d"]


def test_replicate_file_outputs_are_urls_the_platform_serves(platform, pushed) -> None:
    import io

    import replicate
    from PIL import Image
    p = platform()
    p.register(pushed["image-filter"], "image-filter")
    p.deploy("image-filter", min_replicas=0, max_replicas=1)
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, format="PNG")
    client = replicate.Client(api_token=p.key, base_url=p.url)
    try:
        out = client.run(f"h5test-{RUN_ID}/image-filter", input={"image": io.BytesIO(buf.getvalue()), "size": 20})
    except replicate.exceptions.ModelError:
        raise AssertionError(f"{p.status('image-filter')}\n{p.gw.logs()[-3000:]}") from None
    assert out.startswith(f"{p.url}/v1/files/")        # (the client wraps https URLs only; this one is http)
    with p.http() as c:
        image = Image.open(io.BytesIO(c.get(out).content))
    assert image.size == (20, 10) and image.mode == "L"              # grayscale, resized: the model's output
    with httpx.Client() as anonymous:
        assert anonymous.get(out).status_code == 401              # served to callers with a key only


class _Hook:
    def __init__(self, server, thread, url) -> None:
        self.server, self.thread, self.url = server, thread, url

    def close(self) -> None:
        self.server.shutdown()


def _webhook_server(received: list[dict]) -> _Hook:
    import http.server
    import json

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return _Hook(server, thread, f"http://127.0.0.1:{server.server_address[1]}/hook")

