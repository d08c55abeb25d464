"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Together, Groq, a local llama.cpp...).
`base_url` includes the version prefix, as in the OpenAI SDK: `https://api.openai.com/v1`."""
from __future__ import annotations

from collections.abc import AsyncGenerator

from server.config import Timeouts
from server.jsonio import loads
from server.providers.base import Provider, UpstreamError


class OpenAICompatProvider(Provider):
    kind = "openai"

    async def _headers(self) -> dict:
        key = await self.api_key()
        return {"authorization": f"Bearer {key}"} if key else {}

    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        body = {**req, "model": model, "stream": False}
        body.pop("stream_options", None)
        return await self.post_json(f"{self.base_url}/chat/completions", body, await self._headers(), t)

    def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        # Ask for the closing usage chunk: spend is billed from the provider's own count. (The chunks'
        # generator itself is returned, not re-yielded: one generator hop less per chunk.)
        options = {**(req.get("stream_options") or {}), "include_usage": True}
        body = {**req, "model": model, "stream": True, "stream_options": options}
        return self._chunks(f"{self.base_url}/chat/completions", body, t)

    async def completions(self, req: dict, model: str, t: Timeouts) -> dict:
        body = {**req, "model": model, "stream": False}
        body.pop("stream_options", None)
        return await self.post_json(f"{self.base_url}/completions", body, await self._headers(), t)

    def completions_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        options = {**(req.get("stream_options") or {}), "include_usage": True}
        body = {**req, "model": model, "stream": True, "stream_options": options}
        return self._chunks(f"{self.base_url}/completions", body, t)

    async def embeddings(self, req: dict, model: str, t: Timeouts) -> dict:
        return await self.post_json(f"{self.base_url}/embeddings", {**req, "model": model}, await self._headers(), t)

    async def _chunks(self, url: str, body: dict, t: Timeouts) -> AsyncGenerator[dict, None]:
        finished = done = False
        async for _event, data in self.sse(url, body, await self._headers(), t):
            if done:
                continue      # read the body to its end, so the connection goes back to the pool
            if data == "[DONE]":
                done = finished = True
                continue
            try:
                chunk = loads(data)
            except ValueError as e:
                raise UpstreamError(f"{self.name}: invalid JSON in stream", None, "stream") from e
            if chunk.get("error"):
                err = chunk["error"]
                message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                raise UpstreamError(message, None, "stream", body=chunk)
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    finished = True
            yield chunk
        if not finished:  # the connection closed mid-answer: never pass that off as a complete response
            raise UpstreamError(f"{self.name}: stream ended before it finished", None, "stream")
