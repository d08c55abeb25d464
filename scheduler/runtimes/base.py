"""The runtime interface: start a replica, stop it, list replicas by label, read their logs.

A runtime knows nothing of deployments or scaling: the controller says what to start (a
ReplicaSpec, with the devices placement chose) and reads back what is there. Labels are the
only memory a runtime keeps: a restarted controller finds its replicas again by them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Labels every replica carries; the controller adopts by them after a restart.
LABEL_PLATFORM = "run.cogkit.platform"         # the platform instance (one per store)
LABEL_DEPLOYMENT = "run.cogkit.deployment"
LABEL_VERSION = "run.cogkit.version"
LABEL_SPEC = "run.cogkit.spec"                 # hash of what the replica was started with
LABEL_PORT = "run.cogkit.port"
LABEL_DEVICES = "run.cogkit.devices"           # GPU uuids, comma separated
LABEL_NODE = "run.cogkit.node"                 # the inventory node placement chose
LABEL_ENGINE = "run.cogkit.engine"             # "cog" (a Cog image; the default) or "vllm"


class RuntimeError_(Exception):
    """A replica could not be started, stopped or read; the message says why."""


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica to start: which image (by digest), on which port, with what."""
    name: str                                     # unique, e.g. cogkit-acme-hello-3f2a
    image: str                                    # repository@sha256:...
    port: int                                     # its HTTP server listens on 127.0.0.1:port
    labels: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    gpu_uuids: tuple[str, ...] = ()               # devices placement chose; () for a CPU model
    cpus: float | None = None
    memory_bytes: int | None = None
    command: tuple[str, ...] = ()                 # what to run instead of the image's own ("{port}": port)
    mounts: tuple[str, ...] = ()                  # host directories bind-mounted read-only at the same path


@dataclass(frozen=True)
class StartedReplica:
    """A replica as the runtime sees it now."""
    id: str
    name: str
    labels: Mapping[str, str]
    url: str
    running: bool
    exit_code: int | None = None
    error: str = ""                               # the runtime's own reason (OOM killed, image missing)

    @property
    def deployment(self) -> str:
        return self.labels.get(LABEL_DEPLOYMENT, "")


class Runtime(Protocol):
    def start(self, spec: ReplicaSpec) -> StartedReplica:
        """Pull the image if missing and start it; returns without waiting for readiness."""
        ...

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after timeout) and remove; a replica already gone is fine."""
        ...

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        """Every replica (running or exited) carrying all of `labels`."""
        ...

    def logs(self, replica_id: str, tail: int = 20) -> str:
        ...
