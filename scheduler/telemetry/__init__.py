"""Node inventories: NVML on GPU hosts (`scheduler.telemetry.nvml`), simulated elsewhere."""

from scheduler.telemetry.base import (
    APPLICATION_XIDS,
    GpuHealth,
    GpuProcess,
    GpuReading,
    Inventory,
    InventorySnapshot,
    NodeReading,
    parse_bytes,
    parse_compute_capability,
    xid_marks_unhealthy,
)
from scheduler.telemetry.polling import PollingInventory
from scheduler.telemetry.simulated import SimulatedInventory

__all__ = [
    "APPLICATION_XIDS", "GpuHealth", "GpuProcess", "GpuReading", "Inventory", "InventorySnapshot",
    "NodeReading", "PollingInventory", "SimulatedInventory", "parse_bytes", "parse_compute_capability",
    "xid_marks_unhealthy",
]
