"""Every example model as an image, against the real Docker engine and registry
that .ci/docker-services.sh starts: build, run, predict over HTTP, push to the
local registry, forget the local copy, pull it back by digest, predict again.
Then the image commands of the CLI, run as a user runs them.

Each example is built once (module fixture) and reused by the tests below."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest
from conftest import EXAMPLES, free_port
from PIL import Image
from test_build import auth_registry  # noqa: F401 - fixture

from cogkit.build import builder, container, registry
from cogkit.runtime.files import decode_data_uri

PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"
REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
START_SERVICES = 'eval "$(bash .ci/docker-services.sh --env)"'
# cog-vllm needs vLLM's CUDA build in its image (GPU wheels, no network here): its predictor runs
# locally in test_vllm_gateway.py instead.
GPU_ONLY = {"cog-vllm"}
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "cog.yaml").is_file() and p.name not in GPU_ONLY)
RUN_ID = uuid.uuid4().hex[:8]
COGKIT = [sys.executable, "-m", "cogkit.cli"]


@pytest.fixture(scope="module")
def engine():
    try:
        return builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"the image tests need a Docker engine (DOCKER_HOST={os.environ.get('DOCKER_HOST')!r}): "
                    f"{e}. Here: `{START_SERVICES}`", pytrace=False)


def _remove(engine, *refs: str) -> None:
    for ref in refs:
        try:
            engine.remove_image(ref)
        except docker.errors.APIError:
            pass


@pytest.fixture(scope="module")
def images(engine) -> Iterator[dict[str, str]]:
    """example name -> tag of its image, built lazily, once per module."""
    built: dict[str, str] = {}

    class Images(dict):
        def __missing__(self, name: str) -> str:
            tag = f"cogkit-test/example-{name}:{RUN_ID}"
            lines: list[str] = []
            try:
                builder.build(EXAMPLES / name, tag, prefix=PREFIX, progress=lines.append, client=engine)
            except builder.BuildError as e:
                pytest.fail(f"building {name} failed: {e}\n" + "\n".join(lines[-20:]), pytrace=False)
            built[name] = tag
            self[name] = tag
            return tag

    yield Images()
    _remove(engine, *built.values())


@pytest.fixture
def running(engine) -> Iterator[Callable[..., container.RunningModel]]:
    models: list[container.RunningModel] = []

    def start(image: str, **kwargs) -> container.RunningModel:
        models.append(container.start(image, client=engine, **kwargs))
        return models[-1]

    start.models = models  # type: ignore[attr-defined]
    yield start
    for model in models:
        model.stop(timeout=2)


def png_data_uri(size: tuple[int, int] = (64, 32)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ok(prediction: dict) -> dict:
    assert prediction["status"] == "succeeded", prediction
    return prediction


# --- what each example must do over HTTP ------------------------------------------------

def check_hello(model: container.RunningModel, start, tmp_path: Path) -> None:
    out = ok(model.predict({"name": "x"}))
    assert out["output"] == "hello x" and "greeting x" in out["logs"]
    assert ok(model.predict({}))["output"] == "hello world"


def check_image_filter(model, start, tmp_path: Path) -> None:
    out = ok(model.predict({"image": png_data_uri((400, 200)), "mode": "grayscale", "size": 100}))["output"]
    assert out.startswith("data:image/png;base64,")
    data, media_type = decode_data_uri(out)
    image = Image.open(io.BytesIO(data))
    assert (media_type, image.format, image.mode, image.size) == ("image/png", "PNG", "L", (100, 50))
    with pytest.raises(container.ContainerError, match="invalid input: mode"):
        model.predict({"image": png_data_uri(), "mode": "sepia"})


def check_text_stream(model, start, tmp_path: Path) -> None:
    out = ok(model.predict({"prompt": "the quick brown fox", "max_tokens": 3}))
    assert out["output"] == ["the", " quick", " brown"]
    events: list[tuple[str, object]] = []
    out = ok(model.predict({"prompt": "a b"}, on_event=lambda e, d: events.append((e, d))))
    assert [d for e, d in events if e == "output"] == ["a", " b"] == out["output"]
    assert out["metrics"]["output_tokens"] == 2


def check_function(model, start, tmp_path: Path) -> None:
    assert ok(model.predict({"numbers": [3, 5], "scale": 1.5}))["output"] == 12.0


def check_async(model, start, tmp_path: Path) -> None:
    assert model.health["concurrency"]["max"] == 4
    results: list[dict] = []

    def one(i: int) -> None:
        results.append(model.predict({"text": f"ab{i}", "delay": 0.4}))

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    peak, deadline = 0, time.monotonic() + 5
    while peak < 4 and time.monotonic() < deadline:  # all four run at once
        peak = max(peak, httpx.get(model.url + "/health-check", timeout=5).json()["concurrency"]["current"])
        time.sleep(0.05)
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert peak == 4
    assert sorted("".join(ok(r)["output"]) for r in results) == [">ab0", ">ab1", ">ab2", ">ab3"]
    assert elapsed < 4.0, f"4 requests of 1.2 s each took {elapsed:.1f} s: not concurrent"  # serial: 4.8 s
    assert all(r["metrics"]["chars"] == 3 for r in results)


def check_trainer(model, start, tmp_path: Path) -> None:
    out = ok(model.predict({"corpus": "Red blue red green red", "min_count": 1}, mode="train"))["output"]
    assert out["vocabulary_size"] == 3
    data, _ = decode_data_uri(out["weights"])
    assert json.loads(data) == {"red": 3, "blue": 1, "green": 1}
    assert ok(model.predict({"word": "red"}))["output"] == 0  # this container was set up without weights
    weights = tmp_path / f"weights-{uuid.uuid4().hex[:6]}.json"
    weights.write_bytes(data)
    weights.chmod(0o644)  # the model runs as uid 1000
    trained = start(model.image, env={"COG_WEIGHTS": "/weights/counts.json"},
                    volumes={str(weights): "/weights/counts.json"})
    assert ok(trained.predict({"word": "RED"}))["output"] == 3
    assert ok(trained.predict({"word": "purple"}))["output"] == 0


CHECKS = {"hello-world": check_hello, "image-filter": check_image_filter, "text-stream": check_text_stream,
          "function-predictor": check_function, "async-concurrent": check_async, "trainer": check_trainer}


def test_every_example_has_a_check() -> None:
    assert sorted(CHECKS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_image_build_run_push_pull(name: str, engine, images, running, tmp_path: Path) -> None:
    tag = images[name]
    model = running(tag)
    CHECKS[name](model, running, tmp_path)
    model.stop(timeout=2)

    # A run-unique image on top (one LABEL, no layer): the build's own id may be shared
    # with other builds of the same example, and this test removes what it pushed.
    unique = f"{REGISTRY}/examples/{name}:test"
    marker = uuid.uuid4().hex
    for chunk in engine.build(fileobj=io.BytesIO(f"FROM {tag}\nLABEL cogkit.test.run={marker}\n".encode()),
                              tag=unique, rm=True, decode=True, network_mode="host"):
        assert "error" not in chunk, chunk
    image_id = engine.inspect_image(unique)["Id"]
    progress: list[str] = []
    digest = registry.push(unique, progress=progress.append, client=engine)
    assert digest.startswith("sha256:"), progress

    engine.remove_image(unique)  # its only tag: the image is gone from the engine
    with pytest.raises(docker.errors.ImageNotFound):
        engine.inspect_image(image_id)
    by_digest = f"{REGISTRY}/examples/{name}@{digest}"
    try:
        assert container.pull(by_digest, client=engine) == image_id
        assert by_digest in engine.inspect_image(image_id)["RepoDigests"]
        assert engine.inspect_image(image_id)["Config"]["Labels"]["cogkit.test.run"] == marker
        CHECKS[name](running(by_digest), running, tmp_path)
    finally:
        for model in running.models:
            model.stop(timeout=2)
        _remove(engine, by_digest)


# --- container.start errors ------------------------------------------------------------------

def test_setup_failure_is_clear(engine, tmp_path: Path, running) -> None:
    project = tmp_path / f"broken-{RUN_ID}"
    project.mkdir()
    (project / "cog.yaml").write_text('build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n')
    (project / "predict.py").write_text(
        "from cog import BasePredictor\n\n\nclass Predictor(BasePredictor):\n"
        "    def setup(self):\n        print('loading the model')\n        raise RuntimeError('no GPU here')\n\n"
        "    def predict(self, x: int) -> int:\n        return x\n")
    tag = f"cogkit-test/broken:{RUN_ID}"
    builder.build(project, tag, prefix=PREFIX, progress=lambda _l: None, client=engine)
    try:
        with pytest.raises(container.ContainerError) as info:
            container.start(tag, client=engine, timeout=120)
        message = str(info.value)
        assert "setup failed" in message and "no GPU here" in message and "  | " in message, message
        assert not engine.containers(all=True, filters={"ancestor": tag})  # stopped and removed
    finally:
        _remove(engine, tag)
    with pytest.raises(container.ContainerError, match="no image cogkit-test/missing:x"):
        container.start("cogkit-test/missing:x", client=engine)


# --- the CLI ---------------------------------------------------------------------------------

def cogkit(*args: str, cwd: Path, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*COGKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=600, input=input,
                          env={**os.environ, **(env or {})})


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), r.stderr
    return lines[-1]


def test_cli_build_predict_use_image_push(engine, tmp_path: Path) -> None:
    project = tmp_path / f"hello-{RUN_ID}"
    shutil.copytree(EXAMPLES / "hello-world", project)
    default_tag = f"cog-hello-{RUN_ID}"
    remote_name = f"{REGISTRY}/examples/cli-{RUN_ID}"
    try:
        r = cogkit("build", cwd=project)
        assert r.returncode == 0, r.stderr
        assert "Step 1/" in r.stderr and f"Built {default_tag} (sha256:" in r.stderr  # streamed progress
        r = cogkit("predict", "--use-image", "-i", "name=image", cwd=project)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "hello image" and "greeting image" in r.stderr

        (project / "weights").mkdir()
        (project / "weights" / "table.json").write_text("{}")
        r = cogkit("build", "-t", f"{default_tag}:weights", "--separate-weights", cwd=project)
        assert r.returncode == 0, r.stderr
        assert "Weights in their own layer: 1 file(s)" in r.stderr and "Using cache" in r.stderr

        # Not a local image yet: the project's image (default tag) is tagged and pushed.
        r = cogkit("push", f"{remote_name}:v1", cwd=project, env={"COGKIT_PLATFORM_URL": ""})
        assert r.returncode == 0, r.stderr
        digest = r.stdout.strip()
        assert digest.startswith("sha256:") and len(digest) == 71
        assert engine.inspect_image(f"{remote_name}:v1")["Id"] == engine.inspect_image(default_tag)["Id"]
        manifest = httpx.head(f"http://{REGISTRY}/v2/examples/cli-{RUN_ID}/manifests/v1",
                              headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert manifest.headers["Docker-Content-Digest"] == digest

        (tmp_path / "empty").mkdir()
        line = one_error_line(cogkit("push", f"{REGISTRY}/examples/none-{RUN_ID}:v1", cwd=tmp_path / "empty"))
        assert "cog.yaml" in line
    finally:
        _remove(engine, default_tag, f"{default_tag}:weights", f"{remote_name}:v1")


def test_cli_push_registers_with_the_platform(engine, images, tmp_path: Path) -> None:
    import http.server

    requests: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            data = json.dumps({"id": "ver-1", "model": "examples/function"}).encode()
            self.send_response(201)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = f"{REGISTRY}/examples/function-{RUN_ID}:v2"
    engine.tag(images["function-predictor"], *registry.split_ref(remote))
    try:
        r = cogkit("push", remote, "--token", "tok-1", cwd=tmp_path,
                   env={"COGKIT_PLATFORM_URL": f"http://127.0.0.1:{server.server_address[1]}"})
        assert r.returncode == 0, r.stderr
        digest = r.stdout.splitlines()[0]
        assert "Registered version ver-1 of examples/function-" in r.stdout
        (request,) = requests
        assert request["path"] == f"/v1/models/examples/function-{RUN_ID}/versions"
        assert request["auth"] == "Bearer tok-1"
        assert request["body"]["image"] == remote and request["body"]["digest"] == digest
        assert request["body"]["openapi_schema"]["components"]["schemas"]["Output"]["type"] == "number"
        assert request["body"]["cog_config"]["predict"] == "predict.py:run"
        line = one_error_line(cogkit("push", remote, "--platform", "http://127.0.0.1:9", cwd=tmp_path,
                                     env={"COGKIT_PLATFORM_TOKEN": ""}))
        assert "needs a token" in line
    finally:
        server.shutdown()
        _remove(engine, remote)


def test_cli_debug_prints_the_dockerfile(tmp_path: Path) -> None:
    r = cogkit("debug", "-p", str(EXAMPLES / "image-filter"), cwd=tmp_path, env={"COGKIT_BASE_IMAGE_PREFIX": PREFIX})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Generated by cogkit")
    assert f"FROM {PREFIX}python:3.11-slim AS base" in r.stdout
    assert "COPY --chown=1000:1000 src/ /src/" in r.stdout and r.stdout.rstrip().splitlines()[-1].startswith("CMD [")


def test_cli_predict_in_images(images, tmp_path: Path) -> None:
    r = cogkit("predict", "--image", images["hello-world"], "-i", "name=cli", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello cli" and "greeting cli" in r.stderr

    Image.new("RGB", (40, 20), "green").save(tmp_path / "in.png")
    r = cogkit("predict", "--image", images["image-filter"], "-i", "image=@in.png", "-i", "mode=invert",
               "-o", "out.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Written output to: out.png" in r.stderr
    assert Image.open(tmp_path / "out.png").getpixel((0, 0)) == (255, 127, 255)  # inverted green

    r = cogkit("predict", "--image", images["text-stream"], "-i", "prompt=one two three", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["one", " two", " three"]  # as Cog's CLI shows an iterator's output

    r = cogkit("train", "--image", images["trainer"], "-i", "corpus=a b a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "weights").read_text())  # Cog's train output path; files inside stay data URIs
    assert out["vocabulary_size"] == 2
    assert json.loads(base64.b64decode(out["weights"].split(",", 1)[1])) == {"a": 2, "b": 1}

    r = cogkit("predict", "--image", images["text-stream"], "-i", "prompt=x", "-i", "max_tokens=lots", cwd=tmp_path)
    assert r.returncode == 1 and "max_tokens" in r.stderr and "Traceback" not in r.stderr
    assert "no image cogkit-test/missing:x" in one_error_line(
        cogkit("predict", "--image", "cogkit-test/missing:x", cwd=tmp_path))


def test_cli_engine_unreachable_is_one_clear_line(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for args in (["build", "-p", str(EXAMPLES / "hello-world")], ["predict", "--image", "x"], ["run", "x"],
                 ["push", f"{REGISTRY}/a/b:c"]):
        line = one_error_line(cogkit(*args, cwd=tmp_path, env=env))
        assert "cannot reach a Docker engine" in line and "docker-services.sh" in line, (args, line)


@pytest.mark.parametrize("command", ["serve"])
def test_cli_runs_an_image_until_interrupted(command: str, engine, images, tmp_path: Path) -> None:
    port = free_port()
    args = ["serve", "--image", images["hello-world"], "--port", str(port)]
    proc = subprocess.Popen([*COGKIT, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 120, {}
        while time.monotonic() < deadline and proc.poll() is None and health.get("status") != "READY":
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health-check", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.get("status") == "READY", proc.stderr.read() if proc.poll() is not None else health
        response = httpx.post(f"http://127.0.0.1:{port}/predictions", json={"input": {"name": command}}, timeout=60)
        assert response.json()["output"] == f"hello {command}"
        # Another on the same port is refused clearly.
        line = one_error_line(cogkit("serve", "--image", images["hello-world"], "--port", str(port), cwd=tmp_path))
        assert f"port {port} on 127.0.0.1 is already in use" in line
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"http://127.0.0.1:{port}" in out and "Stopping" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health-check", timeout=2)
    leftovers = [c for c in engine.containers(all=True, filters={"label": container.LABEL})
                 if str(port) in c["Command"]]
    assert not leftovers


def test_cli_login(engine, auth_registry, tmp_path: Path) -> None:
    address, user, password = auth_registry
    env = {"COGKIT_CONFIG_DIR": str(tmp_path / "cfg")}
    line = one_error_line(cogkit("login", address, "--username", user, "--password-stdin", cwd=tmp_path,
                                 input="wrong\n", env=env))
    assert f"{address} refused the username or password for {user}" in line
    assert not (tmp_path / "cfg" / "credentials.json").exists()
    r = cogkit("login", address, "-u", user, "--password-stdin", cwd=tmp_path, input=password + "\n", env=env)
    assert r.returncode == 0, r.stderr
    assert "Login succeeded" in r.stdout
    stored = json.loads((tmp_path / "cfg" / "credentials.json").read_text())["auths"][address]["auth"]
    assert base64.b64decode(stored).decode() == f"{user}:{password}"
