"""An engine's own load, read from its Prometheus /metrics: vLLM reports its waiting and running
requests, its KV-cache usage, and its prefix-cache queries and hits (in tokens). Routing reads the
last scrape of each replica; nothing here blocks a request (a scrape runs on its own interval)."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

log = logging.getLogger("cogkit.metrics_scrape")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ([-+0-9.eEinfNa]+)(?: \d+)?$", re.MULTILINE)
# vLLM's names (V1 engine); a figure it does not report stays 0.
NAMES = {"vllm:num_requests_waiting": "waiting", "vllm:num_requests_running": "running",
         "vllm:kv_cache_usage_perc": "kv_cache_usage", "vllm:gpu_cache_usage_perc": "kv_cache_usage",
         "vllm:prefix_cache_queries_total": "prefix_queries", "vllm:prefix_cache_hits_total": "prefix_hits",
         "vllm:gpu_prefix_cache_queries_total": "prefix_queries", "vllm:gpu_prefix_cache_hits_total": "prefix_hits"}


@dataclass(frozen=True)
class EngineLoad:
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0          # 0..1
    prefix_queries: float = 0.0          # tokens looked up in the prefix cache, since the engine started
    prefix_hits: float = 0.0             # of them, found
    read_at: float = 0.0                 # time.monotonic() of the scrape

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def parse(text: str, read_at: float | None = None) -> EngineLoad:
    """vLLM's /metrics text -> its load (each figure summed over its label sets)."""
    values: dict[str, float] = {}
    for name, value in SAMPLE.findall(text):
        field = NAMES.get(name)
        if field is not None:
            try:
                values[field] = values.get(field, 0.0) + float(value)
            except ValueError:
                continue
    return EngineLoad(read_at=time.monotonic() if read_at is None else read_at, **values)


class Scraper:
    """Scrapes the replicas `urls()` names into `loads` (url -> EngineLoad): every `interval` seconds
    those whose figures routing reads (True: their deployment has several replicas to choose from),
    every `quiet_interval` the others (one replica: nothing to choose, the figures are only exported).
    Why not all at the fast pace: vLLM renders /metrics on its API server's event loop (about 600
    lines, ~10 ms of its CPU each time on the tiny CPU model), so every scrape delays the tokens it
    is streaming; a lone replica should not pay that twice a second for no routing decision."""

    def __init__(self, urls: Callable[[], Mapping[str, bool]], interval: float = 0.5, timeout: float = 1.0,
                 on_scrape: Callable[[dict[str, EngineLoad]], None] | None = None,
                 quiet_interval: float = 10.0) -> None:
        self.urls, self.interval, self.on_scrape = urls, interval, on_scrape
        self.quiet_interval = quiet_interval
        self.loads: dict[str, EngineLoad] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def scrape_once(self, everything: bool = True) -> None:
        """One pass: the routed replicas, and the quiet ones whose figures are older than quiet_interval
        (all of them with everything=True)."""
        wanted = self.urls()
        now = time.monotonic()
        due = [u for u, routed in wanted.items() if routed or everything or u not in self.loads
               or now - self.loads[u].read_at >= self.quiet_interval]
        answers = await asyncio.gather(*(self._scrape(u) for u in due))
        kept = {u: self.loads[u] for u in wanted if u in self.loads and u not in due}   # not due yet
        self.loads = {**kept, **{u: load for u, load in zip(due, answers, strict=True) if load is not None}}
        if self.on_scrape is not None:
            self.on_scrape(self.loads)

    async def _scrape(self, url: str) -> EngineLoad | None:
        try:
            resp = await self._http.get(url + "/metrics")
        except httpx.HTTPError:
            return None            # a replica that does not answer: the controller's health checks see to it
        return parse(resp.text) if resp.status_code == 200 else None

    async def _run(self) -> None:
        while True:
            try:
                await self.scrape_once(everything=False)
            except asyncio.CancelledError:
                raise
            except Exception:      # a failed pass is logged; routing keeps the last figures
                log.exception("scraping engine metrics failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()
