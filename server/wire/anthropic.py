"""Anthropic Messages API wire formats: request, response, every stream event, error body.
Field names as in the Anthropic Messages and streaming documentation."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from server.wire import TokenCount, Wire, tag

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                     "model_context_window_exceeded"]


# ------------------------------------------------------------------ content blocks
class CacheControl(Wire):
    type: Literal["ephemeral"] = "ephemeral"
    ttl: str | None = None


class TextBlock(Wire):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class Base64Source(Wire):
    type: Literal["base64"]
    media_type: str                            # image/jpeg, image/png, image/gif, image/webp
    data: str


class URLSource(Wire):
    type: Literal["url"]
    url: str


class ImageBlock(Wire):
    type: Literal["image"]
    source: Annotated[Union[Base64Source, URLSource], Field(discriminator="type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[Union[TextBlock, ImageBlock], Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Wire):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class OtherBlock(Wire):                        # document, redacted_thinking, server tool blocks, ...
    type: str


_KNOWN = {"text", "image", "tool_use", "tool_result", "thinking"}
ContentBlock = Annotated[
    Union[Annotated[TextBlock, Tag("text")], Annotated[ImageBlock, Tag("image")],
          Annotated[ToolUseBlock, Tag("tool_use")], Annotated[ToolResultBlock, Tag("tool_result")],
          Annotated[ThinkingBlock, Tag("thinking")], Annotated[OtherBlock, Tag("other")]],
    Discriminator(tag("type", _KNOWN)),
]


class MessageParam(Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# ------------------------------------------------------------------ request
class Tool(Wire):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None   # required for custom tools; server tools carry `type`
    type: str | None = None
    cache_control: CacheControl | None = None


class ToolChoice(Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None                      # with type "tool"
    disable_parallel_tool_use: bool | None = None


class Metadata(Wire):
    user_id: str | None = None


class MessagesRequest(Wire):
    model: str
    messages: list[MessageParam]
    max_tokens: TokenCount
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: dict[str, Any] | None = None


# ------------------------------------------------------------------ response
class Usage(Wire):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    service_tier: str | None = None


class Message(Wire):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


# ------------------------------------------------------------------ stream events
class MessageStartEvent(Wire):
    type: Literal["message_start"]
    message: Message


class ContentBlockStartEvent(Wire):
    type: Literal["content_block_start"]
    index: int
    content_block: ContentBlock


class TextDelta(Wire):
    type: Literal["text_delta"]
    text: str


class InputJSONDelta(Wire):
    type: Literal["input_json_delta"]
    partial_json: str


class ThinkingDelta(Wire):
    type: Literal["thinking_delta"]
    thinking: str


class SignatureDelta(Wire):
    type: Literal["signature_delta"]
    signature: str


class OtherDelta(Wire):
    type: str


Delta = Annotated[
    Union[Annotated[TextDelta, Tag("text_delta")], Annotated[InputJSONDelta, Tag("input_json_delta")],
          Annotated[ThinkingDelta, Tag("thinking_delta")], Annotated[SignatureDelta, Tag("signature_delta")],
          Annotated[OtherDelta, Tag("other")]],
    Discriminator(tag("type", {"text_delta", "input_json_delta", "thinking_delta", "signature_delta"})),
]


class ContentBlockDeltaEvent(Wire):
    type: Literal["content_block_delta"]
    index: int
    delta: Delta


class ContentBlockStopEvent(Wire):
    type: Literal["content_block_stop"]
    index: int


class MessageDeltaBody(Wire):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(Wire):
    output_tokens: int                           # cumulative
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(Wire):
    type: Literal["message_delta"]
    delta: MessageDeltaBody
    usage: MessageDeltaUsage


class MessageStopEvent(Wire):
    type: Literal["message_stop"]


class PingEvent(Wire):
    type: Literal["ping"]


class ErrorDetail(Wire):
    type: str        # invalid_request_error, authentication_error, permission_error, not_found_error,
    message: str     # request_too_large, rate_limit_error, api_error, overloaded_error


class ErrorEvent(Wire):
    type: Literal["error"]
    error: ErrorDetail


StreamEvent = Annotated[
    Union[MessageStartEvent, ContentBlockStartEvent, ContentBlockDeltaEvent, ContentBlockStopEvent,
          MessageDeltaEvent, MessageStopEvent, PingEvent, ErrorEvent],
    Field(discriminator="type"),
]


class ErrorResponse(Wire):
    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None
