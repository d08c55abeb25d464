"""The node inventory of a host with NVIDIA GPUs, read through NVML (nvidia-ml-py).

Health follows NVIDIA's k8s device plugin: a critical XID event marks the GPU
unhealthy unless it is one an application causes (13, 31, 43, 45, 68, 109);
a double-bit (uncorrectable) ECC error always does. Run `watch_health` in a
thread to receive those events; `read()` reports what it has seen.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import pynvml  # type: ignore[import-untyped,unused-ignore]

from scheduler.telemetry.base import (
    GpuHealth,
    GpuProcess,
    GpuReading,
    InventorySnapshot,
    NodeReading,
    frozen_labels,
    xid_marks_unhealthy,
)

_WATCHED_EVENTS = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError


def nvml_available() -> bool:
    """Whether NVML loads and sees at least one GPU on this machine."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


def _optional(read: Callable[[], Any], default: Any) -> Any:
    """A reading some GPUs do not support (power on some boards, temperature in VMs)."""
    try:
        return read()
    except pynvml.NVMLError:
        return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def health_after_event(health: GpuHealth, event_type: int, event_data: int) -> GpuHealth:
    """The device plugin's rules: a critical XID (eventData is the XID) marks the GPU
    unhealthy unless an application caused it; a double-bit ECC error always does."""
    if event_type & pynvml.nvmlEventTypeXidCriticalError:
        return health.with_problem(f"XID {event_data}") if xid_marks_unhealthy(event_data) else health
    if event_type & pynvml.nvmlEventTypeDoubleBitEccError:
        return health.with_problem("double-bit ECC error")
    return health


class NvmlInventory:
    def __init__(self, node_name: str | None = None, labels: Mapping[str, str] | None = None,
                 cached_versions: Callable[[], frozenset[str]] = frozenset,
                 clock: Callable[[], float] = time.time) -> None:
        pynvml.nvmlInit()
        self._node_name = node_name or socket.gethostname()
        self._labels = frozen_labels(labels)
        self._cached_versions = cached_versions
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, GpuHealth] = {}  # uuid -> what events have told us

    def close(self) -> None:
        pynvml.nvmlShutdown()

    def read(self) -> InventorySnapshot:
        gpus = tuple(self._read_gpu(i) for i in range(int(pynvml.nvmlDeviceGetCount())))
        now = self._clock()
        node = NodeReading(self._node_name, gpus, now, self._labels, cpus=float(len(os.sched_getaffinity(0))),
                           cached_versions=self._cached_versions())
        return InventorySnapshot((node,), now)

    def _read_gpu(self, index: int) -> GpuReading:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        try:  # v2 counts memory the driver reserves as not free, as nvidia-smi does
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        except pynvml.NVMLError:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = _optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle), None)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        mig = _optional(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0], pynvml.NVML_DEVICE_MIG_DISABLE)
        processes = _optional(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle), [])
        with self._lock:
            health = self._health.get(uuid, GpuHealth())
        return GpuReading(
            index=index, uuid=uuid, name=_text(pynvml.nvmlDeviceGetName(handle)),
            memory_total_bytes=int(memory.total), memory_used_bytes=int(memory.used),
            memory_free_bytes=int(memory.free), compute_capability=(int(major), int(minor)),
            read_at=self._clock(),
            utilization_percent=float(utilization.gpu) if utilization else 0.0,
            memory_utilization_percent=float(utilization.memory) if utilization else 0.0,
            temperature_c=float(_optional(
                lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU), 0.0)),
            power_w=float(_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle), 0)) / 1000.0,
            mig_enabled=int(mig) == pynvml.NVML_DEVICE_MIG_ENABLE,
            processes=tuple(GpuProcess(int(p.pid), int(p.usedGpuMemory or 0)) for p in processes),
            health=health,
        )

    def record_event(self, uuid: str, event_type: int, event_data: int) -> GpuHealth:
        """Apply one NVML event to that GPU's health; its new health."""
        with self._lock:
            health = health_after_event(self._health.get(uuid, GpuHealth()), event_type, event_data)
            self._health[uuid] = health
            return health

    def watch_health(self, stop: threading.Event, timeout_ms: int = 1000) -> None:
        """Block, applying XID/ECC events to the GPUs' health, until `stop` is set."""
        events = pynvml.nvmlEventSetCreate()
        try:
            for i in range(int(pynvml.nvmlDeviceGetCount())):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                supported = _optional(partial(pynvml.nvmlDeviceGetSupportedEventTypes, handle), 0)
                if int(supported) & _WATCHED_EVENTS:
                    pynvml.nvmlDeviceRegisterEvents(handle, int(supported) & _WATCHED_EVENTS, events)
            while not stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait_v2(events, timeout_ms)
                except pynvml.NVMLError as error:
                    if error.value == pynvml.NVML_ERROR_TIMEOUT:
                        continue
                    raise
                self.record_event(_text(pynvml.nvmlDeviceGetUUID(data.device)), int(data.eventType),
                                  int(data.eventData))
        finally:
            pynvml.nvmlEventSetFree(events)
