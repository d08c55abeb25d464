"""The scheduler on a real Ray cluster: three nodes on this machine (tests/ray_support.py), each
with a simulated GPU inventory given as Ray resources and reported by its node agent; replicas are
real Cog servers (`cogkit serve` of hello-world) started by the agent of the node placement chose.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray", reason="ray[default] is not installed (pip install -e '.[test]')")

from scheduler.autoscaler import ScalePolicy  # noqa: E402
from scheduler.controller import Controller, DesiredDeployment  # noqa: E402
from scheduler.placement import Placement, ReplicaRequest, Rung, place  # noqa: E402
from scheduler.ray_inventory import (  # noqa: E402
    GPU_RESOURCE,
    RayInventory,
    node_resource,
)
from scheduler.replicas import ReplicaSet  # noqa: E402
from scheduler.runtimes.base import LABEL_NODE  # noqa: E402
from scheduler.runtimes.ray import RayRuntime, on_cluster  # noqa: E402
from scheduler.telemetry.polling import PollingInventory  # noqa: E402
from tests.net import until_async  # noqa: E402
from tests.ray_support import RayCluster, ray_cluster_of, simulated_gpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "models" / "hello-world"
NODES = ("a", "b", "c")
GIB = 2**30
REPLICA_GPU_MEMORY = 20 * GIB          # one replica per 24 GiB GPU
READY_TIMEOUT = 180.0                  # cogkit serve on two heavily shared cores

INVENTORY = simulated_gpus(NODES)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with ray_cluster_of(NODES, INVENTORY) as cluster:
        yield cluster


def deployment(name: str, version: str, replicas: int) -> DesiredDeployment:
    return DesiredDeployment(name=name, model=f"acme/{name}", version_id=version, image=str(HELLO),
                             max_concurrency=1, policy=ScalePolicy(min_replicas=replicas, max_replicas=replicas),
                             gpus=1, gpu_memory_bytes=REPLICA_GPU_MEMORY, cold_start_timeout=READY_TIMEOUT,
                             setup_timeout=READY_TIMEOUT)


def controller_for(spec: DesiredDeployment, address: str) -> tuple[Controller, PollingInventory]:
    runtime, placer, polled = on_cluster(address, {spec.name: spec.gpu_memory_bytes}, poll_interval_s=0.5)
    return Controller(runtime, lambda: [spec], "h8-ray-test", placer=placer, interval=0.5), polled


def nodes_of_ready(controller: Controller, name: str) -> list[str]:
    state = controller.states.get(name)
    if state is None:
        return []
    return sorted(t.replica.labels[LABEL_NODE] for t in state.tracked.values() if t.ready and not t.stopping)


async def predict(http: httpx.AsyncClient, replicas: ReplicaSet, who: str) -> str:
    """As the gateway routes: a replica whose connection breaks is marked failed (no more requests
    until the controller looks at it) and the request goes to another. Sending it again is safe here:
    hello-world's prediction has no side effect, and a dead replica's pooled connection breaks on use."""
    for _ in range(5):
        lease = await replicas.acquire(timeout=READY_TIMEOUT)
        try:
            resp = await http.post(lease.replica.url + "/predictions", json={"input": {"name": who}})
        except httpx.TransportError:
            replicas.failed(lease)
            continue
        replicas.release(lease)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["output"])
    raise AssertionError("no replica answered after 5 tries")


def test_each_node_joins_with_its_gpu_inventory_as_ray_resources(ray_cluster: RayCluster) -> None:
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3
    for name in NODES:
        [info] = [n for n in alive if node_resource(name) in n["Resources"]]
        assert info["Resources"][GPU_RESOURCE] == 2
    assert ray.cluster_resources()[GPU_RESOURCE] == 6

    snapshot = RayInventory().read()
    assert [n.name for n in snapshot.nodes] == list(NODES)
    for node in snapshot.nodes:
        assert node.reachable and node.labels["zone"] == f"z{node.name}"
        assert [g.uuid for g in node.gpus] == [f"GPU-sim-{node.name}-0", f"GPU-sim-{node.name}-1"]
        assert all(g.memory_total_bytes == 24 * GIB and g.compute_capability == (8, 6) for g in node.gpus)
        assert time.time() - node.read_at < 30          # a live reading from the agent, not a cached one


def test_a_node_holding_the_versions_snapshot_wins(ray_cluster: RayCluster, tmp_path: Path) -> None:
    origin = tmp_path / "origin" / "v-local"
    origin.mkdir(parents=True)
    (origin / "weights.bin").write_bytes(os.urandom(4096))
    ray.get(ray_cluster.agents["c"].prefetch.remote("v-local", str(tmp_path / "origin")), timeout=60)

    inventory = RayInventory()
    snapshot = inventory.read()
    assert snapshot.node("c") is not None and "v-local" in snapshot.node("c").cached_versions  # type: ignore[union-attr]
    cached = place(snapshot, [], ReplicaRequest("acme/hello", "v-local", 1, REPLICA_GPU_MEMORY))
    uncached = place(snapshot, [], ReplicaRequest("acme/hello", "v-none", 1, REPLICA_GPU_MEMORY))
    assert isinstance(cached, Placement) and isinstance(uncached, Placement)
    assert (cached.node, cached.rung) == ("c", Rung.LOCAL_SNAPSHOT)
    assert (uncached.node, uncached.rung) == ("a", Rung.ORIGIN)     # without a snapshot: the first node

    async def scenario() -> None:
        spec = deployment("local", "v-local", 1)
        controller, polled = controller_for(spec, ray_cluster.cluster.address)
        controller.start()
        try:
            await until_async(lambda: nodes_of_ready(controller, spec.name), READY_TIMEOUT, "a ready replica")
            assert nodes_of_ready(controller, spec.name) == ["c"]
            async with httpx.AsyncClient(timeout=30) as http:
                assert await predict(http, controller.replica_set(spec.name), "snapshot") == "hello snapshot"
        finally:
            await controller.close(stop_replicas=True)
            polled.stop()
    asyncio.run(scenario())
    assert not RayRuntime(inventory).list({})                   # every replica stopped


def test_replicas_spread_across_nodes_and_a_removed_node_is_replaced(ray_cluster: RayCluster) -> None:
    inventory = RayInventory()
    spec = deployment("hello", "v-hello", 2)

    async def scenario() -> None:
        controller, polled = controller_for(spec, ray_cluster.cluster.address)
        controller.start()
        replicas = controller.replica_set(spec.name)
        try:
            await until_async(lambda: len(nodes_of_ready(controller, spec.name)) == 2, READY_TIMEOUT,
                             "two ready replicas")
            # anti-affinity: one per node
            placed = nodes_of_ready(controller, spec.name)
            assert len(set(placed)) == 2, controller.snapshot(spec.name)
            # an agent slower than the call timeout is not a node gone: its replicas stay listed
            runtime = controller.runtime
            assert isinstance(runtime, RayRuntime)
            listed = sorted(r.id for r in await asyncio.to_thread(runtime.list, {}))
            patient, runtime.call_timeout_s = runtime.call_timeout_s, 0.0
            try:
                assert sorted(r.id for r in await asyncio.to_thread(runtime.list, {})) == listed
            finally:
                runtime.call_timeout_s = patient
            live = inventory.read()
            used = {n.name for n in live.nodes for g in n.gpus if g.processes}
            assert used == set(placed)                              # the agents' telemetry follows them
            victim = max(placed)                                    # never "a": the head stays
            survivor, = set(placed) - {victim}
            third, = set(NODES) - set(placed)
            async with httpx.AsyncClient(timeout=30) as http:
                answers = [await predict(http, replicas, f"n{i}") for i in range(4)]
                assert answers == [f"hello n{i}" for i in range(4)]

                await asyncio.to_thread(ray_cluster.kill_node, victim)
                # requests keep being answered while the node is gone: the survivor takes them
                answers = [await predict(http, replicas, f"after{i}") for i in range(4)]
                assert answers == [f"hello after{i}" for i in range(4)]

                # the lost replica is rescheduled: not on the dead node, nor next to the survivor
                await until_async(lambda: nodes_of_ready(controller, spec.name) == sorted([survivor, third]),
                                 READY_TIMEOUT, f"the replacement on node {third}")
                assert (await asyncio.to_thread(inventory.read)).node(victim).reachable is False  # type: ignore[union-attr]
                answers = [await predict(http, replicas, f"again{i}") for i in range(4)]
                assert answers == [f"hello again{i}" for i in range(4)]
        finally:
            await controller.close(stop_replicas=True)
            polled.stop()
    asyncio.run(scenario())


def test_agent_cli_prints_a_nodes_resources_and_names_a_bad_node(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    run = [sys.executable, "-m", "scheduler.ray_agent", "resources", "--inventory", str(inventory), "--node"]
    found = subprocess.run([*run, "b"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {"cogkit_node_b": 1.0, GPU_RESOURCE: 2.0, "cogkit_gpu_memory_gib": 48.0}
    missing = subprocess.run([*run, "z"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "no node named 'z'" in missing.stderr and "Traceback" not in missing.stderr
