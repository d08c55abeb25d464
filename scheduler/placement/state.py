"""Placement's filters, scores and decisions over the indexed view (view.py), so one decision
needs no pass over every GPU.

A decision starts at the first GPU with enough
memory and walks in the strategy's order. Memory fit is the only positive term
that changes along a list (the band bounds the busy penalty, anti-affinity
only subtracts, locality is fixed per list), so a walk stops as soon as no GPU
further on can beat the best one found; whole lists are left out the same way
(a busy band's least penalty bounds every GPU in it). Multi-GPU replicas walk
nodes, by the free memory of their k-th freest GPU.

`ClusterState.place` gives the same answer as scoring every candidate
(evaluate.py, which `explain` uses; the tests compare the two) until a
decision has walked `Policy.max_walk` GPUs past its first candidate.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

from scheduler.placement import evaluate
from scheduler.placement.index import GpuEntry, GpuIndex, Key, NodeEntry, Rank
from scheduler.placement.model import (
    NoFit,
    Placement,
    ReplicaRequest,
    Rung,
    ScoreTerms,
)
from scheduler.placement.policy import Strategy
from scheduler.placement.view import ClusterView

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

_NO_SLEEPER = ("", 0)


class ClusterState(ClusterView):
    """The view (view.py) plus filters, scores and decisions. `place` never mutates it."""

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
        wakes = self.sleeper_on(gpus, request) if gpus and self._sleeping.get(request.version) else None
        fit = utilization = 0.0
        if len(gpus) == 1 and wakes is None:  # the common case, without the generators (same values)
            gpu = gpus[0]
            fit = self._fit(self._effective_free(gpu), request.gpu_memory_bytes)
            utilization = self._busy_penalty(gpu.utilization / 1)
        elif gpus:
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

    def score(self, node: NodeEntry, gpus: list[GpuEntry], request: ReplicaRequest, share: int | None = None
              ) -> Placement:
        """Score one candidate (a node and the GPUs it would give); filters are checked elsewhere.
        `share`: the request's even share (_even_share), when the caller has it already."""
        fit, utilization, locality, affinity, rung, wakes = self._terms(node, gpus, request, share)
        return Placement(node.name, tuple(g.uuid for g in gpus), rung,
                         ScoreTerms(fit, utilization, locality, affinity), wakes)

    def sleeper_on(self, gpus: list[GpuEntry], request: ReplicaRequest) -> str | None:
        """The sleeping instance of this version that holds exactly these GPUs, if any."""
        sleepers = {g.sleeping.get(request.version, _NO_SLEEPER)[0] for g in gpus}
        if len(sleepers) != 1 or "" in sleepers:
            return None
        replica_id = sleepers.pop()
        return replica_id if len(self._replicas[replica_id].gpu_uuids) == len(gpus) else None

    def sleeper_candidates(self, request: ReplicaRequest, now: float, share: int | None = None
                           ) -> list[tuple[Placement, Rank]]:
        """Waking a sleeping instance of this version, where its GPUs pass every filter."""
        found: list[tuple[Placement, Rank]] = []
        sleeping = self._sleeping.get(request.version)
        if not sleeping:
            return found
        for replica_id in sorted(sleeping):
            sleeper = self._replicas[replica_id]
            gpus = [self._gpus[u] for u in sleeper.gpu_uuids if u in self._gpus]
            node = self._nodes.get(sleeper.node)
            if node is None or len(gpus) != request.gpu_count or len(gpus) != len(sleeper.gpu_uuids):
                continue
            if self.node_failures(node, request, now) or any(self.gpu_failures(g, request, now, wake=True)
                                                             for g in gpus):
                continue
            found.append((self.score(node, gpus, request, share), self.rank_of(gpus)))
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
        share = self._even_share(request)
        for candidate, rank in self.sleeper_candidates(request, now, share):  # the highest points, few of them
            gpus = [self._gpus[u] for u in candidate.gpu_uuids]
            self._consider(best, candidate.score, rank, self._nodes[candidate.node], gpus)
        if request.gpu_count > 1:
            self._best_on_nodes(request, now, best)
            return self.score(best[2], best[3], request, share) if best else None
        policy = self.policy
        local = self._local_index.get(request.version)
        budget = [policy.max_walk]  # GPUs this decision may walk past, over all lists
        generic_points = policy.rung_points(self._generic_rung(request.version))
        if not local:
            self._walk(self._index, generic_points, request, now, best, budget, skip_cached=False, share=share)
            return self.score(best[2], best[3], request, share) if best else None
        # No GPU on a node holding the snapshot scores above this ceiling (a fit of 1, no busy
        # penalty, the least anti-affinity of those nodes). When the model already runs on all of
        # them, it is below what the other nodes could offer: walk those first, and their best
        # usually rules the local walk out at once. The order changes no result, only the work.
        ceiling = policy.weight_memory_fit + policy.points_local_snapshot - self._least_node_penalty(request, share)
        local_first = ceiling >= policy.weight_memory_fit + generic_points
        if local_first:
            self._walk(local, policy.points_local_snapshot, request, now, best, budget, skip_cached=False, share=share)
        self._walk(self._index, generic_points, request, now, best, budget, skip_cached=True, share=share)
        if not local_first and not (best and ceiling + 1e-9 < best[0]):  # slack: the ceiling is summed differently
            self._walk(local, policy.points_local_snapshot, request, now, best, budget, skip_cached=False, share=share)
        return self.score(best[2], best[3], request, share) if best else None

    def _least_node_penalty(self, request: ReplicaRequest, share: int) -> float:
        """The least node anti-affinity among the nodes holding the request's snapshot."""
        least = -1
        for name in self._cached_nodes.get(request.version, ()):
            over = self._nodes[name].models.get(request.model, 0) - share
            if over <= 0:
                return 0.0
            least = over if least < 0 else min(least, over)
        return self.policy.penalty_same_node * max(0, least)

    @staticmethod
    def _consider(best: list[Any], score: float, rank: Rank, node: NodeEntry, gpus: list[GpuEntry]) -> None:
        if not best:
            best.extend((score, rank, node, gpus))
        elif (score, rank) > (best[0], best[1]):
            best[:] = (score, rank, node, gpus)

    def _walk(self, index: GpuIndex, points: float, request: ReplicaRequest, now: float,
              best: list[Any], budget: list[int], skip_cached: bool, share: int) -> None:
        """Walk sorted lists from the first GPU with enough memory, in the strategy's order, until
        no GPU further on can beat the best so far. A GPU's bound is its memory fit + its band's
        least penalty + `points`, summed like a score so float rounding keeps bound >= score; at
        a bound equal to the best score, a GPU ranked below the best ends the walk too, since
        every later one ranks lower still. `skip_cached`: GPUs on nodes holding the version's
        snapshot are left to the walk of the snapshot's own index. Once a candidate is found, `budget` caps the walk."""
        need, weight, version = request.gpu_memory_bytes, self.policy.weight_memory_fit, request.version
        if best and weight * 1.0 + 0.0 + points + 0.0 < best[0]:
            return  # a fit of 1 in the least busy band would not beat the best: no list can
        spread = self.policy.strategy is Strategy.SPREAD
        reference = self._reference_bytes
        model = request.model
        per_node, same_gpu = self.policy.penalty_same_node, self.policy.penalty_same_gpu
        by_order = self._by_order

        def rank(key: Key) -> Rank:
            return key if spread else (-key[0], -key[1])

        for band, start, keys_sorted in self._lists_to_walk(index, request, points, best):
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
                    if version in gpu.sleeping:  # waking it scores differently: the full terms
                        terms = self._terms(gpu.node, [gpu], request, share)
                        score = terms[0] + terms[1] + terms[2] + terms[3]
                    else:  # _terms for one GPU, inlined: the same float operations, so the same sum
                        leftover = (key[0] - need) / reference
                        on_node, on_gpu = gpu.node.models.get(model, 0), gpu.models.get(model)
                        penalty = per_node * max(0, on_node - share) + (same_gpu if on_gpu else 0.0)
                        score = (weight * (leftover if spread else 1.0 - leftover) + self._busy_penalty(gpu.utilization)
                                 + points + (-penalty if penalty else 0.0))
                    self._consider(best, score, rank(key), gpu.node, [gpu])

    def _lists_to_walk(self, index: GpuIndex, request: ReplicaRequest, points: float, best: list[Any]
                       ) -> Iterable[tuple[int, int, list[Key]]]:
        """(band, first position with room, list) for each list a walk should take, best opening
        first, read as the walk goes: a list is left out once no GPU in it can beat `best`. Only
        lists whose last key has room qualify. Pack goes band by band (a band's least penalty and a
        fit of 1 bound all its GPUs, so the busy bands are usually never bisected), each band's lists
        by the exact bound of their first GPU; spread orders all lists by that exact bound, read
        off their freest GPU without a bisect."""
        need, weight, reference = request.gpu_memory_bytes, self.policy.weight_memory_fit, self._reference_bytes
        capable = index.capable(request.min_compute_capability)
        if self.policy.strategy is Strategy.SPREAD:
            lists = []
            for bands in capable:
                for band, keys_sorted in enumerate(bands):
                    if keys_sorted and keys_sorted[-1][0] >= need:
                        leftover = (keys_sorted[-1][0] - need) / reference
                        lists.append((weight * leftover + self._band_top[band] + points + 0.0, band, keys_sorted))
            lists.sort(key=lambda entry: -entry[0])
            for opening, band, keys_sorted in lists:
                if best and opening < best[0]:
                    return  # every GPU in this list and in those after it is bounded below the best
                yield band, bisect.bisect_left(keys_sorted, (need, -1)), keys_sorted
            return
        for band, top in enumerate(self._band_top):
            if best and weight * 1.0 + top + points + 0.0 < best[0]:
                continue
            group = []
            for bands in capable:
                keys_sorted = bands[band]
                if keys_sorted and keys_sorted[-1][0] >= need:
                    start = bisect.bisect_left(keys_sorted, (need, -1))
                    leftover = (keys_sorted[start][0] - need) / reference
                    group.append((weight * (1.0 - leftover) + top + points + 0.0, start, keys_sorted))
            if len(group) > 1:
                group.sort(key=lambda entry: -entry[0])
            for opening, start, keys_sorted in group:
                if best and opening < best[0]:
                    break
                yield band, start, keys_sorted

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
