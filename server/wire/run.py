"""/ai/run's wire format for a chat model's inputs: `messages` (OpenAI format) or `prompt` (+ `system`),
with any other chat parameter. The declared fields are checked (422 naming the field); the rest pass on."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from server.wire import TokenCount, Wire
from server.wire.openai import Message, StreamOptions, TextPart, Tool


class RunChatInputs(Wire):
    messages: list[Message] | None = None
    prompt: Any = None                         # turned into one user message (str() of it)
    system: str | list[TextPart] | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[Tool] | None = None
    stream_options: StreamOptions | None = None
