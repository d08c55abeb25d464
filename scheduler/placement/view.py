"""The cluster as placement sees it, kept current: nodes, GPUs, replicas and the sorted lists
(index.py) a decision walks. `ClusterState` (state.py) adds the filters, scores and decisions.

A GPU that can take work is filed by its effective free memory (the smaller of live free memory
minus what starting replicas will take, and total minus everything promised, less the safety
margin) under (compute capability, utilization band), in the index of all GPUs and in that of
every version whose snapshot its node holds. Multi-GPU replicas walk nodes by the effective free
memory of their k-th freest GPU (`_kth`).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable
from typing import Self

from scheduler.placement.index import GpuEntry, GpuIndex, NodeEntry
from scheduler.placement.model import ReplicaState, RunningReplica
from scheduler.placement.policy import Policy
from scheduler.telemetry.base import GpuReading, InventorySnapshot, NodeReading

_BAND_PERCENT = 5.0
_COUNTS_FOR_AFFINITY = frozenset({ReplicaState.STARTING, ReplicaState.READY})


class ClusterView:
    """Mutable, indexed view of inventory + replicas."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._nodes: dict[str, NodeEntry] = {}
        self._gpus: dict[str, GpuEntry] = {}
        self._by_order: dict[int, GpuEntry] = {}
        # Sorted lists by utilization band: band 0 is at or under the busy threshold (no penalty),
        # then bands of _BAND_PERCENT each; a walk bounds each band by its least penalty.
        threshold = self.policy.utilization_threshold_percent
        hot_bands = math.floor((100.0 - threshold) / _BAND_PERCENT) + 1
        self._band_top = [0.0] + [self._busy_penalty(threshold + i * _BAND_PERCENT) for i in range(hot_bands)]
        self._index = GpuIndex(len(self._band_top))  # every GPU that can take work
        self._local_index: dict[str, GpuIndex] = {}  # version -> those GPUs on nodes with its snapshot
        self._cached_on: Counter[str] = Counter()  # version -> nodes holding its snapshot
        self._cached_nodes: dict[str, set[str]] = {}  # version -> names of those nodes
        # Multi-GPU replicas walk nodes: k -> sorted (k-th most free memory of a node's GPUs, node ordinal)
        # (k, the node's best compute capability) -> sorted (k-th most free memory, node ordinal)
        self._kth: dict[tuple[int, tuple[int, int]], list[tuple[int, int]]] = {}
        self._kth_sizes: set[int] = set()
        self._nodes_by_ordinal: dict[int, NodeEntry] = {}
        self._model_replicas: Counter[str] = Counter()  # model -> starting + ready replicas
        self._capable: dict[tuple[tuple[int, int], tuple[tuple[str, str], ...]], int] = {}  # -> nodes
        self._replicas: dict[str, RunningReplica] = {}
        self._sleeping: dict[str, set[str]] = {}  # version -> sleeping replica ids
        self._next_node = 0
        self._next_gpu = 0
        self._reference_bytes = 1  # the largest GPU seen: scales memory fit to [0, 1]

    @classmethod
    def build(cls, snapshot: InventorySnapshot, running: Iterable[RunningReplica] = (),
              policy: Policy | None = None) -> Self:
        state = cls(policy)
        for node in snapshot.nodes:
            state.set_node(node)
        for replica in running:
            state.add_replica(replica)
        return state

    # --- keeping the view current -------------------------------------------------

    def set_node(self, reading: NodeReading) -> None:
        """Add a node or replace its readings; GPUs missing from the reading are gone."""
        node = self._nodes.get(reading.name)
        if node is None:
            node = self._nodes[reading.name] = NodeEntry(reading, self._next_node)
            self._nodes_by_ordinal[node.ordinal] = node
            self._next_node += 1
            self._capable.clear()  # counts of nodes able to run a request: kept while nodes, labels
        elif node.labels != reading.labels:  # and GPUs (capabilities) stay the same
            self._capable.clear()
        node.labels, node.read_at, node.reachable, node.cpus = (
            reading.labels, reading.read_at, reading.reachable, reading.cpus)
        present = {g.uuid for g in reading.gpus}
        for gone in [g for g in node.gpus if g.uuid not in present]:
            self._capable.clear()
            self._unindex(gone)
            del self._gpus[gone.uuid], self._by_order[gone.order]
        node.gpus = [g for g in node.gpus if g.uuid in present]
        for gpu_reading in reading.gpus:
            self.update_gpu(reading.name, gpu_reading)
        self.set_cached_versions(reading.name, reading.cached_versions)
        for gpu in node.gpus:
            self._reindex(gpu)

    def update_gpu(self, node_name: str, reading: GpuReading) -> None:
        """One GPU's new reading (the simulation's fast path; set_node calls it too)."""
        node = self._nodes[node_name]
        gpu = self._gpus.get(reading.uuid)
        if gpu is None:
            gpu = GpuEntry(reading, node, self._next_gpu)
            self._next_gpu += 1
            self._gpus[gpu.uuid] = self._by_order[gpu.order] = gpu
            self._capable.clear()
            node.gpus.append(gpu)
            for replica in self._replicas.values():
                if gpu.uuid in replica.gpu_uuids:
                    self._account_gpu(gpu, replica, +1)
        else:
            if reading.compute_capability != gpu.capability:
                self._capable.clear()
            gpu.read(reading)
        self._reference_bytes = max(self._reference_bytes, gpu.total)
        self._reindex(gpu)

    def heartbeat(self, node_name: str, at: float) -> None:
        """The node reported and nothing changed: its readings are as of `at`."""
        node = self._nodes[node_name]
        node.read_at = at
        for gpu in node.gpus:
            gpu.read_at = at

    def set_cached_versions(self, node_name: str, versions: frozenset[str]) -> None:
        node = self._nodes[node_name]
        for version in node.cached - versions:
            local = self._local_index[version]
            for gpu in node.gpus:
                if gpu.key is not None:
                    local.remove(gpu)
            self._cached_on[version] -= 1
            self._cached_nodes[version].discard(node.name)
            if not self._cached_on[version]:
                del self._local_index[version], self._cached_on[version], self._cached_nodes[version]
        for version in versions - node.cached:
            local = self._local_index.setdefault(version, GpuIndex(len(self._band_top)))
            self._cached_on[version] += 1
            self._cached_nodes.setdefault(version, set()).add(node.name)
            for gpu in node.gpus:
                if gpu.key is not None:
                    local.add(gpu)
        node.cached = versions

    def add_replica(self, replica: RunningReplica) -> None:
        if replica.replica_id in self._replicas:
            self.remove_replica(replica.replica_id)
        self._replicas[replica.replica_id] = replica
        self._account(replica, +1)

    def remove_replica(self, replica_id: str) -> RunningReplica | None:
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            self._account(replica, -1)
        return replica

    def set_replica_state(self, replica_id: str, state: ReplicaState, gpu_memory_bytes: int | None = None) -> None:
        old = self._replicas[replica_id]
        memory = old.gpu_memory_bytes if gpu_memory_bytes is None else gpu_memory_bytes
        self.remove_replica(replica_id)
        self.add_replica(RunningReplica(old.replica_id, old.model, old.version, old.node, old.gpu_uuids,
                                        memory, state, old.cpus))

    def replica(self, replica_id: str) -> RunningReplica | None:
        return self._replicas.get(replica_id)

    def _account(self, replica: RunningReplica, sign: int) -> None:
        node = self._nodes.get(replica.node)
        if node is not None:
            node.cpus_promised += sign * replica.cpus
            if replica.state in _COUNTS_FOR_AFFINITY:
                node.models[replica.model] += sign
                self._model_replicas[replica.model] += sign
                if not node.models[replica.model]:
                    del node.models[replica.model]
        if replica.state is ReplicaState.SLEEPING:
            sleepers = self._sleeping.setdefault(replica.version, set())
            (sleepers.add if sign > 0 else sleepers.discard)(replica.replica_id)
        for uuid in replica.gpu_uuids:
            gpu = self._gpus.get(uuid)
            if gpu is not None:
                self._account_gpu(gpu, replica, sign)
                self._reindex(gpu)

    @staticmethod
    def _account_gpu(gpu: GpuEntry, replica: RunningReplica, sign: int) -> None:
        gpu.promised_all += sign * replica.gpu_memory_bytes
        if replica.state is ReplicaState.STARTING:
            gpu.promised_starting += sign * replica.gpu_memory_bytes
            gpu.starting += sign
        if replica.state in _COUNTS_FOR_AFFINITY:
            gpu.models[replica.model] += sign
        if replica.state is ReplicaState.SLEEPING:
            if sign > 0:
                gpu.sleeping[replica.version] = (replica.replica_id, replica.gpu_memory_bytes)
            else:
                gpu.sleeping.pop(replica.version, None)

    def _effective_free(self, gpu: GpuEntry) -> int:
        margin = int(gpu.total * self.policy.memory_margin_fraction)
        return min(gpu.live_free - gpu.promised_starting, gpu.total - gpu.promised_all) - margin

    def _refresh_node(self, node: NodeEntry) -> None:
        frees = node.indexed_frees()
        node.max_free = frees[0] if frees else -1
        capability = max((g.capability for g in node.gpus), default=(0, 0))
        for k in self._kth_sizes:
            old = node.kth.pop(k, None)
            if old is not None:
                index = self._kth[(k, old[0])]
                del index[bisect.bisect_left(index, old[1])]
            if len(frees) >= k:
                entry = (frees[k - 1], node.ordinal)
                node.kth[k] = (capability, entry)
                bisect.insort(self._kth.setdefault((k, capability), []), entry)

    def _kth_lists(self, k: int, min_capability: tuple[int, int]) -> list[list[tuple[int, int]]]:
        """Per node capability, the nodes that have k GPUs able to take work, by the k-th one's free memory."""
        if k not in self._kth_sizes:
            self._kth_sizes.add(k)
            for node in self._nodes.values():
                self._refresh_node(node)
        return [index for (size, capability), index in sorted(self._kth.items())
                if size == k and capability >= min_capability]

    def _unindex(self, gpu: GpuEntry) -> None:
        if gpu.key is None:
            return
        self._index.remove(gpu)
        for version in gpu.node.cached:
            self._local_index[version].remove(gpu)
        gpu.key = None
        self._refresh_node(gpu.node)

    def _reindex(self, gpu: GpuEntry) -> None:
        """Keep a GPU in the indexes while it can take work; a GPU with a replica starting
        cannot (one model server starting per GPU), so walks never meet it."""
        self._unindex(gpu)
        if gpu.healthy and not gpu.mig and not gpu.starting and gpu.node.reachable:
            gpu.key = (self._effective_free(gpu), gpu.order)
            over = gpu.utilization - self.policy.utilization_threshold_percent
            # band i >= 1 holds [threshold + (i-1)*5%, threshold + i*5%): its least penalty is exact
            # at its lower edge, where whole-percent readings often sit
            band = min(len(self._band_top) - 1, math.floor(over / _BAND_PERCENT) + 1) if over > 0 else 0
            gpu.slot = (gpu.capability, band)
            self._index.add(gpu)
            for version in gpu.node.cached:
                self._local_index[version].add(gpu)
            self._refresh_node(gpu.node)

    def _busy_penalty(self, utilization: float) -> float:
        threshold = self.policy.utilization_threshold_percent
        over = max(0.0, min(utilization, 100.0) - threshold) / (100.0 - threshold)
        return -self.policy.weight_utilization * over if over else 0.0
