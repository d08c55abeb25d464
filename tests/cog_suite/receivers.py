"""The harness's mock upload server and webhook receiver: real HTTP servers on
this machine, advertised as the harness advertises them: at host.docker.internal,
which a model container resolves to this host (`cogkit serve --image` adds it,
as `cog serve` does). A model run locally sees this host as 127.0.0.1."""
from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class _Receiver:
    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.receiver = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def reply(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", "0")
        self.end_headers()


class UploadReceiver(_Receiver):
    """Accepts PUTs, records (path, content type, size), answers with a Location header."""

    def __init__(self, host: str) -> None:
        self.uploads: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

        class Handler(_Quiet):
            def do_PUT(self) -> None:
                data = self.body()
                receiver: UploadReceiver = self.server.receiver  # type: ignore[attr-defined]
                with receiver.lock:
                    receiver.uploads.append((self.path, self.headers.get("content-type", ""), len(data)))
                self.reply(200, {"Location": f"{receiver.url}{self.path.lstrip('/').split('?')[0]}"})

            def do_POST(self) -> None:
                self.reply(405)

        super().__init__(Handler)
        self.url = f"http://{host}:{self.port}/"


class WebhookReceiver(_Receiver):
    """Records the first terminal prediction webhook as the harness's summary."""

    def __init__(self, host: str) -> None:
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()

        class Handler(_Quiet):
            def do_POST(self) -> None:
                receiver: WebhookReceiver = self.server.receiver  # type: ignore[attr-defined]
                try:
                    payload = json.loads(self.body())
                except ValueError:
                    self.reply(400)
                    return
                self.reply(200)
                receiver.record(payload)

        super().__init__(Handler)
        self.url = f"http://{host}:{self.port}/webhook"

    def record(self, payload: dict[str, Any]) -> None:
        if payload.get("status") not in ("succeeded", "failed", "canceled"):
            return
        with self.lock:
            if self.result is not None:
                return
            output = payload.get("output")
            size = len(output) if isinstance(output, str) else len(json.dumps(output, separators=(",", ":")))
            self.result = {"status": payload["status"], "output_size": size,
                           "has_error": bool(payload.get("error"))}
            if payload.get("error"):
                self.result["error_message"] = payload["error"]
            if payload.get("metrics") is not None:
                self.result["metrics"] = payload["metrics"]
        self.done.set()

    def summary(self) -> str:
        return json.dumps(self.result, separators=(",", ":"))
