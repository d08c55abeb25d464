"""The cluster as placement sees it, indexed so one decision needs no pass over every GPU.

GPUs that can take work sit in lists sorted by effective free memory (the
smaller of live free memory minus what starting replicas will take, and total
minus everything promised, less the safety margin), one per (compute
capability, utilization band); each model version has the same for the GPUs
on nodes holding its snapshot. A decision starts at the first GPU with enough
memory and walks in the strategy's order. Memory fit is the only positive term
that changes along a list (the band bounds the busy penalty, anti-affinity
only subtracts, locality is fixed per list), so a walk stops as soon as no GPU
further on can beat the best one found. Multi-GPU replicas walk nodes, by the
free memory of their k-th freest GPU.

`ClusterState.place` gives the same answer as scoring every candidate
(evaluate.py, which `explain` uses; the tests compare the two) until a
decision has walked `Policy.max_walk` GPUs past its first candidate.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from scheduler.placement import evaluate
from scheduler.placement.index import GpuEntry, GpuIndex, Key, NodeEntry, Rank
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

_BAND_PERCENT = 5.0
_COUNTS_FOR_AFFINITY = frozenset({ReplicaState.STARTING, ReplicaState.READY})
_NO_SLEEPER = ("", 0)

class ClusterState:
    """Mutable, indexed view of inventory + replicas. `place` never mutates it."""

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
            node = self._nodes[reading.name] = NodeEntry(reading, self._next_node)
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
            gpu = GpuEntry(reading, node, self._next_gpu)
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

    # --- filters and scores, shared by the walk and the full evaluation -----------

    def node_failures(self, node: NodeEntry, request: ReplicaRequest, now: float) -> list[str]:
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

    def gpu_failures(self, gpu: GpuEntry, request: ReplicaRequest, now: float, wake: bool = False) -> list[str]:
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

    def _node_ok(self, node: NodeEntry, request: ReplicaRequest, now: float) -> bool:
        """node_failures(...) == [], without building the list (the walk's hot path)."""
        if not node.reachable or now - node.read_at > self.policy.max_telemetry_age_s:
            return False
        if request.node_labels and any(node.labels.get(k) != v for k, v in request.node_labels.items()):
            return False
        return not (request.cpus and node.cpus and node.cpus - node.cpus_promised < request.cpus)

    def _gpu_ok(self, gpu: GpuEntry, request: ReplicaRequest, now: float) -> bool:
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

    def _affinity_penalty(self, node: NodeEntry, gpus: list[GpuEntry], model: str, share: int) -> float:
        policy = self.policy
        same_gpu = policy.penalty_same_gpu if any(g.models.get(model) for g in gpus) else 0.0
        return policy.penalty_same_node * max(0, node.models.get(model, 0) - share) + same_gpu

    def _terms(self, node: NodeEntry, gpus: list[GpuEntry], request: ReplicaRequest, share: int | None = None
               ) -> tuple[float, float, float, float, Rung, str | None]:
        """The four weighted terms, the rung and the sleeper woken, for one candidate."""
        policy = self.policy
        wakes = self.sleeper_on(gpus, request) if gpus else None
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

    def score(self, node: NodeEntry, gpus: list[GpuEntry], request: ReplicaRequest) -> Placement:
        """Score one candidate (a node and the GPUs it would give); filters are checked elsewhere."""
        fit, utilization, locality, affinity, rung, wakes = self._terms(node, gpus, request)
        return Placement(node.name, tuple(g.uuid for g in gpus), rung,
                         ScoreTerms(fit, utilization, locality, affinity), wakes)

    def sleeper_on(self, gpus: list[GpuEntry], request: ReplicaRequest) -> str | None:
        """The sleeping instance of this version that holds exactly these GPUs, if any."""
        sleepers = {g.sleeping.get(request.version, _NO_SLEEPER)[0] for g in gpus}
        if len(sleepers) != 1 or "" in sleepers:
            return None
        replica_id = sleepers.pop()
        return replica_id if len(self._replicas[replica_id].gpu_uuids) == len(gpus) else None

    def sleeper_candidates(self, request: ReplicaRequest, now: float) -> list[tuple[Placement, Rank]]:
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
            found.append((self.score(node, gpus, request), self.rank_of(gpus)))
        return found

    def rank_of(self, gpus: list[GpuEntry]) -> Rank:
        keys = [(self._effective_free(g), g.order) for g in gpus]
        if self.policy.strategy is Strategy.SPREAD:
            return min(keys)
        free, order = max(keys)
        return (-free, -order)

    def _generic_rung(self, version: str) -> Rung:
        return Rung.PEER_SNAPSHOT if self._cached_on.get(version) else Rung.ORIGIN

    def pick_on_node(self, node: NodeEntry, request: ReplicaRequest, now: float) -> list[GpuEntry] | None:
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
        sleepers = self.sleeper_candidates(request, now)
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
        for candidate, rank in self.sleeper_candidates(request, now):  # the highest points, few of them
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
    def _consider(best: list[Any], score: float, rank: Rank, node: NodeEntry, gpus: list[GpuEntry]) -> None:
        if not best:
            best.extend((score, rank, node, gpus))
        elif (score, rank) > (best[0], best[1]):
            best[:] = (score, rank, node, gpus)

    def _walk(self, index: GpuIndex, points: float, request: ReplicaRequest, now: float,
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

        # The lists in order of the best bound each could offer, so the likely winner comes
        # first and the other lists stop at their first key.
        lists = []
        for bands in index.capable(request.min_compute_capability):
            for band, keys_sorted in enumerate(bands):
                end = len(keys_sorted)
                start = bisect.bisect_left(keys_sorted, (need, -1))
                if start < end:
                    first = keys_sorted[end - 1 if spread else start][0]
                    leftover = (first - need) / reference
                    opening = weight * (leftover if spread else 1.0 - leftover) + self._band_top[band]
                    lists.append((opening, band, start, keys_sorted))
        lists.sort(key=lambda entry: -entry[0])
        for _, band, start, keys_sorted in lists:
            end = len(keys_sorted)
            top = self._band_top[band]
            i, step, stop = (end - 1, -1, start - 1) if spread else (start, 1, end)
            while i != stop:
                key = keys_sorted[i]
                i += step
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
                    self._consider(best, terms[0] + terms[1] + terms[2] + terms[3], rank(key), gpu.node, [gpu])

    def _best_on_nodes(self, request: ReplicaRequest, now: float, best: list[Any]) -> None:
        """Several GPUs per replica: score whole nodes, those holding the version's snapshot
        first, then the nodes whose k-th freest GPU has room, tightest first for pack. Exact
        while the candidates fit in max_walk / 64 nodes; after that, the best of those."""
        k, share, need = request.gpu_count, self._even_share(request), request.gpu_memory_bytes
        budget = max(1, self.policy.max_walk // 64)
        spread = self.policy.strategy is Strategy.SPREAD

        def in_order(index: list[tuple[int, int]]) -> Iterable[NodeEntry]:
            start = bisect.bisect_left(index, (need, -1))
            positions = range(len(index) - 1, start - 1, -1) if spread else range(start, len(index))
            return (self._nodes_by_ordinal[index[i][1]] for i in positions)

        local = (self._nodes[n] for n in sorted(self._cached_nodes.get(request.version, ())))
        nodes = itertools.chain(local, *(in_order(index) for index in self._kth_lists(k, request.min_compute_capability)))
        for node in nodes:
            if best:
                budget -= 1
                if budget < 0:
                    return
            if not self._node_ok(node, request, now):
                continue
            # pick_on_node's choice, from the indexes: an eligible GPU is an indexed one that passes _gpu_ok
            eligible = [g for g in node.gpus if g.key is not None and g.key[0] >= need and self._gpu_ok(g, request, now)]
            if len(eligible) < k:
                continue
            eligible.sort(key=lambda g: g.key, reverse=spread)  # type: ignore[arg-type, return-value]
            picked = eligible[:k]
            if self.sleeper_on(picked, request) is not None:
                continue  # waking a sleeper was scored already
            terms = self._terms(node, picked, request, share)
            self._consider(best, terms[0] + terms[1] + terms[2] + terms[3], self.rank_of(picked), node, picked)

    # --- the full evaluation (evaluate.py): explain, NoFit, pre-fetch, the tests' reference ---

    def nodes(self) -> Iterable[NodeEntry]:
        return self._nodes.values()

    def gpu_ordinal(self, uuid: str) -> int:
        return self._gpus[uuid].ordinal

    def holds_snapshot(self, node_name: str, version: str) -> bool:
        return version in self._nodes[node_name].cached

    def evaluate_all(self, request: ReplicaRequest, now: float) -> tuple[list[Placement], Counter[str], int]:
        return evaluate.evaluate_all(self, request, now)

    def no_fit(self, request: ReplicaRequest, now: float) -> NoFit:
        return evaluate.no_fit(self, request, now)

    def prefetch_targets(self, request: ReplicaRequest, now: float, count: int) -> list[str]:
        return evaluate.prefetch_targets(self, request, now, count)
