"""Counting usage: the one place that turns what an upstream said into the tokens a request is billed
for. Upstream counts win; when an upstream reports none (it broke, or never sends any), the gateway
counts characters itself (CHARS_PER_TOKEN), so a request is never billed as free by accident."""
from __future__ import annotations

import json
from typing import Any

from server.jsonio import dumps

CHARS_PER_TOKEN = 4           # the gateway's own token count, when an upstream reports none


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def estimate_input(payload: dict) -> int:
    """Input tokens of a request, before any upstream has counted them (rate limits, credit holds)."""
    # orjson (server/jsonio.py), not json.dumps: this runs on every request, and the standard library's
    # encoder was ~1.5 % of the gateway's CPU under streaming load. Its UTF-8 length counts non-ASCII
    # text closer to its characters than json.dumps's \\u escapes did.
    return _tokens(len(dumps(payload.get("messages") or payload.get("prompt") or payload.get("input")
                             or payload.get("system") or "")))


def of_result(result: Any) -> tuple[int, int] | None:
    """(input, output) tokens an upstream reported for a finished answer: a canonical or embeddings
    response's `usage`, or a prediction's `metrics`; None when it reported none."""
    if not isinstance(result, dict):
        return None
    usage = result.get("usage")
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
        completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
        if prompt or completion:
            return int(prompt), int(completion)
    metrics = result.get("metrics")
    return of_metrics(metrics) if isinstance(metrics, dict) else None


def estimate_output(result: Any) -> int:
    """Output tokens of a canonical response that reported none, counted from its choices."""
    try:
        text = json.dumps(result.get("choices"), separators=(",", ":")) if isinstance(result, dict) else ""
    except (TypeError, ValueError):
        return 0
    return _tokens(len(text))


def of_metrics(metrics: dict) -> tuple[int, int] | None:
    """A Cog prediction's token counts (`input_token_count`/`output_token_count`), if it reports any."""
    prompt = metrics.get("input_token_count") or metrics.get("input_tokens") or 0
    completion = metrics.get("output_token_count") or metrics.get("output_tokens") or 0
    return (int(prompt), int(completion)) if prompt or completion else None


class Meter:
    """A streamed answer's usage, fed every canonical chunk (or platform output) as it passes."""

    def __init__(self) -> None:
        self.usage: dict | None = None      # the upstream's own count (OpenAI shape), once it sent one
        self.chars = 0                      # streamed text, for counting tokens when it sends none

    def chunk(self, chunk: dict) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if delta:
                self.chars += len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") or {}
                    self.chars += len(fn.get("name") or "") + len(fn.get("arguments") or "")
            elif choice.get("text"):
                self.chars += len(choice["text"])

    def output(self, text: str) -> None:
        self.chars += len(text)

    def metrics(self, metrics: dict) -> None:
        counted = of_metrics(metrics)
        if counted is not None and counted[1]:
            self.usage = {"prompt_tokens": counted[0], "completion_tokens": counted[1]}

    def tokens(self, input_estimate: int) -> tuple[int, int]:
        """(input, output) for the bill: the upstream's count, else our own."""
        if self.usage:
            return (int(self.usage.get("prompt_tokens") or input_estimate),
                    int(self.usage.get("completion_tokens") or 0))
        return input_estimate, _tokens(self.chars)
