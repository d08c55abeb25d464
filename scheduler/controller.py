"""The reconciliation loop: desired deployments (from the store) vs observed replicas (from a runtime).

Each pass, for every deployment: adopt running replicas found by their labels (after a
restart nothing is started twice), bring starting ones to ready through Cog's /health-check,
replace exited or unhealthy ones (with back-off when they keep failing, and the reason kept:
exit code, SETUP_FAILED, the last log lines), start what the autoscaler asks for where
placement finds room, drain idle ones down to min_replicas (a vLLM replica with
`sleep_when_idle` is put to sleep instead, and woken when placement picks it: vllm_sleep.py; a
sleeper whose GPU memory another placement needs is stopped), and drain + stop replicas of a
deployment that is gone or changed. A pass runs every `interval` seconds, or at once when a
request is waiting for a replica.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from scheduler.autoscaler import (
    Load,
    ScalePolicy,
    ScaleState,
    desired_replicas,
    idle_to_drain,
)
from scheduler.placement.model import (
    NoFit,
    Placement,
    ReplicaRequest,
    ReplicaState,
    RunningReplica,
)
from scheduler.replicas import ReplicaSet
from scheduler.runtimes.base import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICES,
    LABEL_ENGINE,
    LABEL_NODE,
    LABEL_PLATFORM,
    LABEL_SPEC,
    LABEL_VERSION,
    ReplicaSpec,
    Runtime,
    RuntimeError_,
    StartedReplica,
)
from scheduler.vllm_sleep import SLEEPING_HELD_BYTES, SleepError, put_to_sleep, wake_up

log = logging.getLogger("cogkit.platform.controller")
LOG_TAIL = 20
BACKOFF_BASE = 1.0          # seconds before the first restart after a failure; doubled per failure
BACKOFF_MAX = 60.0
# Seconds between passes while a replica is starting (rather than `interval`): one that turns ready is
# noticed within this, and a cold start's waiting requests go to it (it was up to `interval` more).
STARTING_POLL = 0.1
UNHEALTHY_AFTER = 3         # health checks without an answer before a ready replica is replaced


@dataclass(frozen=True)
class DesiredDeployment:
    """One deployment as the store declares it, with its version resolved."""
    name: str
    model: str                       # ns/model
    version_id: str
    image: str                       # repository@sha256:...
    max_concurrency: int
    policy: ScalePolicy
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    gpu_memory_bytes: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None
    queue_limit: int = 64
    cold_start_timeout: float = 300.0
    setup_timeout: float = 600.0
    engine: str = "cog"              # "cog": Cog's /health-check; "vllm": vLLM's OpenAI server (/health)
    command: tuple[str, ...] = ()    # run this instead of an image (a local process; "{port}": its port)
    mounts: tuple[str, ...] = ()     # host directories a container replica sees read-only (vLLM's weights)
    # vLLM only: an idle replica sleeps instead of stopping (its server needs VLLM_SERVER_DEV_MODE=1,
    # and on a GPU host --enable-sleep-mode: vllm_sleep.DEV_MODE_ENV, sleep_mode_args)
    sleep_when_idle: bool = False

    def spec_hash(self) -> str:
        """What a replica was started with: a change means replace its replicas."""
        what: list[Any] = [self.image, dict(self.env), self.gpus, self.gpu_memory_bytes, self.cpus,
                           self.memory_bytes]
        if self.command:
            what.append(list(self.command))
        if self.mounts:
            what.append(list(self.mounts))
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


Placer = Callable[[ReplicaRequest, list[RunningReplica]], "Placement | NoFit"]
DesiredSource = Callable[[], list[DesiredDeployment]]
StatusSink = Callable[[str, dict[str, Any]], None]


def cpu_placer(request: ReplicaRequest, running: list[RunningReplica]) -> Placement | NoFit:
    """Without an inventory: CPU replicas fit on this node, GPU ones nowhere."""
    from scheduler.placement.model import Rung, ScoreTerms
    if request.gpu_count:
        return NoFit({"no GPU inventory": 1}, 0, "this node has no GPU inventory")
    return Placement("local", (), Rung.ORIGIN, ScoreTerms(0.0, 0.0, 0.0, 0.0))


def replica_request(spec: DesiredDeployment) -> ReplicaRequest:
    """What one replica of `spec` asks placement for."""
    return ReplicaRequest(spec.model, spec.version_id, spec.gpus, spec.gpu_memory_bytes, cpus=spec.cpus or 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Tracked:
    """A replica this controller knows: starting until its /health-check says READY."""
    replica: StartedReplica
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    misses: int = 0
    stopping: bool = False
    sleeping: bool = False           # vLLM sleep mode: out of the replica set, kept for a wake-up
    sleep_since: float = 0.0


@dataclass
class DeploymentState:
    replicas: ReplicaSet
    tracked: dict[str, Tracked] = field(default_factory=dict)
    scale: ScaleState = field(default_factory=ScaleState)
    failures: int = 0
    retry_at: float = 0.0
    last_failure: dict[str, Any] | None = None
    starting: int = 0                # start calls in flight (pull + create)
    status: dict[str, Any] = field(default_factory=dict)


class Controller:
    def __init__(self, runtime: Runtime, desired: DesiredSource, instance: str,
                 placer: Placer = cpu_placer, status_sink: StatusSink | None = None,
                 interval: float = 1.0) -> None:
        self.runtime, self.desired_source, self.instance = runtime, desired, instance
        self.placer, self.status_sink, self.interval = placer, status_sink, interval
        self.states: dict[str, DeploymentState] = {}
        self.desired: dict[str, DesiredDeployment] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        self._background: set[asyncio.Task[Any]] = set()
        # placed but not yet started (their start call in flight): placement must see them too, or
        # two replicas started in one pass land on the same GPU
        self._placing: dict[str, RunningReplica] = {}

    # ---- what the gateway uses ----
    def replica_set(self, deployment: str) -> ReplicaSet:
        """The deployment's replica set (made on first use, so a request may wait for the first pass)."""
        state = self.states.get(deployment)
        if state is None:
            spec = self.desired.get(deployment)
            replicas = ReplicaSet(deployment, spec.queue_limit if spec else 64,
                                  spec.cold_start_timeout if spec else 300.0, self.wake)
            state = self.states[deployment] = DeploymentState(replicas)
        return state.replicas

    def placement_inputs(self, spec: DesiredDeployment) -> tuple[ReplicaRequest, list[RunningReplica]]:
        """What the placer is asked for one more replica of `spec`: the request, and every replica
        running or being placed (the same inputs `GET /v1/scheduler/explain` shows)."""
        running = [self._as_placed(self.desired.get(name, spec), t)
                   for name, s in self.states.items() for t in s.tracked.values() if not t.stopping]
        return replica_request(spec), [*running, *self._placing.values()]

    @staticmethod
    def _as_placed(spec: DesiredDeployment, t: Tracked) -> RunningReplica:
        state = ReplicaState.SLEEPING if t.sleeping else ReplicaState.READY if t.ready else ReplicaState.STARTING
        memory = min(spec.gpu_memory_bytes, SLEEPING_HELD_BYTES) if t.sleeping else spec.gpu_memory_bytes
        return RunningReplica(t.replica.id, spec.model, t.replica.labels.get(LABEL_VERSION, ""),
                              t.replica.labels.get(LABEL_NODE, "local"),
                              tuple(filter(None, t.replica.labels.get(LABEL_DEVICES, "").split(","))), memory, state)

    def wake(self) -> None:
        """Run a pass now (callable from any thread: API handlers run in worker threads)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ---- the loop ----
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop_forever())

    async def _loop_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), min(self.interval, STARTING_POLL) if self._starting()
                                       else self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    def _starting(self) -> bool:
        return any(state.starting or any(not t.ready and not t.stopping for t in state.tracked.values())
                   for state in self.states.values())

    async def close(self, stop_replicas: bool) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if stop_replicas:
            observed = await asyncio.to_thread(self.runtime.list, {LABEL_PLATFORM: self.instance})
            await asyncio.gather(*(asyncio.to_thread(self.runtime.stop, r.id, 5) for r in observed))
        await self._http.aclose()

    async def reconcile(self) -> None:
        desired = await asyncio.to_thread(self.desired_source)
        self.desired = {d.name: d for d in desired}
        listed_at = time.monotonic()
        observed = await asyncio.to_thread(self.runtime.list, {LABEL_PLATFORM: self.instance})
        by_deployment: dict[str, list[StartedReplica]] = {}
        for r in observed:
            by_deployment.setdefault(r.deployment, []).append(r)
        for name in set(by_deployment) | set(self.states) | set(self.desired):
            spec = self.desired.get(name)
            state = self.states.get(name)
            if state is None:
                self.replica_set(name)
                state = self.states[name]
            if spec is not None:
                state.replicas.queue_limit, state.replicas.timeout = spec.queue_limit, spec.cold_start_timeout
            await self._reconcile_one(name, spec, state, by_deployment.get(name, []), listed_at)
            if spec is None and not state.tracked and not by_deployment.get(name):
                state.replicas.fail_waiters(f"there is no deployment {name}", 60)
                del self.states[name]

    async def _reconcile_one(self, name: str, spec: DesiredDeployment | None, state: DeploymentState,
                             observed: list[StartedReplica], listed_at: float) -> None:
        now = time.monotonic()
        seen = {r.id for r in observed}
        for rid, t in list(state.tracked.items()):
            # removed behind our back; one started while the listing was read is not in it, yet there
            if rid not in seen and not t.stopping and t.started < listed_at:
                self._forget(state, rid)
        for r in observed:
            current = spec is not None and r.labels.get(LABEL_SPEC) == spec.spec_hash()
            tracked = state.tracked.get(r.id)
            if not r.running:
                if tracked is None or not tracked.stopping:
                    code = f"exit code {r.exit_code}" + (f", {r.error}" if r.error else "")
                    await self._failed(name, state, r, f"the replica exited ({code})", r.exit_code)
                continue
            if tracked is None:
                tracked = state.tracked[r.id] = Tracked(r)     # adopted: found by its labels
                log.info("adopted replica %s of %s", r.name, name)
            if not current and not tracked.stopping:
                self._drain_and_stop(state, tracked)           # the deployment is gone or changed
        if spec is None:
            return
        await self._check_health(name, spec, state)
        self._scale(name, spec, state, now)
        self._publish(name, spec, state)

    async def _check_health(self, name: str, spec: DesiredDeployment, state: DeploymentState) -> None:
        live = [t for t in state.tracked.values() if not t.stopping]
        answers = await asyncio.gather(*(self._health(t.replica.url, t.replica.labels.get(LABEL_ENGINE, "cog"))
                                         for t in live))
        for tracked, health in zip(live, answers, strict=True):
            status = health.get("status")
            if status in ("READY", "BUSY"):
                tracked.misses = 0
                replica = state.replicas.replicas.get(tracked.replica.id)
                if tracked.ready and replica is not None and replica.draining:
                    # A request's connection to it broke though it still answers: replace it all the same.
                    self._record_failure(name, state, "a request's connection to it broke off", None, "")
                    self._drain_and_stop(state, tracked)
                    continue
                if not tracked.ready:
                    tracked.ready = True
                    state.failures = 0
                    state.replicas.add(tracked.replica.id, tracked.replica.url, spec.max_concurrency)
                    log.info("replica %s of %s is ready after %.1fs", tracked.replica.name, name,
                             time.monotonic() - tracked.started)
            elif status in ("SETUP_FAILED", "DEFUNCT"):
                setup_logs = ((health.get("setup") or {}).get("logs") or "").strip()
                await self._failed(name, state, tracked.replica, status, None, setup_logs)
            elif tracked.ready:
                tracked.misses += 1
                if tracked.misses >= UNHEALTHY_AFTER:
                    await self._failed(name, state, tracked.replica, "unhealthy: /health-check stopped answering",
                                       None)
            elif time.monotonic() - tracked.started > spec.setup_timeout:
                await self._failed(name, state, tracked.replica,
                                   f"not ready after {spec.setup_timeout:g}s (last status {status or 'no answer'})",
                                   None)

    async def _health(self, url: str, engine: str = "cog") -> dict[str, Any]:
        if engine == "vllm":       # vLLM's server answers /health 200 once its engine is up
            try:
                return {"status": "READY"} if (await self._http.get(url + "/health")).status_code == 200 else {}
            except httpx.HTTPError:
                return {}
        try:
            body = (await self._http.get(url + "/health-check")).json()
            return body if isinstance(body, dict) else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def _scale(self, name: str, spec: DesiredDeployment, state: DeploymentState, now: float) -> None:
        rs = state.replicas
        active = [t for t in state.tracked.values() if not t.stopping and not t.sleeping]
        load = Load(len(active) + state.starting, rs.outstanding(), rs.waiting())
        want = desired_replicas(spec.policy, load, state.scale, now)
        missing = want - load.replicas
        if missing > 0 and now < state.retry_at:
            if rs.waiting() and load.replicas == 0:
                rs.fail_waiters(f"{name} is restarting after failures ({self._reason(state)}); retry later",
                                max(1.0, state.retry_at - now))
            return
        for _ in range(max(0, missing)):
            self._spawn(self._start_replica(name, spec, state))
        over = len(active) + state.starting - max(spec.policy.max_replicas, spec.policy.min_replicas)
        if over > 0:     # max_replicas was lowered: drain the least busy; what they run finishes
            for t in sorted(active, key=lambda t: self._outstanding(rs, t))[:over]:
                self._drain_and_stop(state, t)
            return
        idle = {t.replica.id: now - r.idle_since for t in active if t.ready
                and (r := rs.replicas.get(t.replica.id)) is not None and r.outstanding == 0 and not r.draining}
        for rid in idle_to_drain(spec.policy, idle, len(active) + state.starting):
            tracked = state.tracked[rid]
            if spec.sleep_when_idle and spec.engine == "vllm":
                tracked.sleeping, tracked.sleep_since = True, now   # out of the set at once: no request lands
                state.replicas.remove(rid)
                self._spawn(self._put_to_sleep(name, state, tracked))
                continue
            log.info("draining idle replica %s of %s", tracked.replica.name, name)
            self._drain_and_stop(state, tracked)

    @staticmethod
    def _outstanding(rs: ReplicaSet, tracked: Tracked) -> int:
        replica = rs.replicas.get(tracked.replica.id)
        return replica.outstanding if replica else 0

    @staticmethod
    def _reason(state: DeploymentState) -> str:
        return str((state.last_failure or {}).get("reason", "unknown"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start_replica(self, name: str, spec: DesiredDeployment, state: DeploymentState) -> None:
        state.starting += 1
        placing = ""
        try:
            request, running = self.placement_inputs(spec)
            choice = self.placer(request, running)
            if isinstance(choice, NoFit):
                choice = await self._place_over_sleepers(request, running)
            if isinstance(choice, NoFit):
                self._record_failure(name, state, f"no room to place a replica: {choice.message}", None, "")
                return
            sleeper = state.tracked.get(choice.wakes or "")
            if sleeper is None and not request.gpu_count:   # no GPU locality to weigh: waking is faster
                sleeper = next((t for t in state.tracked.values() if t.sleeping and not t.stopping), None)
            if sleeper is not None and sleeper.sleeping:
                await self._wake_sleeper(name, spec, state, sleeper)
                return
            placing = secrets.token_hex(6)
            self._placing[placing] = RunningReplica(placing, spec.model, spec.version_id, choice.node,
                                                    choice.gpu_uuids, spec.gpu_memory_bytes, ReplicaState.STARTING)
            slug = name.replace("/", "-")[:40]
            replica_spec = ReplicaSpec(
                name=f"cogkit-{slug}-{secrets.token_hex(3)}", image=spec.image, port=free_port(),
                labels={LABEL_PLATFORM: self.instance, LABEL_DEPLOYMENT: name, LABEL_VERSION: spec.version_id,
                        LABEL_SPEC: spec.spec_hash(), LABEL_DEVICES: ",".join(choice.gpu_uuids),
                        LABEL_NODE: choice.node, LABEL_ENGINE: spec.engine},
                env=spec.env, gpu_uuids=choice.gpu_uuids, cpus=spec.cpus, memory_bytes=spec.memory_bytes,
                command=spec.command, mounts=spec.mounts)
            try:
                started = await asyncio.to_thread(self.runtime.start, replica_spec)
            except RuntimeError_ as e:
                self._record_failure(name, state, str(e), None, "")
                return
            state.tracked.setdefault(started.id, Tracked(started))   # a pass may have adopted it already
            log.info("started replica %s of %s on port %d", started.name, name, replica_spec.port)
        finally:
            self._placing.pop(placing, None)
            state.starting -= 1
            self.wake()

    # ---- vLLM sleep mode: the fastest rung of the cold-start ladder ----
    async def _put_to_sleep(self, name: str, state: DeploymentState, tracked: Tracked) -> None:
        """It left the replica set (it was idle); now asleep, or stopped if it will not sleep."""
        try:
            await put_to_sleep(self._http, tracked.replica.url)
        except SleepError as e:
            log.warning("replica %s of %s did not go to sleep (%s): stopping it", tracked.replica.name, name, e)
            tracked.sleeping = False
            self._drain_and_stop(state, tracked)
            return
        log.info("idle replica %s of %s is asleep", tracked.replica.name, name)

    async def _wake_sleeper(self, name: str, spec: DesiredDeployment, state: DeploymentState, tracked: Tracked) -> None:
        """Placement chose to wake this sleeper: wake it and give it requests again."""
        began = time.monotonic()
        try:
            await wake_up(self._http, tracked.replica.url)
        except SleepError as e:
            await self._failed(name, state, tracked.replica, f"did not wake up: {e}", None)
            return
        tracked.sleeping = False
        state.replicas.add(tracked.replica.id, tracked.replica.url, spec.max_concurrency)
        log.info("woke replica %s of %s in %.2fs", tracked.replica.name, name, time.monotonic() - began)

    async def _place_over_sleepers(self, request: ReplicaRequest, running: list[RunningReplica]
                                   ) -> Placement | NoFit:
        """Nothing fits: leave out sleeping replicas, longest asleep first, until the request fits,
        then stop those (their GPU memory is needed more than a quick wake-up). NoFit if it never does."""
        sleepers = sorted(((s, t) for s in self.states.values() for t in s.tracked.values()
                           if t.sleeping and not t.stopping), key=lambda st: st[1].sleep_since)
        left_out: list[tuple[DeploymentState, Tracked]] = []
        choice: Placement | NoFit = NoFit({}, 0, "")
        for state, tracked in sleepers:
            left_out.append((state, tracked))
            gone = {t.replica.id for _, t in left_out}
            choice = self.placer(request, [r for r in running if r.replica_id not in gone])
            if not isinstance(choice, NoFit):
                break
        if isinstance(choice, NoFit) or not left_out:
            return self.placer(request, running)
        for state, tracked in left_out:
            log.info("stopping sleeping replica %s: its GPU memory is needed", tracked.replica.name)
            tracked.stopping = True
            await asyncio.to_thread(self.runtime.stop, tracked.replica.id, 10)
            self._forget(state, tracked.replica.id)
        return choice

    def _drain_and_stop(self, state: DeploymentState, tracked: Tracked) -> None:
        """No new requests; the ones in flight finish; then the replica is stopped."""
        tracked.stopping = True
        state.replicas.drain(tracked.replica.id)

        async def finish() -> None:
            await state.replicas.drained(tracked.replica.id)
            await asyncio.to_thread(self.runtime.stop, tracked.replica.id, 10)
            self._forget(state, tracked.replica.id)
            self.wake()
        self._spawn(finish())

    async def _failed(self, name: str, state: DeploymentState, replica: StartedReplica, reason: str,
                      exit_code: int | None, setup_logs: str = "") -> None:
        logs = setup_logs or await asyncio.to_thread(self.runtime.logs, replica.id, LOG_TAIL)
        self._record_failure(name, state, reason, exit_code, logs)
        state.replicas.remove(replica.id)
        self._forget(state, replica.id)
        await asyncio.to_thread(self.runtime.stop, replica.id, 2)

    def _record_failure(self, name: str, state: DeploymentState, reason: str, exit_code: int | None,
                        logs: str) -> None:
        state.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (state.failures - 1))
        state.retry_at = time.monotonic() + delay
        state.last_failure = {"reason": reason, "exit_code": exit_code, "at": time.time(),
                              "logs": "\n".join(logs.strip().splitlines()[-LOG_TAIL:]),
                              "failures": state.failures, "retry_in_s": round(delay, 1)}
        log.warning("deployment %s: %s (failure %d, next try in %.0fs)", name, reason, state.failures, delay)

    @staticmethod
    def _forget(state: DeploymentState, replica_id: str) -> None:
        state.tracked.pop(replica_id, None)
        state.replicas.remove(replica_id)

    def _publish(self, name: str, spec: DesiredDeployment, state: DeploymentState) -> None:
        rs = state.replicas
        replicas: list[dict[str, Any]] = []
        for t in state.tracked.values():
            r = rs.replicas.get(t.replica.id)
            replicas.append({"id": t.replica.id[:12], "name": t.replica.name, "url": t.replica.url,
                             "state": self._state_name(t), "outstanding": r.outstanding if r else 0})
        status = {"replicas": sorted(replicas, key=lambda r: r["name"]), "starting": state.starting,
                  "waiting": rs.waiting(), "version_id": spec.version_id, "last_failure": state.last_failure,
                  "failures": state.failures}
        comparable = {**status, "replicas": [{k: v for k, v in r.items() if k != "outstanding"} for r in replicas],
                      "waiting": 0}
        if comparable != state.status and self.status_sink is not None:
            state.status = comparable
            self.status_sink(name, status)

    @staticmethod
    def _state_name(t: Tracked) -> str:
        return "stopping" if t.stopping else "sleeping" if t.sleeping else "ready" if t.ready else "starting"

    def snapshot(self, name: str) -> dict[str, Any]:
        """The live view of one deployment, for the API."""
        state = self.states.get(name)
        if state is None:
            return {}
        rs = state.replicas
        return {"replicas": [{"id": t.replica.id[:12], "name": t.replica.name, "url": t.replica.url,
                              "state": self._state_name(t),
                              "outstanding": (rs.replicas[t.replica.id].outstanding
                                              if t.replica.id in rs.replicas else 0)}
                             for t in state.tracked.values()],
                "starting": state.starting, "waiting": rs.waiting(), "last_failure": state.last_failure,
                "failures": state.failures}
