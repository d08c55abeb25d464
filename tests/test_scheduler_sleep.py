"""vLLM sleep mode as the fastest cold-start rung, against a real vLLM (CPU build) run by the real
controller and process runtime: an idle replica is put to sleep and kept, placement sees it as the
sleeping rung, a request wakes it instead of starting another, and a sleeper whose GPU memory
another placement needs is stopped. On CPU vLLM's worker ignores the memory part of sleeping (it
logs "sleep mode is not supported on CPU") while the engine's sleeping state and the endpoints are
real; the GPUs are a simulated inventory (no GPU on this machine)."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_support import VLLM_ARGS_CLI, VLLM_ENV, tiny_llama, vllm_missing, vllm_python

from scheduler.autoscaler import ScalePolicy
from scheduler.controller import Controller, DesiredDeployment
from scheduler.placement import NoFit, Placement, ReplicaRequest, Rung, RunningReplica, explain, place
from scheduler.runtimes.process import ProcessRuntime
from scheduler.telemetry.simulated import SimulatedInventory
from scheduler.vllm_sleep import DEV_MODE_ENV, sleep_mode_args

GIB = 2**30


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll an async condition (the controller runs on this event loop, so no blocking waits)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def tiny_vllm(model: Path) -> DesiredDeployment:
    command = (str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", "st/tiny", "--host", "127.0.0.1", "--port", "{port}", *VLLM_ARGS_CLI,
               *sleep_mode_args(gpu_host=False))
    return DesiredDeployment(
        name="st/tiny", model="st/tiny", version_id="vllm:tiny", image="", max_concurrency=8,
        policy=ScalePolicy(min_replicas=0, max_replicas=1, target=8.0, idle_timeout=1.0),
        env={**VLLM_ENV, **DEV_MODE_ENV}, gpus=1, gpu_memory_bytes=4 * GIB, cold_start_timeout=600,
        setup_timeout=600, engine="vllm", command=command, sleep_when_idle=True)


def big_model() -> DesiredDeployment:
    """Needs nearly the whole GPU: it fits only once the sleeper's held memory is freed."""
    return DesiredDeployment(
        name="st/big", model="st/big", version_id="big-v1", image="", max_concurrency=1,
        policy=ScalePolicy(min_replicas=1, max_replicas=1), gpus=1, gpu_memory_bytes=22 * GIB + GIB // 2,
        command=("sleep", "600"))


def test_vllm_sleep_mode_is_the_fastest_rung(tmp_path: Path) -> None:
    missing = vllm_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    model = tiny_llama()
    inventory = SimulatedInventory({"nodes": [{"name": "n1", "gpus": {
        "count": 1, "name": "NVIDIA L4", "memory": "24GiB", "compute_capability": "8.9"}}]})

    def placer(request: ReplicaRequest, running: list[RunningReplica]) -> Placement | NoFit:
        return place(inventory.read(), running, request)

    desired = [tiny_vllm(model)]
    runtime = ProcessRuntime(tmp_path / "processes")
    controller = Controller(runtime, lambda: list(desired), f"st-{uuid.uuid4().hex[:8]}", placer, interval=0.2)

    async def chat(http: httpx.AsyncClient, url: str) -> str:
        response = await http.post(url + "/v1/chat/completions", json={
            "model": "st/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 0})
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    def replica_states(name: str) -> list[str]:
        return [r["state"] for r in controller.snapshot(name).get("replicas", [])]

    async def go() -> None:
        controller.start()
        http = httpx.AsyncClient(timeout=60)
        try:
            replicas = controller.replica_set("st/tiny")
            lease = await replicas.acquire(timeout=300)        # a cold start: nothing was running
            replica_id, url = lease.replica.id, lease.replica.url
            first = await chat(http, url)
            replicas.release(lease)

            # idle past idle_timeout: asleep, and kept (its process still runs)
            async def asleep() -> bool:
                return replica_states("st/tiny") == ["sleeping"] and \
                    (await http.get(url + "/is_sleeping")).json()["is_sleeping"] is True
            await until(asleep, 60, "the idle replica to be asleep")
            assert [r.id for r in runtime.list({}) if r.running] == [replica_id]
            assert replicas.ready_count() == 0

            # placement sees the sleeping instance as the fastest rung
            request, running = controller.placement_inputs(desired[0])
            why = explain(inventory.read(), running, request)
            assert isinstance(why.decision, Placement)
            assert why.decision.rung is Rung.SLEEPING and why.decision.wakes == replica_id
            assert "sleeping" in why.render()

            # a request wakes it (no second replica) and is answered
            began = time.monotonic()
            lease = await replicas.acquire(timeout=120)
            woke_in = time.monotonic() - began
            assert lease.replica.id == replica_id
            assert (await http.get(url + "/is_sleeping")).json()["is_sleeping"] is False
            assert await chat(http, url) == first                 # greedy: the same answer as before
            replicas.release(lease)
            assert len(runtime.list({})) == 1
            print(f"woken and answered in {woke_in:.2f}s")

            # asleep again; then another model needs the GPU memory it holds: it is stopped
            await until(asleep, 60, "the replica to be asleep again")
            desired.append(big_model())
            controller.wake()

            async def replaced() -> bool:
                running_ids = {r.id for r in runtime.list({}) if r.running}
                return replica_id not in running_ids and replica_states("st/big") != []
            await until(replaced, 60, "the sleeper to be stopped and st/big started")
            assert replica_states("st/tiny") == []
        finally:
            await http.aclose()
            await controller.close(stop_replicas=True)

    asyncio.run(go())
