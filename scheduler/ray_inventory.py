"""The inventory of a Ray cluster: every node that joined with a cogkit node resource, read from
the node agent pinned on it (scheduler/ray_agent.py).

A node joins in two steps: `ray start ... --resources "$(node_resources_json(reading))"` (its GPU
inventory as Ray custom resources, and `cogkit_node_<name>` so an actor can be pinned to it, as
every node of a one-machine cluster has the same `node:<ip>` resource), then its agent is started
(`ray_agent.start_agent`). Readings cross Ray as plain dicts: a frozen reading's labels are a
mappingproxy, which does not pickle.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import ray

from scheduler.placement import NoFit, Placement, Policy, ReplicaRequest, RunningReplica, place
from scheduler.telemetry.base import (
    GpuHealth,
    GpuProcess,
    GpuReading,
    Inventory,
    InventorySnapshot,
    NodeReading,
    frozen_labels,
)

NODE_RESOURCE_PREFIX = "cogkit_node_"       # cogkit_node_<name>: 1 on the node called <name>
GPU_RESOURCE = "cogkit_gpu"                 # the node's GPU count ("GPU" is Ray's own, for real CUDA devices)
GPU_MEMORY_RESOURCE = "cogkit_gpu_memory_gib"  # the node's total GPU memory
AGENT_NAMESPACE = "cogkit"
AGENT_CALL_TIMEOUT_S = 5.0                  # an agent slower than this reads as unreachable


def node_resource(node: str) -> str:
    return NODE_RESOURCE_PREFIX + node


def agent_name(node: str) -> str:
    return f"cogkit-agent-{node}"


def node_resources(reading: NodeReading) -> dict[str, float]:
    """What `ray start --resources` gets for this node: its name and its GPU inventory."""
    return {node_resource(reading.name): 1.0, GPU_RESOURCE: float(len(reading.gpus)),
            GPU_MEMORY_RESOURCE: sum(g.memory_total_bytes for g in reading.gpus) / 2**30}


def node_resources_json(reading: NodeReading) -> str:
    return json.dumps(node_resources(reading))


# ---- readings as plain values (what crosses Ray) ----

def reading_to_dict(node: NodeReading) -> dict[str, Any]:
    return {
        "name": node.name, "read_at": node.read_at, "labels": dict(node.labels), "cpus": node.cpus,
        "memory_bytes": node.memory_bytes, "cached_versions": sorted(node.cached_versions),
        "reachable": node.reachable,
        "gpus": [{
            "index": g.index, "uuid": g.uuid, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
            "memory_used_bytes": g.memory_used_bytes, "memory_free_bytes": g.memory_free_bytes,
            "compute_capability": list(g.compute_capability), "read_at": g.read_at,
            "utilization_percent": g.utilization_percent, "memory_utilization_percent": g.memory_utilization_percent,
            "temperature_c": g.temperature_c, "power_w": g.power_w, "mig_enabled": g.mig_enabled,
            "processes": [[p.pid, p.used_memory_bytes, p.name] for p in g.processes],
            "health": {"healthy": g.health.healthy, "reasons": list(g.health.reasons)},
        } for g in node.gpus],
    }


def reading_from_dict(value: Mapping[str, Any]) -> NodeReading:
    gpus = tuple(GpuReading(
        index=g["index"], uuid=g["uuid"], name=g["name"], memory_total_bytes=g["memory_total_bytes"],
        memory_used_bytes=g["memory_used_bytes"], memory_free_bytes=g["memory_free_bytes"],
        compute_capability=(int(g["compute_capability"][0]), int(g["compute_capability"][1])),
        read_at=g["read_at"], utilization_percent=g["utilization_percent"],
        memory_utilization_percent=g["memory_utilization_percent"], temperature_c=g["temperature_c"],
        power_w=g["power_w"], mig_enabled=g["mig_enabled"],
        processes=tuple(GpuProcess(int(p[0]), int(p[1]), str(p[2])) for p in g["processes"]),
        health=GpuHealth(bool(g["health"]["healthy"]), tuple(g["health"]["reasons"])),
    ) for g in value["gpus"])
    return NodeReading(value["name"], gpus, value["read_at"], frozen_labels(value["labels"]), value["cpus"],
                       value["memory_bytes"], frozenset(value["cached_versions"]), value["reachable"])


def _unreachable(name: str, last: NodeReading | None, now: float) -> NodeReading:
    """A node whose agent does not answer: its last reading (aging), or an empty one, unreachable."""
    if last is None:
        return NodeReading(name, (), now, reachable=False)
    return NodeReading(last.name, last.gpus, last.read_at, last.labels, last.cpus, last.memory_bytes,
                       last.cached_versions, reachable=False)


class RayInventory:
    """Inventory over the cluster the process is connected to (`ray.init(address=...)` first)."""

    def __init__(self, call_timeout_s: float = AGENT_CALL_TIMEOUT_S) -> None:
        self.call_timeout_s = call_timeout_s
        self._last: dict[str, NodeReading] = {}     # a dead node keeps its last reading, marked unreachable

    def node_names(self, alive_only: bool = True) -> list[str]:
        """The cogkit nodes Ray knows (alive ones unless told otherwise), by name: placement breaks ties
        by inventory order, and Ray lists nodes in no fixed order."""
        names: list[str] = []
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        for info in nodes:
            if alive_only and not info.get("Alive"):
                continue
            names += [key[len(NODE_RESOURCE_PREFIX):] for key in info.get("Resources", {})
                      if key.startswith(NODE_RESOURCE_PREFIX)]
        return sorted(set(names))

    def agent(self, node: str) -> Any | None:
        """The node's agent actor, or None when it has none (not started, or gone with its node)."""
        try:
            return ray.get_actor(agent_name(node), namespace=AGENT_NAMESPACE)
        except ValueError:
            return None

    def agents(self) -> dict[str, Any]:
        return {n: a for n in self.node_names() if (a := self.agent(n)) is not None}

    def read(self) -> InventorySnapshot:
        now = time.time()
        agents = self.agents()
        calls = {name: agent.telemetry.remote() for name, agent in agents.items()}
        answers = gather(calls, self.call_timeout_s)
        for name, answer in answers.items():
            self._last[name] = reading_from_dict(answer)
        known = sorted({*self.node_names(alive_only=False), *self._last})
        nodes = tuple(self._last[n] if n in answers else _unreachable(n, self._last.get(n), now) for n in known)
        return InventorySnapshot(nodes, now)


def gather(calls: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """The answers of the calls (object refs by key) that came back within timeout_s without an error."""
    if not calls:
        return {}
    ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=timeout_s)
    done = set(ready)
    out: dict[str, Any] = {}
    for key, ref in calls.items():
        if ref not in done:
            continue
        try:
            out[key] = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError):
            continue        # the agent died (its node with it) or failed: it reads as unreachable
    return out


def ray_placer(inventory: Inventory, policy: Policy | None = None) -> Any:
    """The controller's placer over the cluster: scheduler.placement on the agents' telemetry
    (give it a PollingInventory over a RayInventory: the controller calls it on its event loop)."""
    def placer(request: ReplicaRequest, running: list[RunningReplica]) -> Placement | NoFit:
        return place(inventory.read(), running, request, policy)
    return placer
