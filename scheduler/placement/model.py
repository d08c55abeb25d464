"""What placement takes (a replica's needs, the replicas already running) and what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from scheduler.telemetry.base import frozen_labels

# What a model server needs on the GPU besides its weights and KV cache:
# the CUDA context, cuBLAS/NCCL workspaces, activations (vLLM's profiling
# typically lands between 0.5 and 2 GiB on one GPU).
DEFAULT_RUNTIME_OVERHEAD_BYTES = 2 * 2**30


def gpu_memory_for_model(
    weights_bytes: int,
    kv_cache_bytes: int = 0,
    runtime_overhead_bytes: int = DEFAULT_RUNTIME_OVERHEAD_BYTES,
    gpu_count: int = 1,
) -> int:
    """GPU memory per GPU a replica needs: weights + KV-cache budget + overhead,
    with weights and KV cache split evenly across tensor-parallel GPUs."""
    if weights_bytes < 0 or kv_cache_bytes < 0 or runtime_overhead_bytes < 0:
        raise ValueError("weights_bytes, kv_cache_bytes and runtime_overhead_bytes must be >= 0")
    if gpu_count < 1:
        raise ValueError(f"gpu_count: expected >= 1, got {gpu_count}")
    share = -(-(weights_bytes + kv_cache_bytes) // gpu_count)  # ceil division
    return share + runtime_overhead_bytes


class ReplicaState(StrEnum):
    STARTING = "starting"  # promised memory not yet visible in telemetry
    READY = "ready"
    SLEEPING = "sleeping"  # vLLM sleep mode: weights off the GPU, wakes fastest
    DRAINING = "draining"


class Rung(StrEnum):
    """Where a replica's weights come from: the cold-start ladder, fastest first."""

    SLEEPING = "sleeping"  # wake a sleeping instance on that GPU
    LOCAL_SNAPSHOT = "local_snapshot"  # snapshot on that node's disk
    PEER_SNAPSHOT = "peer_snapshot"  # snapshot on another node
    ORIGIN = "origin"  # pull from the registry / weights origin


@dataclass(frozen=True)
class RunningReplica:
    """A replica the scheduler already placed (any state), as placement sees it."""

    replica_id: str
    model: str  # "namespace/name": anti-affinity is between replicas of one model
    version: str  # version id: locality is per version
    node: str
    gpu_uuids: tuple[str, ...]
    gpu_memory_bytes: int  # promised per GPU; for a sleeping one, what it still holds
    state: ReplicaState = ReplicaState.READY
    cpus: float = 0.0


@dataclass(frozen=True)
class ReplicaRequest:
    """What one new replica needs. gpu_count=0 is a CPU-only replica."""

    model: str
    version: str
    gpu_count: int = 1
    gpu_memory_bytes: int = 0  # per GPU; see gpu_memory_for_model
    min_compute_capability: tuple[int, int] = (0, 0)
    node_labels: Mapping[str, str] = field(default_factory=lambda: frozen_labels(None))
    cpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: expected 'namespace/name', got an empty string")
        if self.gpu_count < 0:
            raise ValueError(f"gpu_count: expected >= 0, got {self.gpu_count}")
        if self.gpu_count > 0 and self.gpu_memory_bytes <= 0:
            raise ValueError("gpu_memory_bytes: expected > 0 for a GPU replica "
                             "(declare it or derive it with gpu_memory_for_model)")
        if self.gpu_memory_bytes < 0:
            raise ValueError(f"gpu_memory_bytes: expected >= 0, got {self.gpu_memory_bytes}")
        if self.cpus < 0:
            raise ValueError(f"cpus: expected >= 0, got {self.cpus}")
        object.__setattr__(self, "node_labels", frozen_labels(self.node_labels))


@dataclass(frozen=True)
class ScoreTerms:
    """Each term of a candidate's score, already weighted; total is their sum."""

    memory_fit: float  # in [0, weight]
    utilization: float  # <= 0: the busy-GPU penalty
    locality: float  # the rung's points
    anti_affinity: float  # <= 0

    @property
    def total(self) -> float:
        return self.memory_fit + self.utilization + self.locality + self.anti_affinity


@dataclass(frozen=True)
class Placement:
    node: str
    gpu_uuids: tuple[str, ...]  # empty for a CPU-only replica
    rung: Rung
    terms: ScoreTerms
    wakes: str | None = None  # replica_id of the sleeping instance to wake instead of starting one

    @property
    def score(self) -> float:
        return self.terms.total


@dataclass(frozen=True)
class NoFit:
    """Nothing fits: which constraint failed on how many GPUs (a GPU may fail several)."""

    failures: Mapping[str, int]
    gpus_considered: int
    message: str
