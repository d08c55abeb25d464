"""Spend API for the caller's own tenant (any of its keys; a tenant never sees another's).

    GET /v1/spend?group_by=model|provider|key|metadata.<name>&start=&end=
    GET /v1/spend/requests?limit=50

start/end: ISO 8601 (a date, or a datetime; no offset = UTC) or unix seconds;
start inclusive, end exclusive. Bad parameters -> 422 naming the parameter.
Query parameters are parsed here rather than by FastAPI so the 422 comes in
the OpenAI error format with `param` set.
"""
from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request

from ..auth import KeyInfo
from ..ledger import GROUPS, METADATA_NAME_RE
from .deps import api_error, require_key

router = APIRouter()
MAX_LIMIT = 1000


def _bad(request: Request, param: str, message: str):
    return api_error(request, 422, f"{param}: {message}", param=param)


def parse_time(request: Request, param: str) -> datetime | None:
    raw = request.query_params.get(param)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        try:
            value = datetime.fromisoformat(raw.replace(" ", "+") if "T" in raw else raw)  # '+' arrives as ' '
        except ValueError:
            raise _bad(request, param, "expected an ISO 8601 date or datetime, or unix seconds") from None
    except (OverflowError, OSError):
        raise _bad(request, param, "out of range") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/v1/spend")
def spend(request: Request, key: KeyInfo = Depends(require_key)) -> dict:
    group_by = request.query_params.get("group_by") or "model"
    if group_by not in GROUPS and not (group_by.startswith("metadata.")
                                       and METADATA_NAME_RE.match(group_by[len("metadata."):])):
        raise _bad(request, "group_by", "must be model, provider, key or metadata.<name> "
                                        "(name: letters, digits, _ . : -)")
    start, end = parse_time(request, "start"), parse_time(request, "end")
    if start and end and end <= start:
        raise _bad(request, "end", "must be after start")
    rows = request.app.state.gateway.ledger.spend(key.tenant_id, group_by, start, end)
    total = {name: sum(r[name] for r in rows) for name in ("requests", "input_tokens", "output_tokens", "cost")}
    return {"object": "list", "tenant_id": key.tenant_id, "group_by": group_by,
            "start": start.isoformat() if start else None, "end": end.isoformat() if end else None,
            "data": rows, "total": total}


@router.get("/v1/spend/requests")
def spend_requests(request: Request, key: KeyInfo = Depends(require_key)) -> dict:
    raw = request.query_params.get("limit") or "50"
    try:
        limit = int(raw)
    except ValueError:
        raise _bad(request, "limit", "must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad(request, "limit", f"must be between 1 and {MAX_LIMIT}")
    records = request.app.state.gateway.ledger.requests(key.tenant_id, limit)
    return {"object": "list", "tenant_id": key.tenant_id, "data": [r.public() for r in records]}
