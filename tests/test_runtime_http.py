"""The in-container HTTP server, driven over real HTTP against real worker
processes: endpoints, statuses, streaming, cancel, webhooks, files, concurrency."""
from __future__ import annotations

import base64
import io
import json
import textwrap
import time
from pathlib import Path

import httpx
from conftest import EXAMPLES
from PIL import Image


def write_project(root: Path, predict_py: str, yaml_extra: str = "", predict_ref: str = "predict.py:Predictor") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cog.yaml").write_text(f'build:\n  python_version: "3.11"\npredict: "{predict_ref}"\n{yaml_extra}')
    (root / "predict.py").write_text(textwrap.dedent(predict_py))
    return root


SLOW = """
    import time
    from cog import BasePredictor, Input, CancelationException

    class Predictor(BasePredictor):
        def predict(self, seconds: float = Input(default=30)) -> str:
            print("started")
            try:
                end = time.time() + seconds
                while time.time() < end:
                    time.sleep(0.01)
            except CancelationException:
                print("cleaning up after cancel")
                raise
            return "finished"
"""


def sse_events(response: httpx.Response) -> list[tuple[str, object]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_discovery_health_and_schema(serve_project):
    server = serve_project(EXAMPLES / "hello-world")
    root = server.client.get("/").json()
    assert root["predictions_url"] == "/predictions"
    assert root["healthcheck_url"] == "/health-check"
    health = server.client.get("/health-check").json()
    assert health["status"] == "READY"
    assert health["setup"]["status"] == "succeeded"
    assert health["setup"]["started_at"] and health["setup"]["completed_at"]
    schema = server.client.get("/openapi.json").json()
    name = schema["components"]["schemas"]["Input"]["properties"]["name"]
    assert name["default"] == "world" and name["x-order"] == 0


def test_sync_prediction_with_logs_and_metrics(serve_project):
    server = serve_project(EXAMPLES / "hello-world")
    r = server.client.post("/predictions", json={"input": {"name": "ada"}})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "succeeded"
    assert body["output"] == "hello ada"
    assert body["logs"] == "greeting ada\n"
    assert body["metrics"]["predict_time"] > 0
    assert body["input"] == {"name": "ada"}
    # defaults are filled in
    assert server.client.post("/predictions", json={"input": {}}).json()["output"] == "hello world"


def test_invalid_input_gets_422_naming_each_field(serve_project):
    server = serve_project(EXAMPLES / "text-stream")
    r = server.client.post("/predictions", json={"input": {"prompt": "", "max_tokens": 0, "bogus": 1}})
    assert r.status_code == 422
    fields = {tuple(e["loc"])[-1] for e in r.json()["detail"]}
    assert fields == {"prompt", "max_tokens"}  # an undeclared field is no error over HTTP, as in Cog
    assert server.client.post("/predictions", json={"input": {"max_tokens": "many"}}).status_code == 422
    r = server.client.post("/predictions", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    r = server.client.post("/predictions", json={"input": {"prompt": "x"}, "webhook_events_filter": ["nope"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook_events_filter"]


def test_undeclared_input_fields_are_ignored_and_named_in_the_logs(serve_project):
    server = serve_project(EXAMPLES / "hello-world")
    r = server.client.post("/predictions", json={"input": {"name": "x", "bogus": 1, "other": "y"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == "hello x" and body["input"] == {"name": "x"}
    assert "Ignored input fields the model does not declare: bogus, other" in body["logs"]


def test_sse_needs_cog_streaming_and_schema_waits_for_setup(serve_project, tmp_path):
    # hello-world's predict() is not marked @cog.streaming: Cog answers 406 saying how to enable it.
    server = serve_project(EXAMPLES / "hello-world")
    r = server.client.post("/predictions", json={"input": {}}, headers={"accept": "text/event-stream"})
    assert r.status_code == 406 and "@cog.streaming" in r.json()["error"]
    assert server.client.get("/openapi.json").status_code == 200
    broken = write_project(tmp_path / "broken", """
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def setup(self):
                raise RuntimeError("weights missing")
            def predict(self) -> str:
                return "never"
    """)
    server = serve_project(broken, wait=False)
    server.wait("SETUP_FAILED")
    r = server.client.get("/openapi.json")
    assert r.status_code == 503 and r.json() == {"error": "OpenAPI schema not available"}


def test_streaming_output_over_sse(serve_project):
    server = serve_project(EXAMPLES / "text-stream")
    with server.client.stream("POST", "/predictions", json={"input": {"prompt": "one two three", "delay": 0.05}},
                              headers={"accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    # Cog's events and payloads: start first, each output as {chunk, index}, then completed.
    assert events[0][0] == "start" and events[0][1]["status"] == "processing"
    outputs = [d for e, d in events if e == "output"]
    assert outputs == [{"chunk": "one", "index": 0}, {"chunk": " two", "index": 1}, {"chunk": " three", "index": 2}]
    kind, final = events[-1]
    assert kind == "completed" and final["status"] == "succeeded"
    assert final["output"] == ["one", " two", " three"]
    assert final["metrics"]["output_tokens"] == 3


def test_async_prediction_and_webhooks(serve_project, receiver):
    server = serve_project(EXAMPLES / "text-stream")
    r = server.client.post("/predictions", headers={"prefer": "respond-async"},
                           json={"input": {"prompt": "a b c d e f", "delay": 0.2},
                                 "webhook": receiver.url + "/hook"})
    assert r.status_code == 202
    assert r.json()["status"] in ("starting", "processing")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
            json.loads(q["body"])["status"] == "succeeded" for q in receiver.requests):
        time.sleep(0.1)
    payloads = [json.loads(q["body"]) for q in receiver.requests]
    assert payloads[0]["status"] == "processing"  # start event
    assert payloads[-1]["status"] == "succeeded"
    assert payloads[-1]["output"] == ["a", " b", " c", " d", " e", " f"]
    # output events are throttled to one every 0.5 s: fewer webhooks than outputs
    intermediate = payloads[1:-1]
    assert 1 <= len(intermediate) < 6
    times = [q["time"] for q in receiver.requests[1:-1]]
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:]))


def test_webhook_events_filter(serve_project, receiver):
    server = serve_project(EXAMPLES / "hello-world")
    r = server.client.post("/predictions", json={"input": {"name": "x"}, "webhook": receiver.url,
                                                 "webhook_events_filter": ["completed"]})
    assert r.json()["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert [json.loads(q["body"])["status"] for q in receiver.requests] == ["succeeded"]


def test_put_is_idempotent(serve_project):
    server = serve_project(EXAMPLES / "hello-world")
    first = server.client.put("/predictions/abc123", json={"input": {"name": "one"}}).json()
    again = server.client.put("/predictions/abc123", json={"input": {"name": "two"}}).json()
    assert first["id"] == again["id"] == "abc123"
    assert again["output"] == "hello one"
    r = server.client.put("/predictions/x1", json={"id": "x2", "input": {}})
    assert r.status_code == 422


def test_cancel_sync_prediction(serve_project, tmp_path):
    server = serve_project(write_project(tmp_path / "slow", SLOW))
    r = server.client.post("/predictions", headers={"prefer": "respond-async"}, json={"input": {}})
    pid = r.json()["id"]
    time.sleep(0.5)
    assert server.client.get("/health-check").json()["status"] == "BUSY"
    # one slot: a second prediction is refused while the first runs
    assert server.client.post("/predictions", json={"input": {"seconds": 0}}).status_code == 409
    assert server.client.post(f"/predictions/{pid}/cancel").status_code == 200
    final = server.client.put(f"/predictions/{pid}", json={"input": {}}).json()
    assert final["status"] == "canceled"
    assert "cleaning up after cancel" in final["logs"]
    assert server.wait("READY")
    # the worker survived the cancel and serves the next prediction
    assert server.client.post("/predictions", json={"input": {"seconds": 0}}).json()["output"] == "finished"
    assert server.client.post("/predictions/nope/cancel").status_code == 404


def test_async_concurrency_and_cancel(serve_project):
    server = serve_project(EXAMPLES / "async-concurrent")
    assert server.client.get("/health-check").json()["concurrency"]["max"] == 4
    started = time.monotonic()
    ids = [server.client.post("/predictions", headers={"prefer": "respond-async"},
                              json={"input": {"text": "abcd", "delay": 0.25}}).json()["id"] for _ in range(4)]
    assert server.client.post("/predictions", json={"input": {"text": "x"}}).status_code == 409
    results = [server.client.put(f"/predictions/{i}", json={"input": {}}).json() for i in ids]
    elapsed = time.monotonic() - started
    assert all(r["output"] == [">a", "b", "c", "d"] for r in results)
    assert all(r["metrics"]["chars"] == 4 for r in results)
    assert elapsed < 3.5  # four 1 s predictions ran side by side, not one after another
    pid = server.client.post("/predictions", headers={"prefer": "respond-async"},
                             json={"input": {"text": "abcdefghij", "delay": 1}}).json()["id"]
    time.sleep(0.3)
    server.client.post(f"/predictions/{pid}/cancel")
    assert server.client.put(f"/predictions/{pid}", json={"input": {}}).json()["status"] == "canceled"


def _png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), color).save(buf, "PNG")
    return buf.getvalue()


def test_file_input_as_data_uri_and_output_as_data_uri(serve_project):
    server = serve_project(EXAMPLES / "image-filter")
    data_uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    body = server.client.post("/predictions", json={"input": {"image": data_uri, "size": 32}}).json()
    assert body["status"] == "succeeded", body
    assert body["output"].startswith("data:image/png;base64,")
    out = Image.open(io.BytesIO(base64.b64decode(body["output"].split(",", 1)[1])))
    assert out.mode == "L" and max(out.size) == 32


def test_file_input_from_url_and_output_uploaded(serve_project, receiver):
    receiver.files["/in/photo.png"] = _png("blue")
    server = serve_project(EXAMPLES / "image-filter", upload_url=receiver.url + "/uploads/")
    body = server.client.post("/predictions", json={"input": {"image": receiver.url + "/in/photo.png",
                                                              "mode": "invert"}}).json()
    assert body["status"] == "succeeded", body
    assert body["output"] == receiver.url + "/uploads/output.png"
    img = Image.open(io.BytesIO(receiver.files["/uploads/output.png"]))
    assert img.getpixel((0, 0)) == (255, 255, 0)  # blue inverted
    # an unreachable file input fails the prediction with the field named
    bad = server.client.post("/predictions", json={"input": {"image": receiver.url + "/missing.png"}}).json()
    assert bad["status"] == "failed" and "image" in bad["error"]
    assert server.client.post("/predictions", json={"input": {"image": "/etc/passwd"}}).status_code == 422


def test_function_predictor_and_errors(serve_project):
    server = serve_project(EXAMPLES / "function-predictor")
    assert server.client.post("/predictions", json={"input": {"numbers": [1, 2, 3], "scale": 2}}).json()["output"] == 12.0
    r = server.client.post("/predictions", json={"input": {"numbers": [1, "x"]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] in ("numbers", 1)


def test_trainings_and_weights(serve_project, tmp_path):
    server = serve_project(EXAMPLES / "trainer")
    r = server.client.post("/trainings", json={"input": {"corpus": "the cat the dog the end", "min_count": 1}})
    body = r.json()
    assert body["status"] == "succeeded", body
    assert body["output"]["vocabulary_size"] == 4
    assert "learned 4 words" in body["logs"]
    weights = base64.b64decode(body["output"]["weights"].split(",", 1)[1])
    assert json.loads(weights)["the"] == 3
    assert server.client.post("/trainings", json={"input": {"min_count": 0}}).status_code == 422
    path = tmp_path / "weights.json"
    path.write_bytes(weights)
    tuned = serve_project(EXAMPLES / "trainer", env={"COG_WEIGHTS": str(path)})
    assert tuned.client.post("/predictions", json={"input": {"word": "THE"}}).json()["output"] == 3


def test_predictions_wait_for_setup_then_setup_failure(serve_project, tmp_path):
    slow_setup = write_project(tmp_path / "slow-setup", """
        import time
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def setup(self):
                print("loading weights")
                time.sleep(3)
            def predict(self) -> str:
                return "ok"
    """)
    server = serve_project(slow_setup, wait=False)
    server.wait("STARTING")
    assert server.client.post("/predictions", json={"input": {}}).status_code == 503
    health = server.wait("READY")
    assert "loading weights" in health["setup"]["logs"]
    broken = write_project(tmp_path / "broken", """
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def setup(self):
                raise RuntimeError("weights missing")
            def predict(self) -> str:
                return "never"
    """)
    server = serve_project(broken, wait=False)
    health = server.wait("SETUP_FAILED")
    assert "weights missing" in health["setup"]["logs"]
    assert health["setup"]["status"] == "failed"
    assert server.client.post("/predictions", json={"input": {}}).status_code == 503


def test_failed_prediction_and_defunct_worker(serve_project, tmp_path):
    project = write_project(tmp_path / "crashy", """
        import os
        from cog import BasePredictor, Input
        class Predictor(BasePredictor):
            def predict(self, how: str = Input(choices=["raise", "exit"])) -> str:
                if how == "raise":
                    raise ValueError("bad thing")
                os._exit(3)
    """)
    server = serve_project(project)
    failed = server.client.post("/predictions", json={"input": {"how": "raise"}}).json()
    assert failed["status"] == "failed" and failed["error"] == "bad thing"
    assert "ValueError" in failed["logs"]
    dead = server.client.post("/predictions", json={"input": {"how": "exit"}}).json()
    assert dead["status"] == "failed" and "exit code 3" in dead["error"]
    assert server.wait("DEFUNCT")["status"] == "DEFUNCT"


def test_unhealthy_when_healthcheck_fails(serve_project, tmp_path):
    project = write_project(tmp_path / "sick", """
        import os
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def healthcheck(self) -> bool:
                return not os.path.exists("sick")
            def predict(self) -> str:
                return "ok"
    """)
    server = serve_project(project)
    (project / "sick").write_text("")
    health = server.wait("UNHEALTHY")
    assert "healthcheck" in health["error"]
    (project / "sick").unlink()
    server.wait("READY")


def test_old_pydantic_in_model_environment(serve_project, tmp_path):
    """The server runs pydantic 2 and FastAPI; the model pins pydantic 1 and still runs."""
    project = write_project(tmp_path / "old-pins", """
        import pydantic
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def predict(self) -> str:
                return pydantic.VERSION
    """, yaml_extra="")
    (project / "cog.yaml").write_text('build:\n  python_version: "3.11"\n  python_packages:\n    - "pydantic==1.10.19"\npredict: "predict.py:Predictor"\n')
    server = serve_project(project)
    assert server.client.post("/predictions", json={"input": {}}).json()["output"] == "1.10.19"


def test_shutdown(serve_project):
    server = serve_project(EXAMPLES / "hello-world")
    assert server.client.post("/shutdown").status_code == 200
    assert server.proc.wait(15) == 0


KITCHEN_SINK = """
    from typing import Optional
    from cog import BaseModel, BasePredictor, File, Input, Path, Secret, current_scope

    class Output(BaseModel):
        text: str
        total: int
        files: list[Path]
        extra: dict
        maybe: Optional[str] = None

    class Predictor(BasePredictor):
        def predict(
            self,
            token: Secret = Input(description="API token"),
            images: list[Path] = Input(description="Several files"),
            raw: File = Input(description="A file object"),
            options: dict = Input(default={"k": 1}),
            note: Optional[str] = Input(default=None),
            ratio: float = Input(default=0.5, ge=0, le=1),
            flag: bool = False,
        ) -> Output:
            print("token type", type(token).__name__, repr(token))
            copies = []
            for i, p in enumerate(images):
                out = Path(f"/tmp/copy{i}{p.suffix}")
                out.write_bytes(p.read_bytes()[::-1])
                copies.append(out)
            return Output(text=token.get_secret_value().upper() + raw.read().decode(),
                          total=len(images), files=copies,
                          extra={**options, "ratio": ratio, "flag": flag, "ctx": current_scope().context},
                          maybe=note)
"""


def test_every_input_and_output_type(serve_project, tmp_path):
    server = serve_project(write_project(tmp_path / "sink", KITCHEN_SINK))
    uri = lambda data: "data:text/plain;base64," + base64.b64encode(data).decode()  # noqa: E731
    body = server.client.post("/predictions", json={
        "input": {"token": "s3cret", "images": [uri(b"abc"), uri(b"xyz")], "raw": uri(b"!"), "ratio": 1, "flag": True},
        "context": {"user": "u1"}}).json()
    assert body["status"] == "succeeded", body
    out = body["output"]
    assert out["text"] == "S3CRET!"
    assert out["total"] == 2
    assert [base64.b64decode(f.split(",", 1)[1]) for f in out["files"]] == [b"cba", b"zyx"]
    assert out["extra"] == {"k": 1, "ratio": 1.0, "flag": True, "ctx": {"user": "u1"}}
    assert out["maybe"] is None
    assert "token type Secret Secret('**********')" in body["logs"]
    assert "s3cret" not in body["logs"]
    assert body["input"]["token"] == "**********"  # never echoed back
    r = server.client.post("/predictions", json={"input": {"token": 5, "images": "x", "ratio": 2}})
    assert r.status_code == 422
    assert {e["loc"][2] for e in r.json()["detail"]} == {"token", "images", "raw", "ratio"}


def test_iterator_that_raises_midway_fails_with_no_output(serve_project, tmp_path):
    # As Cog 0.23: what was yielded before the error is not the prediction's output.
    project = write_project(tmp_path / "raises", """
        from typing import Iterator
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def predict(self) -> Iterator[str]:
                yield "first"
                raise RuntimeError("broke after one")
    """)
    server = serve_project(project)
    body = server.client.post("/predictions", json={"input": {}}).json()
    assert body["status"] == "failed" and "broke after one" in body["error"]
    assert body["output"] is None
