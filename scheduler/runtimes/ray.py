"""Replicas on a Ray cluster: each is started by the agent of the node placement chose (the
spec's run.cogkit.node label), on that node's engine. Ids are "<node>/<id on the node>", so a stop
or a log read goes to the right agent.

A node that is gone (Ray counts it dead, or its agent is) lists nothing: the controller sees its
replicas vanish, forgets them and places replacements on the nodes that remain. A node whose agent
is only slow (a loaded machine) lists what it listed last: slow is not gone, and forgetting its
replicas would start them again elsewhere while they still run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import ray

from scheduler.placement import NoFit, Placement, Policy, ReplicaRequest, RunningReplica
from scheduler.ray_agent import replica_from_dict
from scheduler.ray_inventory import AGENT_CALL_TIMEOUT_S, AGENT_NAMESPACE, RayInventory, gather, ray_placer
from scheduler.runtimes.base import LABEL_DEPLOYMENT, LABEL_NODE, ReplicaSpec, RuntimeError_, StartedReplica
from scheduler.telemetry.polling import PollingInventory

START_TIMEOUT_S = 120.0     # a Docker engine may pull the image first

Placer = Callable[[ReplicaRequest, list[RunningReplica]], Placement | NoFit]


class RayRuntime:
    def __init__(self, inventory: RayInventory | None = None,
                 gpu_memory_bytes: Mapping[str, int] | None = None,
                 call_timeout_s: float = AGENT_CALL_TIMEOUT_S) -> None:
        self.inventory = inventory or RayInventory(call_timeout_s)
        # per deployment (the run.cogkit.deployment label): GPU memory a replica takes per GPU, so a
        # simulated node's telemetry shows it (NVML sees it by itself)
        self.gpu_memory_bytes = dict(gpu_memory_bytes or {})
        self.call_timeout_s = call_timeout_s
        # per node and labels asked: the agent's last answer, for when it is slow
        self._listed: dict[tuple[str, tuple[tuple[str, str], ...]], list[dict[str, Any]]] = {}

    def start(self, spec: ReplicaSpec) -> StartedReplica:
        node = spec.labels.get(LABEL_NODE, "")
        agent = self.inventory.agent(node)
        if agent is None:
            raise RuntimeError_(f"{spec.name}: node {node or '(none)'} has no agent on the cluster")
        memory = self.gpu_memory_bytes.get(spec.labels.get(LABEL_DEPLOYMENT, ""), 0)
        try:
            value = ray.get(agent.start.remote(asdict(spec), memory), timeout=START_TIMEOUT_S)
        except ray.exceptions.RayTaskError as e:
            raise RuntimeError_(f"{spec.name}: node {node} could not start it: {e.cause}") from e
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            raise RuntimeError_(f"{spec.name}: node {node} is gone or not answering ({type(e).__name__})") from e
        return replica_from_dict(value, f"{node}/{value['id']}")

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        agent, local_id = self._agent_of(replica_id)
        node = replica_id.partition("/")[0]
        for key, listed in list(self._listed.items()):      # a slow agent's last answer lists it no more
            if key[0] == node:
                self._listed[key] = [r for r in listed if r["id"] != local_id]
        if agent is None:
            return                          # its node is gone, and the replica with it
        try:
            ray.get(agent.stop.remote(local_id, timeout), timeout=timeout + self.call_timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        except ray.exceptions.RayTaskError as e:
            raise RuntimeError_(f"cannot stop {replica_id}: {e.cause}") from e

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        calls = {node: agent.list.remote(dict(labels)) for node, agent in self.inventory.agents().items()}
        answers: dict[str, list[dict[str, Any]]] = gather(calls, self.call_timeout_s)
        asked = tuple(sorted(labels.items()))
        for node, answer in answers.items():
            self._listed[node, asked] = answer
        found = {node: answers.get(node, self._listed.get((node, asked), [])) for node in calls}
        return [replica_from_dict(r, f"{node}/{r['id']}") for node, rs in found.items() for r in rs]

    def logs(self, replica_id: str, tail: int = 20) -> str:
        agent, local_id = self._agent_of(replica_id)
        if agent is None:
            return ""
        found = gather({"logs": agent.logs.remote(local_id, tail)}, self.call_timeout_s)
        return str(found.get("logs", ""))

    def _agent_of(self, replica_id: str) -> tuple[Any | None, str]:
        node, sep, local_id = replica_id.partition("/")
        if not sep:
            raise RuntimeError_(f"replica id: expected '<node>/<id>', got {replica_id!r}")
        return self.inventory.agent(node), local_id


def on_cluster(address: str, gpu_memory_bytes: Mapping[str, int] | None = None, policy: Policy | None = None,
               poll_interval_s: float = 1.0) -> tuple[RayRuntime, Placer, PollingInventory]:
    """What a Controller needs to run replicas on the cluster at `address`: the runtime, the placer (over
    the agents' telemetry, polled, since the controller calls it on its event loop), and the poller
    (stop() it with the controller)."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=AGENT_NAMESPACE, logging_level=logging.WARNING)
    inventory = RayInventory()
    polled = PollingInventory(inventory, poll_interval_s).start()
    placer: Placer = ray_placer(polled, policy)
    return RayRuntime(inventory, gpu_memory_bytes), placer, polled
