"""Admission: who is calling (keys), and may they (rate limits, credits). Everything a request must
pass before any upstream is asked; the refusals (401, 429, 402) come back in the caller's format."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from server.api.deps import presented_key, require_key
from server.auth import Auth, KeyInfo
from server.call import Call
from server.ledger import Ledger, Reservation
from server.usage import estimate_input

DEFAULT_MAX_OUTPUT = 1024     # output tokens assumed for a credit reservation without max_tokens
UNLIMITED_TTL = 1.0           # seconds a tenant seen without a credit balance skips the reservation round trip

Write = Callable[..., Awaitable[Any]]     # runs a function in the gateway's store-writer thread
Read = Callable[..., Awaitable[Any]]      # runs a function in one of its store-reader threads


class Admission:
    def __init__(self, auth: Auth, ledger: Ledger, write: Write, read: Read) -> None:
        self.auth, self.ledger, self.write, self.read = auth, ledger, write, read
        self._unlimited: dict[str, float] = {}               # tenant -> until when it is known unlimited

    async def authenticate(self, request: Request) -> KeyInfo:
        """The caller's key. Auth's own cache (the only one: a revocation here clears it at once) costs
        no thread hop; a miss asks the store off the loop."""
        info = self.auth.cached(presented_key(request))
        if info is not None:
            request.state.key = info
            return info
        found: KeyInfo = await self.read(require_key, request)   # raises 401 in the caller's format
        return found

    async def admit(self, call: Call, key: KeyInfo, payload: dict) -> None:
        """Rate limit and credit reservation, off the event loop (raise RateLimited / InsufficientCredits)."""
        tokens_in = estimate_input(payload)
        max_out = payload.get("max_tokens") or payload.get("max_completion_tokens") or DEFAULT_MAX_OUTPUT
        target = call.resolved.targets[0] if call.resolved and call.resolved.targets else None
        estimate = target.cost(tokens_in, int(max_out)) if target else 0.0
        call.input_tokens = tokens_in

        now = time.monotonic()
        until = self._unlimited.get(key.tenant_id)
        if key.rpm is None and key.tpm is None and until is not None:
            if until > now:
                # Known unlimited a moment ago: nothing to hold, no store round trip on the hot path.
                # (billing still charges the spend; a balance set meanwhile applies within UNLIMITED_TTL.)
                call.reservation = Reservation(key.tenant_id, 0, limited=False)
                return
            self._unlimited[key.tenant_id] = now + UNLIMITED_TTL   # this request re-checks; the others go on

        def work() -> Reservation:
            self.ledger.check_rate(key, tokens_in)
            return self.ledger.reserve(key.tenant_id, estimate)
        reservation: Reservation = await self.write(work)
        call.reservation = reservation
        if reservation.limited:
            self._unlimited.pop(key.tenant_id, None)
        else:
            self._unlimited[key.tenant_id] = time.monotonic() + UNLIMITED_TTL
