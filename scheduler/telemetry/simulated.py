"""A GPU inventory for machines without GPUs: nodes described in YAML, load that
follows the replicas placed on it, and faults a test or a trace can inject.

    nodes:
      - name: gpu-a
        count: 2                 # optional: gpu-a-0, gpu-a-1
        labels: {zone: eu}
        cpus: 32
        cached_versions: [v1]    # snapshots on this node's disk
        gpus: {count: 4, name: NVIDIA A100-SXM4-80GB, memory: 80GiB, compute_capability: "8.0"}
        # or gpus: a list of {name, memory, compute_capability}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from scheduler.telemetry.base import (
    GpuHealth,
    GpuProcess,
    GpuReading,
    InventorySnapshot,
    NodeReading,
    SpecError,
    frozen_labels,
    parse_bytes,
    parse_compute_capability,
    xid_marks_unhealthy,
)

# What the driver and display take on an idle GPU, as nvidia-smi shows it.
_IDLE_USED_BYTES = 300 * 2**20
_FIRST_REPLICA_PID = 10_000


@dataclass
class _SimGpu:
    index: int
    uuid: str
    name: str
    total: int
    capability: tuple[int, int]
    present: bool = True
    health: GpuHealth = field(default_factory=GpuHealth)
    foreign: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    replicas: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # id -> (pid, bytes, util %)


@dataclass
class _SimNode:
    name: str
    labels: Mapping[str, str]
    cpus: float
    memory_bytes: int
    cached: set[str]
    gpus: list[_SimGpu]
    reachable: bool = True
    frozen_at: float | None = None  # telemetry stopped: readings keep this time


class SimulatedInventory:
    """Same interface as the NVML inventory (`read()`), plus the knobs a simulation needs."""

    def __init__(self, spec: Mapping[str, Any], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._nodes: dict[str, _SimNode] = {}
        self._gpu_node: dict[str, _SimNode] = {}
        self._next_pid = _FIRST_REPLICA_PID
        nodes = spec.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise SpecError("nodes: expected a non-empty list of nodes")
        for i, entry in enumerate(nodes):
            self._add_nodes(entry, f"nodes[{i}]")

    @classmethod
    def from_yaml(cls, path: str | Path, clock: Callable[[], float] = time.time) -> SimulatedInventory:
        spec = yaml.safe_load(Path(path).read_text())
        if not isinstance(spec, dict):
            raise SpecError(f"{path}: expected a mapping with a 'nodes' list")
        return cls(spec, clock)

    def _add_nodes(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise SpecError(f"{where}.name: expected a node name")
        count = entry.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise SpecError(f"{where}.count: expected an integer >= 1, got {count!r}")
        names = [entry["name"]] if count is None else [f"{entry['name']}-{n}" for n in range(count)]
        gpu_specs = self._gpu_specs(entry.get("gpus", []), f"{where}.gpus")
        labels = entry.get("labels", {})
        if not isinstance(labels, dict):
            raise SpecError(f"{where}.labels: expected a mapping of label: value")
        cached = entry.get("cached_versions", [])
        if not isinstance(cached, list):
            raise SpecError(f"{where}.cached_versions: expected a list of version ids")
        for name in names:
            if name in self._nodes:
                raise SpecError(f"{where}.name: node {name!r} is declared twice")
            gpus = [_SimGpu(i, f"GPU-sim-{name}-{i}", g[0], g[1], g[2]) for i, g in enumerate(gpu_specs)]
            node = _SimNode(name, frozen_labels({str(k): str(v) for k, v in labels.items()}),
                            float(entry.get("cpus", 0)), parse_bytes(entry.get("memory", 0), f"{where}.memory"),
                            {str(v) for v in cached}, gpus)
            self._nodes[name] = node
            for gpu in gpus:
                self._gpu_node[gpu.uuid] = node

    @staticmethod
    def _gpu_specs(value: Any, where: str) -> list[tuple[str, int, tuple[int, int]]]:
        if isinstance(value, dict):
            count = value.get("count", 1)
            if not isinstance(count, int) or count < 0:
                raise SpecError(f"{where}.count: expected an integer >= 0, got {count!r}")
            value = [value] * count
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected {{count, name, memory, compute_capability}} or a list of GPUs")
        specs = []
        for i, gpu in enumerate(value):
            if not isinstance(gpu, dict) or "memory" not in gpu:
                raise SpecError(f"{where}[{i}].memory: expected a size like '80GiB'")
            specs.append((str(gpu.get("name", "Simulated GPU")), parse_bytes(gpu["memory"], f"{where}[{i}].memory"),
                          parse_compute_capability(gpu.get("compute_capability", "8.0"),
                                                   f"{where}[{i}].compute_capability")))
        return specs

    # --- readings --------------------------------------------------------------

    def read(self) -> InventorySnapshot:
        now = self._clock()
        return InventorySnapshot(tuple(self.node_reading(name, now) for name in self._nodes), now)

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def node_reading(self, name: str, now: float | None = None) -> NodeReading:
        node = self._nodes[name]
        at = self._reading_time(node, now)
        gpus = tuple(self._gpu_reading(node, g, at) for g in node.gpus if g.present)
        return NodeReading(name, gpus, at, node.labels, node.cpus, node.memory_bytes,
                           frozenset(node.cached), node.reachable)

    def gpu_reading(self, uuid: str, now: float | None = None) -> GpuReading | None:
        """One GPU (None once it is gone): the simulation's per-change fast path."""
        node = self._gpu_node[uuid]
        gpu = node.gpus[int(uuid.rsplit("-", 1)[1])]
        return self._gpu_reading(node, gpu, self._reading_time(node, now)) if gpu.present else None

    def node_of(self, uuid: str) -> str:
        return self._gpu_node[uuid].name

    def _reading_time(self, node: _SimNode, now: float | None) -> float:
        return node.frozen_at if node.frozen_at is not None else (self._clock() if now is None else now)

    @staticmethod
    def _gpu_reading(node: _SimNode, gpu: _SimGpu, at: float) -> GpuReading:
        used = min(gpu.total, _IDLE_USED_BYTES + sum(gpu.foreign.values())
                   + sum(b for _, b, _ in gpu.replicas.values()))
        util = min(100.0, sum(u for _, _, u in gpu.replicas.values()))
        processes = tuple(GpuProcess(pid, b, rid) for rid, (pid, b, _) in gpu.replicas.items()) + \
            tuple(GpuProcess(pid, b, "foreign") for pid, b in gpu.foreign.items())
        return GpuReading(
            index=gpu.index, uuid=gpu.uuid, name=gpu.name, memory_total_bytes=gpu.total,
            memory_used_bytes=used, memory_free_bytes=gpu.total - used, compute_capability=gpu.capability,
            read_at=at, utilization_percent=util, memory_utilization_percent=100.0 * used / gpu.total,
            temperature_c=30.0 + 0.5 * util, power_w=60.0 + 3.0 * util, processes=processes, health=gpu.health,
        )

    def _gpu(self, uuid: str) -> _SimGpu:
        node = self._gpu_node.get(uuid)
        if node is None:
            raise KeyError(f"no simulated GPU {uuid!r}")
        return node.gpus[int(uuid.rsplit("-", 1)[1])]

    # --- load that follows placed replicas --------------------------------------

    def start_replica(self, replica_id: str, gpu_uuids: tuple[str, ...], memory_bytes: int,
                      utilization_percent: float = 0.0) -> None:
        """The replica's process allocates `memory_bytes` on each of its GPUs."""
        pid = self._next_pid
        self._next_pid += 1
        for uuid in gpu_uuids:
            self._gpu(uuid).replicas[replica_id] = (pid, memory_bytes, utilization_percent)

    def set_load(self, replica_id: str, gpu_uuids: tuple[str, ...], utilization_percent: float,
                 memory_bytes: int | None = None) -> None:
        for uuid in gpu_uuids:
            gpu = self._gpu(uuid)
            pid, held, _ = gpu.replicas[replica_id]
            gpu.replicas[replica_id] = (pid, held if memory_bytes is None else memory_bytes, utilization_percent)

    def stop_replica(self, replica_id: str, gpu_uuids: tuple[str, ...]) -> None:
        for uuid in gpu_uuids:
            self._gpu(uuid).replicas.pop(replica_id, None)

    def add_cached_version(self, node: str, version: str) -> None:
        self._nodes[node].cached.add(version)

    def drop_cached_version(self, node: str, version: str) -> None:
        self._nodes[node].cached.discard(version)

    # --- faults -----------------------------------------------------------------

    def inject_xid(self, uuid: str, xid: int) -> None:
        """An XID event; application XIDs (13, 31, 43, ...) leave the GPU healthy."""
        gpu = self._gpu(uuid)
        if xid_marks_unhealthy(xid):
            gpu.health = gpu.health.with_problem(f"XID {xid}")

    def inject_ecc_error(self, uuid: str) -> None:
        gpu = self._gpu(uuid)
        gpu.health = gpu.health.with_problem("double-bit ECC error")

    def remove_gpu(self, uuid: str) -> None:
        """The GPU falls off the bus: it vanishes from readings, as with NVML."""
        self._gpu(uuid).present = False

    def take_memory(self, uuid: str, memory_bytes: int, pid: int = 4242) -> None:
        """A process the platform did not start allocates memory on the GPU."""
        self._gpu(uuid).foreign[pid] = memory_bytes

    def freeze_node(self, node: str, at: float | None = None) -> None:
        """Telemetry from the node stops: its readings keep their last time and grow stale."""
        self._nodes[node].frozen_at = self._clock() if at is None else at

    def set_reachable(self, node: str, reachable: bool) -> None:
        self._nodes[node].reachable = reachable

    def clear_faults(self, uuid: str) -> None:
        gpu = self._gpu(uuid)
        gpu.health, gpu.present = GpuHealth(), True
        gpu.foreign.clear()
        node = self._gpu_node[uuid]
        node.frozen_at = None
