"""The platform's parts that need no engine: the replica set (routing, 409s, the cold-start
queue), the autoscaler's decisions, the registry and deployments in a real store (SQLite and
PostgreSQL), and the registration API over HTTP with the push client's own function."""
from __future__ import annotations

import asyncio

import pytest
from pg import pg_url, store_url  # noqa: F401 - fixtures

from scheduler.autoscaler import (
    Load,
    ScalePolicy,
    ScaleState,
    desired_replicas,
    idle_to_drain,
)
from scheduler.replicas import ColdStartTimeout, QueueFull, ReplicaSet, Unavailable
from tests.gateway_harness import gateway  # noqa: F401 - fixture

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
SCHEMA = {"components": {"schemas": {"Input": {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "x-order": 0}, "n": {"type": "integer", "default": 1, "maximum": 5, "x-order": 1}}},
    "Output": {"type": "string"}}}}


# ---------------------------------------------------------------- replica set
def test_least_outstanding_honours_each_replicas_concurrency() -> None:
    async def go() -> None:
        rs = ReplicaSet("d")
        rs.add("a", "http://a", 2)
        rs.add("b", "http://b", 2)
        leases = [await rs.acquire(timeout=1) for _ in range(4)]
        assert sorted(lease.replica.id for lease in leases) == ["a", "a", "b", "b"]
        waiter = asyncio.ensure_future(rs.acquire(timeout=5))   # both full: this one queues
        await asyncio.sleep(0)
        assert rs.waiting() == 1 and not waiter.done()
        rs.release(next(lease for lease in leases if lease.replica.id == "b"))
        lease = await waiter
        assert lease.replica.id == "b" and not lease.cold
        assert rs.replicas["a"].outstanding == 2 and rs.replicas["b"].outstanding == 2
    asyncio.run(go())


def test_a_409_skips_the_replica_until_one_of_its_requests_ends() -> None:
    async def go() -> None:
        rs = ReplicaSet("d")
        rs.add("a", "http://a", 4)
        rs.add("b", "http://b", 4)
        first = await rs.acquire(timeout=1)
        second = await rs.acquire(timeout=1)
        busy = first if first.replica.id == "a" else second
        rs.release(busy, busy=True)                       # "a" said 409: it is full
        again = await rs.acquire(timeout=1)
        assert again.replica.id == "b"
        rs.release(next(x for x in (first, second) if x is not busy))
        rs.release(again)
        assert rs.replicas["a"].full
        other = await rs.acquire(timeout=1)
        assert other.replica.id == "b"                    # still skipped: nothing of ours ended on "a"
    asyncio.run(go())


def test_cold_start_queue_is_bounded_and_times_out() -> None:
    async def go() -> None:
        demand: list[int] = []
        rs = ReplicaSet("d", queue_limit=2, on_demand=lambda: demand.append(1))
        first = asyncio.ensure_future(rs.acquire(timeout=5))
        second = asyncio.ensure_future(rs.acquire(timeout=0.05))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as full:
            await rs.acquire(timeout=5)
        assert full.value.retry_after > 0 and demand       # the controller was told
        with pytest.raises(ColdStartTimeout):
            await second
        rs.add("a", "http://a", 1)                         # the cold start is over
        lease = await first
        assert lease.cold and lease.waited_s > 0 and lease.replica.id == "a"
        assert rs.waiting() == 0
    asyncio.run(go())


def test_waiters_are_told_at_once_when_no_replica_can_start() -> None:
    async def go() -> None:
        rs = ReplicaSet("d")
        waiter = asyncio.ensure_future(rs.acquire(timeout=30))
        await asyncio.sleep(0)
        rs.fail_waiters("crashing", 4)
        with pytest.raises(Unavailable) as e:
            await waiter
        assert e.value.retry_after == 4
    asyncio.run(go())


def test_a_draining_replica_gets_no_new_request() -> None:
    async def go() -> None:
        rs = ReplicaSet("d")
        rs.add("a", "http://a", 4)
        rs.add("b", "http://b", 4)
        rs.drain("a")
        assert {(await rs.acquire(timeout=1)).replica.id for _ in range(3)} == {"b"}
    asyncio.run(go())


def test_drained_waits_for_what_is_in_flight() -> None:
    async def go() -> None:
        rs = ReplicaSet("d")
        rs.add("a", "http://a", 2)
        lease = await rs.acquire(timeout=1)
        rs.drain("a")
        drained = asyncio.ensure_future(rs.drained("a"))
        await asyncio.sleep(0)
        assert not drained.done()
        rs.release(lease)
        await asyncio.wait_for(drained, 1)
    asyncio.run(go())


# ---------------------------------------------------------------- autoscaler
def test_scale_up_only_when_load_stays_above_target() -> None:
    policy = ScalePolicy(min_replicas=1, max_replicas=3, target=1.0, sustain=2.0)
    state = ScaleState()
    busy = Load(replicas=1, outstanding=1, waiting=3)
    assert desired_replicas(policy, busy, state, now=0.0) == 1         # above target, not for long yet
    assert desired_replicas(policy, busy, state, now=1.0) == 1
    assert desired_replicas(policy, busy, state, now=2.5) == 3         # sustained: 4 requests / 1 = capped at 3
    assert desired_replicas(policy, Load(1, 1, 0), ScaleState(), now=9.0) == 1   # at target: nothing
    calm = ScaleState()
    desired_replicas(policy, busy, calm, now=0.0)
    desired_replicas(policy, Load(1, 0, 0), calm, now=1.0)              # the load dropped: start over
    assert desired_replicas(policy, busy, calm, now=2.5) == 1


def test_a_waiting_request_starts_a_replica_from_zero_at_once() -> None:
    policy = ScalePolicy(min_replicas=0, max_replicas=2, sustain=60)
    assert desired_replicas(policy, Load(0, 0, 1), ScaleState(), now=0.0) == 1
    assert desired_replicas(policy, Load(0, 0, 0), ScaleState(), now=0.0) == 0
    assert desired_replicas(ScalePolicy(min_replicas=2, max_replicas=2), Load(0, 0, 0), ScaleState(), 0) == 2


def test_idle_replicas_drain_down_to_min() -> None:
    policy = ScalePolicy(min_replicas=1, max_replicas=4, idle_timeout=10)
    idle = {"a": 30.0, "b": 12.0, "c": 3.0}
    assert idle_to_drain(policy, idle, active=3) == ["a", "b"]
    assert idle_to_drain(policy, idle, active=2) == ["a"]
    assert idle_to_drain(policy, idle, active=1) == []
    assert idle_to_drain(ScalePolicy(min_replicas=0, idle_timeout=10), {"a": 11.0}, active=1) == ["a"]


# ---------------------------------------------------------------- registry and deployments (a real store)
@pytest.fixture
def registry(store_url):  # noqa: F811
    from server.platform.deployments import Deployments
    from server.platform.registry import Registry
    from server.store import Store
    store = Store(store_url)
    yield Registry(store), Deployments(store, Registry(store))
    store.close()


def _body(digest: str = DIGEST_A, image: str = "127.0.0.1:5050/acme/hello:v1") -> dict:
    return {"image": image, "digest": digest, "openapi_schema": SCHEMA, "cog_config": {"concurrency": {"max": 3}}}


def test_register_resolve_and_privacy(registry) -> None:
    from server.platform.registry import RegistryError
    reg, _ = registry
    v1, created = reg.register_version("acme", "hello", "t1", False, _body())
    assert created and v1.pull_ref == f"127.0.0.1:5050/acme/hello@{DIGEST_A}" and v1.max_concurrency == 3
    again, created = reg.register_version("acme", "hello", "t1", False, _body())
    assert not created and again.id == v1.id                       # same digest: same version (200)
    v2, _ = reg.register_version("acme", "hello", "t1", False, _body(DIGEST_B, "127.0.0.1:5050/acme/hello:v2"))
    assert reg.find_version("acme", "hello", None).id == v2.id     # latest
    for ref, want in ((v1.id, v1), (v1.id[:8], v1), ("aaaaaaa", v1), (DIGEST_B, v2), ("v1", v1), ("v2", v2)):
        assert reg.find_version("acme", "hello", ref).id == want.id, ref
    assert reg.find_version("acme", "hello", "nope") is None
    assert reg.get_model("acme", "hello", "t2") is None            # private to t1
    reg.update_model("acme", "hello", public=True)
    assert reg.get_model("acme", "hello", "t2").latest.id == v2.id
    with pytest.raises(RegistryError) as e:
        reg.register_version("acme", "other", "t2", False, _body("sha256:" + "c" * 64))
    assert e.value.status == 403                                   # acme belongs to t1
    with pytest.raises(RegistryError) as e:
        reg.register_version("acme", "hello", "t1", False, {**_body(), "digest": "sha256:xyz"})
    assert e.value.status == 422 and str(e.value).startswith("digest:")


def test_deployment_fields_are_checked_by_name(registry) -> None:
    from server.platform.registry import RegistryError
    reg, deployments = registry
    reg.register_version("beta", "hello", "t1", False, _body())
    for body, field in (({"model": "beta/hello", "max_replicas": -1}, "max_replicas"),
                        ({"model": "beta/hello", "min_replicas": 3, "max_replicas": 2}, "max_replicas"),
                        ({"model": "beta/hello", "hardware": {"gpus": "two"}}, "hardware.gpus"),
                        ({"model": "beta/hello", "replicas": 2}, "replicas"),
                        ({"model": "beta"}, "model"),
                        ({"model": "beta/hello", "version": "nope"}, "version")):
        with pytest.raises(RegistryError) as e:
            deployments.put(body, "t1", False)
        assert str(e.value).startswith(field), (body, str(e.value))
    d, created = deployments.put({"model": "beta/hello", "max_replicas": 2, "env": {"A": 1}}, "t1", False)
    assert created and d.name == "beta/hello" and d.env == {"A": "1"}
    [desired] = deployments.desired()
    assert desired.image.endswith(DIGEST_A) and desired.max_concurrency == 3 and desired.policy.max_replicas == 2
    changed = deployments.patch("beta/hello", {"min_replicas": 1, "env": {"A": "2"}})
    assert changed.min_replicas == 1 and deployments.desired()[0].spec_hash() != desired.spec_hash()
    with pytest.raises(RegistryError) as e:
        reg.delete_model("beta", "hello")
    assert e.value.status == 409                                    # deployed: delete the deployment first
    [from_yaml] = deployments.load_yaml("deployments:\n  - model: beta/hello\n    name: beta/second\n", "t1", False)
    assert from_yaml.name == "beta/second"


# ---------------------------------------------------------------- the registration API, over HTTP
def test_registration_api_follows_the_push_contract(gateway) -> None:  # noqa: F811
    from cogkit.build import registry
    gw = gateway({"platform": {"controller": False}})
    key = gw.new_key("t1")
    other = gw.new_key("t2")
    version = registry.register_version(gw.url, "acme", "hello", "127.0.0.1:5050/acme/hello:v1", DIGEST_A, SCHEMA,
                                        key, cog_config={"concurrency": {"max": 2}})
    assert version["model"] == "acme/hello" and version["digest"] == DIGEST_A and version["created_at"]
    with gw.http(key) as c:
        again = c.post("/v1/models/acme/hello/versions", json=_body())
        assert again.status_code == 200 and again.json()["id"] == version["id"]
        bad = c.post("/v1/models/acme/hello/versions", json={**_body(), "digest": "nope"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("digest:")
        listing = c.get("/v1/models").json()["data"]
        [mine] = [m for m in listing if m.get("id") == "@acme/hello"]
        assert mine["task"] == "prediction" and set(mine["input_schema"]["properties"]) == {"name", "n"}
        assert c.get(f"/v1/models/acme/hello/versions/{version['id'][:8]}").json()["id"] == version["id"]
        assert c.get("/v1/models/acme/hello/versions/v1").json()["id"] == version["id"]
        not_deployed = c.post("/ai/run/@acme/hello", json={"name": "x"})
        assert not_deployed.status_code == 404 and "not deployed" in not_deployed.text
    with pytest.raises(registry.AuthError):
        registry.register_version(gw.url, "acme", "x", "i", DIGEST_B, {}, other)       # acme is t1's
    with pytest.raises(registry.AuthError):
        registry.register_version(gw.url, "acme", "x", "i", DIGEST_B, {}, "ck-not-a-key")
    with gw.http(other) as c:
        assert c.get("/v1/models/acme/hello").status_code == 404                        # private
        assert all(m.get("id") != "@acme/hello" for m in c.get("/v1/models").json()["data"])
    with gw.http(key) as c:
        assert c.patch("/v1/models/acme/hello", json={"visibility": "public"}).status_code == 200
    with gw.http(other) as c:
        assert c.get("/v1/models/acme/hello").json()["visibility"] == "public"


def test_finished_predictions_leave_memory_only_once_stored_and_past_the_cap(store_url, monkeypatch) -> None:  # noqa: F811
    """The runner keeps at most MEMORY_MAX_ENDED finished predictions in memory; one leaves only
    after its final state is in the store, so a reader always finds it, here or there."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from server.platform import predictions as mod
    from server.store import Store
    monkeypatch.setattr(mod, "MEMORY_MAX_ENDED", 5)
    store = Store(store_url)
    writer, hold = ThreadPoolExecutor(1), threading.Event()
    writer.submit(hold.wait)                      # the writer thread is busy: no save has run yet
    runner = mod.PredictionRunner(SimpleNamespace(store=store), None, lambda fn, *a: writer.submit(fn, *a))
    ids = []
    for i in range(12):
        p = mod.Prediction(f"p{i}", "t1", "acme/m", "v1", "acme/m", {"i": i}, status="succeeded", output=f"out {i}")
        runner.live[p.id] = p
        runner._ended(p)
        ids.append(p.id)
    assert len(runner.live) == 12                 # none saved yet: all stay
    hold.set()
    writer.shutdown(wait=True)
    runner._forget_old()
    assert sorted(runner.live) == sorted(ids[-5:])
    for i, pid in enumerate(ids):                 # the evicted ones from the store, the rest from memory
        got = runner.get(pid, "t1")
        assert got is not None and (got.status, got.output) == ("succeeded", f"out {i}"), pid
    assert runner.get("p0", "another-tenant") is None
    store.close()
