"""The node inventory: what every telemetry source reports, one shape for all.

Readings are frozen values with the time they were taken, so the scheduler can
tell a fresh reading from a stale one without asking the source again.
Memory is in bytes, utilization in percent (0-100), power in watts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

# XIDs an application causes (bad kernel, illegal address, a killed context):
# the GPU itself is fine. NVIDIA's k8s device plugin ignores the same ones.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


def xid_marks_unhealthy(xid: int) -> bool:
    """Whether a critical XID event means the GPU should take no new work."""
    return xid not in APPLICATION_XIDS


def frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy, so a frozen reading cannot change under the scheduler."""
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int
    name: str = ""


@dataclass(frozen=True)
class GpuHealth:
    """Healthy unless a non-application XID or an uncorrectable ECC error was seen."""

    healthy: bool = True
    reasons: tuple[str, ...] = ()

    def with_problem(self, reason: str) -> GpuHealth:
        return GpuHealth(healthy=False, reasons=(*self.reasons, reason))


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    compute_capability: tuple[int, int]
    read_at: float  # time.time() of the reading
    utilization_percent: float = 0.0
    memory_utilization_percent: float = 0.0
    temperature_c: float = 0.0
    power_w: float = 0.0
    mig_enabled: bool = False
    processes: tuple[GpuProcess, ...] = ()
    health: GpuHealth = GpuHealth()

    def age(self, now: float) -> float:
        return max(0.0, now - self.read_at)


@dataclass(frozen=True)
class NodeReading:
    """One machine: its GPUs, labels, CPU/memory and the weight snapshots on its disk."""

    name: str
    gpus: tuple[GpuReading, ...]
    read_at: float
    labels: Mapping[str, str] = field(default_factory=lambda: frozen_labels(None))
    cpus: float = 0.0
    memory_bytes: int = 0
    # Model version ids whose weights are in this node's snapshot cache.
    cached_versions: frozenset[str] = frozenset()
    reachable: bool = True

    def age(self, now: float) -> float:
        return max(0.0, now - self.read_at)


@dataclass(frozen=True)
class InventorySnapshot:
    nodes: tuple[NodeReading, ...]
    taken_at: float

    def node(self, name: str) -> NodeReading | None:
        return next((n for n in self.nodes if n.name == name), None)

    def gpu(self, uuid: str) -> tuple[NodeReading, GpuReading] | None:
        for node in self.nodes:
            for gpu in node.gpus:
                if gpu.uuid == uuid:
                    return node, gpu
        return None


class Inventory(Protocol):
    """A telemetry source: NVML on a GPU host, the simulated one elsewhere."""

    def read(self) -> InventorySnapshot: ...


_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class SpecError(ValueError):
    """A malformed inventory or request description; the message names the field."""


def parse_bytes(value: str | float, what: str = "size") -> int:
    """'80GiB', '512MB', 1024 -> bytes; a clear ValueError naming `what` otherwise."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: expected a size like '24GiB' or a byte count, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise SpecError(f"{what}: expected a size >= 0, got {value!r}")
        return int(value)
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise SpecError(f"{what}: expected a size like '24GiB', '512MB' or a byte count, got {value!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_compute_capability(value: str | float | tuple[int, int], what: str = "compute_capability") -> tuple[int, int]:
    """'8.0', 8.6, (9, 0) -> (major, minor)."""
    if isinstance(value, tuple):
        return (int(value[0]), int(value[1]))
    match = re.match(r"^\s*(\d+)\.(\d+)\s*$", str(value))
    if not match:
        raise SpecError(f"{what}: expected MAJOR.MINOR like '8.0', got {value!r}")
    return (int(match.group(1)), int(match.group(2)))
