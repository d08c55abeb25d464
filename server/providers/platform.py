"""Platform-hosted models: `base_url` is a Cog-compatible model server (`cogkit serve`, or a
Cog container). The model's own inputs go in as `{"input": ...}`; its output comes back.

Also the one reader of a Cog server's predictions for the whole gateway (this provider for a server
started by hand, server/platform/ for managed replicas): Cog 0.23 answers server-sent events only
for a `@cog.streaming` model (others answer 406), with output events carrying `{chunk, index}`."""
from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from server.config import Timeouts
from server.providers.base import Provider, UpstreamError


class PlatformProvider(Provider):
    kind = "platform"

    # Whether the server's model streams, from its /openapi.json: read once, it is one model per server.
    _streams: bool | None = None

    async def _headers(self, stream: bool = False) -> dict:
        headers = {"accept": "text/event-stream"} if stream else {}
        key = await self.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def run(self, inputs: dict, model: str, t: Timeouts) -> dict:
        """The finished prediction ({"id", "status", "output", "metrics", ...}); a failed one is an error."""
        prediction = await self.post_json(f"{self.base_url}/predictions", {"input": inputs}, await self._headers(), t)
        raise_if_failed(prediction)
        return prediction

    async def run_stream(self, inputs: dict, model: str, t: Timeouts) -> AsyncGenerator[tuple[str, Any], None]:
        """("output", item) and ("logs", text) as the model makes them, then ("completed", prediction).
        A model that does not stream is asked for one prediction, told as the same events."""
        if not await self._model_streams(t):
            for told in prediction_events(await self.run(inputs, model, t)):
                yield told
            return
        url = f"{self.base_url}/predictions"
        async for event, data in self.sse(url, {"input": inputs}, await self._headers(stream=True), t):
            item = cog_event(event, data)
            if item is None:
                continue
            if item[0] == "completed":
                raise_if_failed(item[1])
            yield item
            if item[0] == "completed":
                return
        raise UpstreamError(f"{self.name}: prediction stream ended before it completed", None, "stream")

    async def _model_streams(self, t: Timeouts) -> bool:
        if self._streams is None:
            content, status, _ = await self.fetch("GET", f"{self.base_url}/openapi.json", None,
                                                  await self._headers(), t)
            try:
                schema = json.loads(content) if status == 200 else {}
            except ValueError:
                schema = {}                # no schema: it cannot say it streams, so it is asked plainly
            self._streams = schema_streams(schema if isinstance(schema, dict) else {})
        return self._streams


def schema_streams(openapi: dict[str, Any] | None) -> bool:
    """Cog 0.23 answers server-sent events only for an entry point marked @streaming."""
    paths = (openapi or {}).get("paths") or {}
    return bool(((paths.get("/predictions") or {}).get("post") or {}).get("x-cog-streaming"))


def cog_event(event: str | None, data: str) -> tuple[str, Any] | None:
    """One of Cog's events as (output | logs | completed, value); start and metric events say nothing new."""
    try:
        value: Any = json.loads(data)
    except ValueError:
        value = data
    if event in (None, "output"):
        return "output", value["chunk"] if isinstance(value, dict) and "chunk" in value else value
    if event in ("log", "logs"):
        return "logs", value.get("data", "") if isinstance(value, dict) else value
    if event == "completed":
        return "completed", value
    return None


def prediction_events(prediction: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A finished prediction told as a stream: its logs, each output item (a list's items), completed."""
    if prediction.get("logs"):
        yield "logs", prediction["logs"]
    output = prediction.get("output")
    for item in output if isinstance(output, list) else ([] if output is None else [output]):
        yield "output", item
    yield "completed", prediction


def raise_if_failed(prediction: Any) -> None:
    if isinstance(prediction, dict) and prediction.get("status") in ("failed", "canceled"):
        # The model itself failed on these inputs: another deployment would fail the same way.
        raise UpstreamError(prediction.get("error") or f"prediction {prediction['status']}", 422, "http",
                            body={"status": prediction["status"]})
