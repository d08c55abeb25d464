"""The router's view of managed deployments: a provider whose "upstream model" is a deployment
name. Inputs are checked against the version's schema before a replica is acquired."""
from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from server.config import ProviderConfig, Timeouts
from server.platform.chat import ChunkMaker, chat_inputs, chat_response, is_chat_shaped
from server.platform.registry import Version
from server.platform.service import (
    CURRENT_CALL,
    PROVIDER,
    InputError,
    Platform,
    note_metrics,
    supports_sse,
)
from server.providers.base import Provider, Unsupported, UpstreamError
from server.providers.platform import raise_if_failed


class ManagedProvider(Provider):
    kind = "platform"

    def __init__(self, platform: Platform, timeouts: Timeouts) -> None:
        super().__init__(ProviderConfig(name=PROVIDER, kind="platform", base_url="http://replicas"), timeouts)
        self.platform = platform

    async def _headers(self) -> dict[str, str]:
        return {}                          # replicas are reached through the platform, not by key

    def _version(self) -> Version | None:
        call = CURRENT_CALL.get()
        version_id = call.resolved.version if call is not None and call.resolved is not None else None
        return self.platform.version(version_id) if version_id else None

    def _checked(self, inputs: dict[str, Any]) -> dict[str, Any]:
        version = self._version()
        if version is None:
            return inputs
        try:
            return self.platform.validate(version, inputs)
        except InputError as e:
            raise UpstreamError(e.message, 422, "http", body={"param": e.field}) from None

    async def run(self, inputs: dict[str, Any], model: str, t: Timeouts) -> dict[str, Any]:
        prediction = await self.platform.predict(model, {"input": self._checked(inputs)})
        note_metrics(prediction)
        raise_if_failed(prediction)
        return prediction

    # ---- chat-shaped models through the OpenAI API ----
    def _chat_inputs(self, req: dict[str, Any]) -> dict[str, Any]:
        version = self._version()
        if version is None or not is_chat_shaped(version):
            raise Unsupported(f"{req.get('model')} takes no `messages` or `prompt`: call POST /ai/run/{req.get('model')}")
        return chat_inputs(version, req)

    async def chat(self, req: dict[str, Any], model: str, t: Timeouts) -> dict[str, Any]:
        prediction = await self.run(self._chat_inputs(req), model, t)
        return chat_response(req.get("model") or model, prediction)

    async def chat_stream(self, req: dict[str, Any], model: str, t: Timeouts) -> AsyncGenerator[dict[str, Any], None]:
        chunks = ChunkMaker(req.get("model") or model)
        streamed = False
        async for event, value in self.run_stream(self._chat_inputs(req), model, t):
            if event == "output" and isinstance(value, str):
                streamed = True
                yield chunks.piece(value)
            elif event == "completed":
                for chunk in chunks.last(value if isinstance(value, dict) else {}, streamed):
                    yield chunk

    async def run_stream(self, inputs: dict[str, Any], model: str, t: Timeouts) -> AsyncGenerator[tuple[str, Any], None]:
        version = self._version()
        sse = supports_sse(version) if version is not None else True
        async for event, value in self.platform.predict_stream(model, {"input": self._checked(inputs)}, sse=sse):
            if event == "completed":
                note_metrics(value)
                raise_if_failed(value)
            yield event, value
