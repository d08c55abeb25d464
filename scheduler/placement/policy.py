"""The knobs of placement: how much each score term weighs, the filters' margins."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from scheduler.placement.model import Rung


class Strategy(StrEnum):
    PACK = "pack"  # fill GPUs up: leaves whole GPUs free for big models
    SPREAD = "spread"  # most free memory first: headroom for KV cache growth
    FIRST_FIT = "first_fit"  # the first GPU that passes the filters, in inventory order


@dataclass(frozen=True)
class Policy:
    strategy: Strategy = Strategy.PACK
    weight_memory_fit: float = 1.0
    # Busy GPUs lose up to this much, in proportion to how far they run above
    # the threshold: compute contention slows every model on the GPU.
    weight_utilization: float = 0.5
    utilization_threshold_percent: float = 50.0
    # Points by cold-start rung: locality outweighs memory fit and utilization.
    points_sleeping: float = 3.0
    points_local_snapshot: float = 2.0
    points_peer_snapshot: float = 1.0
    # Another replica of the same model on the same GPU; and per replica of the
    # model on the node above an even spread (replicas / nodes that could run it,
    # as topology spread counts skew). The node penalty is above (local - peer) points,
    # so a second replica spreads to another node when the weights can be copied
    # from the first one's node.
    penalty_same_gpu: float = 3.0
    penalty_same_node: float = 1.5
    # Kept free on every GPU, as a fraction of its memory: telemetry lags and
    # allocators overshoot.
    memory_margin_fraction: float = 0.05
    max_telemetry_age_s: float = 30.0
    # GPUs one decision walks past at most; then it takes the best found so far. Exact below
    # that many candidate GPUs (explain always scores all), bounded time above it, in the
    # spirit of kube-scheduler's percentageOfNodesToScore.
    max_walk: int = 1024

    def __post_init__(self) -> None:
        if not 0.0 <= self.memory_margin_fraction < 1.0:
            raise ValueError(f"memory_margin_fraction: expected in [0, 1), got {self.memory_margin_fraction}")
        if not 0.0 <= self.utilization_threshold_percent < 100.0:
            raise ValueError("utilization_threshold_percent: expected in [0, 100), "
                             f"got {self.utilization_threshold_percent}")
        if self.max_walk < 1:
            raise ValueError(f"max_walk: expected >= 1, got {self.max_walk}")
        if self.max_telemetry_age_s <= 0:
            raise ValueError(f"max_telemetry_age_s: expected > 0, got {self.max_telemetry_age_s}")

    def rung_points(self, rung: Rung) -> float:
        if rung is Rung.SLEEPING:
            return self.points_sleeping
        if rung is Rung.LOCAL_SNAPSHOT:
            return self.points_local_snapshot
        return self.points_peer_snapshot if rung is Rung.PEER_SNAPSHOT else 0.0

    @classmethod
    def first_fit(cls) -> Policy:
        """Baseline: step 5's first fit, same filters, no scores."""
        return cls(
            strategy=Strategy.FIRST_FIT, weight_memory_fit=0.0, weight_utilization=0.0, points_sleeping=0.0,
            points_local_snapshot=0.0, points_peer_snapshot=0.0, penalty_same_gpu=0.0, penalty_same_node=0.0,
        )

    @classmethod
    def spread_baseline(cls) -> Policy:
        """Baseline: most free memory first, blind to locality, load and affinity."""
        return cls(
            strategy=Strategy.SPREAD, weight_utilization=0.0, points_sleeping=0.0,
            points_local_snapshot=0.0, points_peer_snapshot=0.0, penalty_same_gpu=0.0,
            penalty_same_node=0.0,
        )
