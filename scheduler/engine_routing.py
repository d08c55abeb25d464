"""Which replica of an LLM engine gets a request: the least loaded by the engine's own figures
(waiting and running requests, KV-cache usage, from its last /metrics scrape, plus what this
gateway has in flight there since), unless the request shares a long prompt prefix with one a
replica served lately and that replica's load is within `slack` of the least loaded one: then it
goes back there, where vLLM's prefix cache already holds that prefix."""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.metrics_scrape import EngineLoad
from scheduler.replicas import Replica

MIN_PREFIX_CHARS = 256       # shorter shared prefixes gain too little from the cache to bend routing
AFFINITY_ENTRIES = 10_000    # prefixes remembered (least recently used forgotten first)


def prefix_key(req: Mapping[str, Any]) -> str | None:
    """A request's long shared prefix, hashed: a chat's messages before the last one (its system prompt
    and conversation so far), or a completion prompt's first MIN_PREFIX_CHARS characters."""
    messages = req.get("messages")
    if isinstance(messages, list) and len(messages) > 1:
        head = json.dumps(messages[:-1], sort_keys=True, default=str)
        return hashlib.sha256(head.encode()).hexdigest()[:32] if len(head) >= MIN_PREFIX_CHARS else None
    prompt = req.get("prompt")
    if isinstance(prompt, str) and len(prompt) >= MIN_PREFIX_CHARS:
        return hashlib.sha256(prompt[:MIN_PREFIX_CHARS].encode()).hexdigest()[:32]
    return None


def load_score(replica: Replica, load: EngineLoad | None) -> float:
    """Requests' worth of load: the engine's queue and batch (or ours in flight, if not yet scraped),
    with a full KV cache counting as a few more (it will preempt or queue)."""
    if load is None:
        return float(replica.outstanding)
    engine = load.waiting * 2 + load.running
    return max(engine, float(replica.outstanding)) + 4 * load.kv_cache_usage


class EngineRouter:
    def __init__(self, loads: Callable[[], Mapping[str, EngineLoad]], affinity: bool = True,
                 slack: float = 4.0) -> None:
        self.loads, self.affinity, self.slack = loads, affinity, slack
        self._last: OrderedDict[str, str] = OrderedDict()     # prefix key -> replica id that served it
        self.affinity_hits = 0
        self.affinity_misses = 0

    def chooser(self, key: str | None) -> Callable[[list[Replica]], Replica]:
        def choose(candidates: list[Replica]) -> Replica:
            loads = self.loads()
            scored = {r.id: load_score(r, loads.get(r.url)) for r in candidates}
            best = min(candidates, key=lambda r: (scored[r.id], r.outstanding))
            if key is not None and self.affinity:
                previous = self._last.get(key)
                match = next((r for r in candidates if r.id == previous), None)
                if match is not None and scored[match.id] <= scored[best.id] + self.slack:
                    self.affinity_hits += 1
                    best = match
                elif previous is not None:
                    self.affinity_misses += 1
                self._last[key] = best.id
                self._last.move_to_end(key)
                while len(self._last) > AFFINITY_ENTRIES:
                    self._last.popitem(last=False)
            return best
        return choose
