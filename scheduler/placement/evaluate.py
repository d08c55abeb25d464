"""Scoring every candidate, no shortcuts: what explain shows, why nothing fits, where to
pre-fetch, and the reference the indexed walk in state.py is tested against."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from scheduler.placement.index import Rank
from scheduler.placement.model import NoFit, Placement, ReplicaRequest
from scheduler.placement.policy import Strategy

if TYPE_CHECKING:
    from scheduler.placement.state import ClusterState

TOO_FEW = "too few eligible GPUs on node"


def evaluate_all(state: ClusterState, request: ReplicaRequest, now: float) -> tuple[list[Placement], Counter[str], int]:
    """Every candidate scored, best first, and how many GPUs failed each filter."""
    failures: Counter[str] = Counter()
    ranked: list[tuple[Placement, Rank]] = []
    considered = 0
    for node in state.nodes():
        node_failed = state.node_failures(node, request, now)
        if request.gpu_count == 0:
            failures.update(node_failed)
            if not node_failed:
                ranked.append((state.score(node, [], request), (0, -node.ordinal)))
            continue
        eligible = []
        for gpu in node.gpus:
            considered += 1
            failed = list(dict.fromkeys(node_failed + state.gpu_failures(gpu, request, now)))
            failures.update(failed)
            if not failed:
                eligible.append(gpu)
        if request.gpu_count == 1:
            ranked.extend((state.score(node, [g], request), state.rank_of([g])) for g in eligible
                          if state.sleeper_on([g], request) is None)
        elif len(eligible) >= request.gpu_count:
            picked = state.pick_on_node(node, request, now)
            assert picked is not None
            if state.sleeper_on(picked, request) is None:
                ranked.append((state.score(node, picked, request), state.rank_of(picked)))
        elif eligible:
            failures[TOO_FEW] += 1
    if request.gpu_count:
        ranked.extend(state.sleeper_candidates(request, now))
    if state.policy.strategy is Strategy.FIRST_FIT:  # inventory order, waking a sleeper first
        ranked.sort(key=lambda c: (c[0].wakes is None, min(state.gpu_ordinal(u) for u in c[0].gpu_uuids)
                                   if c[0].gpu_uuids else -c[1][1]))
    else:
        ranked.sort(key=lambda c: (c[0].score, c[1]), reverse=True)
    return [c for c, _ in ranked], failures, considered

def prefetch_targets(state: ClusterState, request: ReplicaRequest, now: float, count: int) -> list[str]:
    """The nodes placement would pick next for this version that lack its snapshot, best
    first: where to pre-fetch it (`SnapshotCache.prefetch`) before the replica is asked for."""
    targets: list[str] = []
    for candidate in evaluate_all(state, request, now)[0]:
        if len(targets) == count:
            break
        if candidate.node not in targets and not state.holds_snapshot(candidate.node, request.version):
            targets.append(candidate.node)
    return targets

def no_fit(state: ClusterState, request: ReplicaRequest, now: float) -> NoFit:
    _, failures, considered = evaluate_all(state, request, now)
    if request.gpu_count:
        what = f"{request.gpu_count} GPU(s) with {request.gpu_memory_bytes / 2**30:.1f} GiB each"
    else:
        what = "a CPU-only replica"
    unit = "GPUs" if request.gpu_count else "nodes"
    reasons = ", ".join(f"{name} on {count} {'nodes' if name == TOO_FEW else unit}"
                        for name, count in failures.most_common())
    return NoFit(dict(failures), considered,
                 f"nothing fits {what} for {request.model}: {reasons or 'no nodes in the inventory'}")
