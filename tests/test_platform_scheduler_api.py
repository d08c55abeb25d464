"""The scheduler on the gateway: GPU telemetry of the platform's inventory on /metrics, and
`GET /v1/scheduler/explain` (the placement of one more replica, each candidate's score terms, admin only).
The real gateway process with its controller on (the real Docker engine), a simulated inventory."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from cogkit.build import registry

INVENTORY = Path(__file__).resolve().parent.parent / "scheduler" / "examples" / "inventory.yaml"
DIGEST = "sha256:" + "9" * 64
SCHEMA = {"components": {"schemas": {"Input": {"type": "object", "properties": {"name": {"type": "string"}}},
                                     "Output": {"type": "string"}}}}


@pytest.fixture
def platform_gateway(gateway):
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        pytest.skip("no Docker engine (the controller's runtime): run under scripts/test")
    return gateway({"platform": {"controller": True, "inventory": str(INVENTORY), "interval": 0.2}})


def test_gpu_telemetry_of_the_platform_inventory_is_on_metrics(platform_gateway) -> None:
    text = platform_gateway.metrics()
    # scheduler/examples/inventory.yaml: h100-0 and h100-1 with 8 x 80 GiB, l4 with 4 x 24 GiB
    totals = re.findall(r'^cogkit_gpu_memory_total_bytes\{([^}]*)\} (\S+)$', text, re.M)
    assert len(totals) == 20, totals
    assert any('node="h100-1"' in labels and float(v) == 80 * 2**30 for labels, v in totals)
    assert any('node="l4"' in labels and float(v) == 24 * 2**30 for labels, v in totals)
    assert re.search(r'^cogkit_gpu_healthy\{[^}]*node="l4"[^}]*\} 1\.0$', text, re.M)
    assert "cogkit_gpu_reading_age_seconds{" in text


def test_explain_shows_each_candidates_score_terms_to_admins_only(platform_gateway) -> None:
    gw = platform_gateway
    tenant = gw.new_key("t-explain")
    registry.register_version(gw.url, "acme", "llm", "127.0.0.1:5050/acme/llm:v1", DIGEST, SCHEMA, gw.admin_key)
    with gw.http(gw.admin_key) as c:
        for name, memory_mb in (("acme/llm", 20_000), ("acme/huge", 200_000)):
            r = c.post("/v1/deployments", json={"name": name, "model": "acme/llm", "min_replicas": 0,
                                                "max_replicas": 1, "hardware": {"gpus": 1, "gpu_memory_mb": memory_mb}})
            assert r.status_code == 201, r.text

        r = c.get("/v1/scheduler/explain", params={"deployment": "acme/llm"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["deployment"] == "acme/llm" and body["decision"]["fits"] is True
        assert body["request"]["gpu_count"] == 1 and body["request"]["gpu_memory_bytes"] == 20_000 * 10**6
        assert body["candidates_total"] == 20 and body["gpus_considered"] == 20
        first = body["candidates"][0]
        assert {"node", "gpu_uuids", "score", "memory_fit", "utilization", "locality", "anti_affinity"} <= set(first)
        assert body["decision"]["node"] == first["node"] and body["why"]

        # 200 GB on one GPU fits none of them: which filter failed, on how many GPUs
        huge = c.get("/v1/scheduler/explain", params={"deployment": "acme/huge"}).json()
        assert huge["decision"]["fits"] is False and huge["candidates"] == []
        assert sum(huge["filtered"].values()) >= 20 and huge["decision"]["message"], huge

        missing = c.get("/v1/scheduler/explain", params={"deployment": "acme/nothing"})
        assert missing.status_code == 404 and "acme/nothing" in missing.json()["detail"]
        unnamed = c.get("/v1/scheduler/explain")
        assert unnamed.status_code == 422 and unnamed.json()["detail"].startswith("deployment:")
    with gw.http(tenant) as c:
        refused = c.get("/v1/scheduler/explain", params={"deployment": "acme/llm"})
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    with gw.http() as c:
        assert c.get("/v1/scheduler/explain", params={"deployment": "acme/llm"}).status_code == 401
    # the controller's own view agrees (once its pass has picked the deployments up: nothing starts, min 0)
    deadline = time.monotonic() + 10
    with gw.http(gw.admin_key) as c:
        while time.monotonic() < deadline and c.get("/v1/deployments/acme/llm").json().get("status") in (None, {}):
            time.sleep(0.1)  # polling a condition (the controller's first pass), not a fixed wait
        assert c.get("/v1/scheduler/explain", params={"deployment": "acme/llm"}).json()["decision"]["fits"]
