"""Pure translation between the canonical format (OpenAI chat completions) and the
other providers' wire formats. Dict in, dict out; no I/O. See server/README.md."""
from __future__ import annotations

from server.translate.anthropic import (  # re-exported for callers
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from server.translate.common import (  # re-exported for callers
    ANTHROPIC_TO_OPENAI_STOP,
    GEMINI_TO_OPENAI_STOP,
    OPENAI_TO_ANTHROPIC_STOP,
    OPENAI_TO_GEMINI_STOP,
    StreamError,
    chunk,
    guess_media_type,
    loads_args,
    new_id,
    now,
    openai_usage,
    parse_data_url,
    text_of,
)
from server.translate.gemini import (
    GeminiToOpenAIStream,
    OpenAIToGeminiStream,
    gemini_to_openai_request,
    gemini_to_openai_response,
    openai_to_gemini_request,
    openai_to_gemini_response,
)
from server.translate.sse import SSEDecoder, encode_sse

__all__ = [
    "StreamError", "encode_sse", "SSEDecoder",
    "ANTHROPIC_TO_OPENAI_STOP", "OPENAI_TO_ANTHROPIC_STOP", "GEMINI_TO_OPENAI_STOP", "OPENAI_TO_GEMINI_STOP",
    "chunk", "guess_media_type", "loads_args", "new_id", "now", "openai_usage", "parse_data_url", "text_of",
    "openai_to_anthropic_request", "anthropic_to_openai_response", "AnthropicToOpenAIStream",
    "anthropic_to_openai_request", "openai_to_anthropic_response", "OpenAIToAnthropicStream",
    "openai_to_gemini_request", "gemini_to_openai_response", "GeminiToOpenAIStream",
    "gemini_to_openai_request", "openai_to_gemini_response", "OpenAIToGeminiStream",
]
