"""Image builds: the Dockerfile's layers and labels, the CUDA table, and real
builds, runs, pushes and pulls against the Docker engine and registry that
.ci/docker-services.sh starts (DOCKER_HOST, 127.0.0.1:5050)."""
from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest
from conftest import free_port

from cogkit.build import builder, registry
from cogkit.build import dockerfile as df
from cogkit.build.cuda import CudaError, choose
from cogkit.config import SDK_REQUIREMENTS, load_config
from cogkit.schema import build_openapi

PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"
REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
START_SERVICES = 'eval "$(bash .ci/docker-services.sh --env)"'

PREDICT = '''from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        import six  # from python_packages: proves the model venv has them
        self.greeting = "hello"

    def predict(self, name: str = Input(description="Who to greet", default="world")) -> str:
        return f"{self.greeting} {name}"
'''
COG_YAML = 'build:\n  python_version: "3.11"\n  python_packages:\n    - "six==1.16.0"\npredict: "predict.py:Predictor"\n'


def write_project(root: Path, cog_yaml: str = COG_YAML, predict: str = PREDICT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cog.yaml").write_text(cog_yaml)
    (root / "predict.py").write_text(predict)
    return root


# --- Dockerfile generation ---------------------------------------------------------

def dockerfile_for(tmp_path: Path, cog_yaml: str, **kwargs) -> str:
    write_project(tmp_path, cog_yaml)
    return df.generate(load_config(tmp_path), {"openapi": "3.0.2"}, prefix="mirror.local/", **kwargs)


def test_layers_go_from_least_to_most_often_changed(tmp_path: Path) -> None:
    text = dockerfile_for(tmp_path, 'build:\n  python_version: "3.11"\n  system_packages: [ffmpeg]\n'
                                    '  python_packages: ["six==1.16.0"]\n  run: ["echo custom-step"]\n'
                                    'predict: "predict.py:Predictor"\n', has_weights=True)
    # The runtime venv is built on the bare OS stage, before the project's system packages, so
    # that one cached layer serves every project on the same base and Python.
    order = ["FROM mirror.local/python:3.11-slim AS base", "FROM base AS runtime", "/opt/cogkit/venv/bin/pip install",
             "FROM base AS system", "apt-get install", "ffmpeg",
             "FROM system AS pip", "COPY .cogkit/requirements.txt", "pip install --progress-bar off -r",
             "FROM system\n", "COPY --from=deps /opt/model /opt/model", "RUN echo custom-step",
             "COPY --from=runtime /opt/cogkit/venv", "COPY .cogkit/sdk/ /opt/cogkit/sdk/",
             "COPY --chown=1000:1000 .cogkit/weights/ /src/", "COPY --chown=1000:1000 src/ /src/",
             "USER 1000:1000", "LABEL run.cog.config=", "CMD "]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions), text
    # The requirements file is copied alone, right before the install that uses it.
    copy_line = next(line for line in text.splitlines() if "requirements.txt" in line and line.startswith("COPY"))
    assert copy_line == "COPY .cogkit/requirements.txt /tmp/cogkit-pip/requirements.txt"
    assert text.rstrip().endswith(json.dumps(df.run_command()))
    assert df._run_step("if x; then\n  y\nfi") == "RUN printf '%s\\n' 'if x; then' '  y' fi | sh -e"


def test_labels_are_escaped_json(tmp_path: Path) -> None:
    text = dockerfile_for(tmp_path, COG_YAML)
    labels = dict(line[6:].split("=", 1) for line in text.splitlines() if line.startswith("LABEL "))
    assert set(labels) == {df.LABEL_CONFIG, df.LABEL_SCHEMA, df.LABEL_VERSION}
    assert labels[df.LABEL_SCHEMA] == df.quote_label('{"openapi":"3.0.2"}')
    assert df.quote_label('a "b" \\ $HOME') == '"a \\"b\\" \\\\ \\$HOME"'


def test_no_pip_secrets_or_caches_in_the_final_stage(tmp_path: Path) -> None:
    text = dockerfile_for(tmp_path, COG_YAML)
    final = text[text.index("FROM system\n"):]
    assert ".cogkit/pip" not in final and "/tmp/cogkit-pip" not in final and "ARG" not in text
    assert "PIP_NO_CACHE_DIR=1" in text


def test_base_image_prefix_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path, 'build:\n  python_version: "3.12"\npredict: "predict.py:Predictor"\n')
    monkeypatch.setenv(df.PREFIX_ENV, "registry.internal/hub/")
    assert df.base_image(load_config(tmp_path)) == "registry.internal/hub/python:3.12-slim"
    monkeypatch.delenv(df.PREFIX_ENV)
    assert df.base_image(load_config(tmp_path)) == "python:3.12-slim"


def test_gpu_picks_the_cuda_image_and_torch_index(tmp_path: Path) -> None:
    text = dockerfile_for(tmp_path, 'build:\n  gpu: true\n  python_version: "3.11"\n'
                                    '  python_packages: ["torch==2.3.1"]\npredict: "predict.py:Predictor"\n')
    assert "FROM mirror.local/nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 AS base" in text
    assert "python3.11 python3.11-venv" in text  # CUDA images have no Python of their own
    assert df.requirements_text(load_config(tmp_path)).splitlines() == [
        "--extra-index-url https://download.pytorch.org/whl/cu121", "torch==2.3.1", *SDK_REQUIREMENTS]
    write_project(tmp_path, 'build:\n  gpu: true\n  cuda: "12.4"\n  python_packages: ["torch==2.1.2"]\n'
                            'predict: "predict.py:Predictor"\n')
    with pytest.raises(CudaError, match="torch 2.1 has no build for CUDA 12.4"):
        df.generate(load_config(tmp_path))


def test_cuda_table() -> None:
    assert choose(["torch==2.0.1"], "11.7").image == "nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu22.04"
    assert choose(["torch==2.4.0+cu118"], None).cuda == "12.4"
    assert choose([], None).torch_index is None
    assert choose(["numpy"], "11.8").image.startswith("nvidia/cuda:11.8")
    with pytest.raises(CudaError, match=r"torch 2.0 has no build for CUDA 12.1.*supports CUDA 11.8, 11.7"):
        choose(["torch==2.0.1"], "12.1")
    with pytest.raises(CudaError, match=r"no CUDA 10.2 base image; choose one of 12.8"):
        choose([], "10.2")
    with pytest.raises(CudaError, match="torch 1.5 is not in cogkit's torch/CUDA table.*set build.cuda"):
        choose(["torch==1.5.0"], None)
    with pytest.raises(CudaError, match="no torch build for CUDA 12.2"):
        choose(["torch"], "12.2")


def test_select_files_weights_and_dockerignore(tmp_path: Path) -> None:
    write_project(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "small.json").write_text("{}")
    (tmp_path / "big.bin").write_bytes(b"\0" * 2048)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "secret.env").write_text("TOKEN=1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / ".dockerignore").write_text("# comment\n*.env\n")
    files = df.select_files(tmp_path, separate_weights=True, threshold=1024)
    assert files.weights == ["big.bin", "weights/small.json"]
    assert sorted(files.code) == [".dockerignore", "cog.yaml", "notes.txt", "predict.py"]
    together = df.select_files(tmp_path)
    assert together.weights == [] and "big.bin" in together.code


def test_host_pip_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "none.conf"))
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/local/simple https://extra.example/simple")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "mirror.example")
    ca = tmp_path / "ca.pem"
    ca.write_text("---cert---")
    monkeypatch.setenv("PIP_CERT", str(ca))
    settings, found = builder.host_pip_settings()
    assert settings["index-url"] == "https://mirror.example/simple"
    assert settings["extra-index-url"] == "https://extra.example/simple"  # file:// only exists on the host
    assert settings["trusted-host"] == "mirror.example"
    assert found == ca
    assert "cert = /tmp/cogkit-pip/ca.crt" in builder.pip_conf(settings, True)


# --- credentials and the platform API ----------------------------------------------

def test_credentials_file_is_private_and_docker_shaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    registry.login("r.example:5000", "alice", "pa:ss", verify=False)
    path = tmp_path / "cfg" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert base64.b64decode(data["auths"]["r.example:5000"]["auth"]).decode() == "alice:pa:ss"
    assert registry.credentials("r.example:5000")["password"] == "pa:ss"
    assert registry.logout("r.example:5000") and registry.credentials("r.example:5000") is None


def test_image_references() -> None:
    assert registry.registry_of("127.0.0.1:5050/ns/m:v1") == "127.0.0.1:5050"
    assert registry.registry_of("ns/model") == "docker.io"
    assert registry.split_ref("127.0.0.1:5050/ns/m:v1") == ("127.0.0.1:5050/ns/m", "v1")
    assert registry.split_ref("127.0.0.1:5050/ns/m") == ("127.0.0.1:5050/ns/m", "latest")


class Recorder(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 that records requests and answers with a fixed status."""

    def __init__(self, status: int, body: dict) -> None:
        self.requests: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self.server.requests.append({"method": self.command, "path": self.path,  # type: ignore[attr-defined]
                                             "headers": dict(self.headers), "body": self.rfile.read(length)})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET  # noqa: N815

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator:
    servers: list[Recorder] = []
    yield lambda status, body: servers.append(Recorder(status, body)) or servers[-1]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_register_version_posts_the_documented_body(recorder) -> None:
    platform = recorder(201, {"id": "v1", "model": "acme/hello"})
    out = registry.register_version(platform.url + "/", "acme", "hello", "r/acme/hello:1", "sha256:" + "a" * 64,
                                    {"openapi": "3.0.2"}, "tok", cog_config={"predict": "predict.py:Predictor"})
    assert out == {"id": "v1", "model": "acme/hello"}
    request = platform.requests[0]
    assert (request["method"], request["path"]) == ("POST", "/v1/models/acme/hello/versions")
    assert request["headers"]["Authorization"] == "Bearer tok"
    assert json.loads(request["body"]) == {"image": "r/acme/hello:1", "digest": "sha256:" + "a" * 64,
                                           "openapi_schema": {"openapi": "3.0.2"},
                                           "cog_config": {"predict": "predict.py:Predictor"}}
    with pytest.raises(registry.AuthError, match="refused the token.*bad token"):
        registry.register_version(recorder(401, {"detail": "bad token"}).url, "acme", "hello", "i", "d", {}, "no")


# --- against the real engine and registry ------------------------------------------

def test_engine_unreachable_says_how_to_start_one() -> None:
    with pytest.raises(builder.EngineUnavailable, match=r"/nonexistent/docker.sock.*docker-services.sh"):
        builder.connect("unix:///nonexistent/docker.sock")


@pytest.fixture
def cleanup(engine) -> Iterator[list[str]]:
    """Image tags and container ids to remove after the test."""
    items: list[str] = []
    yield items
    for item in reversed(items):
        try:
            if item.startswith("container:"):
                engine.remove_container(item[10:], force=True)
            else:
                engine.remove_image(item, force=True)
        except docker.errors.APIError:
            pass


def build(project: Path, tag: str, cleanup: list[str], **kwargs) -> builder.BuildResult:
    cleanup.append(tag)
    lines: list[str] = []
    result = builder.build(project, tag, prefix=PREFIX, progress=lines.append, **kwargs)
    result.lines = lines  # type: ignore[attr-defined]
    return result


def start(engine, image: str, cleanup: list[str]) -> tuple[str, str]:
    """Run the image on a free port of 127.0.0.1 (host network); (base URL, container) once READY."""
    port = free_port()
    command = df.run_command(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    container = engine.create_container(image, command=command,
                                        host_config=engine.create_host_config(network_mode="host"))["Id"]
    cleanup.append("container:" + container)
    engine.start(container)
    url, deadline, last = f"http://127.0.0.1:{port}", time.monotonic() + 90, None
    while time.monotonic() < deadline and engine.inspect_container(container)["State"]["Status"] != "exited":
        try:
            last = httpx.get(url + "/health-check", timeout=5).json()
            if last.get("status") == "READY":
                return url, container
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    logs = engine.logs(container).decode(errors="replace")[-3000:]
    raise AssertionError(f"the container never became READY (last health {last}); its logs:\n{logs}")


def predict(url: str, name: str) -> str:
    response = httpx.post(url + "/predictions", json={"input": {"name": name}}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["output"]


def exec_in(engine, container: str, cmd: list[str]) -> tuple[int, str]:
    exec_id = engine.exec_create(container, cmd)["Id"]
    out = engine.exec_start(exec_id).decode(errors="replace")
    return engine.exec_inspect(exec_id)["ExitCode"], out


def test_build_run_push_pull_by_digest(engine, tmp_path: Path, cleanup: list[str]) -> None:
    project = write_project(tmp_path / "hello")
    tag = f"cogkit-test/hello:{uuid.uuid4().hex[:8]}"
    result = build(project, tag, cleanup)
    assert engine.inspect_image(tag)["Id"] == result.id

    # Labels: cog.yaml and the schema as JSON, our version, the model venv's pip freeze.
    labels = result.labels
    config = load_config(project)
    assert json.loads(labels[df.LABEL_CONFIG]) == config.raw
    assert json.loads(labels[df.LABEL_SCHEMA]) == build_openapi(project, config.predict, config.train)
    assert labels[df.LABEL_VERSION] == df.__version__
    assert "six==1.16.0" in labels[df.LABEL_FREEZE].splitlines()

    url, container = start(engine, tag, cleanup)
    assert predict(url, "builder") == "hello builder"
    # Non-root, and nothing of the build left behind: no pip config, cache or compiler.
    assert engine.inspect_image(tag)["Config"]["User"] == "1000:1000"
    assert exec_in(engine, container, ["sh", "-c", "id -u; stat -c %u /src/predict.py"])[1].split() == ["1000", "1000"]
    for leftover in ("/tmp/cogkit-pip", "/root/.cache/pip", "/home/cog/.cache/pip"):
        assert exec_in(engine, container, ["test", "-e", leftover])[0] == 1, leftover
    assert exec_in(engine, container, ["sh", "-c", "command -v gcc cc"])[0] != 0

    # Push, forget the local copy, pull it back by digest and predict again.
    remote = f"{REGISTRY}/cogkit-test/hello-{uuid.uuid4().hex[:8]}:v1"
    engine.tag(tag, *registry.split_ref(remote))
    cleanup.append(remote)
    progress: list[str] = []
    digest = registry.push(remote, progress=progress.append, client=engine)
    assert digest.startswith("sha256:") and any("Pushed" in p or "already exists" in p for p in progress)
    for item in [i for i in cleanup if i.startswith("container:")]:
        engine.remove_container(item[10:], force=True)
    engine.remove_image(remote)
    engine.remove_image(tag)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.inspect_image(result.id)
    by_digest = f"{registry.split_ref(remote)[0]}@{digest}"
    for chunk in engine.pull(by_digest, stream=True, decode=True):
        assert "error" not in chunk, chunk
    cleanup.append(by_digest)
    assert by_digest in engine.inspect_image(by_digest)["RepoDigests"]
    assert predict(start(engine, by_digest, cleanup)[0], "again") == "hello again"


def test_editing_predict_rebuilds_only_the_code_layer(engine, tmp_path: Path, cleanup: list[str]) -> None:
    project = write_project(tmp_path / "hello")
    (project / "weights").mkdir()
    (project / "weights" / "model.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    first = build(project, f"cogkit-test/layers:{uuid.uuid4().hex[:8]}", cleanup,
                  separate_weights=True, weights_threshold=1024 * 1024)
    with (project / "predict.py").open("a") as f:
        f.write("# edited\n")
    second = build(project, f"cogkit-test/layers:{uuid.uuid4().hex[:8]}", cleanup,
                   separate_weights=True, weights_threshold=1024 * 1024)
    before = engine.inspect_image(first.id)["RootFS"]["Layers"]
    after = engine.inspect_image(second.id)["RootFS"]["Layers"]
    assert len(before) == len(after) and before[:-1] == after[:-1] and before[-1] != after[-1]
    # Every step before the code COPY came from the cache; the code COPY did not.
    lines = [line.strip() for line in second.lines]
    steps = [(i, line) for i, line in enumerate(lines) if line.startswith("Step ")]
    cached = {line.split(" : ", 1)[1]: lines[i + 1] == "---> Using cache" for i, line in steps
              if not line.split(" : ", 1)[1].startswith("FROM")}
    code_copy = "COPY --chown=1000:1000 src/ /src/"
    before_code = list(cached)[:list(cached).index(code_copy)]
    assert all(cached[step] for step in before_code) and not cached[code_copy], lines
    # The weights have a layer of their own, the code layer stays small.
    sizes = {h["CreatedBy"]: h["Size"] for h in engine.history(second.id)}
    assert [size for by, size in sizes.items() if "COPY" in by and 2_000_000 < size < 2_200_000], sizes
    assert engine.history(second.id)[0]["Size"] == 0  # labels: no layer
    code_layer = next(h["Size"] for h in engine.history(second.id) if h["Size"])  # newest first
    assert code_layer < 50_000
    url, container = start(engine, second.image, cleanup)
    assert predict(url, "w") == "hello w"
    code, out = exec_in(engine, container, ["sh", "-c", "stat -c '%s %u' /src/weights/model.bin"])
    assert out.strip() == f"{2 * 1024 * 1024} 1000"


def test_host_pip_index_reaches_the_build_but_not_the_image(engine, tmp_path: Path, cleanup: list[str], recorder,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    index = recorder(404, {})  # an extra index that has nothing: pip falls back to the main one
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"http://token:{secret}@{index.url[7:]}/simple")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "127.0.0.1")
    result = build(write_project(tmp_path / "p"), f"cogkit-test/secret:{uuid.uuid4().hex[:8]}", cleanup)
    auth = [r["headers"].get("Authorization", "") for r in index.requests]
    assert f"Basic {base64.b64encode(f'token:{secret}'.encode()).decode()}" in auth  # pip used the host setting
    assert secret not in json.dumps(engine.history(result.id)) + json.dumps(engine.inspect_image(result.id))
    container = engine.create_container(result.id, command=["true"])["Id"]
    cleanup.append("container:" + container)
    tail, found = b"", False
    for chunk in engine.export(container):  # the whole filesystem of the image
        found = found or secret.encode() in tail + chunk
        tail = chunk[-len(secret):]
    assert not found


def test_failing_step_shows_the_step_and_its_output(engine, tmp_path: Path, cleanup: list[str]) -> None:
    project = write_project(tmp_path / "p", 'build:\n  python_version: "3.11"\n  run:\n'
                                            '    - "echo about to fail && exit 3"\npredict: "predict.py:Predictor"\n')
    with pytest.raises(builder.StepFailed) as info:
        build(project, f"cogkit-test/fail:{uuid.uuid4().hex[:8]}", cleanup)
    assert "RUN echo about to fail && exit 3" in info.value.step
    assert "about to fail" in info.value.tail
    assert str(info.value).endswith("about to fail\n(the command exited with code 3)")


def test_missing_base_image_is_named(engine, tmp_path: Path) -> None:
    with pytest.raises(builder.BaseImageMissing, match=r"cogkit-missing/python:3.11-slim.*COGKIT_BASE_IMAGE_PREFIX"):
        builder.build(write_project(tmp_path / "p"), "cogkit-test/none", prefix="cogkit-missing/",
                      progress=lambda _l: None, client=engine)


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A registry on a free port that wants a username and password."""
    for tool in ("docker-registry", "htpasswd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run `{START_SERVICES}`, which installs it", pytrace=False)
    user, password = "tester", uuid.uuid4().hex
    htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
    (tmp_path / "htpasswd").write_text(htpasswd.stdout)
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"auth:\n  htpasswd:\n    realm: cogkit-test\n    path: {tmp_path / 'htpasswd'}\nhttp:\n  addr: {address}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "registry.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 401:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield address, user, password
    finally:
        proc.terminate()
        proc.wait(10)


def test_push_needs_login_and_refuses_a_wrong_password(engine, tmp_path: Path, cleanup: list[str],
                                                      auth_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    address, user, password = auth_registry
    monkeypatch.setenv("COGKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    result = build(write_project(tmp_path / "p"), f"cogkit-test/auth:{uuid.uuid4().hex[:8]}", cleanup)
    remote = f"{address}/acme/hello:v1"
    engine.tag(result.id, *registry.split_ref(remote))
    cleanup.append(remote)
    fresh = builder.connect()  # the engine client caches successful logins; start without any
    with pytest.raises(registry.AuthError, match="log in first"):
        registry.push(remote, progress=lambda _l: None, client=fresh)
    with pytest.raises(registry.AuthError, match="refused the username or password"):
        registry.login(address, user, "wrong", client=builder.connect())
    assert registry.credentials(address) is None
    registry.login(address, user, password, client=builder.connect())
    digest = registry.push(remote, progress=lambda _l: None, client=builder.connect())
    assert digest.startswith("sha256:")
    assert stat.S_IMODE((tmp_path / "cfg" / "credentials.json").stat().st_mode) == 0o600
