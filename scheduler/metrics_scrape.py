"""An engine's own load, read from its Prometheus /metrics: vLLM reports its waiting and running
requests, its KV-cache usage, and its prefix-cache queries and hits (in tokens). Routing reads the
last scrape of each replica; nothing here blocks a request (a scrape runs on its own interval)."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
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
    """Scrapes every url `urls()` names, every `interval` seconds, into `loads` (url -> EngineLoad)."""

    def __init__(self, urls: Callable[[], Iterable[str]], interval: float = 0.5, timeout: float = 1.0,
                 on_scrape: Callable[[dict[str, EngineLoad]], None] | None = None) -> None:
        self.urls, self.interval, self.on_scrape = urls, interval, on_scrape
        self.loads: dict[str, EngineLoad] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def scrape_once(self) -> None:
        urls = list(dict.fromkeys(self.urls()))
        answers = await asyncio.gather(*(self._scrape(u) for u in urls))
        self.loads = {u: load for u, load in zip(urls, answers, strict=True) if load is not None}
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
                await self.scrape_once()
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
