"""Prometheus metrics, in a registry of the gateway's own (several apps in one process stay apart)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("cogkit_gateway_requests", "Requests by outcome",
                                ["endpoint", "model", "provider", "status"], registry=r)
        self.latency = Histogram("cogkit_gateway_request_seconds", "Request latency, to the last byte",
                                 ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("cogkit_gateway_ttft_seconds", "Time to first token of streamed responses",
                              ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("cogkit_gateway_overhead_seconds", "Gateway's own time per request",
                                  ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("cogkit_gateway_tokens", "Tokens by direction",
                              ["model", "provider", "direction"], registry=r)
        self.cost = Counter("cogkit_gateway_cost_usd", "Cost billed, USD", ["model", "provider"], registry=r)
        self.failovers = Counter("cogkit_gateway_failovers", "Attempts on a further deployment",
                                 ["model", "provider"], registry=r)
        self.cooldowns = Counter("cogkit_gateway_cooldowns", "Deployments put in cooldown", ["provider"], registry=r)
        self.stream_resumes = Counter("cogkit_gateway_stream_resumes", "Streams resumed by a client",
                                      ["source"], registry=r)
        self.streams_active = Gauge("cogkit_gateway_streams_active", "Upstream streams being read", registry=r)
        self.cache_hits = Counter("cogkit_gateway_cache_hits", "Responses served from the response cache",
                                  registry=r)
        self._series: dict[tuple[str, str, str, str], tuple] = {}   # observe_call's, by (endpoint, model, provider, status)

    def observe_call(self, call) -> None:
        """Everything about one finished request (a server.router.Call)."""
        provider = call.target.provider if call.target else "none"
        key = (call.endpoint, call.model, provider, call.status)
        series = self._series.get(key)
        if series is None:
            # The labelled series of this kind of request, looked up once: prometheus_client's labels()
            # validates and locks on every call, seven times per request.
            series = self._series[key] = (
                self.requests.labels(call.endpoint, call.model, provider, call.status),
                self.latency.labels(call.model, provider), self.overhead.labels(call.endpoint),
                self.ttft.labels(call.model, provider), self.tokens.labels(call.model, provider, "input"),
                self.tokens.labels(call.model, provider, "output"), self.cost.labels(call.model, provider))
        requests, latency, overhead, ttft, tokens_in, tokens_out, cost_usd = series
        requests.inc()
        latency.observe(call.latency_s())
        if call.overhead is not None:
            overhead.observe(call.overhead / 1000)
        if call.ttft_s is not None:
            ttft.observe(call.ttft_s)
        if call.input_tokens:
            tokens_in.inc(call.input_tokens)
        if call.output_tokens:
            tokens_out.inc(call.output_tokens)
        cost = call.cost()
        if cost:
            cost_usd.inc(cost)

    def render(self) -> bytes:
        return generate_latest(self.registry)
