"""Pure translation between the canonical format (OpenAI chat completions) and the
other providers' wire formats. Dict in, dict out; no I/O. See server/README.md."""
from __future__ import annotations

import json
import time
import uuid

# Anthropic stop_reason -> OpenAI finish_reason
ANTHROPIC_TO_OPENAI_STOP = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "refusal",
}
# Gemini finishReason -> OpenAI finish_reason (anything else: "stop")
GEMINI_TO_OPENAI_STOP = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "LANGUAGE": "content_filter",
}
OPENAI_TO_GEMINI_STOP = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}


class StreamError(Exception):
    """An upstream stream failed: an in-band error event, or it ended before its last event.
    `status` is the HTTP status the same error would have had outside a stream."""

    def __init__(self, message: str, type: str = "api_error", status: int = 500) -> None:
        super().__init__(message)
        self.message, self.type, self.status = message, type, status


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def text_of(content) -> str:
    """Text of an OpenAI/Anthropic content value: a string, or text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", None))


def parse_data_url(url: str) -> tuple[str, str] | None:
    """`data:image/png;base64,AAAA` -> ("image/png", "AAAA"); None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, _, data = url[5:].partition(",")
    media_type = head.split(";")[0] or "application/octet-stream"
    return media_type, data


def guess_media_type(url: str) -> str:
    ext = url.split("?")[0].rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "gif": "image/gif", "webp": "image/webp", "pdf": "application/pdf",
            "heic": "image/heic", "heif": "image/heif"}.get(ext, "image/jpeg")


def loads_args(arguments) -> dict:
    """Tool-call arguments (a JSON string from OpenAI) as an object; never raises."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def chunk(resp_id: str, model: str, created: int, delta: dict | None = None,
          finish_reason: str | None = None, usage: dict | None = None) -> dict:
    """One canonical stream chunk. With usage and no delta: the closing usage chunk (`choices: []`)."""
    out = {"id": resp_id, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None and finish_reason is None:
        out["choices"] = []
    else:
        out["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    if usage is not None:
        out["usage"] = usage
    return out


def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0, **extra) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached},
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    usage.update({k: v for k, v in extra.items() if v})
    return usage


from server.translate.anthropic import (  # noqa: E402  (re-exported for callers)
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from server.translate.gemini import (  # noqa: E402
    GeminiToOpenAIStream,
    OpenAIToGeminiStream,
    gemini_to_openai_request,
    gemini_to_openai_response,
    openai_to_gemini_request,
    openai_to_gemini_response,
)
from server.translate.sse import SSEDecoder, encode_sse  # noqa: E402

__all__ = [
    "StreamError", "encode_sse", "SSEDecoder",
    "openai_to_anthropic_request", "anthropic_to_openai_response", "AnthropicToOpenAIStream",
    "anthropic_to_openai_request", "openai_to_anthropic_response", "OpenAIToAnthropicStream",
    "openai_to_gemini_request", "gemini_to_openai_response", "GeminiToOpenAIStream",
    "gemini_to_openai_request", "openai_to_gemini_response", "OpenAIToGeminiStream",
]
