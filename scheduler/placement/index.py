"""The records placement keeps per node and per GPU, and the sorted lists a decision walks."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping

from scheduler.telemetry.base import GpuReading, NodeReading

Key = tuple[int, int]  # (effective free bytes, the GPU's tie order)
# Breaks ties between equal scores, higher wins: the candidate whose last GPU comes first in the
# strategy's walk order (pack: least free first; spread: most free first; then the tie order).
Rank = tuple[int, int]


def tie_order(ordinal: int) -> int:
    """A fixed pseudo-random order of GPUs (a bijection of the ordinal), so GPUs with equal free
    memory are not walked node by node: replicas of one model then do not queue behind each other."""
    return (ordinal * 2654435761) % 2**32


class GpuIndex:
    """GPUs sorted by key, one list per (compute capability, utilization band): a walk reads
    only the lists of capable GPUs and bounds each band by its least busy penalty."""

    __slots__ = ("bands", "lists")

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.lists: dict[tuple[int, int], list[list[Key]]] = {}

    def add(self, gpu: GpuEntry) -> None:
        assert gpu.key is not None
        bisect.insort(self.lists.setdefault(gpu.slot[0], [[] for _ in range(self.bands)])[gpu.slot[1]], gpu.key)

    def remove(self, gpu: GpuEntry) -> None:
        assert gpu.key is not None
        index = self.lists[gpu.slot[0]][gpu.slot[1]]
        del index[bisect.bisect_left(index, gpu.key)]

    def capable(self, min_capability: tuple[int, int]) -> list[list[list[Key]]]:
        return [bands for capability, bands in self.lists.items() if capability >= min_capability]


class NodeEntry:
    __slots__ = ("cached", "cpus", "cpus_promised", "gpus", "kth", "labels", "max_free", "models", "name", "ordinal",
                 "reachable", "read_at")

    def __init__(self, reading: NodeReading, ordinal: int) -> None:
        self.name = reading.name
        self.ordinal = ordinal
        self.labels: Mapping[str, str] = reading.labels
        self.read_at = reading.read_at
        self.reachable = reading.reachable
        self.cpus = reading.cpus
        self.cpus_promised = 0.0
        self.cached: frozenset[str] = frozenset()
        self.models: Counter[str] = Counter()
        self.gpus: list[GpuEntry] = []
        self.max_free = -1  # the most effective free memory of any indexed GPU: first fit skips full nodes
        # k -> (the capability it was filed under, its entry in ClusterState._kth)
        self.kth: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}

    def indexed_frees(self) -> list[int]:
        """Effective free memory of the GPUs that can take work, most first."""
        return sorted((g.key[0] for g in self.gpus if g.key is not None), reverse=True)


class GpuEntry:
    __slots__ = ("capability", "healthy", "key", "live_free", "mig", "models", "node", "order", "ordinal",
                 "promised_all", "promised_starting", "read_at", "sleeping", "slot", "starting", "total", "utilization",
                 "uuid")

    def __init__(self, reading: GpuReading, node: NodeEntry, ordinal: int) -> None:
        self.ordinal = ordinal
        self.order = tie_order(ordinal)
        self.uuid = reading.uuid
        self.node = node
        self.promised_all = 0
        self.promised_starting = 0
        self.starting = 0
        self.models: Counter[str] = Counter()
        self.sleeping: dict[str, tuple[str, int]] = {}  # version -> (replica_id, bytes held)
        self.key: Key | None = None  # None: not in the indexes (unhealthy, MIG, starting, unreachable)
        self.slot: tuple[tuple[int, int], int] = ((0, 0), 0)  # (capability, band) of the lists it is in
        self.read(reading)

    def read(self, reading: GpuReading) -> None:
        self.total = reading.memory_total_bytes
        self.live_free = reading.memory_free_bytes
        self.capability = reading.compute_capability
        self.healthy = reading.health.healthy
        self.mig = reading.mig_enabled
        self.read_at = reading.read_at
        self.utilization = reading.utilization_percent
