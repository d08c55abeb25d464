"""GPU telemetry on /metrics: a Prometheus collector that reads an inventory on each scrape.

    from prometheus_client import REGISTRY
    REGISTRY.register(InventoryCollector(inventory))   # e.g. a PollingInventory: scrapes stay cheap
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.telemetry.base import Inventory

_LABELS = ["node", "gpu", "uuid", "name"]


class InventoryCollector(Collector):
    def __init__(self, inventory: Inventory, clock: Callable[[], float] = time.time) -> None:
        self._inventory, self._clock = inventory, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._inventory.read()
        now = self._clock()
        families = {
            "total": GaugeMetricFamily("cogkit_gpu_memory_total_bytes", "GPU memory", labels=_LABELS),
            "used": GaugeMetricFamily("cogkit_gpu_memory_used_bytes", "GPU memory in use", labels=_LABELS),
            "free": GaugeMetricFamily("cogkit_gpu_memory_free_bytes", "GPU memory free", labels=_LABELS),
            "util": GaugeMetricFamily("cogkit_gpu_utilization_percent", "GPU utilization", labels=_LABELS),
            "temp": GaugeMetricFamily("cogkit_gpu_temperature_celsius", "GPU temperature", labels=_LABELS),
            "power": GaugeMetricFamily("cogkit_gpu_power_watts", "GPU power draw", labels=_LABELS),
            "healthy": GaugeMetricFamily("cogkit_gpu_healthy", "1 unless an XID or ECC error was seen",
                                         labels=_LABELS),
            "age": GaugeMetricFamily("cogkit_gpu_reading_age_seconds", "Age of the last reading", labels=_LABELS),
        }
        for node in snapshot.nodes:
            for gpu in node.gpus:
                labels = [node.name, str(gpu.index), gpu.uuid, gpu.name]
                families["total"].add_metric(labels, gpu.memory_total_bytes)
                families["used"].add_metric(labels, gpu.memory_used_bytes)
                families["free"].add_metric(labels, gpu.memory_free_bytes)
                families["util"].add_metric(labels, gpu.utilization_percent)
                families["temp"].add_metric(labels, gpu.temperature_c)
                families["power"].add_metric(labels, gpu.power_w)
                families["healthy"].add_metric(labels, 1.0 if gpu.health.healthy else 0.0)
                families["age"].add_metric(labels, gpu.age(now))
        yield from families.values()
