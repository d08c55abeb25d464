"""One client request, filled in as it goes through admission, serving and billing; the ledger, the
logs and the metrics read it at the end."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.catalog import Resolved, Target
from server.status import OK, Status


@dataclass
class Call:
    request_id: str
    endpoint: str                          # "chat" | "completions" | "embeddings" | "messages" | "run" | ...
    model: str                             # the caller's model string
    tenant_id: str = ""
    key_id: str | None = None
    metadata: dict = field(default_factory=dict)
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    resolved: Resolved | None = None
    target: Target | None = None           # who served
    attempted: list[str] = field(default_factory=list)
    upstream_s: float = 0.0                # time spent waiting on upstreams (the rest is our overhead)
    ttft_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    status: Status = OK                    # see server/status.py
    error: str | None = None
    stream_id: str | None = None
    cached: bool = False
    reservation: Any = None                # the ledger's Reservation, from admission
    ended: float | None = None
    overhead: float | None = None          # ms, measured when the response headers went out
    extra_headers: dict = field(default_factory=dict)   # x-cogkit-* a provider adds (cold start)

    def latency_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def failovers(self) -> int:
        return max(0, len(self.attempted) - 1)

    def cost(self) -> float:
        return self.target.cost(self.input_tokens, self.output_tokens) if self.target else 0.0

    def overhead_ms(self) -> float:
        return max(0.0, (time.perf_counter() - self.started - self.upstream_s) * 1000)
