"""Platform-hosted models: `base_url` is a Cog-compatible model server (`cogkit serve`, or a
Cog container). The model's own inputs go in as `{"input": ...}`; its output comes back."""
from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from server.config import Timeouts
from server.providers.base import Provider, UpstreamError


class PlatformProvider(Provider):
    kind = "platform"

    async def _headers(self, stream: bool = False) -> dict:
        headers = {"accept": "text/event-stream"} if stream else {}
        key = await self.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def run(self, inputs: dict, model: str, t: Timeouts) -> dict:
        """The finished prediction ({"id", "status", "output", "metrics", ...}); a failed one is an error."""
        prediction = await self.post_json(f"{self.base_url}/predictions", {"input": inputs}, await self._headers(), t)
        _raise_if_failed(prediction)
        return prediction

    async def run_stream(self, inputs: dict, model: str, t: Timeouts) -> AsyncGenerator[tuple[str, Any], None]:
        """("output", item) and ("logs", text) as the model makes them, then ("completed", prediction)."""
        url = f"{self.base_url}/predictions"
        completed = False
        async for event, data in self.sse(url, {"input": inputs}, await self._headers(stream=True), t):
            try:
                value = json.loads(data)
            except ValueError:
                value = data
            if event == "completed":
                _raise_if_failed(value)
                completed = True
            yield event or "output", value
            if completed:
                return
        raise UpstreamError(f"{self.name}: prediction stream ended before it completed", None, "stream")


def _raise_if_failed(prediction: Any) -> None:
    if isinstance(prediction, dict) and prediction.get("status") in ("failed", "canceled"):
        # The model itself failed on these inputs: another deployment would fail the same way.
        raise UpstreamError(prediction.get("error") or f"prediction {prediction['status']}", 422, "http",
                            body={"status": prediction["status"]})
