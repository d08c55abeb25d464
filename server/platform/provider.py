"""The router's view of managed deployments: a provider whose "upstream model" is a deployment
name. Inputs are checked against the version's schema before a replica is acquired."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.config import ProviderConfig, Timeouts
from server.platform.service import (
    CURRENT_CALL,
    PROVIDER,
    InputError,
    Platform,
    note_metrics,
)
from server.providers.base import Provider, UpstreamError
from server.providers.platform import _raise_if_failed


class ManagedProvider(Provider):
    kind = "platform"

    def __init__(self, platform: Platform, timeouts: Timeouts) -> None:
        super().__init__(ProviderConfig(name=PROVIDER, kind="platform", base_url="http://replicas"), timeouts)
        self.platform = platform

    def _checked(self, inputs: dict[str, Any]) -> dict[str, Any]:
        call = CURRENT_CALL.get()
        version_id = call.resolved.version if call is not None and call.resolved is not None else None
        version = self.platform.version(version_id) if version_id else None
        if version is None:
            return inputs
        try:
            return self.platform.validate(version, inputs)
        except InputError as e:
            raise UpstreamError(e.message, 422, "http", body={"param": e.field}) from None

    async def run(self, inputs: dict[str, Any], model: str, t: Timeouts) -> dict[str, Any]:
        prediction = await self.platform.predict(model, {"input": self._checked(inputs)})
        note_metrics(prediction)
        _raise_if_failed(prediction)
        return prediction

    async def run_stream(self, inputs: dict[str, Any], model: str, t: Timeouts) -> AsyncIterator[tuple[str, Any]]:
        async for event, value in self.platform.predict_stream(model, {"input": self._checked(inputs)}):
            if event == "completed":
                note_metrics(value)
                _raise_if_failed(value)
            yield event, value
