"""Resumable streams: GET /v1/streams/{id}?from=N (or Last-Event-ID) replays exactly the events
from index N on, then follows the live stream; DELETE /v1/streams/{id} stops its upstream.
A tenant only ever sees its own streams (others' answer 404, as missing ones do)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from server.api.deps import api_error
from server.serving import EventStream

router = APIRouter()


def _start_index(request: Request) -> int:
    value = request.query_params.get("from")
    try:
        if value is not None:
            return max(0, int(value))
        last = request.headers.get("last-event-id")
        return int(last) + 1 if last not in (None, "") else 0
    except ValueError:
        raise api_error(request, 400, "`from` (or Last-Event-ID) must be an event index", param="from") from None


@router.get("/v1/streams/{stream_id}")
async def resume(request: Request, stream_id: str) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    start = _start_index(request)
    found = await gw.streams.find(stream_id, key.tenant_id)
    if found is None:
        raise api_error(request, 404, f"no stream {stream_id!r}", code="stream_not_found")
    where, obj = found
    gw.metrics.stream_resumes.labels(source="memory" if where == "local" else "store").inc()
    headers = {"x-cogkit-stream-id": stream_id, "cache-control": "no-cache"}
    if where == "local":
        return EventStream(gw.streams.follow(obj, start), headers)
    # Waits long enough for a dead owner's stream to be settled (server/recovery.py) rather than cut.
    # (Starlette's response, with its disconnect watcher: this one polls the store until then.)
    wait = max(gw.config.timeouts.idle * 2, gw.config.streams.lease * 2)
    return StreamingResponse(gw.streams.follow_store(stream_id, start, wait), media_type="text/event-stream",
                             headers=headers)


@router.get("/v1/streams/{stream_id}/status")
async def status(request: Request, stream_id: str) -> dict:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    found = await gw.streams.find(stream_id, key.tenant_id)
    if found is None:
        raise api_error(request, 404, f"no stream {stream_id!r}", code="stream_not_found")
    where, obj = found
    if where == "local":
        return {"id": stream_id, "format": obj.format, "status": obj.status, "events": len(obj.events)}
    return {"id": stream_id, "format": obj.format, "status": obj.status, "events": obj.next_index}


@router.delete("/v1/streams/{stream_id}")
async def cancel(request: Request, stream_id: str) -> dict:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    if not await gw.streams.cancel(stream_id, key.tenant_id):
        raise api_error(request, 404, f"no stream {stream_id!r}", code="stream_not_found")
    return {"id": stream_id, "deleted": True}
