"""Secrets never echoed (issue 8): an upstream whose 401 quotes the key it was given (as OpenAI's does)
must not get that key relayed to the client, streamed or not, nor written to the log or the usage rows;
for a configured key and for a BYOK secret stored through the admin API."""
from __future__ import annotations

import httpx
import pytest

from server.redact import MARK, redact
from tests.gateway_harness import provider

CONFIGURED = "sk-conf1"        # short enough that the fake quotes it whole in its 401
BYOK = "byok-k7"


def test_redact_replaces_keys_and_their_abbreviations():
    key = "sk-proj-abcdefgh12345678"
    assert redact(f"Incorrect API key provided: {key}.", [key]) == f"Incorrect API key provided: {MARK}."
    assert key[:6] not in redact(f"key {key[:6]}***{key[-4:]} is wrong", [key])
    assert redact("nothing secret", [key, None, "ab"]) == "nothing secret"


def test_scrub_makes_an_upstream_error_safe_to_relay():
    from server.providers import UpstreamError
    from server.redact import scrub
    key = "sk-live-0123456789abcdef"
    e = UpstreamError(f"bad key {key} after 3 tokens", None, "stream", body={"error": {"message": key}})
    scrub(e, {key, CONFIGURED})
    assert key not in e.message and key not in str(e) and e.body is None and MARK in e.message


@pytest.fixture
def leaky(fakes, gateway):
    fake = fakes("openai")          # wants "test-key": every key below gets its quoting 401
    g = gateway({"providers": [provider("conf", fake, api_key=CONFIGURED),
                               {**provider("byok", fake), "api_key": None, "api_key_secret": "byok-openai"}],
                 "routing": {"max_attempts": 1},
                 "models": [{"name": "conf-model", "deployments": [{"provider": "conf", "model": "gpt-4o-mini"}]},
                            {"name": "byok-model", "deployments": [{"provider": "byok", "model": "gpt-4o-mini"}]}]})
    g.admin("PUT", "/admin/providers/byok-openai", {"value": BYOK})
    return g


def test_an_upstream_quoting_the_key_gets_it_redacted_everywhere(leaky):
    g = leaky
    key = g.new_key("acme")
    bodies = []
    with g.http(key) as c:
        for model in ("conf-model", "byok-model"):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            resp = c.post("/v1/chat/completions", json=body)
            assert resp.status_code == 502, resp.text
            assert "Incorrect API key provided" in resp.text and MARK in resp.text
            bodies.append(resp.text)
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                bodies.append(s.read().decode())
            resp = c.post("/v1/messages", json={**body, "max_tokens": 5})
            bodies.append(resp.text)
            resp = c.post(f"/ai/run/{model}", json={"prompt": "hi"})
            bodies.append(resp.text)
    rows = g.usage(key, 8)
    assert len(rows) == 8
    everything = "\n".join(bodies) + repr(rows) + g.logs() + httpx.get(g.url + "/metrics").text
    assert CONFIGURED not in everything and BYOK not in everything
    assert all(MARK in b for b in bodies), bodies
