"""The reconciliation loop against a real process runtime, at the interleavings a loaded machine
makes: a pass whose listing was read before a replica's start returned must neither forget that
replica nor start another in its place (on a slow Ray cluster this put two replicas on one node)."""
from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from scheduler.autoscaler import ScalePolicy
from scheduler.controller import Controller, DesiredDeployment
from scheduler.runtimes.base import LABEL_PLATFORM, StartedReplica
from scheduler.runtimes.process import ProcessRuntime
from tests.net import until_async

INSTANCE = "reconcile-test"


class ListingBeforeStart(ProcessRuntime):
    """A process runtime whose next listing, once armed, is read, then held until released: a slow
    listing (a busy Ray agent, a loaded engine) that returns after a start it did not see."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.armed = threading.Event()
        self.listing_read = threading.Event()
        self.release_listing = threading.Event()

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        found = super().list(labels)
        if self.armed.is_set():
            self.armed.clear()
            self.listing_read.set()
            assert self.release_listing.wait(30), "the listing was never released"
        return found


def test_a_listing_older_than_a_start_neither_forgets_it_nor_starts_another(tmp_path: Path) -> None:
    runtime = ListingBeforeStart(tmp_path)
    spec = DesiredDeployment(name="r/one", model="r/one", version_id="v1", image="", max_concurrency=1,
                             policy=ScalePolicy(min_replicas=1, max_replicas=1),
                             command=(sys.executable, "-c", "import time; time.sleep(600)"))
    controller = Controller(runtime, lambda: [spec], INSTANCE)

    def tracked() -> list[str]:
        return [r["name"] for r in controller.snapshot(spec.name).get("replicas", [])]

    async def scenario() -> None:
        try:
            runtime.armed.set()
            first = asyncio.create_task(controller.reconcile())   # its listing (empty) is read, then held
            await asyncio.to_thread(runtime.listing_read.wait, 30)
            second = asyncio.create_task(controller.reconcile())  # meanwhile a pass starts the replica ...
            await second
            started = await until_async(tracked, 30, "the replica's start to return")
            runtime.release_listing.set()                         # ... then the old listing comes back
            await first
            assert tracked() == started, "a listing older than the start made the replica be forgotten"
            await controller.reconcile()                          # and the next pass adopts nothing twice
            await until_async(lambda: controller.snapshot(spec.name)["starting"] == 0, 30, "no start in flight")
            running = [r.name for r in runtime.list({LABEL_PLATFORM: INSTANCE}) if r.running]
            assert running == started, f"one replica wanted, {len(running)} running: {running}"
            assert tracked() == started
        finally:
            runtime.release_listing.set()
            await controller.close(stop_replicas=True)

    asyncio.run(scenario())
