"""Server-sent events: encode one event, decode a byte stream incrementally.

Pure (no I/O). The decoder follows the WHATWG event-stream rules that matter for
LLM APIs: `\\n`, `\\r\\n` and `\\r` line ends (Gemini uses `\\r\\n`), comments
(`: ping` keep-alives), multi-line `data:`, and input split at any byte, even
inside a UTF-8 character or between `\\r` and `\\n`.
"""
from __future__ import annotations

import codecs
import json


def encode_sse(data: dict | str, event: str | None = None, id: str | None = None) -> bytes:
    """One event as bytes. Dicts are written as compact JSON, as the providers do."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
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


class SSEDecoder:
    """feed(bytes) -> [(event or None, data_str)] for every event completed so far."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._skip_lf = False       # the last chunk ended in "\r": a leading "\n" belongs to it
        self._started = False
        self._event: str | None = None
        self._data: list[str] = []
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            if text.startswith("\n"):
                text = text[1:]
            self._skip_lf = False
        self._buf += text
        events: list[tuple[str | None, str]] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                break
            line, end = self._buf[:cut], cut + 1
            if self._buf[cut] == "\r":
                if end < len(self._buf):
                    if self._buf[end] == "\n":
                        end += 1
                else:
                    self._skip_lf = True
            self._buf = self._buf[end:]
            done = self._line(line)
            if done is not None:
                events.append(done)
        return events

    def flush(self) -> list[tuple[str | None, str]]:
        """End of stream: a last event without its blank line is still returned (lenient)."""
        tail = self._utf8.decode(b"", final=True)
        self._buf += tail
        events = []
        if self._buf:
            done = self._line(self._buf)
            self._buf = ""
            if done is not None:
                events.append(done)
        done = self._line("")
        if done is not None:
            events.append(done)
        return events

    def _line(self, line: str) -> tuple[str | None, str] | None:
        if line == "":
            if not self._data:
                self._event = None
                return None
            out = (self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value or None
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def _line_end(buf: str) -> int | None:
    r, n = buf.find("\r"), buf.find("\n")
    if r < 0:
        return n if n >= 0 else None
    return r if n < 0 or r < n else n
