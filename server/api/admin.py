"""Admin API under /admin (admin keys only): tenants and credits, API keys,
provider secrets. Key plaintext appears once, in the create response;
secret values never appear in any response.

Endpoints are sync on purpose: FastAPI runs them in its threadpool, off the event loop.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..auth import AuthError, Conflict, NotFound
from .body import check_name
from .deps import api_error, require_admin

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
# USD; a bound far above any real balance that keeps micro-USD inside a 64-bit integer.
MAX_CREDITS = 1e12


def _usd(description: str, default: object = ...) -> Any:
    return Field(default, ge=-MAX_CREDITS, le=MAX_CREDITS, allow_inf_nan=False, description=description)


def _gw(request: Request):
    return request.app.state.gateway


def _fail(request: Request, exc: Exception):
    status = 404 if isinstance(exc, (NotFound, LookupError)) else 409 if isinstance(exc, Conflict) else 400
    return api_error(request, status, str(exc))


# -- tenants and credits ------------------------------------------------------------
class TenantIn(BaseModel):
    id: str = Field(description="slug: a-z 0-9 _ . -")
    name: str | None = None
    credits: float | None = _usd("starting balance in USD; omit for unlimited", None)


class CreditsSet(BaseModel):
    balance: float | None = _usd("USD; null = unlimited")
    reset_reserved: bool = False


class CreditsAdd(BaseModel):
    amount: float = _usd("USD to add (negative: to take away)")


def _tenant(request: Request, tenant) -> dict:
    return tenant.public() | {"credits": _gw(request).ledger.credits(tenant.id)}


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantIn, request: Request) -> dict:
    check_name(request, "id", body.id)
    check_name(request, "name", body.name)
    try:
        tenant = _gw(request).auth.create_tenant(body.id, body.name)
    except AuthError as exc:
        raise _fail(request, exc) from None
    if body.credits is not None:
        _gw(request).ledger.set_credits(tenant.id, body.credits)
    return _tenant(request, tenant)


@router.get("/tenants")
def list_tenants(request: Request) -> dict:
    return {"object": "list", "data": [_tenant(request, t) for t in _gw(request).auth.list_tenants()]}


@router.get("/tenants/{tenant_id}")
def get_tenant(tenant_id: str, request: Request) -> dict:
    tenant = _gw(request).auth.get_tenant(tenant_id)
    if tenant is None:
        raise api_error(request, 404, f"no tenant {tenant_id!r}")
    return _tenant(request, tenant)


@router.put("/tenants/{tenant_id}/credits")
def set_credits(tenant_id: str, body: CreditsSet, request: Request) -> dict:
    try:
        return _gw(request).ledger.set_credits(tenant_id, body.balance, reset_reserved=body.reset_reserved)
    except LookupError as exc:
        raise _fail(request, exc) from None


@router.post("/tenants/{tenant_id}/credits")
def add_credits(tenant_id: str, body: CreditsAdd, request: Request) -> dict:
    try:
        return _gw(request).ledger.add_credits(tenant_id, body.amount)
    except LookupError as exc:
        raise api_error(request, 409 if _gw(request).auth.get_tenant(tenant_id) else 404, str(exc)) from None


# -- keys ---------------------------------------------------------------------------
class KeyIn(BaseModel):
    tenant_id: str = "default"
    name: str = ""
    admin: bool = False
    rpm: int | None = Field(None, ge=1, description="requests per minute; omit for none")
    tpm: int | None = Field(None, ge=1, description="tokens per minute; omit for none")


@router.post("/keys", status_code=201)
def create_key(body: KeyIn, request: Request) -> dict:
    check_name(request, "tenant_id", body.tenant_id)
    check_name(request, "name", body.name)
    try:
        info, plaintext = _gw(request).auth.create_key(body.tenant_id, body.name, body.admin, body.rpm, body.tpm)
    except AuthError as exc:
        raise _fail(request, exc) from None
    return info.public() | {"key": plaintext}   # the only time it is shown


@router.get("/keys")
def list_keys(request: Request, tenant_id: str | None = None) -> dict:
    return {"object": "list", "data": [k.public() for k in _gw(request).auth.list_keys(tenant_id)]}


@router.get("/keys/{key_id}")
def get_key(key_id: str, request: Request) -> dict:
    info = _gw(request).auth.get_key(key_id)
    if info is None:
        raise api_error(request, 404, f"no key {key_id!r}")
    return info.public()


@router.post("/keys/{key_id}/revoke")
@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, request: Request) -> dict:
    auth = _gw(request).auth
    if not auth.revoke_key(key_id):
        raise api_error(request, 404, f"no key {key_id!r}")
    return auth.get_key(key_id).public()


# -- provider secrets ---------------------------------------------------------------
class SecretIn(BaseModel):
    value: str = Field(min_length=1)
    tenant_id: str | None = Field(None, description="omit for a global secret")


@router.put("/providers/{name}")
def set_secret(name: str, body: SecretIn, request: Request) -> dict:
    check_name(request, "name", name)
    check_name(request, "tenant_id", body.tenant_id)
    try:
        return _gw(request).auth.set_provider_secret(body.tenant_id, name, body.value)
    except AuthError as exc:
        raise _fail(request, exc) from None


@router.get("/providers")
def list_secrets(request: Request, tenant_id: str | None = None) -> dict:
    """Masked. All of them, or with tenant_id the tenant's own plus the global ones."""
    auth = _gw(request).auth
    return {"object": "list", "data": auth.list_provider_secrets(tenant_id, all_scopes=tenant_id is None)}


@router.delete("/providers/{name}")
def delete_secret(name: str, request: Request, tenant_id: str | None = None) -> dict:
    if not _gw(request).auth.delete_provider_secret(tenant_id, name):
        scope = f"tenant {tenant_id!r}" if tenant_id else "global scope"
        raise api_error(request, 404, f"no provider secret {name!r} in {scope}")
    return {"name": name, "tenant_id": tenant_id, "deleted": True}
