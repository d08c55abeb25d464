"""Google Gemini (generateContent / streamGenerateContent). `base_url`:
`https://generativelanguage.googleapis.com` (a trailing `/v1beta` or `/v1` is kept)."""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from server.config import Timeouts
from server.providers.base import Provider, UpstreamError
from server.translate import StreamError
from server.translate.gemini import GeminiToOpenAIStream, gemini_to_openai_response, openai_to_gemini_request


class GoogleProvider(Provider):
    kind = "google"

    def _url(self, model: str, method: str) -> str:
        root = self.base_url if self.base_url.endswith(("/v1beta", "/v1")) else f"{self.base_url}/v1beta"
        return f"{root}/models/{model}:{method}"

    async def _headers(self) -> dict:
        key = await self.api_key()
        return {"x-goog-api-key": key} if key else {}

    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        body = openai_to_gemini_request(req, model)
        resp = await self.post_json(self._url(model, "generateContent"), body, await self._headers(), t)
        return gemini_to_openai_response(resp, req.get("model") or model)

    async def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncIterator[dict]:
        body = openai_to_gemini_request(req, model)
        translator = GeminiToOpenAIStream(req.get("model") or model, "chatcmpl-" + uuid.uuid4().hex[:24])
        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        try:
            async for event, data in self.sse(url, body, await self._headers(), t):
                try:
                    payload = json.loads(data)
                except ValueError as e:
                    raise UpstreamError(f"{self.name}: invalid JSON in stream", None, "stream") from e
                for chunk in translator.feed(event, payload):
                    yield chunk
            for chunk in translator.finish():
                yield chunk
        except StreamError as e:
            raise UpstreamError(e.message, e.status, "stream", body={"type": e.type}) from e
