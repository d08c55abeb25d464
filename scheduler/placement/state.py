"""The cluster as placement sees it, indexed so one decision needs no pass over every GPU.

GPUs that can take work sit in a list sorted by effective free memory (the
smaller of live free memory minus what starting replicas will take, and total
minus everything promised, less the safety margin); each model version has
one more such list for the GPUs on nodes holding its snapshot. A decision
starts at the first GPU with enough memory and walks in the strategy's order.
Memory fit is the only positive term that changes along a walk (utilization
and anti-affinity only subtract, locality is fixed per list), so the walk
stops as soon as no GPU further on can beat the best one found.

`ClusterState.place` gives the same answer as scoring every GPU
(`evaluate_all`, which `explain` uses; the tests compare the two).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.placement.model import (
    NoFit,
    Placement,
    ReplicaRequest,
    ReplicaState,
    Rung,
    RunningReplica,
    ScoreTerms,
)
from scheduler.placement.policy import Policy, Strategy
from scheduler.telemetry.base import GpuReading, InventorySnapshot, NodeReading

# Filter names, as explain and NoFit report them.
UNREACHABLE = "node unreachable"
UNHEALTHY = "unhealthy GPU"
MIG = "MIG enabled"
STALE = "stale telemetry"
CAPABILITY = "compute capability"
LABELS = "node labels"
CPUS = "cpus"
STARTING = "replica starting on GPU"
MEMORY_LIVE = "memory (live telemetry)"
MEMORY_PROMISED = "memory (promised to replicas)"
TOO_FEW = "too few eligible GPUs on node"

_BAND_PERCENT = 5.0
_COUNTS_FOR_AFFINITY = frozenset({ReplicaState.STARTING, ReplicaState.READY})
_NO_SLEEPER = ("", 0)

Key = tuple[int, int]  # (effective free bytes, the GPU's tie order)
# Breaks ties between equal scores, higher wins: the candidate whose last GPU comes first in the
# strategy's walk order (pack: least free first; spread: most free first; then the tie order).
Rank = tuple[int, int]


def _tie_order(ordinal: int) -> int:
    """A fixed pseudo-random order of GPUs (a bijection of the ordinal), so GPUs with equal free
    memory are not walked node by node: replicas of one model then do not queue behind each other."""
    return (ordinal * 2654435761) % 2**32


class _Index:
    """GPUs sorted by key, one list per (compute capability, utilization band): a walk reads
    only the lists of capable GPUs and bounds each band by its least busy penalty."""

    __slots__ = ("bands", "lists")

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.lists: dict[tuple[int, int], list[list[Key]]] = {}

    def add(self, gpu: _Gpu) -> None:
        assert gpu.key is not None
        bisect.insort(self.lists.setdefault(gpu.slot[0], [[] for _ in range(self.bands)])[gpu.slot[1]], gpu.key)

    def remove(self, gpu: _Gpu) -> None:
        assert gpu.key is not None
        index = self.lists[gpu.slot[0]][gpu.slot[1]]
        del index[bisect.bisect_left(index, gpu.key)]

    def capable(self, min_capability: tuple[int, int]) -> list[list[list[Key]]]:
        return [bands for capability, bands in self.lists.items() if capability >= min_capability]


class _Node:
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
        self.gpus: list[_Gpu] = []
        self.max_free = -1  # the most effective free memory of any indexed GPU: first fit skips full nodes
        self.kth: dict[int, tuple[int, int]] = {}  # k -> its entry in ClusterState._kth[k]

    def indexed_frees(self) -> list[int]:
        """Effective free memory of the GPUs that can take work, most first."""
        return sorted((g.key[0] for g in self.gpus if g.key is not None), reverse=True)


class _Gpu:
    __slots__ = ("capability", "healthy", "key", "live_free", "mig", "models", "node", "order", "ordinal",
                 "promised_all", "promised_starting", "read_at", "sleeping", "slot", "starting", "total", "utilization",
                 "uuid")

    def __init__(self, reading: GpuReading, node: _Node, ordinal: int) -> None:
        self.ordinal = ordinal
        self.order = _tie_order(ordinal)
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


class ClusterState:
    """Mutable, indexed view of inventory + replicas. `place` never mutates it."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._nodes: dict[str, _Node] = {}
        self._gpus: dict[str, _Gpu] = {}
        self._by_order: dict[int, _Gpu] = {}
        # Sorted lists by utilization band: band 0 is at or under the busy threshold (no penalty),
        # then bands of _BAND_PERCENT each; a walk bounds each band by its least penalty.
        threshold = self.policy.utilization_threshold_percent
        hot_bands = math.floor((100.0 - threshold) / _BAND_PERCENT) + 1
        self._band_top = [0.0] + [self._busy_penalty(threshold + i * _BAND_PERCENT) for i in range(hot_bands)]
        self._index = _Index(len(self._band_top))  # every GPU that can take work
        self._local_index: dict[str, _Index] = {}  # version -> those GPUs on nodes with its snapshot
        self._cached_on: Counter[str] = Counter()  # version -> nodes holding its snapshot
        self._cached_nodes: dict[str, set[str]] = {}  # version -> names of those nodes
        # Multi-GPU replicas walk nodes: k -> sorted (k-th most free memory of a node's GPUs, node ordinal)
        self._kth: dict[int, list[tuple[int, int]]] = {}
        self._nodes_by_ordinal: dict[int, _Node] = {}
        self._model_replicas: Counter[str] = Counter()  # model -> starting + ready replicas
        self._capable: dict[tuple[tuple[int, int], tuple[tuple[str, str], ...]], int] = {}  # -> nodes
        self._replicas: dict[str, RunningReplica] = {}
        self._sleeping: dict[str, set[str]] = {}  # version -> sleeping replica ids
        self._next_node = 0
        self._next_gpu = 0
        self._reference_bytes = 1  # the largest GPU seen: scales memory fit to [0, 1]

    @classmethod
    def build(cls, snapshot: InventorySnapshot, running: Iterable[RunningReplica] = (),
              policy: Policy | None = None) -> ClusterState:
        state = cls(policy)
        for node in snapshot.nodes:
            state.set_node(node)
        for replica in running:
            state.add_replica(replica)
        return state

    # --- keeping the view current -------------------------------------------------

    def set_node(self, reading: NodeReading) -> None:
        """Add a node or replace its readings; GPUs missing from the reading are gone."""
        self._capable.clear()
        node = self._nodes.get(reading.name)
        if node is None:
            node = self._nodes[reading.name] = _Node(reading, self._next_node)
            self._nodes_by_ordinal[node.ordinal] = node
            self._next_node += 1
        node.labels, node.read_at, node.reachable, node.cpus = (
            reading.labels, reading.read_at, reading.reachable, reading.cpus)
        present = {g.uuid for g in reading.gpus}
        for gone in [g for g in node.gpus if g.uuid not in present]:
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
            gpu = _Gpu(reading, node, self._next_gpu)
            self._next_gpu += 1
            self._gpus[gpu.uuid] = self._by_order[gpu.order] = gpu
            self._capable.clear()
            node.gpus.append(gpu)
            for replica in self._replicas.values():
                if gpu.uuid in replica.gpu_uuids:
                    self._account_gpu(gpu, replica, +1)
        else:
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
            local = self._local_index.setdefault(version, _Index(len(self._band_top)))
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
    def _account_gpu(gpu: _Gpu, replica: RunningReplica, sign: int) -> None:
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

    def _effective_free(self, gpu: _Gpu) -> int:
        margin = int(gpu.total * self.policy.memory_margin_fraction)
        return min(gpu.live_free - gpu.promised_starting, gpu.total - gpu.promised_all) - margin

    def _refresh_node(self, node: _Node) -> None:
        frees = node.indexed_frees()
        node.max_free = frees[0] if frees else -1
        for k, index in self._kth.items():
            old = node.kth.pop(k, None)
            if old is not None:
                del index[bisect.bisect_left(index, old)]
            if len(frees) >= k:
                node.kth[k] = entry = (frees[k - 1], node.ordinal)
                bisect.insort(index, entry)

    def _kth_index(self, k: int) -> list[tuple[int, int]]:
        index = self._kth.get(k)
        if index is None:
            index = self._kth[k] = []
            for node in self._nodes.values():
                frees = node.indexed_frees()
                if len(frees) >= k:
                    node.kth[k] = entry = (frees[k - 1], node.ordinal)
                    index.append(entry)
            index.sort()
        return index

    def _unindex(self, gpu: _Gpu) -> None:
        if gpu.key is None:
            return
        self._index.remove(gpu)
        for version in gpu.node.cached:
            self._local_index[version].remove(gpu)
        gpu.key = None
        self._refresh_node(gpu.node)

    def _reindex(self, gpu: _Gpu) -> None:
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

    # --- filters and scores, shared by the walk and the full evaluation -----------

    def node_failures(self, node: _Node, request: ReplicaRequest, now: float) -> list[str]:
        failed = []
        if not node.reachable:
            failed.append(UNREACHABLE)
        if now - node.read_at > self.policy.max_telemetry_age_s:
            failed.append(STALE)
        if request.node_labels and any(node.labels.get(k) != v for k, v in request.node_labels.items()):
            failed.append(LABELS)
        if request.cpus and node.cpus and node.cpus - node.cpus_promised < request.cpus:
            failed.append(CPUS)
        return failed

    def gpu_failures(self, gpu: _Gpu, request: ReplicaRequest, now: float, wake: bool = False) -> list[str]:
        """Every filter this GPU fails. `wake`: the candidate wakes this version's sleeping
        instance here, so the memory that instance holds counts as free."""
        failed = []
        if not gpu.healthy:
            failed.append(UNHEALTHY)
        if gpu.mig:
            failed.append(MIG)
        if now - gpu.read_at > self.policy.max_telemetry_age_s:
            failed.append(STALE)
        if gpu.capability < request.min_compute_capability:
            failed.append(CAPABILITY)
        if gpu.starting:
            failed.append(STARTING)
        margin = int(gpu.total * self.policy.memory_margin_fraction)
        held = gpu.sleeping.get(request.version, _NO_SLEEPER)[1] if wake else 0
        room = request.gpu_memory_bytes + margin - held
        if gpu.live_free - gpu.promised_starting < room:
            failed.append(MEMORY_LIVE)
        if gpu.total - gpu.promised_all < room:
            failed.append(MEMORY_PROMISED)
        return failed

    def _fit(self, free: int, need: int) -> float:
        strategy = self.policy.strategy
        if strategy is Strategy.FIRST_FIT:
            return 0.0
        leftover = (free - need) / self._reference_bytes
        return 1.0 - leftover if strategy is Strategy.PACK else leftover

    def _busy_penalty(self, utilization: float) -> float:
        threshold = self.policy.utilization_threshold_percent
        over = max(0.0, min(utilization, 100.0) - threshold) / (100.0 - threshold)
        return -self.policy.weight_utilization * over if over else 0.0

    def _node_ok(self, node: _Node, request: ReplicaRequest, now: float) -> bool:
        """node_failures(...) == [], without building the list (the walk's hot path)."""
        if not node.reachable or now - node.read_at > self.policy.max_telemetry_age_s:
            return False
        if request.node_labels and any(node.labels.get(k) != v for k, v in request.node_labels.items()):
            return False
        return not (request.cpus and node.cpus and node.cpus - node.cpus_promised < request.cpus)

    def _gpu_ok(self, gpu: _Gpu, request: ReplicaRequest, now: float) -> bool:
        """gpu_failures(...) == [] for an indexed GPU (healthy, no MIG), without the list."""
        if gpu.starting or now - gpu.read_at > self.policy.max_telemetry_age_s:
            return False
        if gpu.capability < request.min_compute_capability:
            return False
        room = request.gpu_memory_bytes + int(gpu.total * self.policy.memory_margin_fraction)
        return gpu.live_free - gpu.promised_starting >= room and gpu.total - gpu.promised_all >= room

    def _even_share(self, request: ReplicaRequest) -> int:
        """Replicas of the model per node under an even spread over the nodes that could run it;
        anti-affinity counts only replicas above it, so a model on every node is not penalized
        everywhere. Capable: a GPU with the compute capability and the labels (cached by both)."""
        key = (request.min_compute_capability, tuple(sorted(request.node_labels.items())))
        capable = self._capable.get(key)
        if capable is None:
            capable = self._capable[key] = sum(
                1 for n in self._nodes.values()
                if all(n.labels.get(k) == v for k, v in key[1])
                and any(g.capability >= key[0] for g in n.gpus)) if request.gpu_count else len(self._nodes)
        return self._model_replicas.get(request.model, 0) // max(1, capable)

    def _affinity_penalty(self, node: _Node, gpus: list[_Gpu], model: str, share: int) -> float:
        policy = self.policy
        same_gpu = policy.penalty_same_gpu if any(g.models.get(model) for g in gpus) else 0.0
        return policy.penalty_same_node * max(0, node.models.get(model, 0) - share) + same_gpu

    def _terms(self, node: _Node, gpus: list[_Gpu], request: ReplicaRequest, share: int | None = None
               ) -> tuple[float, float, float, float, Rung, str | None]:
        """The four weighted terms, the rung and the sleeper woken, for one candidate."""
        policy = self.policy
        wakes = self._sleeper_on(gpus, request) if gpus else None
        fit = utilization = 0.0
        if gpus:
            need = request.gpu_memory_bytes
            if wakes is None:
                fit = min(self._fit(self._effective_free(g), need) for g in gpus)
            else:
                fit = min(self._fit(self._effective_free(g) + g.sleeping[request.version][1], need) for g in gpus)
            utilization = self._busy_penalty(sum(g.utilization for g in gpus) / len(gpus))
        if wakes is not None:
            rung = Rung.SLEEPING
        elif request.version in node.cached:
            rung = Rung.LOCAL_SNAPSHOT
        else:
            rung = self._generic_rung(request.version)
        penalty = self._affinity_penalty(node, gpus, request.model,
                                         self._even_share(request) if share is None else share)
        affinity = -penalty if penalty else 0.0
        return policy.weight_memory_fit * fit, utilization, policy.rung_points(rung), affinity, rung, wakes

    def score(self, node: _Node, gpus: list[_Gpu], request: ReplicaRequest) -> Placement:
        """Score one candidate (a node and the GPUs it would give); filters are checked elsewhere."""
        fit, utilization, locality, affinity, rung, wakes = self._terms(node, gpus, request)
        return Placement(node.name, tuple(g.uuid for g in gpus), rung,
                         ScoreTerms(fit, utilization, locality, affinity), wakes)

    def _sleeper_on(self, gpus: list[_Gpu], request: ReplicaRequest) -> str | None:
        """The sleeping instance of this version that holds exactly these GPUs, if any."""
        sleepers = {g.sleeping.get(request.version, _NO_SLEEPER)[0] for g in gpus}
        if len(sleepers) != 1 or "" in sleepers:
            return None
        replica_id = sleepers.pop()
        return replica_id if len(self._replicas[replica_id].gpu_uuids) == len(gpus) else None

    def _sleeper_candidates(self, request: ReplicaRequest, now: float) -> list[tuple[Placement, Rank]]:
        """Waking a sleeping instance of this version, where its GPUs pass every filter."""
        found = []
        for replica_id in sorted(self._sleeping.get(request.version, ())):
            sleeper = self._replicas[replica_id]
            gpus = [self._gpus[u] for u in sleeper.gpu_uuids if u in self._gpus]
            node = self._nodes.get(sleeper.node)
            if node is None or len(gpus) != request.gpu_count or len(gpus) != len(sleeper.gpu_uuids):
                continue
            if self.node_failures(node, request, now) or any(self.gpu_failures(g, request, now, wake=True)
                                                             for g in gpus):
                continue
            found.append((self.score(node, gpus, request), self._rank(gpus)))
        return found

    def _rank(self, gpus: list[_Gpu]) -> Rank:
        keys = [(self._effective_free(g), g.order) for g in gpus]
        if self.policy.strategy is Strategy.SPREAD:
            return min(keys)
        free, order = max(keys)
        return (-free, -order)

    def _generic_rung(self, version: str) -> Rung:
        return Rung.PEER_SNAPSHOT if self._cached_on.get(version) else Rung.ORIGIN

    def _pick_on_node(self, node: _Node, request: ReplicaRequest, now: float) -> list[_Gpu] | None:
        """The k GPUs a node would give, in the strategy's order; None if it has fewer eligible."""
        if self.node_failures(node, request, now):
            return None
        eligible = [g for g in node.gpus if not self.gpu_failures(g, request, now)]
        if len(eligible) < request.gpu_count:
            return None
        if self.policy.strategy is Strategy.FIRST_FIT:
            eligible.sort(key=lambda g: g.ordinal)
        else:
            eligible.sort(key=lambda g: (self._effective_free(g), g.order),
                          reverse=self.policy.strategy is Strategy.SPREAD)
        return eligible[: request.gpu_count]

    # --- deciding -------------------------------------------------------------------

    def place(self, request: ReplicaRequest, now: float, count_refusals: bool = True) -> Placement | NoFit:
        """The best candidate, or NoFit. `count_refusals=False` skips the full pass that counts
        which filter failed where (the simulation's refusals need only the fact)."""
        if request.gpu_count == 0:
            candidates = [(self.score(n, [], request), (0, -n.ordinal)) for n in self._nodes.values()
                          if not self.node_failures(n, request, now)]
            if not candidates:
                return self.no_fit(request, now) if count_refusals else NoFit({}, 0, "nothing fits")
            if self.policy.strategy is Strategy.FIRST_FIT:
                return max(candidates, key=lambda c: c[1])[0]
            return max(candidates, key=lambda c: (c[0].score, c[1]))[0]
        found = self._first_fit(request, now) if self.policy.strategy is Strategy.FIRST_FIT \
            else self._best(request, now)
        if found is not None:
            return found
        return self.no_fit(request, now) if count_refusals else NoFit({}, 0, f"nothing fits {request.model}")

    def _first_fit(self, request: ReplicaRequest, now: float) -> Placement | None:
        need, k = request.gpu_memory_bytes, request.gpu_count
        sleepers = self._sleeper_candidates(request, now)
        if sleepers:  # waking beats starting, whatever the policy
            return min(sleepers, key=lambda c: self._gpus[c[0].gpu_uuids[0]].ordinal)[0]
        for node in self._nodes.values():
            if node.max_free < need or self.node_failures(node, request, now):
                continue
            chosen = []
            for gpu in node.gpus:
                if gpu.key is not None and gpu.key[0] >= need and not self.gpu_failures(gpu, request, now):
                    chosen.append(gpu)
                    if len(chosen) == k:
                        return self.score(node, chosen, request)
        return None

    def _best(self, request: ReplicaRequest, now: float) -> Placement | None:
        best: list[Any] = []  # [score, rank, node, gpus] of the best candidate so far
        for candidate, rank in self._sleeper_candidates(request, now):  # the highest points, few of them
            gpus = [self._gpus[u] for u in candidate.gpu_uuids]
            self._consider(best, candidate.score, rank, self._nodes[candidate.node], gpus)
        if request.gpu_count > 1:
            self._best_on_nodes(request, now, best)
            return self.score(best[2], best[3], request) if best else None
        policy = self.policy
        local = self._local_index.get(request.version)
        budget = [policy.max_walk]  # GPUs this decision may walk past, over all lists
        if local:
            self._walk(local, policy.points_local_snapshot, request, now, best, budget, skip_cached=False)
        self._walk(self._index, policy.rung_points(self._generic_rung(request.version)), request, now, best, budget,
                   skip_cached=local is not None)
        return self.score(best[2], best[3], request) if best else None

    @staticmethod
    def _consider(best: list[Any], score: float, rank: Rank, node: _Node, gpus: list[_Gpu]) -> None:
        if not best:
            best.extend((score, rank, node, gpus))
        elif (score, rank) > (best[0], best[1]):
            best[:] = (score, rank, node, gpus)

    def _walk(self, index: _Index, points: float, request: ReplicaRequest, now: float,
              best: list[Any], budget: list[int], skip_cached: bool) -> None:
        """Walk sorted lists from the first GPU with enough memory, in the strategy's order, until
        no GPU further on can beat the best so far. A GPU's bound is its memory fit + its band's
        least penalty + `points`, summed like a score so float rounding keeps bound >= score; at
        a bound equal to the best score, a GPU ranked below the best ends the walk too, since
        every later one ranks lower still. `skip_cached`: GPUs on nodes holding the version's
        snapshot were walked already. Once a candidate is found, `budget` caps the walk."""
        need, weight, version = request.gpu_memory_bytes, self.policy.weight_memory_fit, request.version
        spread = self.policy.strategy is Strategy.SPREAD
        reference = self._reference_bytes
        model, share = request.model, self._even_share(request)
        per_node, same_gpu = self.policy.penalty_same_node, self.policy.penalty_same_gpu
        by_order = self._by_order

        def rank(key: Key) -> Rank:
            return key if spread else (-key[0], -key[1])

        def keys(keys_sorted: list[Key]) -> Iterable[Key]:
            start = bisect.bisect_left(keys_sorted, (need, -1))
            positions = range(len(keys_sorted) - 1, start - 1, -1) if spread else range(start, len(keys_sorted))
            return (keys_sorted[i] for i in positions)

        capable = index.capable(request.min_compute_capability)
        if request.gpu_count == 1:
            for bands in capable:
                for band, keys_sorted in enumerate(bands):
                    top = self._band_top[band]
                    for key in keys(keys_sorted):
                        gpu = by_order[key[1]]
                        if best:
                            budget[0] -= 1
                            if budget[0] < 0:
                                return
                            # _fit, inlined: the same float operations, so the same value
                            leftover = (key[0] - need) / reference
                            bound = weight * (leftover if spread else 1.0 - leftover) + top + points + 0.0
                            if bound < best[0] or (bound == best[0] and rank(key) < best[1]):
                                break
                            # anti-affinity is known before scoring: skip what it already rules out
                            # (_affinity_penalty, inlined)
                            on_node, on_gpu = gpu.node.models.get(model, 0), gpu.models.get(model)
                            if on_node > share or on_gpu:
                                penalty = per_node * max(0, on_node - share) + (same_gpu if on_gpu else 0.0)
                                if bound - penalty < best[0]:
                                    continue
                        if skip_cached and version in gpu.node.cached:
                            continue
                        if self._gpu_ok(gpu, request, now) and self._node_ok(gpu.node, request, now):
                            terms = self._terms(gpu.node, [gpu], request, share)
                            self._consider(best, terms[0] + terms[1] + terms[2] + terms[3], rank(key), gpu.node,
                                           [gpu])
            return

    def _best_on_nodes(self, request: ReplicaRequest, now: float, best: list[Any]) -> None:
        """Several GPUs per replica: score whole nodes, those holding the version's snapshot
        first, then the nodes whose k-th freest GPU has room, tightest first for pack. Exact
        while the candidates fit in max_walk / 64 nodes; after that, the best of those."""
        k, share, need = request.gpu_count, self._even_share(request), request.gpu_memory_bytes
        budget = max(1, self.policy.max_walk // 64)
        index = self._kth_index(k)
        start = bisect.bisect_left(index, (request.gpu_memory_bytes, -1))
        spread = self.policy.strategy is Strategy.SPREAD
        positions = range(len(index) - 1, start - 1, -1) if spread else range(start, len(index))
        local = sorted(self._cached_nodes.get(request.version, ()))
        nodes = itertools.chain((self._nodes[n] for n in local), (self._nodes_by_ordinal[index[i][1]] for i in positions))
        for node in nodes:
            if best:
                budget -= 1
                if budget < 0:
                    return
            if not self._node_ok(node, request, now):
                continue
            # _pick_on_node's choice, from the indexes: an eligible GPU is an indexed one that passes _gpu_ok
            eligible = [g for g in node.gpus if g.key is not None and g.key[0] >= need and self._gpu_ok(g, request, now)]
            if len(eligible) < k:
                continue
            eligible.sort(key=lambda g: g.key, reverse=spread)  # type: ignore[arg-type, return-value]
            picked = eligible[:k]
            if self._sleeper_on(picked, request) is not None:
                continue  # waking a sleeper was scored already
            terms = self._terms(node, picked, request, share)
            self._consider(best, terms[0] + terms[1] + terms[2] + terms[3], self._rank(picked), node, picked)

    # --- the full evaluation: explain, NoFit, and the tests' reference ---------------

    def evaluate_all(self, request: ReplicaRequest, now: float) -> tuple[list[Placement], Counter[str], int]:
        """Every candidate scored, best first, and how many GPUs failed each filter."""
        failures: Counter[str] = Counter()
        ranked: list[tuple[Placement, Rank]] = []
        considered = 0
        for node in self._nodes.values():
            node_failed = self.node_failures(node, request, now)
            if request.gpu_count == 0:
                failures.update(node_failed)
                if not node_failed:
                    ranked.append((self.score(node, [], request), (0, -node.ordinal)))
                continue
            eligible = []
            for gpu in node.gpus:
                considered += 1
                failed = list(dict.fromkeys(node_failed + self.gpu_failures(gpu, request, now)))
                failures.update(failed)
                if not failed:
                    eligible.append(gpu)
            if request.gpu_count == 1:
                ranked.extend((self.score(node, [g], request), self._rank([g])) for g in eligible
                              if self._sleeper_on([g], request) is None)
            elif len(eligible) >= request.gpu_count:
                picked = self._pick_on_node(node, request, now)
                assert picked is not None
                if self._sleeper_on(picked, request) is None:
                    ranked.append((self.score(node, picked, request), self._rank(picked)))
            elif eligible:
                failures[TOO_FEW] += 1
        if request.gpu_count:
            ranked.extend(self._sleeper_candidates(request, now))
        if self.policy.strategy is Strategy.FIRST_FIT:  # inventory order, waking a sleeper first
            ranked.sort(key=lambda c: (c[0].wakes is None, min(self._gpus[u].ordinal for u in c[0].gpu_uuids)
                                       if c[0].gpu_uuids else -c[1][1]))
        else:
            ranked.sort(key=lambda c: (c[0].score, c[1]), reverse=True)
        return [c for c, _ in ranked], failures, considered

    def no_fit(self, request: ReplicaRequest, now: float) -> NoFit:
        _, failures, considered = self.evaluate_all(request, now)
        if request.gpu_count:
            what = f"{request.gpu_count} GPU(s) with {request.gpu_memory_bytes / 2**30:.1f} GiB each"
        else:
            what = "a CPU-only replica"
        unit = "GPUs" if request.gpu_count else "nodes"
        reasons = ", ".join(f"{name} on {count} {'nodes' if name == TOO_FEW else unit}"
                            for name, count in failures.most_common())
        return NoFit(dict(failures), considered,
                     f"nothing fits {what} for {request.model}: {reasons or 'no nodes in the inventory'}")
