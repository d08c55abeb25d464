"""Replicas as local processes (vLLM's OpenAI server from its own virtualenv, where there is no
container to run it in): one process group per replica, its log in a file, and a JSON record per
replica in a state directory, so a restarted controller finds (adopts) the ones still running.

The command comes in ReplicaSpec.command; "{port}" in it becomes the replica's port. GPUs
placement chose go in CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scheduler.runtimes.base import (
    LABEL_PORT,
    ReplicaSpec,
    RuntimeError_,
    StartedReplica,
)

ID_PREFIX = "proc-"          # tells a process replica's id from a container's


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/pid/stat): a reused pid has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]     # a zombie has exited


class ProcessRuntime:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}     # the ones this process started

    def _record_path(self, replica_id: str) -> Path:
        return self.state_dir / f"{replica_id}.json"

    def start(self, spec: ReplicaSpec) -> StartedReplica:
        if not spec.command:
            raise RuntimeError_(f"{spec.name}: a process replica needs a command")
        replica_id = ID_PREFIX + spec.name
        argv = [part.replace("{port}", str(spec.port)) for part in spec.command]
        env = {**os.environ, **spec.env}
        if spec.gpu_uuids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_uuids)
        log_path = self.state_dir / f"{replica_id}.log"
        try:
            with open(log_path, "ab") as log_file:
                child = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)   # its own group: stop kills it all
        except OSError as e:
            raise RuntimeError_(f"{spec.name}: cannot run {argv[0]}: {e}") from e
        self._children[replica_id] = child
        labels = {**spec.labels, LABEL_PORT: str(spec.port)}
        url = f"http://127.0.0.1:{spec.port}"
        record = {"id": replica_id, "name": spec.name, "pid": child.pid, "started": _start_time(child.pid),
                  "labels": labels, "url": url, "log": str(log_path)}
        self._record_path(replica_id).write_text(json.dumps(record))
        return StartedReplica(replica_id, spec.name, labels, url, True)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _observe(self, record: dict[str, Any]) -> StartedReplica:
        replica_id = record["id"]
        child = self._children.get(replica_id)
        exit_code: int | None = None
        if child is not None:
            exit_code = child.poll()
            running = exit_code is None
        else:      # adopted: not our child, so no exit code; alive while its pid has the same start time
            running = record.get("started") is not None and _start_time(record["pid"]) == record["started"]
        if exit_code is not None and exit_code < 0:
            error = f"killed by signal {signal.Signals(-exit_code).name}"
        else:
            error = ""
        return StartedReplica(replica_id, record["name"], record["labels"], record["url"], running,
                              exit_code, error)

    def list(self, labels: Mapping[str, str]) -> list[StartedReplica]:
        out = []
        for path in sorted(self.state_dir.glob(f"{ID_PREFIX}*.json")):
            record = self._read(path)
            if record is None or any(record["labels"].get(k) != v for k, v in labels.items()):
                continue
            out.append(self._observe(record))
        return out

    def stop(self, replica_id: str, timeout: float = 10) -> None:
        record = self._read(self._record_path(replica_id))
        if record is not None and self._observe(record).running:
            pid = record["pid"]
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._observe(record).running:
                time.sleep(0.1)
        if record is not None:
            try:
                os.killpg(record["pid"], signal.SIGKILL)   # the group: workers it forked go too (its
            except (ProcessLookupError, PermissionError):   # engine process outlives a killed server)
                pass
        child = self._children.pop(replica_id, None)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._record_path(replica_id).unlink(missing_ok=True)

    def logs(self, replica_id: str, tail: int = 20) -> str:
        try:
            lines = (self.state_dir / f"{replica_id}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def pid(self, replica_id: str) -> int | None:
        """The replica's process id (tests kill it to show a stream surviving its replica)."""
        record = self._read(self._record_path(replica_id))
        return int(record["pid"]) if record else None
