"""Google Gemini (generateContent / streamGenerateContent). `base_url`:
`https://generativelanguage.googleapis.com` (a trailing `/v1beta` or `/v1` is kept)."""
from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

from server.config import Timeouts
from server.providers.base import Provider
from server.translate.gemini import GeminiToOpenAIStream, gemini_to_openai_response, openai_to_gemini_request


class GoogleProvider(Provider):
    kind = "google"

    def _url(self, model: str, method: str) -> str:
        root = self.base_url if self.base_url.endswith(("/v1beta", "/v1")) else f"{self.base_url}/v1beta"
        return f"{root}/models/{model}:{method}"

    async def _headers(self) -> dict:
        key = await self.api_key()
        return {"x-goog-api-key": key} if key else {}

    async def count_tokens(self, req: dict, model: str, t: Timeouts, anthropic_body: dict | None = None) -> int | None:
        """models/{model}:countTokens on the translated request."""
        body = openai_to_gemini_request(req, model)
        counted = {k: body[k] for k in ("contents", "systemInstruction", "tools") if k in body}
        resp = await self.post_json(self._url(model, "countTokens"), counted, await self._headers(), t)
        count = resp.get("totalTokens")
        return count if isinstance(count, int) else None

    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        body = openai_to_gemini_request(req, model)
        resp = await self.post_json(self._url(model, "generateContent"), body, await self._headers(), t)
        return gemini_to_openai_response(resp, req.get("model") or model)

    async def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        body = openai_to_gemini_request(req, model)
        translator = GeminiToOpenAIStream(req.get("model") or model, "chatcmpl-" + uuid.uuid4().hex[:24])
        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        async for chunk in self.translated_stream(url, body, translator, t):
            yield chunk
