"""The platform inside the gateway: the registry, the deployments, and (when this process runs
it) the controller; model strings `@ns/model[:version]` resolved to a deployment, inputs
checked against the version's schema, one prediction on a replica (acquire, post, 409 back to
the queue, release). The gateway's routes and the Replicate API both call predictions here."""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import Counter, Histogram

from scheduler.controller import Controller, replica_request
from scheduler.replicas import Lease, ReplicaSet, Unavailable
from scheduler.telemetry.metrics import InventoryCollector
from server.catalog import Resolved, Target
from server.platform.config import PlatformConfig
from server.platform.deployments import Deployment, Deployments
from server.platform.placement import PlatformPlacement
from server.platform.predictions import Files, PredictionRunner
from server.platform.registry import Registry, Version
from server.providers.base import UpstreamError
from server.providers.platform import cog_event, prediction_events, schema_streams
from server.store import Store, cogkit_home

log = logging.getLogger("cogkit.platform")
PROVIDER = "cogkit-platform"           # the Target.provider of every managed deployment
RESOLVE_TTL = 1.0                      # seconds a resolved model string is reused
MAX_REROUTES = 20                      # 409s one request may meet before it gives up
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)

# The gateway's Call of the request being served (set when the model string is resolved), so the
# prediction can note its cold start and predict_time on it without widening every interface.
CURRENT_CALL: contextvars.ContextVar[Any] = contextvars.ContextVar("cogkit_platform_call", default=None)


class InputError(Exception):
    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


class NotDeployed(Exception):
    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def instance_of(store: Store) -> str:
    return hashlib.sha256(store.url.encode()).hexdigest()[:12]


class Platform:
    def __init__(self, store: Store, config: PlatformConfig | None, registry_metrics: Any = None) -> None:
        self.store, self.config = store, config or PlatformConfig(controller=False)
        self.registry = Registry(store)
        self.deployments = Deployments(store, self.registry)
        self.controller: Controller | None = None
        self._resolved: dict[tuple[str, str], tuple[float, Resolved, Version]] = {}
        self._versions: dict[str, Version] = {}
        self._absent: dict[tuple[str, str], float] = {}
        self._engines: dict[str, tuple[float, Deployment | None]] = {}    # name -> (until, vLLM deployment)
        self._writer: Any = None
        home = store.sqlite_path.parent if store.sqlite_path else cogkit_home()
        self.files = Files(home / "platform-files")
        self.predictions = PredictionRunner(self, self.files, self._write)
        self.cold_starts = Histogram("cogkit_platform_cold_start_seconds",
                                     "Time a request waited for a replica to be ready", ["deployment"],
                                     buckets=COLD_START_BUCKETS, registry=registry_metrics)
        self.rerouted = Counter("cogkit_platform_rerouted", "Requests a full replica (409) sent back to the queue",
                                ["deployment"], registry=registry_metrics)
        # The node inventory, read by the placer, the explain API and /metrics (GPU telemetry) alike.
        self.placement = PlatformPlacement(self.config.inventory)
        self._metrics = registry_metrics
        self._ray_poller: Any = None          # the Ray agents' telemetry poller, with ray_address
        if self.placement.inventory is not None and registry_metrics is not None and not self.config.ray_address:
            registry_metrics.register(InventoryCollector(self.placement.inventory))
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=None, write=60, pool=5),
                                      limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))

    # ---- lifecycle ----
    def _write(self, fn: Callable[..., Any], *args: Any) -> None:
        """A store write on the gateway's writer thread, not waited for."""
        asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def startup(self, writer: Any) -> None:
        self._writer = writer
        await asyncio.to_thread(self._seed_engines)
        if not self.config.controller:
            return
        from scheduler.runtimes.docker import DockerRuntime

        def sink(name: str, status: dict[str, Any]) -> None:
            self._write(self.deployments.set_status, name, status)

        import docker.errors as docker_errors

        from scheduler.runtimes.process import ProcessRuntime
        from scheduler.runtimes.routed import RoutedRuntime
        home = self.store.sqlite_path.parent if self.store.sqlite_path else cogkit_home()
        processes = ProcessRuntime(Path(self.config.process_dir or home / "platform-processes"))
        engine: Any
        if self.config.ray_address:
            engine = await asyncio.to_thread(self._on_ray, self.config.ray_address)
        else:
            try:
                engine = await asyncio.to_thread(DockerRuntime)
            except docker_errors.DockerException as e:    # no engine here: vLLM process replicas still run
                if self.config.vllm_image:
                    raise
                log.warning("no Docker engine (%s): only process replicas (vLLM) run here", e)
                engine = None
        runtime = RoutedRuntime(engine, processes)
        self.controller = Controller(runtime, self._desired, self.config.instance or instance_of(self.store),
                                     placer=self.placement.placer, status_sink=sink, interval=self.config.interval)
        self.controller.start()

    def _on_ray(self, address: str) -> Any:
        """Replicas on the Ray cluster at `address`: each started by the agent of the node placement
        chose, placement over the agents' telemetry (which /metrics and the explain API then show)."""
        from scheduler.runtimes.ray import on_cluster
        runtime, _, polled = on_cluster(address, _GpuMemoryByDeployment(self), self.placement.policy)
        self._ray_poller = polled
        self.placement.use_cluster(polled)
        if self._metrics is not None:
            self._metrics.register(InventoryCollector(polled))
        return runtime

    def _seed_engines(self) -> None:
        """The config's `platform.vllm:` entries into the store (created or replaced on every start):
        from there on they are deployments like the ones made through the API."""
        from sqlalchemy.exc import IntegrityError

        from server.platform.vllm_deployments import body_of
        for entry in self.config.vllm:
            try:
                self.deployments.put(body_of(entry), "", admin=True)
            except IntegrityError:       # another gateway on this store seeded it a moment ago
                self.deployments.put(body_of(entry), "", admin=True)

    def _desired(self) -> list[Any]:
        """Every deployment in the store as the controller runs it: Cog images, and vLLM engines."""
        from server.platform.vllm_deployments import desired
        engines = [desired(d, self.config) for d in self.deployments.engine_deployments()]
        return [*self.deployments.desired(), *engines]

    def explain(self, deployment: str) -> dict[str, Any] | None:
        """The placement of one more replica of `deployment`, explained (None: no such deployment)."""
        spec = (self.controller.desired.get(deployment) if self.controller is not None else None) or next(
            (d for d in self._desired() if d.name == deployment), None)
        if spec is None:
            return None
        request, running = (self.controller.placement_inputs(spec) if self.controller is not None
                            else (replica_request(spec), []))
        return {"deployment": deployment, **self.placement.explain(request, running)}

    async def shutdown(self) -> None:
        await self.predictions.aclose()
        if self.controller is not None:
            await self.controller.close(self.config.stop_replicas_on_exit)
        if self._ray_poller is not None:
            self._ray_poller.stop()
        await self.http.aclose()

    # ---- model strings ----
    def resolve(self, model_string: str, tenant_id: str) -> Resolved | None:
        """`@ns/model[:ref]` of a registered model -> its deployment; None when the registry has no such model
        (the catalog may still know it); NotDeployed when it exists but nothing runs that version."""
        if not model_string.startswith("@"):
            return None
        engine = self.vllm_resolve(model_string, tenant_id)
        if engine is not None:
            return engine
        now = time.monotonic()
        hit = self._resolved.get((model_string, tenant_id))
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._absent.get((model_string, tenant_id), 0.0) > now:
            return None       # not ours a moment ago (a catalog model): no store read per request
        base, _, ref = model_string[1:].partition(":")
        if base.count("/") != 1:
            return None
        namespace, name = base.split("/")
        model = self.registry.get_model(namespace, name, tenant_id)
        if model is None:
            if len(self._absent) > 10_000:
                self._absent.clear()
            self._absent[(model_string, tenant_id)] = now + RESOLVE_TTL
            return None
        version = self.registry.find_version(namespace, name, ref or None)
        if version is None:
            raise NotDeployed(f"{base} has no version {ref!r}" if ref else f"{base} has no version yet")
        deployment = self._deployment_for(version)
        if deployment is None:
            raise NotDeployed(f"version {version.id[:12]} of {base} is not deployed: "
                              f"`cogkit deployments create {base}` starts it", 404)
        resolved = Resolved(model_string, (Target(PROVIDER, deployment.name),), "platform", version=version.id)
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[(model_string, tenant_id)] = (now + RESOLVE_TTL, resolved, version)
        return resolved

    def vllm_resolve(self, model_string: str, tenant_id: str) -> Resolved | None:
        """`@ns/model` of an engine: vllm deployment: a chat model every client format reaches."""
        from server.platform.vllm import VLLM_PROVIDER
        d = self.engine_deployment(model_string[1:])
        if d is None or not d.visible_to(tenant_id):
            return None
        spec = d.engine_spec or {}
        return Resolved(model_string, (Target(VLLM_PROVIDER, d.name, 0, float(spec.get("input_price", 0.0)),
                                              float(spec.get("output_price", 0.0))),), "chat")

    def engine_deployment(self, name: str) -> Deployment | None:
        """The vLLM deployment `name` (None: there is none), read from the store at most once a RESOLVE_TTL."""
        now = time.monotonic()
        hit = self._engines.get(name)
        if hit is None or hit[0] <= now:
            if len(self._engines) > 10_000:
                self._engines.clear()
            hit = self._engines[name] = (now + RESOLVE_TTL, self.deployments.engine_deployment(name))
        return hit[1]

    def _deployment_for(self, version: Version) -> Deployment | None:
        candidates = self.deployments.for_model(version.namespace, version.model)
        latest = self.registry.find_version(version.namespace, version.model, None)
        for d in candidates:
            if d.version_id == version.id or (d.version_id is None and latest is not None and latest.id == version.id):
                return d
        return None

    @staticmethod
    def owns(call: Any) -> bool:
        """A managed deployment serves this call (its provider speaks chat for chat-shaped models)."""
        return bool(call.resolved and call.resolved.targets and call.resolved.targets[0].provider == PROVIDER)

    def version(self, version_id: str) -> Version | None:
        """A version by id (versions never change: cached once read)."""
        hit = self._versions.get(version_id)
        if hit is None:
            hit = self.registry.get_version_by_id(version_id)
            if hit is not None:
                self._versions[version_id] = hit
        return hit

    def deployment_version(self, deployment: str) -> Version | None:
        d = self.deployments.get(deployment)
        if d is None:
            return None
        return (self.registry.get_version_by_id(d.version_id) if d.version_id
                else self.registry.find_version(d.namespace, d.model, None))

    # ---- inputs ----
    @staticmethod
    def validate(version: Version, inputs: Any) -> dict[str, Any]:
        """The inputs with defaults, or InputError naming the first bad field (checked before any replica)."""
        from cogkit.inputs import InputValidationError, validate_input
        if not version.openapi_schema:
            return inputs if isinstance(inputs, dict) else {}
        try:
            checked: dict[str, Any] = validate_input(version.openapi_schema, inputs)
        except InputValidationError as e:
            first = e.errors[0]
            field = ".".join(str(p) for p in first["loc"][2:]) or None
            raise InputError(f"input.{field}: {first['msg']}" if field else f"input: {first['msg']}", field) from None
        return checked

    # ---- predictions on replicas ----
    def replicas(self, deployment: str) -> ReplicaSet:
        if self.controller is None:
            raise NotDeployed("this gateway runs no platform controller (platform.controller: false)", 503)
        return self.controller.replica_set(deployment)

    async def acquire(self, deployment: str, chooser: Any = None) -> Lease:
        try:
            rs = self.replicas(deployment)
        except NotDeployed as e:     # no controller here: the caller's format says so, not a 500
            raise UpstreamError(e.message, e.status, "http", retry_after=None,
                                body={"code": "no_controller"}) from None
        try:
            lease = await rs.acquire(chooser=chooser)
        except Unavailable as e:
            raise UpstreamError(e.message, 503, "http", retry_after=e.retry_after,
                                body={"code": "no_replica"}) from None
        if lease.cold:
            self.cold_starts.labels(deployment).observe(lease.waited_s)
        note_cold_start(lease)
        return lease

    async def predict(self, deployment: str, body: dict[str, Any], prediction_id: str | None = None,
                      on_replica: Callable[[str, float], None] | None = None) -> dict[str, Any]:
        """POST /predictions on a replica (PUT /predictions/{id} with an id, so it can be cancelled there);
        a 409 (it is full) goes back to the queue, never to the caller."""
        method, path = ("PUT", f"/predictions/{prediction_id}") if prediction_id else ("POST", "/predictions")
        for _ in range(MAX_REROUTES):
            lease = await self.acquire(deployment)
            rs = self.replicas(deployment)
            if on_replica is not None:
                on_replica(lease.replica.url, lease.waited_s)
            try:
                resp = await self.http.request(method, lease.replica.url + path, json=body)
            except httpx.HTTPError as e:
                rs.failed(lease)
                raise replica_broke(deployment, e) from e
            if resp.status_code == 409:
                rs.release(lease, busy=True)
                self.rerouted.labels(deployment).inc()
                continue
            rs.release(lease)
            return _prediction(resp, deployment)
        raise UpstreamError(f"{deployment}: every replica stayed busy", 503, "http", retry_after=1)

    async def predict_stream(self, deployment: str, body: dict[str, Any], prediction_id: str | None = None,
                             on_replica: Callable[[str, float], None] | None = None, sse: bool = True,
                             ) -> AsyncIterator[tuple[str, Any]]:
        """("output", item), ("logs", text), then ("completed", prediction). `sse`: the model streams
        (Cog's @streaming; others answer 406 to server-sent events): else one prediction, told as events."""
        if not sse:
            for item in prediction_events(await self.predict(deployment, body, prediction_id, on_replica)):
                yield item
            return
        async for item in self._sse_prediction(deployment, body, prediction_id, on_replica):
            yield item

    async def _sse_prediction(self, deployment: str, body: dict[str, Any], prediction_id: str | None,
                              on_replica: Callable[[str, float], None] | None) -> AsyncIterator[tuple[str, Any]]:
        from server.translate.sse import SSEDecoder
        method, path = ("PUT", f"/predictions/{prediction_id}") if prediction_id else ("POST", "/predictions")
        for _ in range(MAX_REROUTES):
            lease = await self.acquire(deployment)
            rs = self.replicas(deployment)
            if on_replica is not None:
                on_replica(lease.replica.url, lease.waited_s)
            request = self.http.build_request(method, lease.replica.url + path, json=body,
                                              headers={"accept": "text/event-stream"})
            try:
                resp = await self.http.send(request, stream=True)
            except httpx.HTTPError as e:
                rs.failed(lease)
                raise replica_broke(deployment, e) from e
            if resp.status_code == 409:
                await resp.aclose()
                rs.release(lease, busy=True)
                self.rerouted.labels(deployment).inc()
                continue
            broke = False
            try:
                if resp.status_code >= 400:
                    _prediction(httpx.Response(resp.status_code, content=await resp.aread()), deployment)
                decoder = SSEDecoder()
                async for raw in resp.aiter_bytes():
                    for event, data in decoder.feed(raw):
                        item = cog_event(event, data)
                        if item is None:
                            continue
                        yield item
                        if item[0] == "completed":
                            return
                broke = True
                raise UpstreamError(f"{deployment}: the replica's prediction stream ended early", None, "stream")
            except httpx.HTTPError as e:
                broke = True
                raise replica_broke(deployment, e) from e
            finally:
                await resp.aclose()
                (rs.failed if broke else rs.release)(lease)
        raise UpstreamError(f"{deployment}: every replica stayed busy", 503, "http", retry_after=1)


class _GpuMemoryByDeployment(Mapping[str, int]):
    """GPU memory a replica of each deployment takes, read live from the controller's desired state
    (what a Ray node with simulated GPUs shows as used once the replica runs there)."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def _sizes(self) -> dict[str, int]:
        controller = self._platform.controller
        return {n: d.gpu_memory_bytes for n, d in (controller.desired if controller is not None else {}).items()}

    def __getitem__(self, name: str) -> int:
        return self._sizes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sizes())

    def __len__(self) -> int:
        return len(self._sizes())


def supports_sse(version: Version | None) -> bool:
    """Cog 0.23 answers server-sent events only for an entry point marked @streaming."""
    return version is not None and schema_streams(version.openapi_schema)


def note_cold_start(lease: Lease) -> None:
    call = CURRENT_CALL.get()
    if call is not None:
        call.extra_headers["x-cogkit-replica"] = lease.replica.id[:12]
    if call is not None and lease.waited_s > 0:
        # A cold start: no replica at all when it arrived; else it queued behind busy ones.
        name = "cold_start_ms" if lease.cold else "queue_ms"
        ms = lease.waited_s * 1000
        call.extra_headers[f"x-cogkit-{name.replace('_', '-')}"] = f"{ms:.0f}"
        call.metadata[name] = round(ms)


def note_metrics(prediction: Any) -> None:
    call = CURRENT_CALL.get()
    metrics = prediction.get("metrics") if isinstance(prediction, dict) else None
    if call is not None and isinstance(metrics, dict) and metrics.get("predict_time") is not None:
        call.metadata["predict_time"] = metrics["predict_time"]


def replica_broke(deployment: str, e: httpx.HTTPError) -> UpstreamError:
    # Not retried on another replica: the prediction may have run (side effects, time billed).
    return UpstreamError(f"{deployment}: the replica stopped during the prediction ({type(e).__name__}); "
                         "the platform is replacing it, retry the request", 502, "http")


def _prediction(resp: httpx.Response, deployment: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text[:300]}
    if resp.status_code == 422:
        raise UpstreamError(f"invalid input: {body.get('detail')}", 422, "http", body=body)
    if resp.status_code >= 400:
        raise UpstreamError(f"{deployment}: the replica answered {resp.status_code} ({body.get('detail', body)})",
                            502, "http")
    return body if isinstance(body, dict) else {"output": body}

