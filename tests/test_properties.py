"""Property-based tests (issue 8): hypothesis on the request models, the body checks and the model-string
parser; schemathesis against the gateway's own OpenAPI document, served by the real gateway process on
fake upstreams. Neither may find a 5xx, a traceback in a response, or an exception other than the ones
the code means to raise. The budget is bounded (PROPERTY_EXAMPLES, default 25 per property) so the
whole module stays well under 3 minutes on CI's two cores."""
from __future__ import annotations

import json
import os

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from server.api.deps import ApiError
from server.config import load_config
from server.translate.responses import Untranslatable, to_chat_request
from server.wire.anthropic import MessagesRequest
from server.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from server.wire.responses import ResponsesRequest
from server.wire.run import RunChatInputs
from tests.gateway_harness import one_model_gateway

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "25"))
FAST = settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values, including the awkward ones: lone surrogates, huge numbers, deep-ish nesting.
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=20)
ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "bogus"])
MESSAGE = st.fixed_dictionaries({"role": ROLES | JSON, "content": JSON})
MODELS = [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, MessagesRequest, ResponsesRequest, RunChatInputs]


def near_valid() -> st.SearchStrategy[dict]:
    """Bodies close to a real request: the right keys, any values."""
    return st.fixed_dictionaries({"model": st.text(max_size=20) | JSON}, optional={
        "messages": st.lists(MESSAGE, max_size=3) | JSON, "input": JSON | st.text(), "prompt": JSON,
        "max_tokens": JSON, "max_output_tokens": JSON, "max_completion_tokens": JSON, "tools": JSON,
        "stream": JSON, "instructions": JSON, "tool_choice": JSON})


@pytest.fixture(scope="module")
def app_request(tmp_path_factory):
    """A Request on the real app (its gateway, its limits), for the body checks without a server."""
    from starlette.requests import Request

    from server.app import create_app
    state = tmp_path_factory.mktemp("props")
    app = create_app(load_config(data={"state_dir": str(state)}))

    def make(path: str = "/v1/chat/completions") -> Request:
        return Request({"type": "http", "app": app, "path": path, "method": "POST", "headers": [],
                        "query_string": b""})
    return make


@FAST
@given(body=near_valid() | JSON)
def test_request_models_accept_or_name_a_field_never_crash(body):
    from server.api.body import field_path
    for model in MODELS:
        try:
            model.model_validate(body)
        except ValidationError as e:
            for err in e.errors():
                path = field_path(body, err["loc"])    # only steps that exist in the body
                here = body
                for step in path[:-1]:
                    here = here[step]


@FAST
@given(body=near_valid())
def test_validate_raises_only_a_422_naming_a_field(app_request, body):
    from server.api.body import validate
    for model in MODELS:
        try:
            validate(app_request(), model, body)
        except ApiError as e:
            assert e.status_code == 422 and e.body["error"]["param"]


@FAST
@given(raw=st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))
def test_parse_json_answers_a_4xx_or_a_value(app_request, raw):
    from server.api.body import parse_json
    try:
        parse_json(app_request(), raw)
    except ApiError as e:
        assert 400 <= e.status_code < 500


@FAST
@given(body=near_valid())
def test_responses_translation_refuses_only_by_name(body):
    try:
        ResponsesRequest.model_validate(body)
    except ValidationError:
        return
    try:
        chat = to_chat_request(body)
    except Untranslatable as e:
        assert str(e).split(":")[0].startswith(("input", "tools"))
        return
    assert chat["messages"] and chat["model"] == body["model"]


@FAST
@given(model=st.text(max_size=40) | st.sampled_from(["gpt-4o-mini", "openai/x", "@acme/echo:v2", "@", "/", ":",
                                                     "@a/b:", "openai/", "a" * 300]))
def test_model_string_parser_resolves_or_says_unknown(model):
    from server.catalog import Catalog, UnknownModel
    cfg = load_config(data={
        "providers": [{"name": "openai", "kind": "openai", "base_url": "http://127.0.0.1:1/v1", "passthrough": True},
                      {"name": "cog", "kind": "platform", "base_url": "http://127.0.0.1:3"}],
        "models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "openai"}]},
                   {"name": "@acme/echo", "deployments": [{"provider": "cog"}]}]})
    try:
        resolved = Catalog(cfg).resolve(model)
    except UnknownModel as e:
        assert isinstance(e.suggestions, list)
        return
    assert resolved.targets and all(t.upstream_model for t in resolved.targets)


# ---------------------------------------------------------------- schemathesis on the running gateway
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tests.fakes import start_fake
    fake = start_fake("openai")
    work = tmp_path_factory.mktemp("schemathesis")
    gw = one_model_gateway(work, fake, "props", 5.0)
    yield gw
    gw.close()
    fake.close()


@pytest.fixture(scope="module")
def gateway_schema(live):
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


SCHEMA = schemathesis.pytest.from_fixture("gateway_schema")


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_5xx_and_no_traceback_anywhere(case, live):
    key = live.admin_key if case.path.startswith("/admin") else live.key
    resp = case.call(headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code < 500, (case.method, case.path, resp.status_code, resp.text[:500])
    assert "Traceback" not in resp.text, resp.text[:500]
