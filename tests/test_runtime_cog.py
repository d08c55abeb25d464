"""The runtime where Cog's suite pins its behaviour, checked on its own:
/health-check fields, READY while a slot of several is free, SSE events and
their replay history, metrics (nested keys, name rules), sys.exit() in
predict, and COG_SETUP_TIMEOUT. Real servers, real worker processes."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.test_runtime_http import sse_events, write_project

HEALTH = """
    import time
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def setup(self):
            self.mode = "ok"
        def predict(self, mode: str) -> str:
            self.mode = mode
            return mode
        def healthcheck(self) -> bool:
            if self.mode == "raise":
                raise RuntimeError("disk on fire")
            if self.mode == "slow":
                time.sleep(8)
            return self.mode != "false"
"""


def test_health_check_names_the_users_healthcheck_error_only_when_unhealthy(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "h", HEALTH))
    health = server.client.get("/health-check").json()
    assert health["status"] == "READY" and "user_healthcheck_error" not in health
    for mode, words in [("false", "user-defined healthcheck returned False"),
                        ("raise", "user-defined healthcheck raised an exception: RuntimeError: disk on fire"),
                        ("slow", "timed out after 5.0 seconds")]:
        assert server.client.post("/predictions", json={"input": {"mode": mode}}).json()["status"] == "succeeded"
        health = server.client.get("/health-check", timeout=30).json()
        assert health["status"] == "UNHEALTHY" and words in health["user_healthcheck_error"], (mode, health)
    server.client.post("/predictions", json={"input": {"mode": "ok"}})
    deadline = time.monotonic() + 30  # the slow healthcheck's thread may still be finishing
    while time.monotonic() < deadline:
        health = server.client.get("/health-check", timeout=30).json()
        if health["status"] == "READY":
            break
        time.sleep(0.2)
    assert health["status"] == "READY" and "user_healthcheck_error" not in health


SLOTS = """
    import asyncio
    from cog import BasePredictor, concurrent

    class Predictor(BasePredictor):
        @concurrent(max=2)
        async def predict(self, seconds: float) -> str:
            await asyncio.sleep(seconds)
            return "done"
"""


def test_ready_while_a_slot_of_several_is_free_busy_when_all_are_taken(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "slots", SLOTS))
    assert server.client.get("/health-check").json()["concurrency"]["max"] == 2
    headers = {"prefer": "respond-async"}
    first = server.client.post("/predictions", json={"input": {"seconds": 3}}, headers=headers)
    assert first.status_code == 202 and first.json()["status"] == "starting"
    assert server.client.get("/health-check").json()["status"] == "READY"
    server.client.post("/predictions", json={"input": {"seconds": 3}}, headers=headers)
    assert server.client.get("/health-check").json()["status"] == "BUSY"
    assert server.client.post("/predictions", json={"input": {"seconds": 0}}).status_code == 409


STREAM = """
    import time
    from typing import Iterator
    from cog import BasePredictor, Input, current_scope, streaming

    class Predictor(BasePredictor):
        @streaming
        def predict(self, count: int = Input(default=2), pause: float = Input(default=0.0)) -> Iterator[str]:
            current_scope().record_metric("temperature", 0.7)
            for i in range(count):
                print(f"making {i}")
                current_scope().record_metric("tokens", 1, mode="incr")
                yield f"chunk-{i}"
            time.sleep(pause)
"""


def test_sse_events_are_cogs(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "s", STREAM))
    with server.client.stream("PUT", "/predictions/p1", json={"id": "p1", "input": {}},
                              headers={"accept": "text/event-stream"}) as r:
        events = sse_events(r)
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "completed"
    assert {"metric", "output", "log"} <= set(names)
    assert [d for e, d in events if e == "output"] == [{"chunk": "chunk-0", "index": 0},
                                                      {"chunk": "chunk-1", "index": 1}]
    metrics = [d for e, d in events if e == "metric"]
    assert {"name": "temperature", "value": 0.7, "mode": "replace"} in metrics
    assert {"name": "tokens", "value": 1, "mode": "increment"} in metrics
    assert any(d["source"] == "stdout" and "making 0" in d["data"] for e, d in events if e == "log")
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["metrics"]["tokens"] == 2 and "predict_time" in final["metrics"]


def test_a_late_sse_subscriber_gets_the_history_or_a_truncation_error(serve_project, tmp_path: Path) -> None:
    def late_events(capacity: int) -> list[tuple[str, object]]:
        project = write_project(tmp_path / f"cap{capacity}", STREAM,
                                f"environment:\n  - COG_STREAM_HISTORY_CAPACITY={capacity}\n")
        server = serve_project(project)
        pid = f"late-{capacity}"
        body = {"id": pid, "input": {"count": 3, "pause": 2}}
        assert server.client.put(f"/predictions/{pid}", json=body, headers={"prefer": "respond-async"}).status_code \
            == 202
        time.sleep(1)  # the outputs are out; the prediction still runs
        with server.client.stream("PUT", f"/predictions/{pid}", json=body,
                                  headers={"accept": "text/event-stream"}) as r:
            return sse_events(r)

    full = late_events(1024)
    assert [d["chunk"] for e, d in full if e == "output"] == ["chunk-0", "chunk-1", "chunk-2"]
    assert full[-1][0] == "completed"
    truncated = late_events(2)
    assert truncated[0][0] == "error" and "replay truncated" in truncated[0][1]["error"]
    assert truncated[0][1]["skipped"] > 0
    live_only = late_events(0)
    assert [e for e, _ in live_only] == ["completed"]


METRICS = """
    from cog import BasePredictor, current_scope

    class Predictor(BasePredictor):
        def predict(self, name: str) -> str:
            scope = current_scope()
            scope.record_metric(name, 1)
            scope.record_metric("timing.preprocess", 0.1)
            scope.metrics["plain"] = "x"
            return "ok"
"""


def test_metrics_nest_by_dots_and_bad_names_fail_the_prediction(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "m", METRICS))
    body = server.client.post("/predictions", json={"input": {"name": "valid_name"}}).json()
    assert body["status"] == "succeeded"
    assert body["metrics"]["timing"] == {"preprocess": 0.1} and body["metrics"]["plain"] == "x"
    assert body["metrics"]["valid_name"] == 1
    body = server.client.post("/predictions", json={"input": {"name": "cog.system"}}).json()
    assert body["status"] == "failed" and "'cog.' prefix is reserved" in body["error"]


EXIT = """
    import sys
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def predict(self, leave: bool) -> str:
            if leave:
                sys.exit(1)
            return "still alive"
"""


def test_sys_exit_in_predict_fails_only_that_prediction(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "e", EXIT))
    body = server.client.post("/predictions", json={"input": {"leave": True}}).json()
    assert body["status"] == "failed" and "SystemExit" in body["error"]
    assert server.client.post("/predictions", json={"input": {"leave": False}}).json()["output"] == "still alive"
    assert server.client.get("/health-check").json()["status"] == "READY"


SLOW_SETUP = """
    import time
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def setup(self):
            time.sleep(30)
        def predict(self) -> str:
            return "never"
"""


def test_setup_timeout_fails_setup(serve_project, tmp_path: Path) -> None:
    project = write_project(tmp_path / "t", SLOW_SETUP, "environment:\n  - COG_SETUP_TIMEOUT=2\n")
    server = serve_project(project, wait=False)
    health = server.wait("SETUP_FAILED", timeout=60)
    assert "setup timed out after 2 seconds" in health["error"]
    assert server.client.post("/predictions", json={"input": {}}).status_code == 503


def test_health_check_answers_while_a_prediction_runs(serve_project, tmp_path: Path) -> None:
    server = serve_project(write_project(tmp_path / "busy", """
        import time
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def predict(self, seconds: float) -> str:
                time.sleep(seconds)
                return "slept"
    """))
    done: list[str] = []
    thread = threading.Thread(target=lambda: done.append(
        httpx.post(server.url + "/predictions", json={"input": {"seconds": 2}}, timeout=30).json()["output"]))
    thread.start()
    time.sleep(0.5)
    assert server.client.get("/health-check", timeout=5).json()["status"] in ("READY", "BUSY")
    thread.join(30)
    assert done == ["slept"]
