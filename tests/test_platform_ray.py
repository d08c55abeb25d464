"""The platform on Ray: `platform.ray_address` makes the gateway's controller run replicas through
the node agents of a real Ray cluster (tests/ray_support.py: two nodes on this machine, simulated
GPUs, each agent on the local Docker engine) instead of the local engine. hello-world is built and
pushed to the real registry, deployed through the gateway's API and called by `@ns/model`."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import docker.errors
import httpx
import pytest

pytest.importorskip("ray", reason="ray[default] is not installed (pip install -e '.[test]')")

from cogkit.build import registry  # noqa: E402
from scheduler.runtimes.base import LABEL_NODE, LABEL_PLATFORM  # noqa: E402
from scheduler.runtimes.ray import RayRuntime  # noqa: E402
from tests.conftest import build_example  # noqa: E402
from tests.net import until
from tests.ray_support import RayCluster, ray_cluster_of, simulated_gpus  # noqa: E402

NODES = ("ra", "rb")
RUN_ID = uuid.uuid4().hex[:8]
NAMESPACE = f"h9ray-{RUN_ID}"
REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"


@pytest.fixture(scope="module")
def docker_cluster(engine) -> Iterator[RayCluster]:
    with ray_cluster_of(NODES, simulated_gpus(NODES), engine="docker") as cluster:
        yield cluster


def test_the_platform_runs_replicas_on_ray_and_routes_model_strings_to_them(engine, docker_cluster, gateway) -> None:
    ref = f"{REGISTRY}/{NAMESPACE}/hello-world:v1"
    build_example(engine, "hello-world", ref)
    instance = f"h9ray-{RUN_ID}"
    try:
        digest = registry.push(ref, progress=lambda _line: None, client=engine)
        openapi, cog_config = registry.image_metadata(ref, engine)
        gw = gateway({"platform": {"ray_address": docker_cluster.address, "instance": instance, "interval": 0.3}})
        key = gw.new_key(f"t{RUN_ID}")
        registry.register_version(gw.url, NAMESPACE, "hello-world", ref, digest, openapi, key, cog_config=cog_config)
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=300) as c:
            r = c.post("/v1/deployments", json={"model": f"{NAMESPACE}/hello-world", "min_replicas": 0,
                                                "max_replicas": 1})
            assert r.status_code == 201, r.text
            # from zero: the request starts a replica on one of the cluster's nodes and waits for it
            r = c.post(f"/ai/run/@{NAMESPACE}/hello-world", json={"name": "ray"})
            assert r.status_code == 200, f"{r.text}\n{gw.logs()[-3000:]}"
            assert r.json()["output"] == "hello ray" and "x-cogkit-cold-start-ms" in r.headers
            assert c.post(f"/ai/run/@{NAMESPACE}/hello-world", json={"name": "again"}).json()["output"] == "hello again"
            status = c.get(f"/v1/deployments/{NAMESPACE}/hello-world").json()["status"]
            [replica] = [x for x in status["replicas"] if x["state"] == "ready"]
            assert "/" in replica["id"] and replica["id"].split("/")[0] in NODES, replica   # "<node>/<id on it>"
        # the agent of that node started it on its engine, labelled with the node placement chose
        [container] = engine.containers(filters={"label": f"{LABEL_PLATFORM}={instance}"})
        assert container["Labels"][LABEL_NODE] in NODES
        # and only that node's agent lists it, though both agents share the one engine
        listed = RayRuntime().list({LABEL_PLATFORM: instance})
        assert [r.id for r in listed] == [f"{container['Labels'][LABEL_NODE]}/{container['Id']}"], listed
        # the platform's inventory is now the agents' telemetry: on /metrics and in the explain
        def telemetry() -> str | None:
            text = gw.metrics()
            return text if 'node="rb"' in text else None
        text = until(telemetry, 30, "the agents' telemetry")
        assert len(re.findall(r'^cogkit_gpu_memory_total_bytes\{[^}]*node="r[ab]"', text, re.M)) == 4
        with gw.http(gw.admin_key) as admin:
            explained = admin.get("/v1/scheduler/explain", params={"deployment": f"{NAMESPACE}/hello-world"}).json()
        assert explained["decision"]["fits"] and explained["decision"]["node"] in NODES, explained
    finally:
        for c in engine.containers(all=True, filters={"label": f"{LABEL_PLATFORM}={instance}"}):
            try:
                engine.remove_container(c["Id"], force=True)
            except docker.errors.APIError:
                pass
        try:
            engine.remove_image(ref, force=True)
        except docker.errors.APIError:
            pass
