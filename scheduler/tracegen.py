"""Scheduler traces: deployments, load (desired replica counts over time) and faults, as JSON lines.

The first line is the header (node pools, the models with what each replica needs); every other
line is one event, in time order:

    {"t": 0.0, "op": "scale", "model": "t3/llm-8b", "replicas": 4}
    {"t": 812.5, "op": "fault", "kind": "xid", "node": "h100-17", "gpu": 3, "xid": 79}
    {"t": 812.5, "op": "fault", "kind": "gpu_gone" | "foreign_memory" | "node_stale", ...}
    {"t": 1400.0, "op": "repair", "node": "h100-17", "gpu": 3}
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scheduler.placement.model import gpu_memory_for_model
from scheduler.telemetry.base import SpecError

GIB = 2**30
TRACE_FORMAT = "cogkit-scheduler-trace/1"


@dataclass(frozen=True)
class Pool:
    name: str
    nodes: int
    gpus: int
    gpu_memory_bytes: int
    compute_capability: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    model: str
    version: str
    gpus: int
    gpu_memory_bytes: int  # per GPU
    weights_bytes: int
    sleepable: bool  # a vLLM server: scale-down puts it to sleep instead of stopping it
    min_compute_capability: str = "0.0"
    utilization_percent: float = 50.0


@dataclass(frozen=True)
class Trace:
    duration_s: float
    node_disk_bytes: int  # each node's snapshot cache budget
    pools: tuple[Pool, ...]
    models: tuple[ModelSpec, ...]
    events: tuple[dict[str, Any], ...]

    def inventory_spec(self) -> dict[str, Any]:
        return {"nodes": [
            {"name": p.name, "count": p.nodes, "labels": p.labels,
             "gpus": {"count": p.gpus, "name": f"sim-{p.name}", "memory": p.gpu_memory_bytes,
                      "compute_capability": p.compute_capability}}
            for p in self.pools]}


def dump_trace(trace: Trace, path: str | Path) -> None:
    header = {"format": TRACE_FORMAT, "duration_s": trace.duration_s, "node_disk_bytes": trace.node_disk_bytes,
              "pools": [asdict(p) for p in trace.pools], "models": [asdict(m) for m in trace.models]}
    with Path(path).open("w") as out:
        out.write(json.dumps(header) + "\n")
        out.writelines(json.dumps(event, separators=(",", ":")) + "\n" for event in trace.events)


def load_trace(path: str | Path) -> Trace:
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise SpecError(f"{path}: empty trace")
    try:
        header = json.loads(lines[0])
        events = tuple(json.loads(line) for line in lines[1:] if line.strip())
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}: not JSON lines ({error})") from None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise SpecError(f"{path}: line 1: expected a header with format {TRACE_FORMAT!r}")
    try:
        pools = tuple(Pool(**p) for p in header["pools"])
        models = tuple(ModelSpec(**m) for m in header["models"])
        trace = Trace(float(header["duration_s"]), int(header["node_disk_bytes"]), pools, models, events)
    except (KeyError, TypeError) as error:
        raise SpecError(f"{path}: line 1: bad header ({error})") from None
    known = {m.model for m in models}
    for n, event in enumerate(events, start=2):
        if not isinstance(event, dict) or not isinstance(event.get("t"), int | float):
            raise SpecError(f"{path}: line {n}: expected an event with a time 't'")
        if event.get("op") == "scale" and event.get("model") not in known:
            raise SpecError(f"{path}: line {n}: model {event.get('model')!r} is not in the header")
    return trace


# (name, weights GiB, KV-cache GiB, GPUs, sleepable, min compute capability, utilization %, share of demand)
_CATALOGUE = (
    ("embed", 1, 0, 1, False, "0.0", 20, 0.01),
    ("whisper", 3, 0, 1, False, "0.0", 35, 0.02),
    ("sdxl", 7, 0, 1, False, "0.0", 80, 0.07),
    ("llm-8b", 16, 8, 1, True, "0.0", 55, 0.25),
    ("llm-14b", 28, 10, 1, True, "8.0", 60, 0.15),
    ("llm-32b", 64, 8, 1, True, "8.0", 65, 0.15),
    ("llm-70b-fp8", 70, 20, 2, True, "8.9", 70, 0.2),
    ("llm-405b-fp8", 405, 40, 8, True, "9.0", 75, 0.15),
)
MAX_REPLICAS = 64  # a deployment's max_replicas: more demand for one model means more tenants


def _tenant_demand(total: float, rng: random.Random) -> list[float]:
    """Mean replicas per tenant of one model family: heavy-tailed (Pareto), 1 to MAX_REPLICAS,
    with as many tenants as it takes to carry the family's demand."""
    demand: list[float] = []
    while sum(demand) < total:
        demand.append(min(float(MAX_REPLICAS), rng.paretovariate(1.3)))
    return demand


def generate_trace(nodes: int = 50, gpus_per_node: int = 8, duration_s: float = 3600.0, seed: int = 1,
                   load: float = 0.85, fault_rate_per_node_hour: float = 0.02) -> Trace:
    """A day-shaped load on a mixed fleet: pools of H100/A100/L4 nodes, Zipf-popular models,
    XIDs, GPUs falling off, foreign processes and stale nodes, each repaired later."""
    if nodes < 1 or gpus_per_node < 1 or duration_s <= 0:
        raise SpecError("nodes, gpus_per_node and duration_s: expected positive values")
    rng = random.Random(seed)
    h100 = max(1, round(nodes * 0.5))
    a100 = max(0, round(nodes * 0.35))
    l4 = max(0, nodes - h100 - a100)
    pools = tuple(p for p in (
        Pool("h100", h100, gpus_per_node, 80 * GIB, "9.0", {"gpu": "h100"}),
        Pool("a100", a100, gpus_per_node, 80 * GIB, "8.0", {"gpu": "a100"}),
        Pool("l4", l4, gpus_per_node, 24 * GIB, "8.9", {"gpu": "l4"}),
    ) if p.nodes)
    capacity = sum(p.nodes * p.gpus * p.gpu_memory_bytes for p in pools)

    models: list[ModelSpec] = []
    mean_replicas: dict[str, float] = {}
    for name, weights, kv, gpus, sleepable, min_cc, util, share in _CATALOGUE:
        if gpus > gpus_per_node:
            continue
        memory = gpu_memory_for_model(weights * GIB, kv * GIB, 2 * GIB, gpus)
        for tenant, replicas in enumerate(_tenant_demand(load * capacity * share / (gpus * memory), rng)):
            spec = ModelSpec(f"t{tenant}/{name}", f"{name}-t{tenant}-v1", gpus, memory, weights * GIB,
                             sleepable, min_cc, float(util))
            models.append(spec)
            mean_replicas[spec.model] = replicas

    events: list[dict[str, Any]] = []
    for m in models:
        phase = rng.uniform(0, 2 * math.pi)
        t = 0.0
        while t < duration_s:
            level = 1.0 + 0.25 * math.sin(2 * math.pi * t / duration_s + phase)
            wanted = mean_replicas[m.model] * level * rng.uniform(0.85, 1.15)
            replicas = int(wanted) + (1 if rng.random() < wanted - int(wanted) else 0)
            events.append({"t": round(t, 3), "op": "scale", "model": m.model, "replicas": replicas})
            t += rng.uniform(120, 600)
    node_names = [f"{p.name}-{i}" for p in pools for i in range(p.nodes)]
    faults = rng.randint(0, 1) + int(fault_rate_per_node_hour * nodes * duration_s / 3600)
    for _ in range(faults):
        t = round(rng.uniform(0.1, 0.9) * duration_s, 3)
        node = rng.choice(node_names)
        gpu = rng.randrange(gpus_per_node)
        kind = rng.choice(["xid", "xid", "gpu_gone", "foreign_memory", "node_stale"])
        fault: dict[str, Any] = {"t": t, "op": "fault", "kind": kind, "node": node, "gpu": gpu}
        if kind == "xid":
            fault["xid"] = rng.choice([13, 31, 48, 63, 79, 94])  # 13 and 31 leave the GPU healthy
        if kind == "foreign_memory":
            fault["bytes"] = rng.choice([4, 16, 40]) * GIB
        events.append(fault)
        events.append({"t": round(t + rng.uniform(300, 900), 3), "op": "repair", "node": node, "gpu": gpu})
    events.sort(key=lambda e: (e["t"], e["op"] != "fault"))
    return Trace(duration_s, 2 * 10**12, pools, tuple(models), tuple(e for e in events if e["t"] < duration_s))
