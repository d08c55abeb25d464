"""The parts of vLLM serving that need no vLLM: the process runtime (real processes), the
continuation of a broken stream (what it asks the next replica, what the client gets), and the
engine deployment's config."""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from scheduler.runtimes.base import LABEL_DEPLOYMENT, LABEL_PLATFORM, ReplicaSpec
from scheduler.runtimes.process import ProcessRuntime
from server.platform.continuation import Progress, strip_ids
from server.platform.vllm import VllmDeploymentConfig
from tests.net import until


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


SERVER = ("import os, http.server, sys; print(os.environ['GREETING'], flush=True); "
          "http.server.test(http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind='127.0.0.1')")


def _spec(name: str, port: int) -> ReplicaSpec:
    return ReplicaSpec(name=name, image="", port=port, labels={LABEL_PLATFORM: "unit", LABEL_DEPLOYMENT: "a/b"},
                       env={"GREETING": "hi"},
                       command=(sys.executable, "-c", SERVER, "{port}"))


def test_process_runtime_starts_lists_adopts_and_stops(tmp_path) -> None:
    from scheduler.controller import free_port
    runtime = ProcessRuntime(tmp_path)
    port = free_port()
    started = runtime.start(_spec("unit-a", port))
    try:
        until(lambda: _answers(started.url), what="the process's server")
        assert [r.id for r in runtime.list({LABEL_PLATFORM: "unit"})] == [started.id]
        assert runtime.list({LABEL_PLATFORM: "other"}) == []
        until(lambda: "hi" in runtime.logs(started.id), what="its log")      # env reached it, log kept
        adopted = ProcessRuntime(tmp_path).list({LABEL_PLATFORM: "unit"})   # a restarted controller's view
        assert [(r.id, r.running, r.url) for r in adopted] == [(started.id, True, started.url)]
    finally:
        ProcessRuntime(tmp_path).stop(started.id, timeout=5)    # stopped by one that did not start it
    until(lambda: not _answers(started.url), what="the server to stop")
    assert runtime.list({}) == []


def test_process_runtime_reports_a_killed_replica(tmp_path) -> None:
    from scheduler.controller import free_port
    runtime = ProcessRuntime(tmp_path)
    started = runtime.start(_spec("unit-b", free_port()))
    pid = runtime.pid(started.id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    gone = until(lambda: [r for r in runtime.list({}) if not r.running], what="the exit")
    assert gone[0].exit_code == -9 and "SIGKILL" in gone[0].error
    runtime.stop(started.id)
    assert runtime.list({}) == []


def test_process_runtime_names_a_missing_program(tmp_path) -> None:
    from scheduler.runtimes.base import RuntimeError_
    spec = ReplicaSpec(name="unit-c", image="", port=1, labels={}, command=("/nonexistent/python",))
    with pytest.raises(RuntimeError_, match="/nonexistent/python"):
        ProcessRuntime(tmp_path).start(spec)


def _chat_chunk(text: str, ids: list[int], finish: str | None = None, **extra: Any) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "token_ids": ids, "finish_reason": finish}],
            **extra}


def test_continuation_asks_for_the_rest_from_the_last_token() -> None:
    progress = Progress(chat=True)
    progress.see({**_chat_chunk("", []), "prompt_token_ids": [1, 2, 3]})
    progress.see(_chat_chunk("ab", [10, 11]))
    assert progress.why_not() == ""
    req = {"messages": [], "max_tokens": 10, "temperature": 0, "seed": 5, "ignore_eos": True, "tools": None}
    body = progress.continuation(req, "ns/m")
    assert body["prompt"] == [1, 2, 3, 10, 11] and body["max_tokens"] == 8
    assert body["temperature"] == 0 and body["seed"] == 5 and body["ignore_eos"] is True
    assert body["model"] == "ns/m" and body["stream"] is True and "messages" not in body
    out = progress.outward({"id": "cmpl-9", "choices": [{"index": 0, "text": "c", "token_ids": [12],
                                                          "finish_reason": None}]}, 2, want_ids=False)
    assert out["id"] == "chatcmpl-1" and out["object"] == "chat.completion.chunk"
    assert out["choices"][0]["delta"] == {"content": "c"} and "token_ids" not in out["choices"][0]
    last = progress.outward({"id": "cmpl-9", "choices": [],
                             "usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}}, 2, False)
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}   # billed once


def test_a_half_sent_tool_call_or_unknown_prompt_is_not_continued() -> None:
    tool = Progress(chat=True)
    tool.see({**_chat_chunk("", []), "prompt_token_ids": [1]})
    tool.see({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}, "token_ids": [4]}]})
    assert "tool call" in tool.why_not()
    blind = Progress(chat=True)
    blind.see(_chat_chunk("a", [4]))
    assert "prompt" in blind.why_not()


def test_token_ids_the_client_did_not_ask_for_are_removed() -> None:
    chunk = {**_chat_chunk("a", [4]), "prompt_token_ids": [1]}
    assert strip_ids(chunk) == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                                "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}


def test_vllm_deployment_config_builds_the_server_command_and_names_bad_fields() -> None:
    config = VllmDeploymentConfig(name="acme/tiny", model="/m", python="/venv/python",
                                  args={"max_model_len": 256, "enforce_eager": True, "trust_remote_code": False})
    assert config.command() == ("/venv/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m",
                                "--served-model-name", "acme/tiny", "--host", "127.0.0.1", "--port", "{port}",
                                "--max-model-len", "256", "--enforce-eager")
    desired = config.desired()
    assert desired.engine == "vllm" and desired.image == "" and desired.command == config.command()
    with pytest.raises(ValidationError, match="port is set by the platform"):
        VllmDeploymentConfig(name="acme/tiny", model="/m", args={"port": 1})
    with pytest.raises(ValidationError, match="expected ns/model"):
        VllmDeploymentConfig(name="tiny", model="/m")


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 200.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 150.0
"""


def test_engine_metrics_are_parsed_from_vllms_names() -> None:
    from scheduler.metrics_scrape import parse
    load = parse(VLLM_METRICS, read_at=1.0)
    assert (load.running, load.waiting, load.kv_cache_usage) == (3.0, 1.0, 0.25)
    assert load.prefix_hit_rate == 0.75
    assert parse("").prefix_hit_rate == 0.0


def test_router_takes_the_least_loaded_unless_a_prefix_is_held_within_slack() -> None:
    from scheduler.engine_routing import EngineRouter, prefix_key
    from scheduler.metrics_scrape import EngineLoad
    from scheduler.replicas import Replica
    a, b = Replica("a", "http://a", 64), Replica("b", "http://b", 64)
    loads = {"http://a": EngineLoad(running=2), "http://b": EngineLoad(running=0)}
    router = EngineRouter(lambda: loads, slack=4)
    assert router.chooser(None)([a, b]) is b                       # least loaded by the engine's figures
    long_chat = {"messages": [{"role": "system", "content": "x" * 300}, {"role": "user", "content": "hi"}]}
    key = prefix_key(long_chat)
    assert key is not None and prefix_key({"messages": [{"role": "user", "content": "x" * 300}]}) is None
    loads["http://b"] = EngineLoad(running=5)
    assert router.chooser(key)([a, b]) is a                        # first seen: least loaded, remembered
    loads["http://a"] = EngineLoad(running=8)
    assert router.chooser(key)([a, b]) is a                        # held prefix, within slack: back there
    loads["http://a"] = EngineLoad(running=20, waiting=3)
    assert router.chooser(key)([a, b]) is b                        # too loaded: the least loaded instead
    assert EngineRouter(lambda: loads, affinity=False).chooser(key)([a, b]) is b


def test_scraper_reads_routed_replicas_every_pass_and_a_lone_one_only_now_and_then() -> None:
    """A replica with no routing choice (alone in its deployment) is scraped at the quiet pace only,
    since each scrape costs its engine's API server; one that routing reads, on every pass."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from scheduler.metrics_scrape import Scraper
    hits: dict[int, int] = {}

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            port = self.server.server_address[1]
            hits[port] = hits.get(port, 0) + 1
            body = VLLM_METRICS.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Metrics) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    routed, lone = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    try:
        async def go() -> None:
            scraper = Scraper(lambda: {routed: True, lone: False}, quiet_interval=3600)
            try:
                for _ in range(5):
                    await scraper.scrape_once(everything=False)
                assert set(scraper.loads) == {routed, lone} and scraper.loads[lone].running == 3.0
                assert [hits[s.server_address[1]] for s in servers] == [5, 1]
                await scraper.scrape_once()               # everything: the lone one too
                assert hits[servers[1].server_address[1]] == 2
            finally:
                await scraper.aclose()
        asyncio.run(go())
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
