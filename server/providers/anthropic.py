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

