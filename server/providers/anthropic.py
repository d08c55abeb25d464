"""Anthropic Messages API (and compatible endpoints). `base_url` as in the Anthropic SDK:
`https://api.anthropic.com` (a trailing `/v1` is accepted too)."""
from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

from server.config import Timeouts
from server.providers.base import Provider
from server.translate.anthropic import (
    AnthropicToOpenAIStream,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)

# The fields of a request that count_tokens takes (max_tokens, stream, ... are refused there).
COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")


class AnthropicProvider(Provider):
    kind = "anthropic"

    @property
    def url(self) -> str:
        return f"{self.base_url}/messages" if self.base_url.endswith("/v1") else f"{self.base_url}/v1/messages"

    async def _headers(self) -> dict:
        headers = {"anthropic-version": self.cfg.anthropic_version}
        key = await self.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def count_tokens(self, req: dict, model: str, t: Timeouts, anthropic_body: dict | None = None) -> int | None:
        """POST /v1/messages/count_tokens: the client's own body passed through when it is an Anthropic one."""
        if anthropic_body is not None:
            body = {**anthropic_body, "model": model}
        else:
            body = openai_to_anthropic_request({**req, "stream": False}, model)
        body = {k: v for k, v in body.items() if k in COUNTED}
        resp = await self.post_json(self.url + "/count_tokens", body, await self._headers(), t)
        count = resp.get("input_tokens")
        return count if isinstance(count, int) else None

    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        body = openai_to_anthropic_request({**req, "stream": False}, model)
        body.pop("stream", None)
        resp = await self.post_json(self.url, body, await self._headers(), t)
        return anthropic_to_openai_response(resp, req.get("model") or model)

    async def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        body = {**openai_to_anthropic_request(req, model), "stream": True}
        translator = AnthropicToOpenAIStream(req.get("model") or model, "chatcmpl-" + uuid.uuid4().hex[:24])
        async for chunk in self.translated_stream(self.url, body, translator, t):
            yield chunk

