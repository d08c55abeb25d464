"""Dockerfile.gpu cannot rot: it builds on the real Docker engine with its base swapped for the
local base image (no network: its apt-get and pip steps skipped by build args, as this machine
has no CUDA base and no GPU wheels), and the image it makes holds cogkit, compiled."""
from __future__ import annotations

import os
import uuid

import docker.errors
import pytest
from conftest import ROOT

from cogkit.build import builder

PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"


def test_dockerfile_gpu_builds_with_its_base_swapped() -> None:
    try:
        engine = builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"needs the Docker engine: {e}", pytrace=False)
    tag = f"cogkit-gpu-check:{uuid.uuid4().hex[:8]}"
    log: list[str] = []
    try:
        for chunk in engine.build(path=str(ROOT), dockerfile="Dockerfile.gpu", tag=tag, rm=True, decode=True,
                                  network_mode="none", pull=False,
                                  buildargs={"BASE": f"{PREFIX}python:3.11-slim", "SYSTEM_PACKAGES": "0",
                                             "PIP_INSTALL": "0"}):
            log.append(str(chunk.get("stream") or chunk.get("status") or ""))
            assert "error" not in chunk, "".join(log[-30:]) + str(chunk)
        config = engine.inspect_image(tag)["Config"]
        assert "NVIDIA_VISIBLE_DEVICES=all" in config["Env"]
        assert config["Cmd"][:3] == ["python3.11", "-m", "server.gateway_cli"]
        listing = "import pathlib; print(sorted(p.name for p in pathlib.Path('/opt/cogkit/server/platform').glob('*.py')))"
        container = engine.create_container(tag, command=["python3.11", "-c", listing])
        try:
            engine.start(container)
            assert engine.wait(container, timeout=60)["StatusCode"] == 0
            out = engine.logs(container).decode()
        finally:
            engine.remove_container(container, force=True)
        assert "engine_vllm.py" in out and "vllm.py" in out, out
    finally:
        try:
            engine.remove_image(tag, force=True)
        except docker.errors.APIError:
            pass
