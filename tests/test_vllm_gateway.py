"""Real vLLM (the CPU build, from its own virtualenv) behind a real gateway process: an `engine: vllm`
deployment of a tiny random Llama made here, with two replicas run by the platform's controller as
local processes. One gateway and its two vLLM servers are shared by the whole module (each server
takes ~45 s and ~3 GB to start); the tests that kill or stop a replica run last. The mid-stream ones
pace their own request on the replica (tests/vllm_plugins/cogkit_pace.py: 20 ms a step, as a real
model's), so the kill lands mid-answer however fast or loaded the machine is.

Clients are the official SDKs (openai, anthropic); answers are greedy (temperature 0) and ignore
EOS, so they are exactly reproducible and of a known length.
"""
from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_support import PACE_ARGS, PACE_ENV, VLLM_ARGS, VLLM_ENV, tiny_llama, vllm_missing

from tests.gateway_harness import GatewayProc
from tests.net import until

MODEL = "@vt/tiny"
PROMPT = [{"role": "system", "content": "You are a tiny random model."},
          {"role": "user", "content": "Say something long."}]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


class VllmPlatform:
    def __init__(self, gw: GatewayProc, process_dir: Path, key: str) -> None:
        self.gw, self.process_dir, self.key = gw, process_dir, key

    def replicas(self) -> list[dict]:
        """The process replicas' records (url, pid) the controller's runtime keeps."""
        out = []
        for path in sorted(self.process_dir.glob("proc-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def healthy(self) -> list[dict]:
        def ok(url: str) -> bool:
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        return [r for r in self.replicas() if ok(r["url"])]

    def wait_ready(self, count: int, timeout: float = 600) -> list[dict]:
        def logs() -> str:
            return "\n".join(Path(r["log"]).read_text(errors="replace")[-1500:] for r in self.replicas()
                             if Path(r["log"]).exists())
        return until(lambda: (h := self.healthy()) and len(h) >= count and h,
                     timeout, f"{count} healthy vLLM replicas\n{self.gw.logs()[-2000:]}\n{logs()}")


def engine_metric(url: str, name: str) -> float:
    """One of vLLM's own figures from a replica's /metrics (summed over its label sets)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def vllm_platform(tmp_path_factory) -> Iterator[VllmPlatform]:
    missing = vllm_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    model = tiny_llama()
    tmp = tmp_path_factory.mktemp("vllm")
    process_dir = tmp / "processes"
    config = {"state_dir": str(tmp / "state"), "timeouts": {"idle": 12},     # a replica silent 6 s is left
              "platform": {"interval": 0.3, "instance": f"vt-{uuid.uuid4().hex[:8]}", "process_dir": str(process_dir),
                           "vllm": [{"name": "vt/tiny", "model": str(model), "args": {**VLLM_ARGS, **PACE_ARGS},
                                     "env": {**VLLM_ENV, **PACE_ENV}, "min_replicas": 2, "max_replicas": 2}]}}
    gw = GatewayProc(config, tmp, "gw")
    try:
        platform = VllmPlatform(gw, process_dir, gw.new_key(f"vt{uuid.uuid4().hex[:6]}"))
        platform.wait_ready(2)
        yield platform
    finally:
        gw.close()          # a clean stop stops its replicas
        for record in VllmPlatform(gw, process_dir, "").replicas():
            try:
                os.killpg(record["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stream_text(client, max_tokens: int, **kw: Any) -> tuple[str, Any, str]:
    text, usage, ids = "", None, set()
    for chunk in client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=max_tokens, stream=True,
                                                stream_options={"include_usage": True}, **GREEDY, **kw):
        ids.add(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert len(ids) == 1, ids        # one stream id from start to end
    return text, usage, ids.pop()


def test_openai_sdk_chat_and_completions_stream_with_vllms_usage(vllm_platform) -> None:
    client = vllm_platform.gw.openai(vllm_platform.key)
    text, usage, _ = _stream_text(client, 24)
    assert usage.completion_tokens == 24 and usage.prompt_tokens > 10
    whole = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=24, **GREEDY)
    assert whole.choices[0].message.content == text and whole.usage.completion_tokens == 24
    assert len(set(text)) > 4, text        # a wandering answer: a lost or repeated token would show

    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt="hello", max_tokens=12,
                                                                   stream=True, **GREEDY) if c.choices]
    assert len("".join(pieces)) >= 6     # 12 characters' tokens (a few may decode to nothing)
    rows = vllm_platform.gw.usage(vllm_platform.key, 3, timeout=20)
    assert sorted(r["output_tokens"] for r in rows[:3]) == [12, 24, 24], rows[:3]


def test_anthropic_sdk_messages_reach_vllm(vllm_platform) -> None:
    client = vllm_platform.gw.anthropic(vllm_platform.key)
    with client.messages.stream(model=MODEL, max_tokens=16, system="You are a tiny random model.",
                                messages=[{"role": "user", "content": "Say something long."}],
                                extra_body={"temperature": 0, "ignore_eos": True}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens == 16 and final.usage.input_tokens > 10
    openai_text, _, _ = _stream_text(vllm_platform.gw.openai(vllm_platform.key), 16)
    assert text == openai_text            # the same prompt, translated, the same greedy answer
    with vllm_platform.gw.http(vllm_platform.key) as c:     # /ai/run: the model's inputs, its output
        resp = c.post(f"/ai/run/{MODEL}", json={"system": PROMPT[0]["content"], "prompt": PROMPT[1]["content"],
                                               "max_tokens": 16, "temperature": 0, "ignore_eos": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"] == text and resp.json()["usage"]["completion_tokens"] == 16, resp.json()


def test_bad_request_is_the_callers_error_and_leaves_replicas_alone(vllm_platform) -> None:
    with vllm_platform.gw.http(vllm_platform.key) as c:
        resp = c.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 5000})
    assert 400 <= resp.status_code < 500, resp.text
    assert "max" in resp.text.lower() or "context" in resp.text.lower(), resp.text
    assert len(vllm_platform.healthy()) == 2


def _prefix_cache(replicas: list[dict]) -> tuple[float, float]:
    """(hits, queries) in tokens, summed over the replicas: vLLM's own prefix-cache counters."""
    return (sum(engine_metric(r["url"], "vllm:prefix_cache_hits_total") for r in replicas),
            sum(engine_metric(r["url"], "vllm:prefix_cache_queries_total") for r in replicas))


def _rounds(send: Callable[[int, int, list[dict]], None], prompts: int, rounds: int) -> None:
    """`rounds` times, every conversation's next question at once (as many users would)."""
    from concurrent.futures import ThreadPoolExecutor
    systems = [f"{uuid.uuid4().hex} " * 11 + f"You are assistant number {i}." for i in range(prompts)]
    with ThreadPoolExecutor(prompts) as pool:
        for r in range(rounds):
            list(pool.map(lambda i: send(r, i, [{"role": "system", "content": systems[i]},
                                                {"role": "user", "content": f"Question {r}?"}]), range(prompts)))


def test_prefix_affinity_raises_vllms_prefix_cache_hit_rate(vllm_platform) -> None:
    """Conversations sharing a long system prompt go back to the replica that holds it in its cache.
    Without affinity (the same workload with fresh prompts, each request to either replica at
    random, as prefix-blind least-loaded routing does with requests arriving together), fewer hit."""
    import random
    replicas = vllm_platform.wait_ready(2)
    client = vllm_platform.gw.openai(vllm_platform.key)
    prompts, rounds = 6, 3

    def via_gateway(_r: int, _i: int, messages: list[dict]) -> None:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)

    hits0, queries0 = _prefix_cache(replicas)
    _rounds(via_gateway, prompts, rounds)
    hits1, queries1 = _prefix_cache(replicas)
    with_affinity = (hits1 - hits0) / (queries1 - queries0)

    pick = random.Random(11)

    def blind(_r: int, _i: int, messages: list[dict]) -> None:
        url = pick.choice(replicas)["url"]
        body = {"model": "vt/tiny", "messages": messages, "max_tokens": 2, "temperature": 0}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=120).status_code == 200

    _rounds(blind, prompts, rounds)
    hits2, queries2 = _prefix_cache(replicas)
    without = (hits2 - hits1) / (queries2 - queries1)
    print(f"vLLM prefix-cache hit rate: {with_affinity:.1%} with affinity, {without:.1%} without")
    assert with_affinity > 0.5, with_affinity                    # rounds 2 and 3 hit their whole prefix
    assert with_affinity > without + 0.1, (with_affinity, without)
    metrics = vllm_platform.gw.metrics()
    assert 'cogkit_vllm_prefix_affinity_total{deployment="vt/tiny",outcome="kept"}' in metrics
    assert "cogkit_vllm_prefix_hit_rate{" in metrics and "cogkit_vllm_kv_cache_usage{" in metrics


def test_cog_packaged_llm_streams_from_vllm_in_its_predictor(tmp_path) -> None:
    """examples/models/cog-vllm's predictor on cogkit's runtime (locally: its image needs vLLM's CUDA
    build), vLLM from its virtualenv: a streamed prediction with vLLM's token counts as metrics."""
    from conftest import EXAMPLES, ModelServer
    from vllm_support import VLLM_ARGS_CLI, vllm_python
    missing = vllm_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    project = tmp_path / "cog-vllm"
    project.mkdir()
    (project / "predict.py").write_text((EXAMPLES / "cog-vllm" / "predict.py").read_text())
    # The example's own cog.yaml, less the GPU build and vllm (here vLLM runs from its virtualenv).
    (project / "cog.yaml").write_text('build:\n  python_version: "3.11"\n  python_packages: ["httpx>=0.27"]\n'
                                      'predict: "predict.py:Predictor"\n')
    env = {**VLLM_ENV, "COG_VLLM_MODEL": str(tiny_llama()), "COG_VLLM_PYTHON": str(vllm_python()),
           "COG_VLLM_ARGS": " ".join(VLLM_ARGS_CLI)}
    server = ModelServer(project, env=env)
    try:
        server.wait(timeout=900)
        events: list[str] = []
        with server.client.stream("POST", "/predictions", json={"input": {"prompt": "hello", "max_tokens": 12,
                                                                          "temperature": 0}},
                                  headers={"accept": "text/event-stream"}, timeout=300) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                events.append(line)
        outputs = [json.loads(e[6:])["chunk"] for e, prev in zip(events[1:], events, strict=False)
                   if e.startswith("data: ") and prev == "event: output"]      # Cog's {chunk, index}
        completed = next(json.loads(e[6:]) for e, prev in zip(events[1:], events, strict=False)
                         if prev == "event: completed")
        assert completed["status"] == "succeeded", completed
        assert len(outputs) >= 2 and "".join(outputs) == "".join(completed["output"])
        assert completed["metrics"]["output_token_count"] == 12
    finally:
        server.close()


def _requests_logged(replica: dict) -> int:
    """Chat requests the replica's server has logged (uvicorn logs each as its response starts)."""
    return Path(replica["log"]).read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


PACED = {"vllm_xargs": {"pace_ms": 20}}     # 20 ms a step on the replica it reaches (tests/vllm_plugins)
LONG = 300                                   # tokens: about 6 s paced, so a kill lands mid-answer


def _answering(replicas: list[dict], logged: dict[str, int]) -> dict:
    """The replica that took the request since `logged` was counted."""
    return until(lambda: next((r for r in replicas if _requests_logged(r) > logged[r["id"]]), None), 30,
                 "the replica answering the stream")


def _reference(client) -> str:
    """The greedy answer of one healthy replica, not paced (pacing leaves the logits alone)."""
    return client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=LONG,
                                          **GREEDY).choices[0].message.content


def test_sigkill_mid_stream_continues_on_the_other_replica(vllm_platform) -> None:
    """The replica streaming a greedy answer is killed; the client's text is one healthy replica's answer."""
    gw, key = vllm_platform.gw, vllm_platform.key
    client = gw.openai(key)
    replicas = vllm_platform.wait_ready(2)
    rows_before_reference = len(gw.usage(key, 0))
    expected = _reference(client)
    # The reference's own bill lands a moment after its answer (billing is batched): wait for it, or the
    # stream below would seem billed twice.
    before = len(gw.usage(key, rows_before_reference + 1, timeout=20))
    continued_before = _continuations(gw)
    logged = {r["id"]: _requests_logged(r) for r in replicas}
    text, usage, ids, killed, text_at_kill = "", None, set(), None, ""
    stream = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=LONG, stream=True,
                                            stream_options={"include_usage": True}, temperature=0,
                                            extra_body={"ignore_eos": True, **PACED})
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
        if killed is None and text:
            killed, text_at_kill = _answering(replicas, logged), text
            os.killpg(killed["pid"], signal.SIGKILL)
    assert killed is not None
    # The client had part of the answer when the replica died: the gateway relays as it goes (it
    # does not hold the answer back) and the kill landed mid-answer.
    assert 0 < len(text_at_kill) < len(expected) // 2, (len(text_at_kill), len(expected))
    assert _continuations(gw) == continued_before + 1     # the rest came from the other replica
    assert text == expected                       # nothing repeated, nothing missing
    assert len(ids) == 1
    assert usage is not None and usage.completion_tokens == LONG
    rows = gw.usage(key, before + 1, timeout=20)
    assert len(rows) == before + 1                # billed once
    assert rows[0]["output_tokens"] == LONG


def _continuations(gw: GatewayProc) -> float:
    match = re.search(r'^cogkit_vllm_stream_continuations_total\{deployment="vt/tiny",outcome="continued"\} (\S+)$',
                      gw.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def test_a_stalled_replica_is_left_and_the_stream_continues(vllm_platform) -> None:
    """The replica streaming goes silent (SIGSTOP: alive, holding the connection) past half the idle
    timeout: another one carries on from where it stopped."""
    gw, key = vllm_platform.gw, vllm_platform.key
    client = gw.openai(key)
    replicas = vllm_platform.wait_ready(2)        # the killed one's replacement is up
    expected = _reference(client)
    continued_before = _continuations(gw)
    logged = {r["id"]: _requests_logged(r) for r in replicas}
    text, usage, stopped, text_at_stop = "", None, None, ""
    try:
        for chunk in client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=LONG, stream=True,
                                                    stream_options={"include_usage": True}, temperature=0,
                                                    extra_body={"ignore_eos": True, **PACED}):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
            if stopped is None and text:
                stopped, text_at_stop = _answering(replicas, logged), text
                os.killpg(stopped["pid"], signal.SIGSTOP)
    finally:
        if stopped is not None:
            os.killpg(stopped["pid"], signal.SIGCONT)
    assert stopped is not None
    assert 0 < len(text_at_stop) < len(expected) // 2, (len(text_at_stop), len(expected))
    assert _continuations(gw) == continued_before + 1
    assert text == expected
    assert usage is not None and usage.completion_tokens == LONG
