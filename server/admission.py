"""Admission: who is calling (keys), and may they (rate limits, credits). Everything a request must
pass before any upstream is asked; the refusals (401, 429, 402) come back in the caller's format."""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from server.api.deps import presented_key, require_key
from server.auth import KeyInfo
from server.call import Call
from server.ledger import Ledger, Reservation
from server.usage import estimate_input

DEFAULT_MAX_OUTPUT = 1024     # output tokens assumed for a credit reservation without max_tokens
UNLIMITED_TTL = 1.0           # seconds a tenant seen without a credit balance skips the reservation round trip
KEY_CACHE_MAX = 10_000        # keys remembered; past it the cache starts over (bounded memory)
KEY_CACHE_TTL_MAX = 5.0       # seconds at most a key is trusted without the store (revocation bound)

Write = Callable[..., Awaitable[Any]]     # runs a function in the gateway's store-writer thread


class Admission:
    def __init__(self, ledger: Ledger, write: Write, key_cache_ttl: float) -> None:
        self.ledger, self.write = ledger, write
        self.key_cache_ttl = min(key_cache_ttl, KEY_CACHE_TTL_MAX)
        self._keys: dict[str, tuple[float, KeyInfo]] = {}     # sha256(key) -> (expires, info)
        self._unlimited: dict[str, float] = {}               # tenant -> until when it is known unlimited

    async def authenticate(self, request: Request) -> KeyInfo:
        """The caller's key; a hit in this small cache costs no thread hop, a miss asks the store off the loop."""
        plaintext = presented_key(request) or ""
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            request.state.key = hit[1]
            return hit[1]
        info = await asyncio.to_thread(require_key, request)   # raises 401 in the caller's format
        if len(self._keys) > KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + self.key_cache_ttl, info)
        return info

    def forget_key(self, key_id: str) -> None:
        """A revoked (or changed) key stops being trusted here at once."""
        for digest, (_expires, info) in list(self._keys.items()):
            if info.id == key_id:
                del self._keys[digest]

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
