"""Chat-shaped platform models behind the OpenAI API: a Cog model whose inputs take `messages` (or a
`prompt`) answers /v1/chat/completions, so the openai SDK can call `@ns/model` like any chat model."""
from __future__ import annotations

import time
import uuid
from typing import Any

from server.platform.registry import Version

PASSED = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty")


def input_properties(version: Version) -> dict[str, Any]:
    schemas = (version.openapi_schema.get("components") or {}).get("schemas") or {}
    return (schemas.get("Input") or {}).get("properties") or {}


def is_chat_shaped(version: Version) -> bool:
    props = input_properties(version)
    return "messages" in props or "prompt" in props


def _text(content: Any) -> str:
    if isinstance(content, list):      # content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def chat_inputs(version: Version, req: dict[str, Any]) -> dict[str, Any]:
    """A canonical chat request -> the model's own inputs (only the ones its schema has)."""
    props = input_properties(version)
    messages = req.get("messages") or []
    inputs: dict[str, Any] = {}
    if "messages" in props:
        inputs["messages"] = messages
    else:
        users = [m for m in messages if m.get("role") == "user"]
        inputs["prompt"] = _text(users[-1].get("content")) if users else ""
        system = next((m for m in messages if m.get("role") in ("system", "developer")), None)
        for name in ("system_prompt", "system"):
            if system is not None and name in props:
                inputs[name] = _text(system.get("content"))
    for name in PASSED:
        if req.get(name) is not None and name in props:
            inputs[name] = req[name]
    if req.get("max_completion_tokens") is not None and "max_tokens" in props:
        inputs["max_tokens"] = req["max_completion_tokens"]
    return inputs


def _usage(metrics: dict[str, Any]) -> dict[str, int] | None:
    prompt = metrics.get("input_token_count") or metrics.get("input_tokens")
    completion = metrics.get("output_token_count") or metrics.get("output_tokens")
    if prompt is None and completion is None:
        return None
    p, c = int(prompt or 0), int(completion or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def output_text(output: Any) -> str:
    if isinstance(output, list):
        return "".join(str(x) for x in output)
    return "" if output is None else str(output)


def chat_response(model: str, prediction: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                     "message": {"role": "assistant", "content": output_text(prediction.get("output"))}}]}
    usage = _usage(prediction.get("metrics") or {})
    if usage:
        out["usage"] = usage
    return out


class ChunkMaker:
    """The model's streamed output pieces as canonical chat chunks, then the closing one (with usage)."""

    def __init__(self, model: str) -> None:
        self.id, self.model, self.created = "chatcmpl-" + uuid.uuid4().hex, model, int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def piece(self, text: str) -> dict[str, Any]:
        return self._chunk({"content": text})

    def last(self, prediction: dict[str, Any], streamed: bool) -> list[dict[str, Any]]:
        chunks = [] if streamed else [self.piece(output_text(prediction.get("output")))]
        final = self._chunk({}, "stop")
        usage = _usage(prediction.get("metrics") or {})
        if usage:
            final["usage"] = usage
        return [*chunks, final]
