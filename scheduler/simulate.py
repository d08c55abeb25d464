"""Replay a trace through the real placement code on simulated nodes, one policy at a time.

The platform's behaviour around placement is modelled, the same for every policy: a replica
starts (promised memory, its GPU busy starting) and becomes ready after a start time that
depends on where its weights come from; a ready replica's memory and load show up in the
simulated telemetry; a node keeps the snapshots of what ran on it (LRU under its disk budget);
scaling down puts a vLLM replica to sleep (woken by the next scale-up, stopped after
`sleep_ttl_s`) and stops anything else; a fault kills the replicas on that GPU and they are
placed again. Only `state.place` is timed.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from scheduler.placement import (
    ClusterState,
    NoFit,
    Policy,
    ReplicaRequest,
    ReplicaState,
    Rung,
    RunningReplica,
)
from scheduler.telemetry.base import SpecError, parse_compute_capability
from scheduler.telemetry.simulated import SimulatedInventory
from scheduler.tracegen import ModelSpec, Trace, dump_trace, generate_trace, load_trace

HEARTBEAT_S = 10.0

POLICIES: dict[str, Policy] = {
    "scheduler": Policy(),
    "first-fit": Policy.first_fit(),
    "spread": Policy.spread_baseline(),
}


@dataclass(frozen=True)
class Platform:
    """What the simulation assumes about the platform around placement (the same for every policy)."""

    # Seconds from placement to ready, by rung. Modelled: benchmarks/scheduler_sim.py measures
    # the snapshot-vs-origin ratio for real.
    start_s: dict[Rung, float] = field(default_factory=lambda: {
        Rung.SLEEPING: 2.0, Rung.LOCAL_SNAPSHOT: 20.0, Rung.PEER_SNAPSHOT: 60.0, Rung.ORIGIN: 240.0})
    sleep_ttl_s: float = 900.0
    sleep_held_bytes: int = 1 * 2**30  # CUDA context and allocator pools a sleeping vLLM keeps


@dataclass
class Report:
    policy: str
    placements: int = 0
    refused: int = 0
    rungs: Counter[Rung] = field(default_factory=Counter)
    decision_s: list[float] = field(default_factory=list)
    memory_utilization: float = 0.0  # time-averaged share of all GPU memory promised to serving replicas
    peak_memory_utilization: float = 0.0
    wall_s: float = 0.0

    @property
    def decisions_per_s(self) -> float:
        total = sum(self.decision_s)
        return len(self.decision_s) / total if total else 0.0

    def decision_us(self, q: float) -> float:
        if not self.decision_s:
            return 0.0
        ordered = sorted(self.decision_s)
        return 1e6 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "decisions": len(self.decision_s), "placements": self.placements,
                "refused": self.refused, "decisions_per_s": round(self.decisions_per_s),
                "decision_p50_us": round(self.decision_us(0.5), 1), "decision_p99_us": round(self.decision_us(0.99), 1),
                "memory_utilization": round(self.memory_utilization, 4),
                "peak_memory_utilization": round(self.peak_memory_utilization, 4),
                "cold_starts": {str(r): self.rungs.get(r, 0) for r in Rung}, "wall_s": round(self.wall_s, 2)}


@dataclass
class _Replica:
    replica_id: str
    spec: ModelSpec
    node: str
    gpus: tuple[str, ...]
    state: ReplicaState


class Simulation:
    def __init__(self, trace: Trace, policy: Policy, name: str = "scheduler", platform: Platform | None = None) -> None:
        self.trace, self.platform = trace, platform or Platform()
        self.now = 0.0
        self.inventory = SimulatedInventory(trace.inventory_spec(), clock=lambda: self.now)
        self.state = ClusterState.build(self.inventory.read(), [], policy)
        self.report = Report(name)
        self.specs = {m.model: m for m in trace.models}
        self.requests = {m.model: ReplicaRequest(
            model=m.model, version=m.version, gpu_count=m.gpus, gpu_memory_bytes=m.gpu_memory_bytes,
            min_compute_capability=parse_compute_capability(m.min_compute_capability)) for m in trace.models}
        self.replicas: dict[str, _Replica] = {}
        self.serving: dict[str, list[str]] = {m.model: [] for m in trace.models}  # starting + ready, oldest first
        self.on_gpu: dict[str, set[str]] = {}
        self.caches: dict[str, OrderedDict[str, int]] = {n: OrderedDict() for n in self.inventory.node_names()}
        self.frozen: set[str] = set()
        self.capacity = sum(p.nodes * p.gpus * p.gpu_memory_bytes for p in trace.pools)
        self.allocated = 0
        self._area = 0.0
        self._last_t = 0.0
        self._ids = itertools.count()
        self._queue: list[tuple[float, int, str, Any]] = []

    def run(self) -> Report:
        started = time.perf_counter()
        for event in self.trace.events:
            self._push(float(event["t"]), "trace", event)
        beats = int(self.trace.duration_s // HEARTBEAT_S)
        for i in range(1, beats + 1):
            self._push(i * HEARTBEAT_S, "heartbeat", None)
        while self._queue:
            t, _, kind, payload = heapq.heappop(self._queue)
            if t > self.trace.duration_s:
                break
            self._advance(t)
            getattr(self, f"_on_{kind}")(payload)
        self._advance(self.trace.duration_s)
        self.report.memory_utilization = self._area / (self.trace.duration_s * self.capacity)
        self.report.wall_s = time.perf_counter() - started
        return self.report

    def _push(self, t: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._queue, (t, next(self._ids), kind, payload))

    def _advance(self, t: float) -> None:
        self._area += self.allocated * (t - self._last_t)
        self._last_t = self.now = t

    def _allocate(self, replica: _Replica, sign: int) -> None:
        self.allocated += sign * replica.spec.gpu_memory_bytes * len(replica.gpus)
        self.report.peak_memory_utilization = max(self.report.peak_memory_utilization, self.allocated / self.capacity)

    # --- events ---------------------------------------------------------------------

    def _on_trace(self, event: dict[str, Any]) -> None:
        op = event["op"]
        if op == "scale":
            self._scale(event["model"], int(event["replicas"]))
        elif op == "fault":
            self._fault(event)
        elif op == "repair":
            self._repair(event["node"], int(event["gpu"]))

    def _on_heartbeat(self, _: None) -> None:
        for node in self.caches:
            if node not in self.frozen:
                self.state.heartbeat(node, self.now)

    def _on_ready(self, replica_id: str) -> None:
        replica = self.replicas.get(replica_id)
        if replica is None or replica.state is not ReplicaState.STARTING:
            return
        spec = replica.spec
        replica.state = ReplicaState.READY
        self.state.set_replica_state(replica_id, ReplicaState.READY)
        self.inventory.stop_replica(replica_id, replica.gpus)  # a woken sleeper: replaced by the full allocation
        self.inventory.start_replica(replica_id, replica.gpus, spec.gpu_memory_bytes, spec.utilization_percent)
        self._refresh(replica.node, replica.gpus)
        self._cache(replica.node, spec)

    def _on_expire(self, replica_id: str) -> None:
        replica = self.replicas.get(replica_id)
        if replica is not None and replica.state is ReplicaState.SLEEPING:
            self._remove(replica)

    # --- what the platform does ---------------------------------------------------------

    def _scale(self, model: str, wanted: int) -> None:
        serving = self.serving[model]
        while len(serving) > wanted:
            self._scale_down(self.replicas[serving[-1]])
        for _ in range(wanted - len(serving)):
            if not self._start(self.specs[model]):
                break  # the cluster is full for this model: the rest would be refused too

    def _start(self, spec: ModelSpec) -> bool:
        request = self.requests[spec.model]
        began = time.perf_counter()
        decision = self.state.place(request, self.now, count_refusals=False)
        self.report.decision_s.append(time.perf_counter() - began)
        if isinstance(decision, NoFit):
            self.report.refused += 1
            return False
        self.report.placements += 1
        self.report.rungs[decision.rung] += 1
        if decision.wakes is not None:
            replica = self.replicas[decision.wakes]
            replica.state = ReplicaState.STARTING
            self.state.set_replica_state(replica.replica_id, ReplicaState.STARTING, spec.gpu_memory_bytes)
        else:
            replica = _Replica(f"r{next(self._ids)}", spec, decision.node, decision.gpu_uuids, ReplicaState.STARTING)
            self.replicas[replica.replica_id] = replica
            for uuid in replica.gpus:
                self.on_gpu.setdefault(uuid, set()).add(replica.replica_id)
            self.state.add_replica(RunningReplica(replica.replica_id, spec.model, spec.version, replica.node,
                                                  replica.gpus, spec.gpu_memory_bytes, ReplicaState.STARTING))
        self.serving[spec.model].append(replica.replica_id)
        self._allocate(replica, +1)
        self._push(self.now + self.platform.start_s[decision.rung], "ready", replica.replica_id)
        return True

    def _scale_down(self, replica: _Replica) -> None:
        if replica.state is ReplicaState.READY and replica.spec.sleepable:
            self.serving[replica.spec.model].remove(replica.replica_id)
            self._allocate(replica, -1)
            held = self.platform.sleep_held_bytes
            replica.state = ReplicaState.SLEEPING
            self.state.set_replica_state(replica.replica_id, ReplicaState.SLEEPING, held)
            self.inventory.set_load(replica.replica_id, replica.gpus, 0.0, held)
            self._refresh(replica.node, replica.gpus)
            self._push(self.now + self.platform.sleep_ttl_s, "expire", replica.replica_id)
        else:
            self._remove(replica)

    def _remove(self, replica: _Replica) -> None:
        if replica.state in (ReplicaState.STARTING, ReplicaState.READY):
            self.serving[replica.spec.model].remove(replica.replica_id)
            self._allocate(replica, -1)
        del self.replicas[replica.replica_id]
        for uuid in replica.gpus:
            self.on_gpu.get(uuid, set()).discard(replica.replica_id)
        self.state.remove_replica(replica.replica_id)
        self.inventory.stop_replica(replica.replica_id, replica.gpus)
        self._refresh(replica.node, replica.gpus)

    def _refresh(self, node: str, gpus: tuple[str, ...]) -> None:
        for uuid in gpus:
            reading = self.inventory.gpu_reading(uuid, self.now)
            if reading is not None:
                self.state.update_gpu(node, reading)

    def _cache(self, node: str, spec: ModelSpec) -> None:
        """The node keeps the snapshot of what it ran, least recently used out first."""
        cache = self.caches[node]
        cache[spec.version] = spec.weights_bytes
        cache.move_to_end(spec.version)
        while sum(cache.values()) > self.trace.node_disk_bytes and len(cache) > 1:
            evicted, _ = cache.popitem(last=False)
            self.inventory.drop_cached_version(node, evicted)
        self.inventory.add_cached_version(node, spec.version)
        self.state.set_cached_versions(node, frozenset(cache))

    def _fault(self, event: dict[str, Any]) -> None:
        node, kind = event["node"], event["kind"]
        uuid = f"GPU-sim-{node}-{int(event['gpu'])}"
        if kind == "node_stale":
            self.inventory.freeze_node(node, self.now)
            self.frozen.add(node)
            return
        if kind == "foreign_memory":
            self.inventory.take_memory(uuid, int(event["bytes"]))
            self._refresh(node, (uuid,))
            return
        if kind == "xid":
            self.inventory.inject_xid(uuid, int(event["xid"]))
        elif kind == "gpu_gone":
            self.inventory.remove_gpu(uuid)
        self.state.set_node(self.inventory.node_reading(node, self.now))
        reading = self.inventory.gpu_reading(uuid, self.now)
        if reading is None or not reading.health.healthy:
            lost = [self.replicas[r] for r in sorted(self.on_gpu.get(uuid, ()))]
            for replica in lost:
                self._remove(replica)
            for replica in lost:
                if replica.state is not ReplicaState.SLEEPING:
                    self._start(replica.spec)

    def _repair(self, node: str, gpu: int) -> None:
        self.inventory.clear_faults(f"GPU-sim-{node}-{gpu}")
        self.frozen.discard(node)
        self.state.set_node(self.inventory.node_reading(node, self.now))


def simulate(trace: Trace, policies: dict[str, Policy] | None = None) -> list[Report]:
    return [Simulation(trace, policy, name).run() for name, policy in (policies or POLICIES).items()]


def render(reports: list[Report]) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("decisions", [f"{len(r.decision_s)}" for r in reports]),
        ("decisions/s", [f"{r.decisions_per_s:,.0f}" for r in reports]),
        ("decision p50 / p99 (us)", [f"{r.decision_us(0.5):.0f} / {r.decision_us(0.99):.0f}" for r in reports]),
        ("GPU memory utilization", [f"{100 * r.memory_utilization:.1f}%" for r in reports]),
        ("  peak", [f"{100 * r.peak_memory_utilization:.1f}%" for r in reports]),
        ("placements refused", [f"{r.refused}" for r in reports]),
        *[(f"cold starts: {rung}", [f"{r.rungs.get(rung, 0)}" for r in reports]) for rung in Rung],
        ("mean start time (s, modelled)", [f"{_mean_start(r):.1f}" for r in reports]),
        ("wall time (s)", [f"{r.wall_s:.1f}" for r in reports]),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  " + "".join(f"{r.policy:>16}" for r in reports)]
    lines += [f"{label:{width}}  " + "".join(f"{v:>16}" for v in values) for label, values in rows]
    return "\n".join(lines)


def _mean_start(report: Report) -> float:
    starts = Platform().start_s
    total = sum(report.rungs.values())
    return sum(starts[r] * n for r, n in report.rungs.items()) / total if total else 0.0


def register_commands(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_command(
        trace: Annotated[Path, typer.Argument(help="A trace (JSON lines) from generate-trace.")],
        policy: Annotated[list[str] | None, typer.Option(help=f"Policies to compare: {', '.join(POLICIES)}.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Replay a trace through this scheduler and the first-fit and spread baselines, side by side."""
        chosen = policy or list(POLICIES)
        unknown = [p for p in chosen if p not in POLICIES]
        if unknown:
            typer.secho(f"Error: --policy: expected one of {', '.join(POLICIES)}, got {unknown[0]!r}",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        try:
            loaded = load_trace(trace)
        except (OSError, SpecError) as error:
            typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        reports = simulate(loaded, {p: POLICIES[p] for p in chosen})
        nodes = sum(p.nodes for p in loaded.pools)
        gpus = sum(p.nodes * p.gpus for p in loaded.pools)
        if as_json:
            import json

            typer.echo(json.dumps({"nodes": nodes, "gpus": gpus, "reports": [r.to_dict() for r in reports]}, indent=2))
        else:
            typer.echo(f"{trace.name}: {nodes} nodes, {gpus} GPUs, {len(loaded.events)} events, "
                       f"{loaded.duration_s:.0f} s\n")
            typer.echo(render(reports))

    @app.command("generate-trace")
    def generate_command(
        out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the trace.")],
        nodes: Annotated[int, typer.Option(help="Nodes.")] = 50,
        gpus_per_node: Annotated[int, typer.Option(help="GPUs per node.")] = 8,
        duration: Annotated[float, typer.Option(help="Seconds of simulated time.")] = 3600.0,
        load: Annotated[float, typer.Option(help="Mean demand as a share of GPU memory.")] = 0.85,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
    ) -> None:
        """Write a trace of deployments, load and faults for `simulate`."""
        try:
            trace = generate_trace(nodes, gpus_per_node, duration, seed, load)
        except SpecError as error:
            typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        dump_trace(trace, out)
        typer.echo(f"{out}: {len(trace.models)} models, {len(trace.events)} events")
