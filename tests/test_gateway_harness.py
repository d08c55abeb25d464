"""Unit tests of the gateway parts that need no server: config, catalog, router ordering.
(The harness that runs the real gateway lives in tests/gateway_harness.py.)"""
from __future__ import annotations

import time

import pytest

# The harness, importable from here too (tests/gateway_harness.py is its home).
from tests.gateway_harness import GatewayProc, fakes, gateway, provider  # noqa: F401


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
