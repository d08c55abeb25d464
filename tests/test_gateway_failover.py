"""Failover between deployments, timeouts, cooldowns, and in-band errors after the first token."""
from __future__ import annotations

import time

import anthropic
import openai
import pytest

from tests.gateway_harness import provider

MSG = [{"role": "user", "content": "tell me something"}]


@pytest.fixture
def pair(fakes, gateway):
    """Model `m` on `primary` then `backup` (priority order); both fake OpenAI servers."""
    primary, backup = fakes("openai"), fakes("openai")

    def start(routing: dict | None = None, timeouts: dict | None = None, **extra):
        g = gateway({
            "providers": [provider("primary", primary, timeouts=timeouts or {}), provider("backup", backup)],
            "models": [{"name": "m", "input_price": 1, "output_price": 2,
                        "deployments": [{"provider": "primary", "model": "gpt-4o-mini", "priority": 0},
                                        {"provider": "backup", "model": "gpt-4o-mini", "priority": 1}]}],
            "routing": {"cooldown": 30, **(routing or {})}, **extra})
        g.primary, g.backup = primary, backup
        return g
    return start


def _until_warm(g, timeout: float = 5) -> None:
    """Until no deployment is cooling down."""
    deadline = time.monotonic() + timeout
    while g.http().get("/health").json()["cooling"] and time.monotonic() < deadline:
        time.sleep(0.05)


def _served(raw) -> tuple[str, str]:
    return raw.headers["x-cogkit-provider"], raw.headers["x-cogkit-attempted"]


def test_failover_when_a_provider_is_down_then_cooldown_skips_it(pair):
    g = pair()
    g.primary.set_fault("down")
    client = g.openai(g.admin_key)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert raw.parse().choices[0].message.content == "Echo: tell me something"
    assert _served(raw) == ("backup", "primary,backup")
    # The broken deployment is cooling down: later requests don't even try it.
    before = g.primary.stats()["requests"]
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG)
        assert _served(raw) == ("backup", "backup")
    assert g.primary.stats()["requests"] == before
    stream = client.chat.completions.with_raw_response.create(model="m", messages=MSG, stream=True)
    assert _served(stream) == ("backup", "backup")
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    metrics = g.metrics()
    assert 'cogkit_gateway_failovers_total{model="m",provider="backup"} 1.0' in metrics
    assert 'cogkit_gateway_cooldowns_total{provider="primary"} 1.0' in metrics
    rows = g.usage(g.admin_key, 5)
    assert sorted(r["failovers"] for r in rows) == [0, 0, 0, 0, 1]


def test_connection_refused_and_5xx_fail_over(pair):
    g = pair()
    g.primary.set_fault("down", refuse=True)
    client = g.openai(g.admin_key)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert _served(raw) == ("backup", "primary,backup")


def test_5xx_and_429_fail_over_but_4xx_does_not(pair):
    g = pair(routing={"cooldown": 0.2})
    client = g.openai(g.admin_key)
    for fault in ("error_500", "overloaded", "rate_limit"):
        _until_warm(g)
        g.primary.set_fault(fault, times=1, retry_after=0.1)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG)
        assert _served(raw) == ("backup", "primary,backup"), fault
    _until_warm(g)
    g.primary.set_fault("context_window", times=1)   # a 400: the caller's problem, never retried
    backup_before = g.backup.stats()["requests"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=MSG)
    assert g.backup.stats()["requests"] == backup_before


def test_slow_first_token_fails_over_within_the_ttft_timeout(pair):
    g = pair(timeouts={"ttft": 0.5})
    g.primary.set_fault("slow_first_token", delay=5)
    client = g.openai(g.admin_key)
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert time.monotonic() - started < 3
    assert text == "Echo: tell me something"
    assert _served(raw) == ("backup", "primary,backup")


def test_a_slow_non_streamed_answer_fails_over_within_the_ttft_timeout(pair):
    g = pair(timeouts={"ttft": 0.5})
    g.primary.set_fault("slow_first_token", delay=3)
    started = time.monotonic()
    raw = g.openai(g.admin_key).chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert time.monotonic() - started < 2.5
    assert raw.parse().choices[0].message.content == "Echo: tell me something"
    assert _served(raw) == ("backup", "primary,backup")


def test_single_deployment_429_waits_retry_after_once(fakes, gateway):
    fake = fakes("openai")
    g = gateway({"providers": [provider("only", fake)], "routing": {"retry_after_cap": 2},
                 "models": [{"name": "m", "deployments": [{"provider": "only", "model": "gpt-4o-mini"}]}]})
    fake.set_fault("rate_limit", times=1, retry_after=0.3)
    raw = g.openai(g.admin_key).chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert _served(raw) == ("only", "only,only")
    fake.set_fault("rate_limit", times=5, retry_after=30)      # more than the cap: passed back, with Retry-After
    with pytest.raises(openai.RateLimitError) as e:
        g.openai(g.admin_key).chat.completions.create(model="m", messages=MSG)
    assert e.value.response.headers["retry-after"] == "30"


def test_no_failover_after_the_first_token_in_band_error(pair):
    g = pair(routing={"cooldown_failures": 3})     # a broken stream counts against the breaker too
    g.primary.configure(token_delay=0.02)
    g.primary.set_fault("drop_mid_stream")
    client = g.openai(g.admin_key)
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(chunk)
    assert got and "".join(c.choices[0].delta.content or "" for c in got if c.choices)   # some text came first
    assert e.value.body and e.value.body.get("code")
    assert g.backup.stats()["requests"] == 0
    # The Anthropic format ends with `event: error`.
    g.primary.set_fault("drop_mid_stream")
    g.primary.configure(token_delay=0.02)
    with pytest.raises(anthropic.APIStatusError):
        with g.anthropic(g.admin_key).messages.stream(model="m", max_tokens=100, messages=MSG) as s:
            for _ in s.text_stream:
                pass
    assert g.backup.stats()["requests"] == 0
    rows = g.usage(g.admin_key, 2)
    assert [r["status"] for r in rows] == ["partial", "partial"]
    assert all(r["output_tokens"] > 0 and r["cost"] > 0 for r in rows)   # the partial answer is billed


def test_stream_idle_timeout_ends_with_an_in_band_error(pair):
    g = pair(timeouts={"idle": 0.5, "ttft": 5})
    g.primary.configure(token_delay=2)           # first token in 2 s, then 2 s between tokens
    client = g.openai(g.admin_key)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as e:
        for _ in client.chat.completions.create(model="m", messages=MSG, stream=True):
            pass
    assert "idle" in str(e.value.message) and time.monotonic() - started < 4.5


def test_context_window_error_routes_to_the_larger_model(fakes, gateway):
    small, big = fakes("openai", context_window=5), fakes("openai")
    g = gateway({"providers": [provider("small", small), provider("big", big)],
                 "models": [{"name": "short", "context_window": 5, "context_fallback": "long",
                             "deployments": [{"provider": "small", "model": "gpt-4o-mini"}]},
                            {"name": "long", "deployments": [{"provider": "big", "model": "gpt-4o"}]}]})
    raw = g.openai(g.admin_key).chat.completions.with_raw_response.create(
        model="short", messages=[{"role": "user", "content": "this prompt is longer than five tokens for sure"}])
    assert _served(raw) == ("big", "small,big")


def test_latency_strategy_prefers_the_faster_deployment(pair):
    g = pair(routing={"strategy": "latency"})
    g.primary.configure(token_delay=0.15)         # slower to its first token
    client = g.openai(g.admin_key)
    served = [client.chat.completions.with_raw_response.create(model="m", messages=MSG, stream=True)
              .headers["x-cogkit-provider"] for _ in range(6)]
    assert served[-3:] == ["backup"] * 3
