"""Placement as a pure function: every filter, every score rule, the baselines, the index."""

from __future__ import annotations

import random

import pytest

from scheduler.placement import (
    ClusterState,
    NoFit,
    Placement,
    Policy,
    ReplicaRequest,
    ReplicaState,
    Rung,
    RunningReplica,
    Strategy,
    explain,
    first_fit,
    gpu_memory_for_model,
    place,
)
from scheduler.placement.evaluate import TOO_FEW
from scheduler.placement.state import (
    CAPABILITY,
    CPUS,
    LABELS,
    MEMORY_LIVE,
    MEMORY_PROMISED,
    MIG,
    STALE,
    STARTING,
    UNHEALTHY,
    UNREACHABLE,
)
from scheduler.telemetry import GpuHealth, GpuReading, InventorySnapshot, NodeReading
from scheduler.telemetry.base import frozen_labels

GIB = 2**30
NOW = 1000.0


def gpu(uuid: str, total: int = 80, used: int = 0, *, cc: tuple[int, int] = (8, 0), util: float = 0.0,
        healthy: bool = True, mig: bool = False, read_at: float = NOW, index: int = 0) -> GpuReading:
    return GpuReading(index=index, uuid=uuid, name="sim", memory_total_bytes=total * GIB,
                      memory_used_bytes=used * GIB, memory_free_bytes=(total - used) * GIB, compute_capability=cc,
                      read_at=read_at, utilization_percent=util,
                      health=GpuHealth() if healthy else GpuHealth(False, ("XID 79",)), mig_enabled=mig)


def node(name: str, *gpus: GpuReading, labels: dict[str, str] | None = None, cached: tuple[str, ...] = (),
         read_at: float = NOW, reachable: bool = True, cpus: float = 0.0) -> NodeReading:
    return NodeReading(name, tuple(gpus), read_at, frozen_labels(labels), cpus, 0, frozenset(cached), reachable)


def snap(*nodes: NodeReading) -> InventorySnapshot:
    return InventorySnapshot(tuple(nodes), NOW)


def req(memory_gib: float = 20, gpus: int = 1, **kw: object) -> ReplicaRequest:
    return ReplicaRequest(model=str(kw.pop("model", "acme/llm")), version=str(kw.pop("version", "v1")),
                          gpu_count=gpus, gpu_memory_bytes=int(memory_gib * GIB), **kw)  # type: ignore[arg-type]


def replica(rid: str, node_name: str, *uuids: str, memory_gib: float = 20, state: ReplicaState = ReplicaState.READY,
            model: str = "acme/llm", version: str = "v1") -> RunningReplica:
    return RunningReplica(rid, model, version, node_name, uuids, int(memory_gib * GIB), state)


def placed(decision: Placement | NoFit) -> Placement:
    assert isinstance(decision, Placement), decision
    return decision


def refused(decision: Placement | NoFit) -> NoFit:
    assert isinstance(decision, NoFit), decision
    return decision


# --- the request -------------------------------------------------------------------

def test_gpu_memory_from_the_model() -> None:
    assert gpu_memory_for_model(14 * GIB, 4 * GIB, 2 * GIB) == 20 * GIB
    assert gpu_memory_for_model(140 * GIB, 20 * GIB, 2 * GIB, gpu_count=2) == 82 * GIB
    with pytest.raises(ValueError, match="gpu_count"):
        gpu_memory_for_model(1, gpu_count=0)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"model": "", "version": "v"}, "model"),
    ({"model": "m", "version": "v", "gpu_count": -1}, "gpu_count"),
    ({"model": "m", "version": "v", "gpu_count": 1}, "gpu_memory_bytes"),
    ({"model": "m", "version": "v", "gpu_count": 0, "cpus": -1}, "cpus"),
])
def test_bad_requests_name_the_field(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ReplicaRequest(**kwargs)  # type: ignore[arg-type]


# --- filters -------------------------------------------------------------------------

def only_gpu_left(inventory: InventorySnapshot, request: ReplicaRequest, running: list[RunningReplica] = (),  # type: ignore[assignment]
                  now: float = NOW) -> str:
    return placed(place(inventory, running, request, now=now)).gpu_uuids[0]


def test_unhealthy_gpus_are_filtered() -> None:
    inv = snap(node("a", gpu("bad", healthy=False), gpu("good", used=40)))
    assert only_gpu_left(inv, req()) == "good"
    assert refused(place(snap(node("a", gpu("bad", healthy=False))), [], req())).failures == {UNHEALTHY: 1}


def test_mig_gpus_are_filtered() -> None:
    assert refused(place(snap(node("a", gpu("m", mig=True))), [], req())).failures == {MIG: 1}


def test_unreachable_nodes_are_filtered() -> None:
    inv = snap(node("a", gpu("g1"), reachable=False), node("b", gpu("g2", used=50)))
    assert only_gpu_left(inv, req()) == "g2"


def test_stale_telemetry_is_filtered_by_gpu_and_by_node() -> None:
    inv = snap(node("a", gpu("old", read_at=NOW - 60)), node("b", gpu("g", read_at=NOW - 60), read_at=NOW - 60),
               node("c", gpu("fresh", used=50)))
    assert only_gpu_left(inv, req()) == "fresh"
    failures = refused(place(inv, [], req(), now=NOW + 100)).failures
    assert failures[STALE] == 3
    assert len(explain(inv, [], req(), Policy(max_telemetry_age_s=120)).candidates) == 3


def test_compute_capability_is_a_minimum() -> None:
    inv = snap(node("a", gpu("turing", cc=(7, 5)), gpu("ampere", cc=(8, 0), used=55), gpu("hopper", cc=(9, 0), used=40)))
    assert only_gpu_left(inv, req(min_compute_capability=(8, 0))) == "ampere"
    assert only_gpu_left(inv, req(min_compute_capability=(8, 9))) == "hopper"
    assert refused(place(inv, [], req(min_compute_capability=(10, 0)))).failures == {CAPABILITY: 3}


def test_node_labels_must_all_match() -> None:
    inv = snap(node("a", gpu("g1"), labels={"zone": "us"}), node("b", gpu("g2", used=50), labels={"zone": "eu", "x": "1"}))
    assert only_gpu_left(inv, req(node_labels={"zone": "eu"})) == "g2"
    assert refused(place(inv, [], req(node_labels={"zone": "eu", "x": "2"}))).failures == {LABELS: 2}


def test_cpus_promised_on_a_node_are_counted() -> None:
    inv = snap(node("a", gpu("g1"), gpu("g2"), cpus=8))
    running = [RunningReplica("r", "other/m", "o1", "a", ("g1",), 10 * GIB, ReplicaState.READY, cpus=6)]
    assert isinstance(place(inv, running, req(cpus=2)), Placement)
    assert refused(place(inv, running, req(cpus=4))).failures == {CPUS: 2}


def test_never_two_replicas_starting_on_one_gpu() -> None:
    inv = snap(node("a", gpu("g1"), gpu("g2")))
    running = [replica("r1", "a", "g1", memory_gib=10, state=ReplicaState.STARTING, model="other/m")]
    assert only_gpu_left(inv, req(memory_gib=10), running) == "g2"
    running.append(replica("r2", "a", "g2", memory_gib=10, state=ReplicaState.STARTING, model="other/m"))
    assert refused(place(inv, running, req(memory_gib=10))).failures == {STARTING: 2}
    # once ready, the GPU takes another starting replica
    ready = [replica("r1", "a", "g1", memory_gib=10, model="other/m")]
    inv_used = snap(node("a", gpu("g1", used=10)))
    assert only_gpu_left(inv_used, req(memory_gib=10), ready) == "g1"


def test_memory_by_live_telemetry_catches_foreign_processes() -> None:
    # nothing promised on g1, but a process we did not start holds 70 GiB
    inv = snap(node("a", gpu("g1", used=70), gpu("g2", used=30)))
    assert only_gpu_left(inv, req()) == "g2"
    assert refused(place(snap(node("a", gpu("g1", used=70))), [], req())).failures == {MEMORY_LIVE: 1}


def test_memory_promised_to_starting_replicas_counts_before_telemetry_shows_it() -> None:
    # the starting replica's 50 GiB is not in the reading yet; live free alone would say 80 GiB free
    inv = snap(node("a", gpu("g1")))
    running = [replica("r1", "a", "g1", memory_gib=50, state=ReplicaState.STARTING, model="other/m")]
    failures = refused(place(inv, running, req(memory_gib=30))).failures
    assert failures[MEMORY_LIVE] == 1 and failures[MEMORY_PROMISED] == 1


def test_memory_promised_to_ready_replicas_counts_even_when_telemetry_lags_low() -> None:
    # a ready replica promised 60 GiB but is using only 20 right now: its KV cache may grow back
    inv = snap(node("a", gpu("g1", used=20)))
    running = [replica("r1", "a", "g1", memory_gib=60, model="other/m")]
    assert refused(place(inv, running, req(memory_gib=20))).failures == {MEMORY_PROMISED: 1}


def test_safety_margin_is_kept_free() -> None:
    inv = snap(node("a", gpu("g1", total=80, used=0)))
    assert isinstance(place(inv, [], req(memory_gib=80)), NoFit)  # 5% margin
    assert isinstance(place(inv, [], req(memory_gib=76)), Placement)
    assert isinstance(place(inv, [], req(memory_gib=80), Policy(memory_margin_fraction=0.0)), Placement)


def test_multi_gpu_replicas_need_enough_eligible_gpus_on_one_node() -> None:
    inv = snap(node("a", gpu("a1"), gpu("a2", healthy=False)), node("b", gpu("b1"), gpu("b2"), gpu("b3", used=70)))
    decision = placed(place(inv, [], req(gpus=2)))
    assert decision.node == "b" and set(decision.gpu_uuids) == {"b1", "b2"}
    assert refused(place(inv, [], req(gpus=3))).failures[TOO_FEW] == 2


def test_cpu_only_replicas_get_a_node_and_no_gpu() -> None:
    inv = snap(node("a", gpu("g1"), labels={"pool": "gpu"}), node("cpu", labels={"pool": "cpu"}))
    decision = placed(place(inv, [], ReplicaRequest(model="m/cpu", version="v", gpu_count=0,
                                                   node_labels={"pool": "cpu"})))
    assert decision.node == "cpu" and decision.gpu_uuids == ()
    nofit = refused(place(snap(node("a", reachable=False)), [], ReplicaRequest("m/cpu", "v", gpu_count=0)))
    assert nofit.failures == {UNREACHABLE: 1}


def test_no_fit_says_which_constraint_failed_on_how_many_gpus() -> None:
    inv = snap(node("a", gpu("g1", healthy=False), gpu("g2", used=75), gpu("g3", used=75)))
    nofit = refused(place(inv, [], req()))
    assert nofit.gpus_considered == 3
    assert nofit.message == ("nothing fits 1 GPU(s) with 20.0 GiB each for acme/llm: "
                             "memory (live telemetry) on 2 GPUs, unhealthy GPU on 1 GPUs")
    assert nofit.failures == {MEMORY_LIVE: 2, UNHEALTHY: 1}
    assert "memory (live telemetry) on 2 GPUs" in nofit.message


# --- scores --------------------------------------------------------------------------

def test_pack_fills_the_fullest_gpu_that_fits_spread_the_emptiest() -> None:
    inv = snap(node("a", gpu("empty"), gpu("half", used=40), gpu("full", used=70)))
    assert only_gpu_left(inv, req()) == "half"
    assert placed(place(inv, [], req(), Policy(strategy=Strategy.SPREAD))).gpu_uuids == ("empty",)


def test_busy_gpus_lose_in_proportion_to_load_above_the_threshold() -> None:
    inv = snap(node("a", gpu("busy", util=90), gpu("idle", util=5)))
    decision = placed(place(inv, [], req()))
    assert decision.gpu_uuids == ("idle",) and decision.terms.utilization == 0.0
    busy = explain(inv, [], req()).candidates[1]
    assert busy.gpu_uuids == ("busy",) and busy.terms.utilization == pytest.approx(-0.5 * 40 / 50)
    # a little more memory fit does not outweigh a hot GPU; at 50% there is no penalty
    tight = snap(node("a", gpu("hot", used=30, util=100), gpu("cool", used=20, util=50)))
    assert placed(place(tight, [], req())).gpu_uuids == ("cool",)


def test_locality_ladder_sleeping_beats_local_beats_peer_beats_origin() -> None:
    sleeping = replica("zz", "s", "s1", memory_gib=1, state=ReplicaState.SLEEPING)
    inv = snap(node("origin", gpu("o1", used=40)), node("s", gpu("s1", used=1)),
               node("local", gpu("l1"), cached=("v1",)), node("peer", gpu("p1", used=39), cached=("v2",)))
    first = placed(place(inv, [sleeping], req()))
    assert (first.gpu_uuids, first.rung, first.wakes) == (("s1",), Rung.SLEEPING, "zz")
    second = placed(place(inv, [], req()))
    assert (second.node, second.rung) == ("local", Rung.LOCAL_SNAPSHOT)
    assert placed(place(inv, [], req(version="v2"))).node == "peer"
    no_snapshot = snap(node("origin", gpu("o1", used=40)))
    assert placed(place(no_snapshot, [], req(version="v9"))).rung is Rung.ORIGIN
    peer = snap(node("x", gpu("x1")), node("y", cached=("v3",)))
    assert placed(place(peer, [], req(version="v3"))).rung is Rung.PEER_SNAPSHOT


def test_waking_a_sleeping_instance_reuses_the_memory_it_holds() -> None:
    # the sleeper holds 70 GiB on s1; for its own version that memory counts as free
    inv = snap(node("s", gpu("s1", used=70)))
    sleeping = replica("zz", "s", "s1", memory_gib=70, state=ReplicaState.SLEEPING)
    assert placed(place(inv, [sleeping], req(memory_gib=60))).wakes == "zz"
    assert isinstance(place(inv, [sleeping], req(memory_gib=60, version="other")), NoFit)


def test_anti_affinity_spreads_replicas_of_one_model() -> None:
    inv = snap(node("a", gpu("a1"), gpu("a2")), node("b", gpu("b1")))
    on_a1 = [replica("r1", "a", "a1", memory_gib=20)]
    live = snap(node("a", gpu("a1", used=20), gpu("a2")), node("b", gpu("b1")))
    decision = placed(place(live, on_a1, req()))
    assert decision.node == "b" and decision.terms.anti_affinity == 0.0
    # another model is packed next to it
    other = placed(place(live, on_a1, req(model="other/m")))
    assert other.gpu_uuids == ("a1",)
    # with b gone, the same node beats the same GPU
    assert placed(place(snap(node("a", gpu("a1", used=20), gpu("a2"))), on_a1, req())).gpu_uuids == ("a2",)
    assert placed(place(inv, on_a1, req())).terms.anti_affinity == 0.0


def test_first_fit_takes_the_first_gpu_in_inventory_order() -> None:
    inv = snap(node("a", gpu("a1", used=70), gpu("a2", used=50)), node("b", gpu("b1", used=10), cached=("v1",)))
    decision = placed(first_fit(inv, [], req()))
    assert decision.gpu_uuids == ("a2",) and decision.score == 0.0


def test_spread_baseline_ignores_locality() -> None:
    inv = snap(node("a", gpu("a1")), node("b", gpu("b1", used=10), cached=("v1",)))
    assert placed(place(inv, [], req(), Policy.spread_baseline())).gpu_uuids == ("a1",)
    assert placed(place(inv, [], req())).gpu_uuids == ("b1",)


# --- explain -------------------------------------------------------------------------

def test_explain_lists_every_candidate_and_why_the_winner_won() -> None:
    inv = snap(node("a", gpu("a1"), gpu("a2", healthy=False)), node("b", gpu("b1", used=30), cached=("v1",)))
    result = explain(inv, [], req())
    assert [c.gpu_uuids for c in result.candidates] == [("b1",), ("a1",)]
    assert result.failures == {UNHEALTHY: 1} and result.gpus_considered == 3
    assert result.why().startswith("b/b1 beat a/a1 by ")
    assert "locality +1.000" in result.why() and "(local_snapshot vs peer_snapshot)" in result.why()
    data = result.to_dict()
    assert data["decision"]["fits"] is True and data["decision"]["node"] == "b"
    assert data["candidates"][0]["locality"] == 2.0 and data["filtered"] == {UNHEALTHY: 1}
    text = result.render()
    assert "b/b1" in text and "unhealthy GPU: 1" in text


def test_explain_when_nothing_fits_gives_the_reason() -> None:
    result = explain(snap(node("a", gpu("a1", used=79))), [], req())
    assert isinstance(result.decision, NoFit)
    assert result.why() == result.decision.message and "memory (live telemetry) on 1 GPUs" in result.why()
    assert result.to_dict()["decision"]["fits"] is False


# --- the index gives the same answers as scoring everything ---------------------------

def random_cluster(rng: random.Random, nodes: int) -> tuple[InventorySnapshot, list[RunningReplica]]:
    readings, running = [], []
    for n in range(nodes):
        gpus = []
        for i in range(rng.choice([1, 2, 4, 8])):
            total = rng.choice([24, 40, 80])
            used = rng.choice([0, 0, 5, 10, 20, 30, 60])
            used = min(used, total)
            gpus.append(gpu(f"n{n}g{i}", total, used, cc=rng.choice([(7, 5), (8, 0), (9, 0)]),
                            util=rng.choice([0.0, 10.0, 50.0, 55.0, 72.5, 90.0]), healthy=rng.random() > 0.05,
                            read_at=NOW - rng.choice([0, 0, 0, 100]), index=i))
            if used and rng.random() < 0.5:
                state = rng.choice(list(ReplicaState))
                running.append(replica(f"r{n}-{i}", f"n{n}", f"n{n}g{i}", memory_gib=used, state=state,
                                       model=rng.choice(["acme/llm", "acme/img"]), version=rng.choice(["v1", "v2"])))
        cached = tuple(v for v in ("v1", "v2") if rng.random() < 0.1)
        readings.append(node(f"n{n}", *gpus, labels={"zone": rng.choice(["eu", "us"])}, cached=cached))
    return InventorySnapshot(tuple(readings), NOW), running


@pytest.mark.parametrize("strategy", list(Strategy))
def test_indexed_placement_matches_the_full_evaluation(strategy: Strategy) -> None:
    rng = random.Random(7)
    policy = Policy.first_fit() if strategy is Strategy.FIRST_FIT else Policy(strategy=strategy)
    for _ in range(300):
        inventory, running = random_cluster(rng, rng.randint(1, 12))
        request = req(memory_gib=rng.choice([4, 10, 20, 35, 70]), gpus=rng.choice([1, 1, 1, 2, 4]),
                      version=rng.choice(["v1", "v2", "v3"]), model=rng.choice(["acme/llm", "acme/img"]),
                      min_compute_capability=rng.choice([(0, 0), (8, 0)]),
                      node_labels=rng.choice([{}, {"zone": "eu"}]))
        fast = place(inventory, running, request, policy)
        full = explain(inventory, running, request, policy)
        assert fast == full.decision


def test_incremental_updates_match_a_rebuild() -> None:
    inventory, running = random_cluster(random.Random(3), 10)
    state = ClusterState.build(inventory, [])
    for r in running:
        state.add_replica(r)
    state.add_replica(replica("extra", "n0", inventory.nodes[0].gpus[0].uuid, memory_gib=5))
    state.remove_replica("extra")
    request = req(memory_gib=10)
    assert state.place(request, NOW) == ClusterState.build(inventory, running).place(request, NOW)


def test_prefetch_targets_are_the_next_picks_without_the_snapshot() -> None:
    inv = snap(node("a", gpu("a1", used=40), cached=("v1",)), node("b", gpu("b1", used=30)), node("c", gpu("c1")),
               node("d", gpu("d1", used=79)))
    state = ClusterState.build(inv)
    assert state.prefetch_targets(req(), NOW, 2) == ["b", "c"]  # a has it; d has no room
    assert state.prefetch_targets(req(version="v9"), NOW, 1) == ["a"]
