"""Settling the streams a dead gateway process left behind (kill -9, OOM, power loss).

A running stream's row is kept fresh by its process (events flushed every `streams.flush_interval`,
a heartbeat every `streams.lease / 3`). A row left `running` past `streams.lease` belongs to a process
that is gone; any gateway on the same store (the restarted one at start, or another replica, checking
every lease / 2) settles it, exactly once:

- the events that reached the store are kept as they are, and one explicit in-band error, in the
  stream's own format, ends them: "the gateway restarted ... N events survived". A client resuming
  from past what survived gets that same ending, so it knows how many events are gone;
- the usage the events show (the upstream's count when one got through, else the gateway's own
  character count) is billed, and the credit hold released, through the ledger's idempotent
  bill (the usage row is keyed by request id: never billed twice, even by two settlers at once);
- the row turns `partial`, with `survived: N` in its meta.

What a crash may cost: the events produced after the last flush (at most `flush_interval` of them,
which the client may have seen but no resume can replay), and the usage they carried.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server.call import Call
from server.config import StreamsConfig
from server.ledger import Ledger, Reservation, UsageRecord
from server.logs import log_event
from server.status import PARTIAL
from server.translate.sse import SSEDecoder, encode_sse
from server.usage import CHARS_PER_TOKEN

Write = Callable[..., Awaitable[Any]]     # runs a function on one of the gateway's store threads
DATA_ONLY = ("gemini",)     # formats whose events carry no `id:` line (GeminiRelay.data_only)


def stream_meta(call: Call) -> dict[str, Any]:
    """What a settler needs to bill a stream whose process died: stored with the stream's row."""
    target, reservation = call.target, call.reservation
    return {"request_id": call.request_id, "key_id": call.key_id, "model": call.model, "endpoint": call.endpoint,
            "provider": target.provider if target else None,
            "upstream_model": target.upstream_model if target else None,
            "input_price": target.input_price if target else 0.0,
            "output_price": target.output_price if target else 0.0,
            "input_tokens": call.input_tokens, "metadata": call.metadata,
            "reserved_micros": reservation.micros if reservation else 0,
            "limited": bool(reservation.limited) if reservation else False}


# ---------------------------------------------------------------- reading what survived
def decode(events: list[bytes]) -> list[tuple[str | None, Any]]:
    """Stored SSE events -> (event name, data: parsed JSON, or the raw string)."""
    out: list[tuple[str | None, Any]] = []
    for raw in events:
        for name, data in SSEDecoder().feed(raw):
            try:
                out.append((name, json.loads(data)))
            except ValueError:
                out.append((name, data))
    return out


def _text_of(fmt: str, name: str | None, data: Any) -> str:
    """The model's output an event carries (text, tool-call arguments), by format."""
    if not isinstance(data, dict):
        return data if fmt == "run" and name == "output" and isinstance(data, str) else ""
    if fmt == "openai":
        out = []
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            out.append(delta.get("content") or choice.get("text") or "")
            out += [(c.get("function") or {}).get("arguments") or "" for c in delta.get("tool_calls") or ()]
        return "".join(out)
    if fmt == "anthropic" and data.get("type") == "content_block_delta":
        delta = data.get("delta") or {}
        return delta.get("text") or delta.get("partial_json") or delta.get("thinking") or ""
    if fmt == "gemini":
        return "".join(p.get("text") or json.dumps(p.get("functionCall") or "") for c in data.get("candidates") or ()
                       for p in (c.get("content") or {}).get("parts") or ())
    if fmt == "responses" and str(data.get("type", "")).endswith(".delta"):
        delta = data.get("delta")
        return delta if isinstance(delta, str) else ""
    return ""


def _reported_output(fmt: str, data: Any) -> int | None:
    """Output tokens an upstream's own count in this event says, if it has one."""
    if not isinstance(data, dict):
        return None
    count: Any = None
    if fmt == "openai" and isinstance(data.get("usage"), dict):
        count = data["usage"].get("completion_tokens")
    elif fmt == "anthropic" and data.get("type") == "message_delta":
        count = (data.get("usage") or {}).get("output_tokens")
    elif fmt == "gemini" and isinstance(data.get("usageMetadata"), dict):
        count = data["usageMetadata"].get("candidatesTokenCount")
    elif fmt == "responses" and isinstance((data.get("response") or {}).get("usage"), dict):
        count = data["response"]["usage"].get("output_tokens")
    return count if isinstance(count, int) else None


def survived(fmt: str, decoded: list[tuple[str | None, Any]]) -> tuple[str, int]:
    """(the output text the stored events carry, output tokens to bill for them)."""
    text = "".join(_text_of(fmt, name, data) for name, data in decoded)
    reported = [n for n in (_reported_output(fmt, data) for _name, data in decoded) if isinstance(n, int)]
    return text, max(reported) if reported else -(-len(text) // CHARS_PER_TOKEN)


# ---------------------------------------------------------------- the ending, per format
def message(n: int) -> str:
    kept = f"{n} events survived (indexes 0 to {n - 1})" if n else "no events survived"
    return (f"The gateway restarted while this stream was running: {kept}; anything the upstream sent after "
            "them is lost. The usage received so far is billed.")


def ending(fmt: str, decoded: list[tuple[str | None, Any]], text: str, n: int) -> list[tuple[str | None, Any]]:
    """The in-band error that ends an interrupted stream, as its format's clients expect one."""
    msg = message(n)
    first = next((d for _n, d in decoded if isinstance(d, dict)), {})
    if fmt == "anthropic":
        return [("error", {"type": "error", "error": {"type": "api_error", "message": msg}})]
    if fmt == "run":
        return [("error", {"message": msg, "code": "interrupted", "output": text, "survived": n})]
    if fmt == "gemini":
        return [(None, {"error": {"code": 500, "message": msg, "status": "INTERNAL"}})]
    if fmt == "responses":
        seq = max((d.get("sequence_number", -1) for _n, d in decoded if isinstance(d, dict)), default=-1) + 1
        response = {**(first.get("response") or {}), "status": "failed",
                    "error": {"code": "server_error", "message": msg}}
        return [("error", {"type": "error", "sequence_number": seq, "code": "interrupted", "message": msg,
                           "param": None}),
                ("response.failed", {"type": "response.failed", "sequence_number": seq + 1, "response": response})]
    completion = first.get("object") == "text_completion"
    choice = ({"index": 0, "text": "", "logprobs": None, "finish_reason": "error"} if completion
              else {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "error"})
    chunk = {"id": first.get("id", ""), "object": first.get("object", "chat.completion.chunk"),
             "created": first.get("created", 0), "model": first.get("model", ""), "choices": [choice],
             "error": {"message": msg, "type": "upstream_error", "code": "interrupted"}}
    return [(None, chunk), (None, "[DONE]")]


# ---------------------------------------------------------------- settling
class Recovery:
    def __init__(self, repo: Any, ledger: Ledger, cfg: StreamsConfig, write: Write, read: Write,
                 log: logging.Logger) -> None:
        self.repo, self.ledger, self.cfg, self.log = repo, ledger, cfg, log
        self.write, self.read = write, read        # the gateway's store writer and readers
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:            # at start, then every lease / 2: the restarted process, or any other replica
            try:
                await self.settle_orphans()
            except Exception:  # noqa: BLE001 - the store may be down; tried again next pass
                self.log.exception("settling interrupted streams failed")
            await asyncio.sleep(self.cfg.lease / 2)

    async def settle_orphans(self) -> int:
        orphans = await self.read(self.repo.orphaned, self.cfg.lease)
        for info in orphans:
            await self.write(self.settle, info)
        return len(orphans)

    def settle(self, info: Any) -> None:
        """In the writer thread: bill what survived (exactly once), then end the stream in band."""
        stored = self.repo.read(info.id, 0)
        decoded = decode(stored)
        text, output_tokens = survived(info.format, decoded)
        meta = info.meta or {}
        n = len(stored)
        if meta.get("request_id"):
            input_tokens = int(meta.get("input_tokens") or 0)
            cost = (input_tokens * float(meta.get("input_price") or 0)
                    + output_tokens * float(meta.get("output_price") or 0))
            record = UsageRecord(
                request_id=meta["request_id"], tenant_id=info.tenant_id, key_id=meta.get("key_id"),
                model=meta.get("model") or "", provider=meta.get("provider"),
                upstream_model=meta.get("upstream_model"), input_tokens=input_tokens, output_tokens=output_tokens,
                cost=cost,
                latency_ms=None, ttft_ms=None, status=PARTIAL, failovers=0,
                attempted=[meta["provider"]] if meta.get("provider") else [],
                metadata=meta.get("metadata") or {}, stream_id=info.id)
            reservation = Reservation(info.tenant_id, int(meta.get("reserved_micros") or 0), bool(meta.get("limited")))
            self.ledger.bill_many([(reservation, record)])
        numbered = info.format not in DATA_ONLY      # as the stream's relay wrote its events
        events = [(n + i, encode_sse(data, name, str(n + i) if numbered else None)) for i, (name, data) in enumerate(
            ending(info.format, decoded, text, n))]
        if self.repo.settle(info.id, events, PARTIAL, {**meta, "survived": n}):
            log_event(self.log, "interrupted stream settled", logging.WARNING, stream_id=info.id, survived=n,
                      output_tokens=output_tokens, since=round(time.time(), 3))
