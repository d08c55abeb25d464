"""Why a replica goes where it goes: every candidate's score terms, the winner's margin."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.placement.model import NoFit, Placement, ReplicaRequest, RunningReplica
from scheduler.placement.policy import Policy
from scheduler.placement.state import ClusterState
from scheduler.telemetry.base import InventorySnapshot

_TERMS = ("memory_fit", "utilization", "locality", "anti_affinity")


@dataclass(frozen=True)
class Explanation:
    request: ReplicaRequest
    decision: Placement | NoFit
    candidates: tuple[Placement, ...]  # best first
    failures: Mapping[str, int]  # filter -> GPUs (nodes for CPU-only requests) it excluded
    gpus_considered: int

    def why(self) -> str:
        """One sentence: what the winner won on, against the runner-up."""
        if isinstance(self.decision, NoFit):
            return self.decision.message
        winner = self.decision
        where = _where(winner)
        if len(self.candidates) < 2:
            return f"{where}: the only candidate that passed every filter"
        runner_up = self.candidates[1]
        if runner_up.score == winner.score:
            return f"{where}: tied with {_where(runner_up)} at {winner.score:.3f}; ties go to the first in the strategy's order"
        deltas = [(name, getattr(winner.terms, name) - getattr(runner_up.terms, name)) for name in _TERMS]
        deciding = ", ".join(f"{name} {delta:+.3f}" for name, delta in sorted(deltas, key=lambda d: -abs(d[1]))
                             if abs(delta) > 1e-9)
        rung = f" ({winner.rung} vs {runner_up.rung})" if winner.rung != runner_up.rung else ""
        return (f"{where} beat {_where(runner_up)} by {winner.score - runner_up.score:.3f}: "
                f"{deciding}{rung}")

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        decision: dict[str, Any]
        if isinstance(self.decision, NoFit):
            decision = {"fits": False, "message": self.decision.message}
        else:
            decision = {"fits": True, **_candidate(self.decision)}
        return {
            "request": {
                "model": self.request.model, "version": self.request.version,
                "gpu_count": self.request.gpu_count, "gpu_memory_bytes": self.request.gpu_memory_bytes,
                "min_compute_capability": ".".join(map(str, self.request.min_compute_capability)),
                "node_labels": dict(self.request.node_labels),
            },
            "decision": decision,
            "why": self.why(),
            "candidates": [_candidate(c) for c in self.candidates[:top]],
            "candidates_total": len(self.candidates),
            "filtered": dict(sorted(self.failures.items(), key=lambda f: -f[1])),
            "gpus_considered": self.gpus_considered,
        }

    def render(self, top: int = 10) -> str:
        lines = [self.why(), ""]
        if self.candidates:
            lines.append(f"{'candidate':40} {'total':>7} {'fit':>7} {'util':>7} {'local':>7} {'affin':>7}  rung")
            for c in self.candidates[:top]:
                t = c.terms
                lines.append(f"{_where(c):40} {c.score:7.3f} {t.memory_fit:7.3f} {t.utilization:7.3f} "
                             f"{t.locality:7.3f} {t.anti_affinity:7.3f}  {c.rung}")
            if len(self.candidates) > top:
                lines.append(f"... {len(self.candidates) - top} more")
        if self.failures:
            lines.append("")
            lines.append(f"filtered out (of {self.gpus_considered} GPUs; one may fail several):")
            lines.extend(f"  {name}: {count}" for name, count in sorted(self.failures.items(), key=lambda f: -f[1]))
        return "\n".join(lines)


def _where(c: Placement) -> str:
    return f"{c.node}/{','.join(c.gpu_uuids)}" if c.gpu_uuids else c.node


def _candidate(c: Placement) -> dict[str, Any]:
    return {"node": c.node, "gpu_uuids": list(c.gpu_uuids), "rung": str(c.rung), "wakes": c.wakes,
            "score": round(c.score, 6), **{name: round(getattr(c.terms, name), 6) for name in _TERMS}}


def explain(snapshot: InventorySnapshot, running: Iterable[RunningReplica], request: ReplicaRequest,
            policy: Policy | None = None, now: float | None = None) -> Explanation:
    """Score every candidate (no shortcuts) and say why the winner won or why nothing fits."""
    when = snapshot.taken_at if now is None else now
    state = ClusterState.build(snapshot, running, policy)
    candidates, failures, considered = state.evaluate_all(request, when)
    decision: Placement | NoFit = candidates[0] if candidates else state.no_fit(request, when)
    return Explanation(request, decision, tuple(candidates), dict(failures), considered)
