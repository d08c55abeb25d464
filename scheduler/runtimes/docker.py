"""Replicas as containers on one Docker engine, on the host network (the server of each on its
own 127.0.0.1 port), pulled from the registry by digest, GPUs by device request.

A Cog image runs its own command (on the replica's port). An engine replica (vLLM's OpenAI server
from the platform's GPU image) comes with its command (ReplicaSpec.command, "{port}" its port),
which replaces the image's entrypoint, and with host directories (its weights) mounted read-only
at the same paths; it shares the host's IPC namespace, as vLLM's workers talk over shared memory."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import docker
import docker.errors

from scheduler.runtimes.base import (
    LABEL_ENGINE,
    LABEL_PORT,
    ReplicaSpec,
    RuntimeError_,
    StartedReplica,
)

Progress = Callable[[str], None]


def _reason(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e).strip().splitlines()[0][:300]


def command_for(image_cmd: list[str] | None, port: int) -> tuple[list[str] | None, dict[str, str]]:
    """The image's own command listening on 127.0.0.1:port: its --host/--port replaced (cogkit
    images), else unchanged with PORT set (Cog's server reads it)."""
    cmd = list(image_cmd or [])
    if "--host" in cmd and "--port" in cmd and max(cmd.index("--host"), cmd.index("--port")) + 1 < len(cmd):
        cmd[cmd.index("--host") + 1] = "127.0.0.1"
        cmd[cmd.index("--port") + 1] = str(port)
        return cmd, {}
    return None, {"PORT": str(port), "HOST": "127.0.0.1"}


def stored_credentials(host: str) -> dict[str, str] | None:
    """What `cogkit login HOST` stored, so replicas pull from a registry with passwords as push did.
    (Imported by name: the build package is untyped and not part of the scheduler.)"""
    found: dict[str, str] | None = importlib.import_module("cogkit.build.registry").credentials(host)
    return found


class DockerRuntime:
    def __init__(self, client: Any | None = None, progress: Progress | None = None,
                 credentials: Callable[[str], dict[str, str] | None] | None = None) -> None:
        # APIClient, not DockerClient: one call per engine request, nothing cached behind our back.
        self.client = client or docker.APIClient(version="auto", timeout=600, **docker.utils.kwargs_from_env())
        self.progress = progress or (lambda _line: None)
        self.credentials = credentials or stored_credentials

    # ---- images ----
    def ensure_image(self, image: str) -> dict[str, Any]:
        try:
            info: dict[str, Any] = self.client.inspect_image(image)
            return info
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as e:
            raise RuntimeError_(f"cannot inspect {image}: {_reason(e)}") from e
        repository, _, tag = image.partition("@")
        if not tag and ":" in repository.rsplit("/", 1)[-1]:      # repo:tag (the GPU image), not a digest
            repository, _, tag = repository.rpartition(":")
        host = repository.split("/", 1)[0]
        self.progress(f"Pulling {image}")
        try:
            for chunk in self.client.pull(repository, tag=tag or "latest", stream=True, decode=True,
                                          auth_config=self.credentials(host)):
                if "error" in chunk:
                    raise RuntimeError_(f"pulling {image} failed: {chunk['error']}")
                if chunk.get("status") and not chunk.get("progressDetail"):
                    self.progress(f"  {chunk.get('id', '')} {chunk['status']}".rstrip())
            info = self.client.inspect_image(image)
            return info
        except docker.errors.APIError as e:
            raise RuntimeError_(f"pulling {image} failed: {_reason(e)}") from e

    # ---- the interface ----
    def start(self, spec: ReplicaSpec) -> StartedReplica:
        info = self.ensure_image(spec.image)
        entrypoint: list[str] | None = None
        cmd: list[str] | None
        extra_env: dict[str, str]
        if spec.command:
            argv = [part.replace("{port}", str(spec.port)) for part in spec.command]
            entrypoint, cmd, extra_env = argv[:1], argv[1:], {}
        else:
            cmd, extra_env = command_for((info.get("Config") or {}).get("Cmd"), spec.port)
        device_requests = None
        if spec.gpu_uuids:
            device_requests = [docker.types.DeviceRequest(device_ids=list(spec.gpu_uuids),
                                                          capabilities=[["gpu"]])]
        host_config = self.client.create_host_config(
            network_mode="host", device_requests=device_requests,
            binds=[f"{path}:{path}:ro" for path in spec.mounts] or None,
            ipc_mode="host" if spec.labels.get(LABEL_ENGINE) == "vllm" else None,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            mem_limit=spec.memory_bytes or None)
        labels = {**spec.labels, LABEL_PORT: str(spec.port)}
        try:
            container = self.client.create_container(
                spec.image, command=cmd, entrypoint=entrypoint, name=spec.name, labels=labels, host_config=host_config,
                environment={**{k: str(v) for k, v in spec.env.items()}, **extra_env})["Id"]
        except docker.errors.APIError as e:
            raise RuntimeError_(f"cannot create {spec.name} from {spec.image}: {_reason(e)}") from e
        try:
            self.client.start(container)
        except docker.errors.APIError as e:
            self.stop(container, 0)         # never leave a created, unstartable container behind
            raise RuntimeError_(f"cannot start {spec.name} from {spec.image}: {_reason(e)}") from e
        return StartedReplica(container, spec.name, labels, f"http://127.0.0.1:{spec.port}", True)

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        try:
            self.client.stop(replica_id, timeout=int(timeout))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            pass        # already stopping or dead: removing it is what matters
        try:
            self.client.remove_container(replica_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in _reason(e):
                raise RuntimeError_(f"cannot remove replica {replica_id[:12]}: {_reason(e)}") from e

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            containers = self.client.containers(all=True, filters=filters)
        except docker.errors.APIError as e:
            raise RuntimeError_(f"cannot list replicas: {_reason(e)}") from e
        out = []
        for c in containers:
            got = dict(c.get("Labels") or {})
            running = c.get("State") == "running"
            exit_code = None
            error = ""
            if not running:
                try:
                    state = self.client.inspect_container(c["Id"])["State"]
                except docker.errors.NotFound:
                    continue
                error = "out of memory (OOM killed)" if state.get("OOMKilled") else (state.get("Error") or "")
                # Created and not started yet (start() is on its way): starting, not exited.
                running = c.get("State") == "created" and not error
                exit_code = None if running else state.get("ExitCode")
            name = (c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/")
            out.append(StartedReplica(c["Id"], name, got, f"http://127.0.0.1:{got.get(LABEL_PORT, '0')}",
                                      running, exit_code, error))
        return out

    def logs(self, replica_id: str, tail: int = 20) -> str:
        try:
            data: bytes = self.client.logs(replica_id, tail=tail)
            return data.decode(errors="replace")
        except docker.errors.APIError:
            return ""
