"""OpenAI wire formats: chat completions (request, response, stream chunk), completions,
embeddings, models list and the error body. Field names as in the OpenAI API reference."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from server.wire import TokenCount, Wire, tag


# ------------------------------------------------------------------ content parts
class TextPart(Wire):
    type: Literal["text"]
    text: str


class ImageURL(Wire):
    url: str                                   # http(s) URL or data:image/...;base64,...
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Wire):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(Wire):                         # input_audio, file, ... passed through
    type: str


ContentPart = Annotated[
    Union[Annotated[TextPart, Tag("text")], Annotated[ImagePart, Tag("image_url")], Annotated[OtherPart, Tag("other")]],
    Discriminator(tag("type", {"text", "image_url"})),
]


# ------------------------------------------------------------------ messages
class FunctionCall(Wire):
    name: str
    arguments: str                             # a JSON string, as the model produced it


class ToolCall(Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Wire):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Wire):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Wire):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(Wire):
    role: Literal["assistant"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(Wire):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(Wire):                   # legacy `functions` API
    role: Literal["function"]
    content: str | None = None
    name: str


Message = Annotated[
    Union[Annotated[SystemMessage, Tag("system")], Annotated[DeveloperMessage, Tag("developer")],
          Annotated[UserMessage, Tag("user")], Annotated[AssistantMessage, Tag("assistant")],
          Annotated[ToolMessage, Tag("tool")], Annotated[FunctionMessage, Tag("function")]],
    Discriminator("role"),
]


# ------------------------------------------------------------------ request
class FunctionDefinition(Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None   # JSON Schema
    strict: bool | None = None


class Tool(Wire):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(Wire):
    name: str


class NamedToolChoice(Wire):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(Wire):
    include_usage: bool | None = None


class ChatCompletionRequest(Wire):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None       # deprecated by OpenAI, still widely sent
    max_completion_tokens: TokenCount | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    metadata: dict[str, str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


# ------------------------------------------------------------------ response
class PromptTokensDetails(Wire):
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(Wire):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ResponseMessage(Wire):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(Wire):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


# ------------------------------------------------------------------ stream chunk
class DeltaFunction(Wire):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Wire):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class Delta(Wire):
    role: Literal["assistant", "system", "user", "tool", "developer"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Wire):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(Wire):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]                 # empty in the final usage chunk
    usage: Usage | None = None                 # only with stream_options.include_usage
    system_fingerprint: str | None = None


# ------------------------------------------------------------------ legacy completions
class CompletionRequest(Wire):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: TokenCount | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    user: str | None = None


class CompletionChoice(Wire):
    text: str
    index: int
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: dict[str, Any] | None = None


class Completion(Wire):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ------------------------------------------------------------------ embeddings
class EmbeddingRequest(Wire):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


class Embedding(Wire):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str               # str: base64 of little-endian float32


class EmbeddingUsage(Wire):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Wire):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ------------------------------------------------------------------ models, errors
class ModelCard(Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(Wire):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(Wire):
    error: ErrorDetail
