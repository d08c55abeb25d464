"""The cluster as placement sees it, indexed so one decision needs no pass over every GPU.

GPUs that can take work sit in one list sorted by effective free memory
(the smaller of live free memory minus what starting replicas will take, and
total minus everything promised, less the safety margin). A decision starts
at the first GPU with enough memory and walks in the strategy's order; since
memory fit is the only term that changes along the walk and the others are
bounded, it stops as soon as no GPU further on can beat the best one found.
Candidates that earn locality points (a sleeping instance, a node holding the
version's snapshot) are scored first, from their own indexes.

`ClusterState.place` gives the same answer as scoring every GPU (see
`evaluate_all`, which `explain` uses and the tests compare against).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping

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

_HOLDS_MEMORY = frozenset(ReplicaState)
_COUNTS_FOR_AFFINITY = frozenset({ReplicaState.STARTING, ReplicaState.READY})


def _total(fit: float, util: float, locality: float, affinity: float) -> float:
    # One expression for scores and bounds, so float rounding keeps bound >= score.
    return ScoreTerms(fit, util, locality, affinity).total


class _Node:
    __slots__ = (
        "cached",
        "cpus",
        "cpus_promised",
        "gpus",
        "labels",
        "models",
        "name",
        "ordinal",
        "reachable",
        "read_at",
    )

    def __init__(self, reading: NodeReading, ordinal: int) -> None:
        self.name = reading.name
        self.ordinal = ordinal
        self.labels: Mapping[str, str] = reading.labels
        self.read_at = reading.read_at
        self.reachable = reading.reachable
        self.cpus = reading.cpus
        self.cpus_promised = 0.0
        self.cached: frozenset[str] = reading.cached_versions
        self.models: Counter[str] = Counter()
        self.gpus: list[_Gpu] = []


class _Gpu:
    __slots__ = (
        "capability",
        "healthy",
        "key",
        "live_free",
        "mig",
        "models",
        "node",
        "ordinal",
        "promised_all",
        "promised_starting",
        "read_at",
        "sleeping",
        "starting",
        "total",
        "utilization",
        "uuid",
    )

    def __init__(self, reading: GpuReading, node: _Node, ordinal: int) -> None:
        self.ordinal = ordinal
        self.uuid = reading.uuid
        self.node = node
        self.promised_all = 0
        self.promised_starting = 0
        self.starting = 0
        self.models: Counter[str] = Counter()
        self.sleeping: dict[str, tuple[str, int]] = {}  # version -> (replica_id, bytes held)
        self.key: tuple[int, int] | None = None
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
        self._by_ordinal: dict[int, _Gpu] = {}
        self._index: list[tuple[int, int]] = []  # (effective free bytes, gpu ordinal)
        self._replicas: dict[str, RunningReplica] = {}
        self._cached_nodes: dict[str, set[str]] = {}  # version -> node names
        self._sleeping: dict[str, set[str]] = {}  # version -> sleeping replica ids
        self._next_node = 0
        self._next_gpu = 0
        self._reference_bytes = 1  # largest GPU seen: scales memory fit to [0, 1]

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
        node = self._nodes.get(reading.name)
        if node is None:
            node = _Node(reading, self._next_node)
            self._next_node += 1
            self._nodes[reading.name] = node
        else:
            self._set_cached(node, frozenset())
            node.labels, node.read_at, node.reachable = reading.labels, reading.read_at, reading.reachable
            node.cpus = reading.cpus
        self._set_cached(node, reading.cached_versions)
        present = {g.uuid for g in reading.gpus}
        for gone in [g for g in node.gpus if g.uuid not in present]:
            self._unindex(gone)
            del self._gpus[gone.uuid], self._by_ordinal[gone.ordinal]
        node.gpus = [g for g in node.gpus if g.uuid in present]
        for gpu_reading in reading.gpus:
            self.update_gpu(reading.name, gpu_reading)
        self._reindex_node(node)

    def update_gpu(self, node_name: str, reading: GpuReading) -> None:
        """One GPU's new reading (the simulation's fast path; set_node calls it too)."""
        node = self._nodes[node_name]
        gpu = self._gpus.get(reading.uuid)
        if gpu is None:
            gpu = _Gpu(reading, node, self._next_gpu)
            self._next_gpu += 1
            self._gpus[gpu.uuid] = gpu
            self._by_ordinal[gpu.ordinal] = gpu
            node.gpus.append(gpu)
            self._account_existing(gpu)
        else:
            gpu.read(reading)
        self._reference_bytes = max(self._reference_bytes, gpu.total)
        self._reindex(gpu)

    def touch_node(self, node_name: str, read_at: float, reachable: bool = True) -> None:
        node = self._nodes[node_name]
        node.read_at, node.reachable = read_at, reachable
        self._reindex_node(node)

    def set_cached_versions(self, node_name: str, versions: frozenset[str]) -> None:
        node = self._nodes[node_name]
        self._set_cached(node, frozenset())
        self._set_cached(node, versions)

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

    def replicas(self) -> list[RunningReplica]:
        return list(self._replicas.values())

    def gpu_uuids(self) -> list[str]:
        return list(self._gpus)

    def _account_existing(self, gpu: _Gpu) -> None:
        for replica in self._replicas.values():
            if gpu.uuid in replica.gpu_uuids:
                self._account_gpu(gpu, replica, +1)

    def _account(self, replica: RunningReplica, sign: int) -> None:
        node = self._nodes.get(replica.node)
        if node is not None:
            node.cpus_promised += sign * replica.cpus
            if replica.state in _COUNTS_FOR_AFFINITY:
                node.models[replica.model] += sign
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
        memory = sign * replica.gpu_memory_bytes
        gpu.promised_all += memory
        if replica.state is ReplicaState.STARTING:
            gpu.promised_starting += memory
            gpu.starting += sign
        if replica.state in _COUNTS_FOR_AFFINITY:
            gpu.models[replica.model] += sign
        if replica.state is ReplicaState.SLEEPING:
            if sign > 0:
                gpu.sleeping[replica.version] = (replica.replica_id, replica.gpu_memory_bytes)
            else:
                gpu.sleeping.pop(replica.version, None)

    def _set_cached(self, node: _Node, versions: frozenset[str]) -> None:
        for version in node.cached:
            self._cached_nodes.get(version, set()).discard(node.name)
        node.cached = versions
        for version in versions:
            self._cached_nodes.setdefault(version, set()).add(node.name)

    def _effective_free(self, gpu: _Gpu) -> int:
        margin = int(gpu.total * self.policy.memory_margin_fraction)
        return min(gpu.live_free - gpu.promised_starting, gpu.total - gpu.promised_all) - margin

    def _unindex(self, gpu: _Gpu) -> None:
        if gpu.key is not None:
            i = bisect.bisect_left(self._index, gpu.key)
            del self._index[i]
            gpu.key = None

    def _reindex(self, gpu: _Gpu) -> None:
        self._unindex(gpu)
        if gpu.healthy and not gpu.mig and gpu.node.reachable:
            gpu.key = (self._effective_free(gpu), gpu.ordinal)
            bisect.insort(self._index, gpu.key)

    def _reindex_node(self, node: _Node) -> None:
        for gpu in node.gpus:
            self._reindex(gpu)

    # --- filters and scores, shared by the indexed walk and the full evaluation ---

    def free_for(self, gpu: _Gpu, request: ReplicaRequest) -> int:
        """Effective free memory, crediting back what a sleeping instance of this version holds."""
        sleeper = gpu.sleeping.get(request.version)
        return self._effective_free(gpu) + (sleeper[1] if sleeper else 0)

    def node_failures(self, node: _Node, request: ReplicaRequest, now: float) -> list[str]:
        failed = []
        if not node.reachable:
            failed.append(UNREACHABLE)
        if now - node.read_at > self.policy.max_telemetry_age_s:
            failed.append(STALE)
        labels = node.labels
        if any(labels.get(k) != v for k, v in request.node_labels.items()):
            failed.append(LABELS)
        if request.cpus and node.cpus and node.cpus - node.cpus_promised < request.cpus:
            failed.append(CPUS)
        return failed

    def gpu_failures(self, gpu: _Gpu, request: ReplicaRequest, now: float) -> list[str]:
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
        sleeper = gpu.sleeping.get(request.version)
        credit = sleeper[1] if sleeper else 0
        need = request.gpu_memory_bytes
        if gpu.live_free - gpu.promised_starting - margin + credit < need:
            failed.append(MEMORY_LIVE)
        if gpu.total - gpu.promised_all - margin + credit < need:
            failed.append(MEMORY_PROMISED)
        return failed

    def _fit(self, free: int, need: int) -> float:
        strategy = self.policy.strategy
        if strategy is Strategy.FIRST_FIT:
            return 0.0
        leftover = (free - need) / self._reference_bytes
        return 1.0 - leftover if strategy is Strategy.PACK else leftover

    def _generic_rung(self, version: str) -> Rung:
        return Rung.PEER_SNAPSHOT if self._cached_nodes.get(version) else Rung.ORIGIN

    def score(self, node: _Node, gpus: list[_Gpu], request: ReplicaRequest) -> Placement:
        """Score one candidate (a node and the GPUs it would give); filters are checked elsewhere."""
        policy = self.policy
        wakes = None
        if gpus:
            fit = min(self._fit(self.free_for(g, request), request.gpu_memory_bytes) for g in gpus)
            mean_util = sum(g.utilization for g in gpus) / len(gpus)
            sleepers = {g.sleeping.get(request.version, ("", 0))[0] for g in gpus}
            if len(sleepers) == 1 and "" not in sleepers:
                wakes = sleepers.pop()
        else:
            fit, mean_util = 0.0, 0.0
        if wakes is not None:
            rung = Rung.SLEEPING
        elif request.version in node.cached:
            rung = Rung.LOCAL_SNAPSHOT
        else:
            rung = self._generic_rung(request.version)
        if any(g.models.get(request.model) for g in gpus):
            affinity = -policy.penalty_same_gpu
        elif node.models.get(request.model):
            affinity = -policy.penalty_same_node
        else:
            affinity = 0.0
        terms = ScoreTerms(
            memory_fit=policy.weight_memory_fit * fit,
            utilization=policy.weight_utilization * (1.0 - min(mean_util, 100.0) / 100.0),
            locality=policy.rung_points(rung),
            anti_affinity=affinity,
        )
        return Placement(node.name, tuple(g.uuid for g in gpus), rung, terms, wakes)

    def _pick_on_node(self, node: _Node, request: ReplicaRequest, now: float) -> list[_Gpu] | None:
        """The k GPUs a node would give, in the strategy's order; None if it has fewer eligible."""
        if self.node_failures(node, request, now):
            return None
        eligible = [g for g in node.gpus if not self.gpu_failures(g, request, now)]
        if len(eligible) < request.gpu_count:
            return None
        descending = self.policy.strategy is Strategy.SPREAD
        eligible.sort(key=lambda g: (self.free_for(g, request), g.ordinal), reverse=descending)
        if self.policy.strategy is Strategy.FIRST_FIT:
            eligible.sort(key=lambda g: g.ordinal)
        return eligible[: request.gpu_count]

    # --- deciding -------------------------------------------------------------------

    def place(self, request: ReplicaRequest, now: float) -> Placement | NoFit:
        if request.gpu_count == 0:
            return self._best_of(self._cpu_candidates(request, now), request, now)
        if self.policy.strategy is Strategy.FIRST_FIT:
            found = self._first_fit(request, now)
        else:
            found = self._walk(request, now)
        return found if found is not None else self.no_fit(request, now)

    def _first_fit(self, request: ReplicaRequest, now: float) -> Placement | None:
        need, k = request.gpu_memory_bytes, request.gpu_count
        for node in self._nodes.values():
            if len(node.gpus) < k or self.node_failures(node, request, now):
                continue
            chosen = []
            for gpu in node.gpus:
                roomy = (gpu.key is not None and gpu.key[0] >= need) or request.version in gpu.sleeping
                if roomy and not self.gpu_failures(gpu, request, now):
                    chosen.append(gpu)
                    if len(chosen) == k:
                        return self.score(node, chosen, request)
        return None

    def _walk(self, request: ReplicaRequest, now: float) -> Placement | None:
        need, k, policy = request.gpu_memory_bytes, request.gpu_count, self.policy
        best: Placement | None = None
        best_key = (float("-inf"), 0)

        def consider(candidate: Placement, ordinal: int) -> None:
            nonlocal best, best_key
            key = (candidate.score, -ordinal)
            if key > best_key:
                best, best_key = candidate, key

        # Candidates with locality points first: they set a high bar for the walk.
        for replica_id in self._sleeping.get(request.version, ()):
            sleeper = self._replicas[replica_id]
            gpus = [self._gpus[u] for u in sleeper.gpu_uuids if u in self._gpus]
            node = self._nodes.get(sleeper.node)
            if node is None or len(gpus) != k or self.node_failures(node, request, now):
                continue
            if not any(self.gpu_failures(g, request, now) for g in gpus):
                consider(self.score(node, gpus, request), gpus[0].ordinal if k == 1 else node.ordinal)
        for name in self._cached_nodes.get(request.version, ()):
            node = self._nodes[name]
            picked = self._pick_on_node(node, request, now)
            if picked is not None:
                consider(self.score(node, picked, request), picked[0].ordinal if k == 1 else node.ordinal)

        index = self._index
        start = bisect.bisect_left(index, (need, -1))
        spread = policy.strategy is Strategy.SPREAD
        positions = range(len(index) - 1, start - 1, -1) if spread else range(start, len(index))
        bar = policy.weight_utilization + policy.rung_points(self._generic_rung(request.version))
        collected: dict[int, list[_Gpu]] = {}
        for i in positions:
            free, ordinal = index[i]
            if _total(policy.weight_memory_fit * self._fit(free, need), bar, 0.0, 0.0) < best_key[0]:
                break  # nothing further along can beat the best
            gpu = self._by_ordinal[ordinal]
            node = gpu.node
            if self.gpu_failures(gpu, request, now) or self.node_failures(node, request, now):
                continue
            if k == 1:
                consider(self.score(node, [gpu], request), ordinal)
                continue
            group = collected.setdefault(node.ordinal, [])
            group.append(gpu)
            if len(group) == k:
                consider(self.score(node, group, request), node.ordinal)
        return best

    def _cpu_candidates(self, request: ReplicaRequest, now: float) -> list[tuple[Placement, int]]:
        return [(self.score(node, [], request), node.ordinal) for node in self._nodes.values()
                if not self.node_failures(node, request, now)]

    def _best_of(self, candidates: list[tuple[Placement, int]], request: ReplicaRequest,
                 now: float) -> Placement | NoFit:
        if not candidates:
            return self.no_fit(request, now)
        if self.policy.strategy is Strategy.FIRST_FIT:
            return min(candidates, key=lambda c: c[1])[0]
        return max(candidates, key=lambda c: (c[0].score, -c[1]))[0]

    # --- the full evaluation: explain, NoFit, and the tests' reference ---------------

    def evaluate_all(self, request: ReplicaRequest, now: float) -> tuple[list[Placement], Counter[str], int]:
        """Every candidate scored, best first, and how many GPUs failed each filter."""
        failures: Counter[str] = Counter()
        ranked: list[tuple[Placement, int]] = []
        considered = 0
        for node in self._nodes.values():
            node_failed = self.node_failures(node, request, now)
            if request.gpu_count == 0:
                failures.update(node_failed)
                if not node_failed:
                    ranked.append((self.score(node, [], request), node.ordinal))
                continue
            eligible = []
            for gpu in node.gpus:
                considered += 1
                failed = list(dict.fromkeys(node_failed + self.gpu_failures(gpu, request, now)))
                failures.update(failed)
                if not failed:
                    eligible.append(gpu)
            if request.gpu_count == 1:
                ranked.extend((self.score(node, [g], request), g.ordinal) for g in eligible)
            elif len(eligible) >= request.gpu_count:
                picked = self._pick_on_node(node, request, now)
                assert picked is not None
                ranked.append((self.score(node, picked, request), node.ordinal))
            elif eligible:
                failures[TOO_FEW] += 1
        if self.policy.strategy is Strategy.FIRST_FIT:
            ranked.sort(key=lambda c: c[1])
        else:
            ranked.sort(key=lambda c: (-c[0].score, c[1]))
        return [c for c, _ in ranked], failures, considered

    def no_fit(self, request: ReplicaRequest, now: float) -> NoFit:
        _, failures, considered = self.evaluate_all(request, now)
        what = f"{request.gpu_count} GPU(s) with {request.gpu_memory_bytes / 2**30:.1f} GiB each" \
            if request.gpu_count else "a CPU-only replica"
        unit = "GPUs" if request.gpu_count else "nodes"
        reasons = ", ".join(f"{name} on {count} {unit if name != TOO_FEW else 'nodes'}"
                            for name, count in failures.most_common())
        message = f"nothing fits {what} for {request.model}: {reasons or 'no nodes in the inventory'}"
        return NoFit(dict(failures), considered, message)
