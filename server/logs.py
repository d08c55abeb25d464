"""Structured JSON logs, one object per line on stderr.

Never logged: API keys, provider keys, Authorization headers. Prompts and outputs only
with `logging.log_prompts: true`."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from server.status import CANCELED, OK

LOGGER = "cogkit.gateway"
SECRET_FIELDS = {"authorization", "x-api-key", "api_key", "api-key", "x-goog-api-key", "password", "secret", "key"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(redact(fields))
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[redacted]" if str(k).lower() in SECRET_FIELDS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def setup_logging(level: str = "INFO") -> logging.Logger:
    """JSON lines for the gateway's logger and uvicorn's, so one parser reads them all."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    for name in (LOGGER, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    return logging.getLogger(LOGGER)


def log_call(logger: logging.Logger, call, log_prompts: bool = False, prompt: Any = None, output: Any = None) -> None:
    """One line per request: who, what model, who served, tokens, cost, timings, outcome."""
    level = logging.WARNING if call.status not in (OK, CANCELED) else logging.INFO
    if not logger.isEnabledFor(level):
        return                 # the hot path at WARNING: no fields built for a line nobody writes
    fields = {
        "event": "request", "request_id": call.request_id, "endpoint": call.endpoint, "model": call.model,
        "tenant": call.tenant_id, "key_id": call.key_id, "provider": call.target.provider if call.target else None,
        "attempted": call.attempted, "failovers": call.failovers, "status": call.status,
        "stream": call.stream, "stream_id": call.stream_id, "cached": call.cached,
        "input_tokens": call.input_tokens, "output_tokens": call.output_tokens, "cost": round(call.cost(), 8),
        "latency_ms": round(call.latency_s() * 1000, 2),
        "ttft_ms": round(call.ttft_s * 1000, 2) if call.ttft_s is not None else None,
        "error": call.error, "metadata": call.metadata,
    }
    if log_prompts:
        fields["prompt"], fields["output"] = prompt, output
    logger.log(level, "request", extra={"fields": fields})


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": {"event": msg, **fields, "at": time.time()}})
