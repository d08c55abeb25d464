"""The router's view of vLLM deployments: an OpenAI-compatible provider whose upstream is whichever
replica the deployment's replica set hands out (least loaded), and whose streams survive their
replica: a replica that dies or stalls mid-answer is left, and another carries on from the last
token sent (server/platform/continuation.py). The client sees one stream, one id, one usage."""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from prometheus_client import Counter, Gauge

from scheduler.engine_routing import EngineRouter, prefix_key
from scheduler.metrics_scrape import EngineLoad, Scraper
from scheduler.replicas import Lease
from server.config import ProviderConfig, Timeouts
from server.jsonio import loads
from server.platform.continuation import Progress, strip_ids
from server.platform.service import Platform
from server.platform.vllm import VLLM_PROVIDER
from server.platform.vllm_deployments import DEFAULTS as VLLM_DEFAULTS
from server.providers.base import Provider, UpstreamError

log = logging.getLogger("cogkit.vllm")
MAX_CONTINUATIONS = 3       # replicas one stream may move to before it gives up
RETRIES = 2                 # a non-streamed request (or a stream before its first token) tried again elsewhere
STALL_FRACTION = 0.5        # a replica silent for this share of the idle timeout is left (the gateway's own
                            # idle watchdog would otherwise end the stream first)
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class VllmProvider(Provider):
    kind = "vllm"

    def __init__(self, platform: Platform, timeouts: Timeouts, registry_metrics: Any = None) -> None:
        # The router's first-token limit covers a cold start (the replica is acquired inside the stream);
        # a ready replica's silence is bounded apart, by STALL_FRACTION of the idle timeout.
        # (Deployments come and go at runtime: the config's, else vLLM's default cold start bounds them all.)
        cold = max((v.cold_start_timeout for v in platform.config.vllm), default=VLLM_DEFAULTS["cold_start_timeout"])
        super().__init__(ProviderConfig(name=VLLM_PROVIDER, kind="openai", base_url="http://replicas",
                                        max_connections=1024, timeouts=Timeouts(ttft=timeouts.ttft + cold)), timeouts)
        self.platform = platform
        self.scraper = Scraper(self._replica_urls, on_scrape=self._export)
        self.routers: dict[str, EngineRouter] = {}      # by deployment, made on its first request
        labels = ["deployment", "replica"]
        self.gauges = {field: Gauge(f"cogkit_vllm_{field}", doc, labels, registry=registry_metrics) for field, doc in (
            ("waiting", "Requests waiting in the replica's engine (its /metrics)"),
            ("running", "Requests running in the replica's engine"),
            ("kv_cache_usage", "The replica's KV-cache usage, 0..1"),
            ("prefix_hit_rate", "The replica's prefix-cache hit rate (tokens) since it started"))}
        self.affinity = Counter("cogkit_vllm_prefix_affinity", "Requests with a long shared prefix, by whether "
                                "they went back to the replica that served it last", ["deployment", "outcome"],
                                registry=registry_metrics)
        self.continued = Counter("cogkit_vllm_stream_continuations",
                                 "Streams moved mid-answer to another replica, by outcome",
                                 ["deployment", "outcome"], registry=registry_metrics)

    async def _headers(self) -> dict[str, str]:
        return {}          # the replicas are the platform's own, on 127.0.0.1: no key

    async def aclose(self) -> None:
        await self.scraper.aclose()
        await super().aclose()

    # ---- routing: the least loaded replica by its engine's figures, or the one holding the prefix ----
    def _replica_urls(self) -> dict[str, bool]:
        """Each replica's url, and whether routing reads its figures (its deployment has a choice)."""
        controller = self.platform.controller
        if controller is None:
            return {}
        out: dict[str, bool] = {}
        for name in self.routers:
            state = controller.states.get(name)
            live = [r.url for r in state.replicas.replicas.values() if not r.draining] if state else []
            out.update(dict.fromkeys(live, len(live) > 1))
        return out

    def _export(self, loads: dict[str, EngineLoad]) -> None:
        controller = self.platform.controller
        if controller is None:
            return
        for name in self.routers:
            state = controller.states.get(name)
            for replica in state.replicas.replicas.values() if state else ():
                load = loads.get(replica.url)
                if load is not None:
                    for field in ("waiting", "running", "kv_cache_usage", "prefix_hit_rate"):
                        self.gauges[field].labels(name, replica.url).set(getattr(load, field))

    async def _acquire(self, model: str, req: dict) -> Lease:
        self.scraper.start()
        router = self.routers.get(model)
        if router is None:
            d = self.platform.engine_deployment(model)
            if d is None:
                return await self.platform.acquire(model)
            router = self.routers[model] = EngineRouter(lambda: self.scraper.loads,
                                                        affinity=bool((d.engine_spec or {}).get("prefix_affinity")))
        key = prefix_key(req)
        hits = router.affinity_hits
        lease = await self.platform.acquire(model, router.chooser(key))
        if key is not None:
            self.affinity.labels(model, "kept" if router.affinity_hits > hits else "placed").inc()
        return lease

    # ---- not streamed ----
    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        return await self._once("chat", req, model, t)

    async def completions(self, req: dict, model: str, t: Timeouts) -> dict:
        return await self._once("completions", req, model, t)

    async def _once(self, op: str, req: dict, model: str, t: Timeouts) -> dict:
        body = {**req, "model": model, "stream": False}
        body.pop("stream_options", None)
        for attempt in range(RETRIES + 1):
            lease = await self._acquire(model, req)
            rs = self.platform.replicas(model)
            try:
                result = await self.post_json(lease.replica.url + PATHS[op], body, {}, t)
            except UpstreamError as e:
                (rs.failed if replica_broke(e) else rs.release)(lease)
                if replica_broke(e) and attempt < RETRIES:
                    continue               # no answer came: generating it again elsewhere is safe
                raise
            rs.release(lease)
            return result
        raise AssertionError("unreachable")

    # ---- streamed ----
    def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        return self._stream("chat", req, model, t)

    def completions_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        return self._stream("completions", req, model, t)

    async def _stream(self, op: str, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        want_ids = bool(req.get("return_token_ids"))
        body = {**req, "model": model, "stream": True, "return_token_ids": True,
                "stream_options": {**(req.get("stream_options") or {}), "include_usage": True}}
        progress = Progress(chat=op == "chat")
        failure: UpstreamError | None = None
        for attempt in range(RETRIES + 1):       # before any token: the same request again, elsewhere
            lease = await self._acquire(model, req)
            try:
                async for chunk in self._replica_stream(lease, PATHS[op], body, t):
                    progress.see(chunk)
                    yield chunk if want_ids else strip_ids(chunk)
                self.platform.replicas(model).release(lease)
                return
            except UpstreamError as e:
                if not replica_broke(e):
                    self.platform.replicas(model).release(lease)
                    raise
                self.platform.replicas(model).failed(lease)
                failure = e
                if progress.output_ids or progress.prompt_ids is not None or attempt == RETRIES:
                    break
        assert failure is not None
        async for chunk in self._continue(progress, req, model, t, failure):
            yield chunk

    async def _continue(self, progress: Progress, req: dict, model: str, t: Timeouts,
                        failure: UpstreamError) -> AsyncIterator[dict]:
        """The rest of a broken stream from other replicas; an UpstreamError (in-band to the client) if not."""
        why_not = progress.why_not()
        if why_not:
            self.continued.labels(model, "impossible").inc()
            raise UpstreamError(f"{model}: the replica stopped mid-answer ({failure.message}) and the answer "
                                f"cannot be continued: {why_not}", None, "stream")
        want_ids = bool(req.get("return_token_ids"))
        for _ in range(MAX_CONTINUATIONS):
            sent = len(progress.output_ids)
            log.warning("%s: replica stream broke after %d tokens (%s); continuing on another replica",
                        model, sent, failure.message)
            try:
                lease = await self._acquire(model, {})
            except UpstreamError as e:
                self.continued.labels(model, "no_replica").inc()
                raise UpstreamError(f"{model}: the replica stopped mid-answer and no other replica came up to "
                                    f"continue it ({e.message})", None, "stream") from e
            progress.continued += 1
            try:
                async for chunk in self._replica_stream(lease, PATHS["completions"],
                                                        progress.continuation(req, model), t):
                    yield progress.outward(chunk, sent, want_ids)
                self.platform.replicas(model).release(lease)
                self.continued.labels(model, "continued").inc()
                return
            except UpstreamError as e:
                if not replica_broke(e):
                    self.platform.replicas(model).release(lease)
                    raise
                self.platform.replicas(model).failed(lease)
                failure = e
        self.continued.labels(model, "gave_up").inc()
        raise UpstreamError(f"{model}: the answer broke on {MAX_CONTINUATIONS + 1} replicas in turn "
                            f"({failure.message})", None, "stream")

    async def _replica_stream(self, lease: Lease, path: str, body: dict, t: Timeouts) -> AsyncIterator[dict]:
        """One replica's SSE chunks until [DONE]; a break, a stall or an in-band error -> UpstreamError."""
        stall = max(0.5, t.idle * STALL_FRACTION)
        finished = done = False
        async for _event, data in self.sse(lease.replica.url + path, body, {},
                                           Timeouts(connect=t.connect, ttft=stall, idle=stall, total=t.total)):
            if done:
                continue      # read to the end, so the connection goes back to the pool
            if data == "[DONE]":
                done = True
                continue
            try:
                chunk = loads(data)
            except ValueError as e:
                raise UpstreamError(f"{lease.replica.url}: invalid JSON in stream", None, "stream") from e
            if chunk.get("error"):
                err = chunk["error"]
                raise UpstreamError(err.get("message", str(err)) if isinstance(err, dict) else str(err),
                                    None, "stream", body=chunk)
            if not finished:
                finished = any(c.get("finish_reason") for c in chunk.get("choices") or ())
            yield chunk
        if not (done or finished):
            raise UpstreamError(f"{lease.replica.url}: the stream ended before it finished", None, "stream")


def replica_broke(e: UpstreamError) -> bool:
    """The replica failed (gone, stalled, cut off), not the request (a 4xx is the caller's)."""
    return e.kind in ("connect", "timeout", "stream")
