"""How many replicas a deployment should have: pure decisions, the controller acts on them.

Up: when outstanding requests (running + queued) per replica stay above the target for
`sustain` seconds, enough replicas to bring it to the target, up to max_replicas; a request
waiting with no replica at all starts one at once (a cold start). Down: a replica idle (no
request) for idle_timeout is drained, while more than min_replicas remain, which may be 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePolicy:
    min_replicas: int = 0
    max_replicas: int = 1
    target: float = 1.0                 # outstanding requests per replica to aim for
    idle_timeout: float = 300.0         # seconds without a request before a replica is drained
    sustain: float = 1.0                # seconds above target before scaling up


@dataclass
class ScaleState:
    above_since: float | None = None


@dataclass(frozen=True)
class Load:
    replicas: int                       # running or starting, not draining
    outstanding: int                    # in flight on replicas
    waiting: int                        # queued for a replica


def desired_replicas(policy: ScalePolicy, load: Load, state: ScaleState, now: float) -> int:
    """The replica count to have now (never fewer than running: scale down is per idle replica)."""
    count = max(load.replicas, policy.min_replicas)
    demand = load.outstanding + load.waiting
    if load.replicas == 0 and load.waiting > 0:
        count = max(count, 1)           # someone is waiting on a cold start: no need to sustain
    per_replica = demand / max(1, load.replicas)
    if load.replicas > 0 and per_replica > policy.target:
        if state.above_since is None:
            state.above_since = now
        if now - state.above_since >= policy.sustain:
            count = max(count, math.ceil(demand / max(policy.target, 1e-9)))
            state.above_since = None     # re-measure once the new replicas take load
    else:
        state.above_since = None
    return min(count, max(policy.max_replicas, policy.min_replicas))


def idle_to_drain(policy: ScalePolicy, idle_for: dict[str, float], active: int) -> list[str]:
    """Replica ids to drain: idle past the idle timeout, longest idle first, keeping min_replicas.
    `idle_for` holds only replicas with nothing in flight; `active` counts every non-draining one."""
    spare = active - policy.min_replicas
    if spare <= 0:
        return []
    idle = sorted((s, rid) for rid, s in idle_for.items() if s >= policy.idle_timeout)
    return [rid for _s, rid in reversed(idle)][:spare]
