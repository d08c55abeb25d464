"""Runs the suite's selected tests a few at a time, ahead of pytest, which then reports
each one in its usual order as its outcome arrives.

A suite test spends most of its time waiting: on `cogkit` processes starting, on a model's
setup, on a container, on the engine's layer cache. Run one at a time, the whole suite in
both modes is over an hour on 2 cores; side by side (threads: each script drives
subprocesses and HTTP, and shares nothing but the port allocator) it fits CI's budget.
Each script keeps its own work directory, environment, image tag and ports; but a script's two
modes never run at once, as some scripts write fixed host paths (healthcheck_during_prediction's
/tmp/prediction.json), which one mode would truncate under the other."""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

Case = tuple[Path, str]  # (the .txtar file, the mode)


@dataclass
class Outcome:
    kind: str           # "passed", "failed" or "skipped"
    message: str = ""   # the failure (with the transcript) or the skip's reason
    seconds: float = 0.0


class SuitePool:
    def __init__(self, workers: int, run_case: Callable[[Path, str], Outcome]):
        self._run_case = run_case
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cog-suite")
        self._futures: dict[Case, Future[Outcome]] = {}
        self._scripts: dict[Path, threading.Lock] = {}     # one per script: its modes one at a time
        self._guard = threading.Lock()

    def submit(self, cases: list[Case]) -> None:
        for case in cases:
            if case not in self._futures:
                self._futures[case] = self._executor.submit(self._timed, *case)

    def outcome(self, path: Path, mode: str) -> Outcome:
        """The case's outcome, waiting for it (running it now if it was never submitted)."""
        future = self._futures.get((path, mode))
        return future.result() if future is not None else self._timed(path, mode)

    def close(self) -> None:
        """Drop what has not started; the running scripts finish and clean up their containers."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _timed(self, path: Path, mode: str) -> Outcome:
        with self._guard:
            script = self._scripts.setdefault(path, threading.Lock())
        with script:
            return self._run_timed(path, mode)

    def _run_timed(self, path: Path, mode: str) -> Outcome:
        started = time.monotonic()
        try:
            outcome = self._run_case(path, mode)
        except Exception:  # noqa: BLE001 - a runner bug must show as that test's failure, not stop the others
            outcome = Outcome("failed", f"the runner itself failed:\n{traceback.format_exc()}")
        outcome.seconds = time.monotonic() - started
        return outcome
