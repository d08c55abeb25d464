"""Gemini API wire formats: generateContent / streamGenerateContent request and response
(every stream chunk is a full GenerateContentResponse) and the Google error body.

The REST API writes camelCase and also accepts snake_case (`system_instruction`, `inline_data`),
so python fields are snake_case with camelCase aliases, both accepted on input.
`model_dump(by_alias=True, exclude_none=True)` writes the documented camelCase."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, ConfigDict, Field
from pydantic.alias_generators import to_camel

from server.wire import Wire


class GWire(Wire):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)


class Blob(GWire):
    mime_type: str
    data: str                                    # base64


class FileData(GWire):
    mime_type: str | None = None
    file_uri: str


class FunctionCall(GWire):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class FunctionResponse(GWire):
    name: str
    response: dict[str, Any]
    id: str | None = None


class Part(GWire):
    """A union by field presence: exactly one of the data fields is set."""
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: bool | None = None
    thought_signature: str | None = None


class Content(GWire):
    role: Literal["user", "model"] | None = None
    parts: list[Part] = Field(min_length=1)


class FunctionDeclaration(GWire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None     # OpenAPI Schema subset


class Tool(GWire):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(GWire):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"] | None = None
    allowed_function_names: list[str] | None = None


class ToolConfig(GWire):
    function_calling_config: FunctionCallingConfig | None = None


class GenerationConfig(GWire):
    stop_sequences: list[str] | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    candidate_count: int | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    thinking_config: dict[str, Any] | None = None


class SafetySetting(GWire):
    category: str
    threshold: str


class GenerateContentRequest(GWire):
    contents: list[Content] = Field(min_length=1)
    system_instruction: Content | None = Field(
        default=None, validation_alias=AliasChoices("systemInstruction", "system_instruction"))
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    safety_settings: list[SafetySetting] | None = None
    generation_config: GenerationConfig | None = None
    cached_content: str | None = None


# ------------------------------------------------------------------ response / stream chunk
FinishReason = Literal["FINISH_REASON_UNSPECIFIED", "STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "LANGUAGE",
                       "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MALFORMED_FUNCTION_CALL",
                       "IMAGE_SAFETY", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"]


class SafetyRating(GWire):
    category: str
    probability: str
    blocked: bool | None = None


class Candidate(GWire):
    content: Content | None = None
    finish_reason: FinishReason | str | None = None
    index: int | None = None
    safety_ratings: list[SafetyRating] | None = None


class ModalityTokenCount(GWire):
    modality: str
    token_count: int | None = None


class UsageMetadata(GWire):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    total_token_count: int | None = None
    cached_content_token_count: int | None = None
    thoughts_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None
    prompt_tokens_details: list[ModalityTokenCount] | None = None


class PromptFeedback(GWire):
    block_reason: str | None = None
    safety_ratings: list[SafetyRating] | None = None


class GenerateContentResponse(GWire):
    """Also the type of each `streamGenerateContent?alt=sse` chunk (`data: {...}`)."""
    candidates: list[Candidate] | None = None
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None


# ------------------------------------------------------------------ error
class ErrorStatus(Wire):
    code: int                                    # HTTP status
    message: str
    status: str                                  # INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...
    details: list[dict[str, Any]] | None = None


class ErrorResponse(Wire):
    error: ErrorStatus
