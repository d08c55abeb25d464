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

_COUNTS_FOR_AFFINITY = frozenset({ReplicaState.STARTING, ReplicaState.READY})
_NO_SLEEPER = ("", 0)

Key = tuple[int, int]  # (effective free bytes, gpu ordinal)


class _Node:
    __slots__ = ("cached", "cpus", "cpus_promised", "gpus", "labels", "models", "name", "ordinal",
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


class _Gpu:
    __slots__ = ("capability", "healthy", "key", "live_free", "mig", "models", "node", "ordinal",
                 "promised_all", "promised_starting", "read_at", "sleeping", "starting", "total", "utilization",
                 "uuid")

    def __init__(self, reading: GpuReading, node: _Node, ordinal: int) -> None:
        self.ordinal = ordinal
        self.uuid = reading.uuid
        self.node = node
        self.promised_all = 0
        self.promised_starting = 0
        self.starting = 0
        self.models: Counter[str] = Counter()
        self.sleeping: dict[str, tuple[str, int]] = {}  # version -> (replica_id, bytes held)
        self.key: Key | None = None
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
        self._index: list[Key] = []  # every GPU that can take work
        self._local_index: dict[str, list[Key]] = {}  # version -> GPUs on nodes with its snapshot
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
        node = self._nodes.get(reading.name)
        if node is None:
            node = self._nodes[reading.name] = _Node(reading, self._next_node)
            self._next_node += 1
        node.labels, node.read_at, node.reachable, node.cpus = (
            reading.labels, reading.read_at, reading.reachable, reading.cpus)
        present = {g.uuid for g in reading.gpus}
        for gone in [g for g in node.gpus if g.uuid not in present]:
            self._unindex(gone)
            del self._gpus[gone.uuid], self._by_ordinal[gone.ordinal]
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
            self._gpus[gpu.uuid] = self._by_ordinal[gpu.ordinal] = gpu
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
            index = self._local_index[version]
            for gpu in node.gpus:
                if gpu.key is not None:
                    del index[bisect.bisect_left(index, gpu.key)]
            if not index:
                del self._local_index[version]
        for version in versions - node.cached:
            index = self._local_index.setdefault(version, [])
            for gpu in node.gpus:
                if gpu.key is not None:
                    bisect.insort(index, gpu.key)
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

    def _unindex(self, gpu: _Gpu) -> None:
        key = gpu.key
        if key is None:
            return
        del self._index[bisect.bisect_left(self._index, key)]
        for version in gpu.node.cached:
            index = self._local_index[version]
            del index[bisect.bisect_left(index, key)]
        gpu.key = None

    def _reindex(self, gpu: _Gpu) -> None:
        self._unindex(gpu)
        if gpu.healthy and not gpu.mig and gpu.node.reachable:
            gpu.key = key = (self._effective_free(gpu), gpu.ordinal)
            bisect.insort(self._index, key)
            for version in gpu.node.cached:
                bisect.insort(self._local_index[version], key)

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

    def score(self, node: _Node, gpus: list[_Gpu], request: ReplicaRequest) -> Placement:
        """Score one candidate (a node and the GPUs it would give); filters are checked elsewhere."""
        policy = self.policy
        wakes = self._sleeper_on(gpus, request)
        fit = utilization = 0.0
        if gpus:
            frees = [self._effective_free(g) + (g.sleeping[request.version][1] if wakes else 0) for g in gpus]
            fit = min(self._fit(free, request.gpu_memory_bytes) for free in frees)
            utilization = self._busy_penalty(sum(g.utilization for g in gpus) / len(gpus))
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
        terms = ScoreTerms(policy.weight_memory_fit * fit, utilization, policy.rung_points(rung), affinity)
        return Placement(node.name, tuple(g.uuid for g in gpus), rung, terms, wakes)

    def _sleeper_on(self, gpus: list[_Gpu], request: ReplicaRequest) -> str | None:
        """The sleeping instance of this version that holds exactly these GPUs, if any."""
        sleepers = {g.sleeping.get(request.version, _NO_SLEEPER)[0] for g in gpus}
        if len(sleepers) != 1 or "" in sleepers:
            return None
        replica_id = sleepers.pop()
        return replica_id if len(self._replicas[replica_id].gpu_uuids) == len(gpus) else None

    def _sleeper_candidates(self, request: ReplicaRequest, now: float) -> list[tuple[Placement, int]]:
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
            found.append((self.score(node, gpus, request), gpus[0].ordinal if len(gpus) == 1 else node.ordinal))
        return found

    def _generic_rung(self, version: str) -> Rung:
        return Rung.PEER_SNAPSHOT if version in self._local_index else Rung.ORIGIN

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
            eligible.sort(key=lambda g: (self._effective_free(g), g.ordinal),
                          reverse=self.policy.strategy is Strategy.SPREAD)
        return eligible[: request.gpu_count]

    # --- deciding -------------------------------------------------------------------

    def place(self, request: ReplicaRequest, now: float) -> Placement | NoFit:
        if request.gpu_count == 0:
            candidates = [(self.score(n, [], request), n.ordinal) for n in self._nodes.values()
                          if not self.node_failures(n, request, now)]
            if not candidates:
                return self.no_fit(request, now)
            if self.policy.strategy is Strategy.FIRST_FIT:
                return min(candidates, key=lambda c: c[1])[0]
            return max(candidates, key=lambda c: (c[0].score, -c[1]))[0]
        found = self._first_fit(request, now) if self.policy.strategy is Strategy.FIRST_FIT \
            else self._best(request, now)
        return found if found is not None else self.no_fit(request, now)

    def _first_fit(self, request: ReplicaRequest, now: float) -> Placement | None:
        need, k = request.gpu_memory_bytes, request.gpu_count
        sleepers = self._sleeper_candidates(request, now)
        if sleepers:  # waking beats starting, whatever the policy
            return min(sleepers, key=lambda c: c[1])[0]
        for node in self._nodes.values():
            if len(node.gpus) < k or self.node_failures(node, request, now):
                continue
            chosen = []
            for gpu in node.gpus:
                if gpu.key is not None and gpu.key[0] >= need and not self.gpu_failures(gpu, request, now):
                    chosen.append(gpu)
                    if len(chosen) == k:
                        return self.score(node, chosen, request)
        return None

    def _best(self, request: ReplicaRequest, now: float) -> Placement | None:
        best: list[tuple[tuple[float, int], Placement]] = []
        for candidate, ordinal in self._sleeper_candidates(request, now):  # the highest points, few of them
            self._consider(best, candidate, ordinal)
        policy = self.policy
        local = self._local_index.get(request.version)
        if local:
            self._walk(local, policy.points_local_snapshot, request, now, best)
        self._walk(self._index, policy.rung_points(self._generic_rung(request.version)), request, now, best)
        return best[0][1] if best else None

    @staticmethod
    def _consider(best: list[tuple[tuple[float, int], Placement]], candidate: Placement, ordinal: int) -> None:
        key = (candidate.score, -ordinal)
        if not best:
            best.append((key, candidate))
        elif key > best[0][0]:
            best[0] = (key, candidate)

    def _walk(self, index: list[Key], points: float, request: ReplicaRequest, now: float,
              best: list[tuple[tuple[float, int], Placement]]) -> None:
        """Walk one sorted list from the first GPU with enough memory, in the strategy's order,
        until no GPU further on can beat the best so far (its bound: fit here + `points`)."""
        need, k, weight = request.gpu_memory_bytes, request.gpu_count, self.policy.weight_memory_fit
        start = bisect.bisect_left(index, (need, -1))
        spread = self.policy.strategy is Strategy.SPREAD
        positions = range(len(index) - 1, start - 1, -1) if spread else range(start, len(index))
        collected: dict[int, list[_Gpu]] = {}
        for i in positions:
            free, ordinal = index[i]
            if best and ScoreTerms(weight * self._fit(free, need), 0.0, points, 0.0).total < best[0][0][0]:
                return  # the same expression as a score, so float rounding keeps bound >= score
            gpu = self._by_ordinal[ordinal]
            if self.gpu_failures(gpu, request, now) or self.node_failures(gpu.node, request, now):
                continue
            if k == 1:
                self._consider(best, self.score(gpu.node, [gpu], request), ordinal)
                continue
            group = collected.setdefault(gpu.node.ordinal, [])
            group.append(gpu)
            if len(group) == k:
                self._consider(best, self.score(gpu.node, group, request), gpu.node.ordinal)

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
                ranked.extend((self.score(node, [g], request), g.ordinal) for g in eligible
                              if self._sleeper_on([g], request) is None)
            elif len(eligible) >= request.gpu_count:
                picked = self._pick_on_node(node, request, now)
                assert picked is not None
                if self._sleeper_on(picked, request) is None:
                    ranked.append((self.score(node, picked, request), node.ordinal))
            elif eligible:
                failures[TOO_FEW] += 1
        if request.gpu_count:
            ranked.extend(self._sleeper_candidates(request, now))
        if self.policy.strategy is Strategy.FIRST_FIT:
            ranked.sort(key=lambda c: (c[0].wakes is None, c[1]))
        else:
            ranked.sort(key=lambda c: (-c[0].score, c[1]))
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
