"""Placement: a pure function of (inventory, running replicas, request) -> a choice or why not.

    from scheduler.placement import ReplicaRequest, place
    decision = place(inventory.read(), running, ReplicaRequest(model="acme/llm", version="v1",
                                                               gpu_count=1, gpu_memory_bytes=20 * 2**30))
    if isinstance(decision, NoFit): ...  # decision.message says which filter failed on how many GPUs
"""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.placement.explain import Explanation, explain
from scheduler.placement.model import (
    DEFAULT_RUNTIME_OVERHEAD_BYTES,
    NoFit,
    Placement,
    ReplicaRequest,
    ReplicaState,
    Rung,
    RunningReplica,
    ScoreTerms,
    gpu_memory_for_model,
)
from scheduler.placement.policy import Policy, Strategy
from scheduler.placement.state import ClusterState
from scheduler.telemetry.base import InventorySnapshot


def place(snapshot: InventorySnapshot, running: Iterable[RunningReplica], request: ReplicaRequest,
          policy: Policy | None = None, now: float | None = None) -> Placement | NoFit:
    """Choose a node and GPUs for one replica. `now` defaults to the snapshot's time."""
    state = ClusterState.build(snapshot, running, policy)
    return state.place(request, snapshot.taken_at if now is None else now)


def first_fit(snapshot: InventorySnapshot, running: Iterable[RunningReplica],
              request: ReplicaRequest, now: float | None = None) -> Placement | NoFit:
    """Step 5's policy: the first GPU, in inventory order, that passes every filter."""
    return place(snapshot, running, request, Policy.first_fit(), now)


__all__ = [
    "DEFAULT_RUNTIME_OVERHEAD_BYTES", "ClusterState", "Explanation", "NoFit", "Placement", "Policy",
    "ReplicaRequest", "ReplicaState", "Rung", "RunningReplica", "ScoreTerms", "Strategy", "explain",
    "first_fit", "gpu_memory_for_model", "place",
]
