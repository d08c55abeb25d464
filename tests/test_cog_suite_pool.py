"""The suite runner's pool and port allocator (tests/cog_suite/pool.py, script.Ports):
tests really run side by side, a runner bug is that test's failure, and no port is
handed out twice."""
from __future__ import annotations

import threading
from pathlib import Path

from tests.cog_suite.pool import Outcome, SuitePool
from tests.cog_suite.script import Ports


def test_cases_run_side_by_side_and_report_their_own_outcome() -> None:
    both_running = threading.Barrier(2, timeout=30)  # broken (an error) unless two cases run at once

    def run_case(path: Path, mode: str) -> Outcome:
        if path.name == "broken":
            raise RuntimeError("a bug in the runner")
        both_running.wait()
        return Outcome("passed" if mode == "local" else "skipped", f"{path.name}-{mode}")

    pool = SuitePool(2, run_case)
    cases = [(Path("a"), "local"), (Path("b"), "image"), (Path("broken"), "local")]
    pool.submit(cases)
    try:
        a, b, broken = (pool.outcome(*case) for case in cases)
    finally:
        pool.close()
    assert (a.kind, a.message) == ("passed", "a-local")
    assert (b.kind, b.message) == ("skipped", "b-image")
    assert broken.kind == "failed" and "RuntimeError: a bug in the runner" in broken.message
    assert a.seconds >= 0


def test_a_scripts_two_modes_never_run_at_once() -> None:
    running: dict[Path, int] = {}
    overlapped: list[Path] = []
    lock = threading.Lock()
    others_running = threading.Barrier(2, timeout=30)   # a and b side by side: the pool does run in parallel

    def run_case(path: Path, mode: str) -> Outcome:
        with lock:
            running[path] = running.get(path, 0) + 1
            if running[path] > 1:
                overlapped.append(path)
        if mode == "local":
            others_running.wait()
        threading.Event().wait(0.2)                      # long enough for a twin to start, if it may
        with lock:
            running[path] -= 1
        return Outcome("passed")

    pool = SuitePool(4, run_case)
    cases = [(Path(name), mode) for name in ("a", "b") for mode in ("local", "image")]
    pool.submit(cases)
    try:
        assert all(pool.outcome(*case).kind == "passed" for case in cases)
    finally:
        pool.close()
    assert overlapped == []


def test_no_port_is_handed_out_twice() -> None:
    ports = Ports()
    taken: list[int] = []
    threads = [threading.Thread(target=lambda: taken.extend(ports.take() for _ in range(50))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 200 and len(set(taken)) == 200
