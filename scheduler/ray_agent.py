"""The node agent: a Ray actor pinned to one node (by its `cogkit_node_<name>` resource) that runs
that node's replicas on the node's own engine and reports the node's telemetry.

Telemetry comes from NVML where the node has a GPU, else from a simulated inventory described in
YAML (scheduler/telemetry/simulated.py); the snapshots in the node's weight cache
(scheduler/snapshots) are added to what it reports as cached. The engine is a Runtime
(scheduler/runtimes/base.py): Docker (`engine="docker"`), or `CogProjectRuntime`, which serves a Cog
project directory with `cogkit serve` as a local process through the process runtime (where there is
no container engine to use).
Everything crossing Ray is a plain value (dicts, lists): frozen readings hold mappingproxies.

A node joins with:

    ray start --address HOST:PORT --resources "$(python -m scheduler.ray_agent resources --node a --inventory node-a.yaml)"
    python -m scheduler.ray_agent start --address HOST:PORT --node a --inventory node-a.yaml --state-dir DIR
"""
from __future__ import annotations

import argparse
import builtins
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray
import yaml

from scheduler.ray_inventory import (
    AGENT_NAMESPACE,
    agent_name,
    node_resource,
    node_resources_json,
    reading_to_dict,
)
from scheduler.runtimes.base import LABEL_NODE, ReplicaSpec, Runtime, RuntimeError_, StartedReplica
from scheduler.runtimes.process import ProcessRuntime
from scheduler.snapshots import SnapshotCache, directory_origin
from scheduler.telemetry.base import Inventory, NodeReading, SpecError
from scheduler.telemetry.simulated import SimulatedInventory

REPO_ROOT = Path(__file__).resolve().parents[1]     # `python -m cogkit.cli` runs this checkout's code
SNAPSHOT_BUDGET_BYTES = 50 * 2**30


class CogProjectRuntime:
    """Replicas as local `cogkit serve --project IMAGE` processes, the image being a Cog project
    directory on this node, run by the process runtime (runtimes/process.py: one process group, a
    record and a log per replica in the state directory). Records left by an agent that died are
    orphans nobody routes to: they are stopped when the agent starts."""

    def __init__(self, state_dir: Path) -> None:
        self.processes = ProcessRuntime(state_dir)
        for orphan in self.processes.list({}):
            self.processes.stop(orphan.id, timeout=0)

    def start(self, spec: ReplicaSpec) -> StartedReplica:
        project = Path(spec.image)
        if not (project / "cog.yaml").is_file():
            raise RuntimeError_(f"{spec.name}: image: expected a Cog project directory on this node, got {spec.image}")
        command = (sys.executable, "-m", "cogkit.cli", "serve", "--project", str(project),
                   "--host", "127.0.0.1", "--port", "{port}")
        # this checkout's cogkit, wherever the agent's working directory is
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        return self.processes.start(replace(spec, command=command, env={**spec.env, "PYTHONPATH": path}))

    def list(self, labels: Mapping[str, str]) -> builtins.list[StartedReplica]:
        return self.processes.list(labels)

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        self.processes.stop(replica_id, timeout)

    def logs(self, replica_id: str, tail: int = 20) -> str:
        return self.processes.logs(replica_id, tail)

    def pids(self) -> builtins.list[int]:
        return [pid for r in self.processes.list({}) if r.running and (pid := self.processes.pid(r.id)) is not None]


def node_inventory(node: str, inventory_yaml: str | None) -> Inventory:
    """This node's telemetry source: its entry of the YAML inventory, or NVML when none is given."""
    if inventory_yaml is None:
        from scheduler.telemetry.nvml import NvmlInventory, nvml_available
        if not nvml_available():
            raise SpecError(f"node {node}: no inventory YAML given and NVML finds no GPU here")
        return NvmlInventory(node)
    spec = yaml.safe_load(inventory_yaml)
    entries = [e for e in (spec or {}).get("nodes", []) if isinstance(e, dict) and e.get("name") == node]
    if not entries:
        raise SpecError(f"nodes: no node named {node!r} in the inventory")
    return SimulatedInventory({"nodes": entries})


class NodeAgent:
    """What runs on one node (as a Ray actor: see start_agent)."""

    def __init__(self, node: str, inventory_yaml: str | None, state_dir: str, engine: str = "process") -> None:
        self.node = node
        self.inventory = node_inventory(node, inventory_yaml)
        root = Path(state_dir)
        self.snapshots = SnapshotCache(root / "snapshots", SNAPSHOT_BUDGET_BYTES)
        self.engine: Runtime
        if engine == "process":
            self.engine = CogProjectRuntime(root / "replicas")
        elif engine == "docker":
            from scheduler.runtimes.docker import DockerRuntime
            self.engine = DockerRuntime()
        else:
            raise SpecError(f"engine: expected 'process' or 'docker', got {engine!r}")
        self._gpu_load: dict[str, tuple[str, ...]] = {}     # replica -> GPUs the simulated load is on
        self._lock = threading.Lock()    # calls run on several threads; the simulated inventory is not shared-safe

    def telemetry(self) -> dict[str, Any]:
        with self._lock:
            reading = self.inventory.read().nodes[0]
        reading = NodeReading(reading.name, reading.gpus, reading.read_at, reading.labels, reading.cpus,
                              reading.memory_bytes, reading.cached_versions | self.snapshots.versions(),
                              reading.reachable)
        return reading_to_dict(reading)

    def start(self, spec: dict[str, Any], gpu_memory_bytes: int = 0) -> dict[str, Any]:
        replica = ReplicaSpec(**{**spec, "gpu_uuids": tuple(spec.get("gpu_uuids", ()))})
        started = self.engine.start(replica)
        if isinstance(self.inventory, SimulatedInventory) and replica.gpu_uuids:
            with self._lock:    # the simulated GPUs show the memory this replica takes, as NVML would
                self.inventory.start_replica(started.id, replica.gpu_uuids, gpu_memory_bytes)
                self._gpu_load[started.id] = replica.gpu_uuids
        return replica_to_dict(started)

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        self.engine.stop(replica_id, timeout)
        with self._lock:
            gpus = self._gpu_load.pop(replica_id, ())
            if isinstance(self.inventory, SimulatedInventory):
                self.inventory.stop_replica(replica_id, gpus)

    def list(self, labels: dict[str, str]) -> builtins.list[dict[str, Any]]:
        """This node's replicas only: nodes may share an engine (one Docker engine behind several
        agents, as in the tests), and a replica listed by two agents would be two replicas to the
        controller, one of them a phantom whose stop stops the real one."""
        return [replica_to_dict(r) for r in self.engine.list({**labels, LABEL_NODE: self.node})]

    def logs(self, replica_id: str, tail: int = 20) -> str:
        return self.engine.logs(replica_id, tail)

    def prefetch(self, version: str, origin_dir: str) -> str:
        """Materialize a version's weights into this node's snapshot cache; returns its content hash."""
        return self.snapshots.materialize(version, directory_origin(Path(origin_dir))).content_hash

    def pids(self) -> builtins.list[int]:
        """The replica processes running here (a test kills them with the node)."""
        return self.engine.pids() if isinstance(self.engine, CogProjectRuntime) else []


def replica_to_dict(replica: StartedReplica) -> dict[str, Any]:
    return {**asdict(replica), "labels": dict(replica.labels)}


def replica_from_dict(value: Mapping[str, Any], replica_id: str | None = None) -> StartedReplica:
    return StartedReplica(replica_id or value["id"], value["name"], dict(value["labels"]), value["url"],
                          value["running"], value["exit_code"], value["error"])


def start_agent(node: str, inventory_yaml: str | None, state_dir: str, engine: str = "process") -> Any:
    """Start the node's agent, pinned to it, and wait until it answers; returns its actor handle.
    Detached: it lives as long as its node, not as long as the process that started it."""
    actor_class = ray.remote(NodeAgent)
    agent: Any = actor_class.options(
        name=agent_name(node), namespace=AGENT_NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, resources={node_resource(node): 0.001},
        max_concurrency=8,      # telemetry is read while a stop waits for its replica to exit
    ).remote(node, inventory_yaml, state_dir, engine)
    ray.get(agent.telemetry.remote())
    return agent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scheduler.ray_agent",
                                     description="Join this node to a Ray cluster as a cogkit node")
    commands = parser.add_subparsers(dest="command", required=True)
    resources = commands.add_parser("resources", help="print the node's --resources JSON for `ray start`")
    start = commands.add_parser("start", help="start this node's agent on the cluster")
    for sub in (resources, start):
        sub.add_argument("--node", required=True, help="this node's name (its cogkit_node_<name> resource)")
        sub.add_argument("--inventory", help="simulated GPU inventory YAML (default: NVML)")
    start.add_argument("--address", required=True, help="the cluster, HOST:PORT of its head")
    start.add_argument("--state-dir", required=True, help="where the agent keeps replica records and snapshots")
    start.add_argument("--engine", default="process", choices=["process", "docker"])
    args = parser.parse_args(argv)
    try:
        text = Path(args.inventory).read_text() if args.inventory else None
        inventory = node_inventory(args.node, text)
    except (OSError, SpecError, yaml.YAMLError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.command == "resources":
        print(node_resources_json(inventory.read().nodes[0]))
        return
    ray.init(address=args.address, namespace=AGENT_NAMESPACE, logging_level=logging.WARNING)
    started = time.monotonic()
    # The module's own start_agent, not __main__'s: Ray would ship a __main__ class by value.
    importlib.import_module("scheduler.ray_agent").start_agent(args.node, text, args.state_dir, args.engine)
    print(f"agent for node {args.node} is up ({time.monotonic() - started:.1f}s)")


if __name__ == "__main__":
    main()
