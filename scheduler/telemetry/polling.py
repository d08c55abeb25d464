"""Any inventory, polled on a short interval: readers get the last reading at once,
and its age (`read_at`) tells the scheduler how fresh it is."""

from __future__ import annotations

import threading

from scheduler.telemetry.base import Inventory, InventorySnapshot


class PollingInventory:
    def __init__(self, source: Inventory, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: expected > 0, got {interval_s}")
        self._source = source
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._latest = source.read()
        self._thread = threading.Thread(target=self._run, name="inventory-poll", daemon=True)

    def start(self) -> PollingInventory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def read(self) -> InventorySnapshot:
        return self._latest

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._latest = self._source.read()  # a failed read keeps the last one, growing stale
