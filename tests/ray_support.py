"""A real Ray cluster of several nodes on this machine (real GCS and raylet processes, started by
ray.cluster_utils.Cluster), each with a simulated GPU inventory given as Ray resources and a node
agent (scheduler/ray_agent.py) on it. Shared by tests/test_scheduler_ray.py (the scheduler on Ray)
and tests/test_platform_ray.py (the gateway's platform on Ray).

Ray picks the node address itself (it replaces 127.0.0.1 with this machine's address for the
cluster's own ports); the replicas listen on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def simulated_gpus(nodes: tuple[str, ...], gpus: int = 2, memory: str = "24GiB") -> str:
    """An inventory YAML: every node with `gpus` simulated A10s and a zone label of its own."""
    return "nodes:\n" + "".join(
        f"  - name: {n}\n    cpus: 4\n    memory: 32GiB\n    labels: {{zone: z{n}}}\n"
        f"    gpus: {{count: {gpus}, name: Simulated A10, memory: {memory}, compute_capability: '8.6'}}\n"
        for n in nodes)


@dataclass
class RayCluster:
    cluster: Any
    nodes: dict[str, Any]              # name -> the Node handle (its raylet and workers)
    agents: dict[str, Any]
    state_dirs: dict[str, Path]

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def kill_node(self, name: str) -> None:
        """The machine goes down: its raylet (and so its agent) killed, and its replicas with it."""
        import ray
        pids = ray.get(self.agents[name].pids.remote(), timeout=30)
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)
        for pid in pids:
            _killpg(pid)


@contextlib.contextmanager
def ray_cluster_of(names: tuple[str, ...], inventory: str, engine: str = "process") -> Iterator[RayCluster]:
    """Nodes `names` (the first is the head), agents on each running replicas on `engine` ("process":
    `cogkit serve` of a project directory; "docker": the local Docker engine). The last node's agent
    joins as an operator would, with the agent's command line. This process is a driver of the cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from scheduler.ray_agent import start_agent
    from scheduler.ray_inventory import AGENT_NAMESPACE, agent_name, node_resources
    # Short: Ray's Unix socket paths live under it (and must stay under 108 characters).
    temp = Path(tempfile.mkdtemp(prefix="ckray-"))
    inventory_file = temp / "inventory.yaml"
    inventory_file.write_text(inventory)
    readings = _readings(inventory_file)
    state_dirs = {n: temp / f"node-{n}" for n in names}
    cluster: Any = None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # Cluster records the head's address under the default Ray temp dir, as `ray start` does.
        (Path(tempfile.gettempdir()) / "ray").mkdir(exist_ok=True)
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "resources": node_resources(readings[names[0]]), "temp_dir": str(temp / "ray"),
                "include_dashboard": False})
            nodes = {names[0]: cluster.head_node}
            for name in names[1:]:
                nodes[name] = cluster.add_node(num_cpus=1, resources=node_resources(readings[name]))
            ray.init(address=cluster.address, namespace=AGENT_NAMESPACE, logging_level="warning")
            agents = {n: start_agent(n, inventory, str(state_dirs[n]), engine) for n in names[:-1]}
            last = names[-1]
            subprocess.run([sys.executable, "-m", "scheduler.ray_agent", "start", "--address", cluster.address,
                            "--node", last, "--inventory", str(inventory_file), "--state-dir", str(state_dirs[last]),
                            "--engine", engine], cwd=ROOT, check=True, timeout=120)
            agents[last] = ray.get_actor(agent_name(last), namespace=AGENT_NAMESPACE)
            yield RayCluster(cluster, nodes, agents, state_dirs)
        finally:
            for state_dir in state_dirs.values():
                _kill_recorded_replicas(state_dir)
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _readings(inventory_file: Path) -> dict[str, Any]:
    from scheduler.telemetry.simulated import SimulatedInventory
    return {r.name: r for r in SimulatedInventory.from_yaml(inventory_file).read().nodes}


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_recorded_replicas(state_dir: Path) -> None:
    for record in (state_dir / "replicas").glob("*.json"):
        _killpg(json.loads(record.read_text())["pid"])
