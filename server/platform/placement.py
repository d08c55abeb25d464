"""Where the platform's replicas go: the node inventory (NVML on a host with NVIDIA GPUs, a
simulated one from YAML elsewhere) and scheduler/placement's policy, for the controller's placer and
for `GET /v1/scheduler/explain` alike (one owner, so the explanation is of the decision the
controller makes). Without an inventory, CPU replicas go on this node and GPU ones nowhere."""
from __future__ import annotations

from typing import Any

from scheduler.controller import cpu_placer
from scheduler.placement import NoFit, Placement, Policy, ReplicaRequest, RunningReplica, explain, place
from scheduler.telemetry.base import Inventory


class PlatformPlacement:
    def __init__(self, inventory_file: str | None) -> None:
        self.inventory: Inventory | None = _inventory(inventory_file)
        self.policy = Policy.first_fit()
        self.on_cluster = False         # every replica, CPU ones too, goes on one of the inventory's nodes

    def use_cluster(self, inventory: Inventory) -> None:
        """Place over a cluster's nodes (Ray: the agents' telemetry) instead of this node."""
        self.inventory, self.on_cluster = inventory, True

    def _here(self, request: ReplicaRequest) -> bool:
        return self.inventory is None or (not request.gpu_count and not self.on_cluster)

    def placer(self, request: ReplicaRequest, running: list[RunningReplica]) -> Placement | NoFit:
        if self._here(request) or self.inventory is None:
            return cpu_placer(request, running)
        return place(self.inventory.read(), running, request, self.policy)

    def explain(self, request: ReplicaRequest, running: list[RunningReplica]) -> dict[str, Any]:
        """Every candidate's score terms and why the winner won, or which filter failed on how many GPUs."""
        if not self._here(request) and self.inventory is not None:
            return explain(self.inventory.read(), running, request, self.policy).to_dict()
        decision = cpu_placer(request, running)
        why = (decision.message if isinstance(decision, NoFit)
               else "a CPU-only replica: it runs on this node, no GPU to choose")
        return {"request": {"model": request.model, "version": request.version, "gpu_count": request.gpu_count,
                            "gpu_memory_bytes": request.gpu_memory_bytes},
                "decision": ({"fits": False, "message": decision.message} if isinstance(decision, NoFit)
                             else {"fits": True, "node": decision.node, "gpu_uuids": []}),
                "why": why, "candidates": [], "candidates_total": 0, "filtered": {}, "gpus_considered": 0}


def _inventory(path: str | None) -> Inventory | None:
    if path:
        from scheduler.telemetry.simulated import SimulatedInventory
        return SimulatedInventory.from_yaml(path)
    from scheduler.telemetry.nvml import NvmlInventory, nvml_available
    return NvmlInventory() if nvml_available() else None
