"""The placer the controller calls: the node inventory (NVML on a host with NVIDIA GPUs, a
simulated one from YAML elsewhere) and scheduler/placement's first-fit policy. Without an
inventory, CPU replicas go on this node and GPU ones nowhere (with that reason)."""
from __future__ import annotations

from typing import Any

from scheduler.controller import Placer, cpu_placer
from scheduler.placement import (
    NoFit,
    Placement,
    ReplicaRequest,
    RunningReplica,
    first_fit,
)


def make_placer(inventory_file: str | None) -> Placer:
    inventory = _inventory(inventory_file)
    if inventory is None:
        return cpu_placer

    def placer(request: ReplicaRequest, running: list[RunningReplica]) -> Placement | NoFit:
        if not request.gpu_count:
            return cpu_placer(request, running)
        return first_fit(inventory.read(), running, request)
    return placer


def _inventory(path: str | None) -> Any:
    if path:
        from scheduler.telemetry.simulated import SimulatedInventory
        return SimulatedInventory.from_yaml(path)
    from scheduler.telemetry.nvml import NvmlInventory, nvml_available
    return NvmlInventory() if nvml_available() else None
