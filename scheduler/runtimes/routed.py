"""One Runtime over two: a replica with no image (a command, e.g. vLLM's server from its own
virtualenv) runs as a local process, one with an image as a container; listing merges both;
stop and logs go to the one whose id it is. The controller keeps talking to one Runtime."""
from __future__ import annotations

from collections.abc import Mapping

from scheduler.runtimes.base import ReplicaSpec, Runtime, RuntimeError_, StartedReplica
from scheduler.runtimes.process import ID_PREFIX, ProcessRuntime


class RoutedRuntime:
    def __init__(self, default: Runtime | None, processes: ProcessRuntime) -> None:
        self.default, self.processes = default, processes

    def _for_spec(self, spec: ReplicaSpec) -> Runtime:
        if not spec.image:
            return self.processes
        if self.default is None:
            raise RuntimeError_(f"{spec.name}: {spec.image} is an image, and there is no container engine here")
        return self.default

    def _for_id(self, replica_id: str) -> Runtime:
        if replica_id.startswith(ID_PREFIX) or self.default is None:
            return self.processes
        return self.default

    def start(self, spec: ReplicaSpec) -> StartedReplica:
        return self._for_spec(spec).start(spec)

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        self._for_id(replica_id).stop(replica_id, timeout)

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        found = self.processes.list(labels)
        return found + (self.default.list(labels) if self.default is not None else [])

    def logs(self, replica_id: str, tail: int = 20) -> str:
        return self._for_id(replica_id).logs(replica_id, tail)
