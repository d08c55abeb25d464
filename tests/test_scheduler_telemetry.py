"""The node inventory: the simulated one (YAML, load, faults), health rules, NVML where a GPU exists."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pynvml
import pytest

from scheduler.telemetry import (
    APPLICATION_XIDS,
    GpuHealth,
    PollingInventory,
    SimulatedInventory,
    parse_bytes,
    parse_compute_capability,
)
from scheduler.telemetry.base import SpecError
from scheduler.telemetry.nvml import health_after_event, nvml_available

GIB = 2**30


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def inventory(clock: Clock | None = None) -> SimulatedInventory:
    return SimulatedInventory({"nodes": [
        {"name": "big", "count": 2, "labels": {"zone": "eu"}, "cpus": 32, "cached_versions": ["v1"],
         "gpus": {"count": 4, "name": "NVIDIA A100-SXM4-80GB", "memory": "80GiB", "compute_capability": "8.0"}},
        {"name": "small", "gpus": [{"name": "NVIDIA L4", "memory": "24GiB", "compute_capability": "8.9"}]},
    ]}, clock or Clock())


def test_sizes_and_capabilities_parse_or_name_the_field() -> None:
    assert parse_bytes("80GiB") == 80 * GIB
    assert parse_bytes("512 MB") == 512 * 10**6
    assert parse_bytes(1024) == 1024
    assert parse_compute_capability("8.6") == (8, 6)
    with pytest.raises(SpecError, match=r"gpus\[0\]\.memory: expected a size"):
        parse_bytes("lots", "gpus[0].memory")
    with pytest.raises(SpecError, match="compute_capability: expected MAJOR.MINOR"):
        parse_compute_capability("eight")


def test_yaml_describes_nodes_and_gpus(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("nodes:\n  - name: n\n    count: 3\n    labels: {gpu: h100}\n"
                    "    gpus: {count: 8, memory: 80GiB, compute_capability: '9.0'}\n")
    snapshot = SimulatedInventory.from_yaml(path, Clock()).read()
    assert [n.name for n in snapshot.nodes] == ["n-0", "n-1", "n-2"]
    node = snapshot.nodes[1]
    assert len(node.gpus) == 8 and node.labels == {"gpu": "h100"}
    gpu = node.gpus[3]
    assert gpu.compute_capability == (9, 0) and gpu.memory_total_bytes == 80 * GIB
    assert gpu.memory_free_bytes + gpu.memory_used_bytes == gpu.memory_total_bytes
    assert len({g.uuid for n in snapshot.nodes for g in n.gpus}) == 24


@pytest.mark.parametrize(("spec", "error"), [
    ({}, "nodes: expected a non-empty list"),
    ({"nodes": [{"gpus": []}]}, r"nodes\[0\]\.name"),
    ({"nodes": [{"name": "a", "count": 0}]}, r"nodes\[0\]\.count: expected an integer >= 1"),
    ({"nodes": [{"name": "a", "gpus": {"count": 1}}]}, r"nodes\[0\]\.gpus\[0\]\.memory"),
    ({"nodes": [{"name": "a"}, {"name": "a"}]}, r"nodes\[1\]\.name: node 'a' is declared twice"),
    ({"nodes": [{"name": "a", "labels": ["x"]}]}, r"nodes\[0\]\.labels"),
])
def test_bad_inventory_specs_name_the_field(spec: dict[str, object], error: str) -> None:
    with pytest.raises(SpecError, match=error):
        SimulatedInventory(spec)


def test_load_follows_the_replicas_placed_on_it() -> None:
    inv = inventory()
    uuid = inv.read().nodes[0].gpus[0].uuid
    idle = inv.gpu_reading(uuid)
    assert idle is not None and idle.utilization_percent == 0
    inv.start_replica("r1", (uuid,), 30 * GIB, utilization_percent=40)
    busy = inv.gpu_reading(uuid)
    assert busy is not None
    assert busy.memory_used_bytes == idle.memory_used_bytes + 30 * GIB
    assert busy.utilization_percent == 40
    assert [p.name for p in busy.processes] == ["r1"]
    inv.set_load("r1", (uuid,), 90)
    assert inv.gpu_reading(uuid).utilization_percent == 90  # type: ignore[union-attr]
    inv.stop_replica("r1", (uuid,))
    assert inv.gpu_reading(uuid) == idle


def test_faults_xid_ecc_gone_foreign_memory_and_stale() -> None:
    clock = Clock()
    inv = inventory(clock)
    gpus = [g.uuid for g in inv.read().nodes[0].gpus]
    inv.inject_xid(gpus[0], 79)  # fallen off the bus
    inv.inject_xid(gpus[1], 13)  # an application's illegal access: the GPU is fine
    inv.inject_ecc_error(gpus[2])
    inv.take_memory(gpus[3], 10 * GIB)
    node = inv.read().nodes[0]
    assert node.gpus[0].health == GpuHealth(False, ("XID 79",))
    assert node.gpus[1].health.healthy
    assert node.gpus[2].health == GpuHealth(False, ("double-bit ECC error",))
    assert node.gpus[3].memory_used_bytes >= 10 * GIB and node.gpus[3].processes[0].name == "foreign"
    inv.remove_gpu(gpus[0])
    assert [g.uuid for g in inv.read().nodes[0].gpus] == gpus[1:]
    inv.freeze_node("big-0")
    clock.t += 120
    snapshot = inv.read()
    assert snapshot.nodes[0].age(clock.t) == 120 and snapshot.nodes[0].gpus[0].age(clock.t) == 120
    assert snapshot.nodes[1].age(clock.t) == 0
    inv.clear_faults(gpus[0])
    assert len(inv.read().nodes[0].gpus) == 4


@pytest.mark.parametrize("xid", sorted(APPLICATION_XIDS))
def test_application_xids_leave_a_gpu_healthy(xid: int) -> None:
    assert health_after_event(GpuHealth(), pynvml.nvmlEventTypeXidCriticalError, xid).healthy


@pytest.mark.parametrize("xid", [48, 62, 63, 64, 74, 79, 92, 94, 95, 119])
def test_other_xids_mark_a_gpu_unhealthy(xid: int) -> None:
    health = health_after_event(GpuHealth(), pynvml.nvmlEventTypeXidCriticalError, xid)
    assert not health.healthy and health.reasons == (f"XID {xid}",)


def test_ecc_events_double_bit_unhealthy_single_bit_ignored() -> None:
    assert not health_after_event(GpuHealth(), pynvml.nvmlEventTypeDoubleBitEccError, 0).healthy
    assert health_after_event(GpuHealth(), pynvml.nvmlEventTypeSingleBitEccError, 0).healthy


def test_polling_inventory_serves_the_last_reading() -> None:
    clock = Clock()
    inv = inventory(clock)
    polled = PollingInventory(inv, interval_s=0.01).start()
    try:
        first = polled.read().taken_at
        clock.t += 5
        changed = threading.Event()
        for _ in range(500):  # wait on the condition: a newer reading appears
            if polled.read().taken_at > first:
                changed.set()
                break
            changed.wait(0.01)
        assert changed.is_set()
    finally:
        polled.stop()


@pytest.mark.skipif(shutil.which("nvidia-smi") is None and not nvml_available(),
                    reason="no NVIDIA GPU/NVML on this machine")
def test_real_nvml_reads_every_gpu() -> None:
    from scheduler.telemetry.nvml import NvmlInventory

    inv = NvmlInventory(node_name="gpu-host")
    try:
        snapshot = inv.read()
        node = snapshot.nodes[0]
        assert node.name == "gpu-host" and node.gpus
        for gpu in node.gpus:
            assert gpu.uuid.startswith(("GPU-", "MIG-")) and gpu.name
            assert gpu.memory_total_bytes > 0
            assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
            assert gpu.compute_capability >= (3, 0)
            assert gpu.health.healthy
        stop = threading.Event()
        watcher = threading.Thread(target=inv.watch_health, args=(stop, 100))
        watcher.start()
        stop.set()
        watcher.join(timeout=10)
        assert not watcher.is_alive()
    finally:
        inv.close()


def test_metrics_export_every_gpu_reading() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from scheduler.telemetry.metrics import InventoryCollector

    clock = Clock()
    inv = inventory(clock)
    uuid = inv.read().nodes[0].gpus[0].uuid
    inv.start_replica("r1", (uuid,), 30 * GIB, utilization_percent=40)
    inv.inject_xid(uuid, 79)
    registry = CollectorRegistry()
    registry.register(InventoryCollector(inv, clock))
    text = generate_latest(registry).decode()
    labels = f'gpu="0",name="NVIDIA A100-SXM4-80GB",node="big-0",uuid="{uuid}"'
    assert f"cogkit_gpu_utilization_percent{{{labels}}} 40.0" in text
    assert f"cogkit_gpu_healthy{{{labels}}} 0.0" in text
    assert text.count("cogkit_gpu_memory_total_bytes{") == 9
