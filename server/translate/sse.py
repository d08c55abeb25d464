"""Server-sent events: encode one event here; decode with SSEDecoder, the project's one parser,
which lives with the gateway's client (cogkit/client.py: the client must not import the gateway,
while the gateway may use the client's pure parts). Pure (no I/O)."""
from __future__ import annotations

from cogkit.client import SSEDecoder
from server.jsonio import dumps

__all__ = ["SSEDecoder", "encode_sse"]


def encode_sse(data: dict | str, event: str | None = None, id: str | None = None) -> bytes:
    """One event as bytes. Dicts are written as compact JSON, as the providers do."""
    if not isinstance(data, str):
        # The hot path (once per streamed chunk): JSON has no raw newlines, so it is one data line.
        head = (f"event: {event}\n" if event is not None else "") + (f"id: {id}\n" if id is not None else "")
        return b"".join((head.encode(), b"data: ", dumps(data), b"\n\n"))
    text = data
    out = []
    if event is not None:
        out.append(f"event: {event}\n")
    if id is not None:
        out.append(f"id: {id}\n")
    # A newline inside data must become several data lines, or it would end the field.
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append(f"data: {line}\n")
    out.append("\n")
    return "".join(out).encode()
