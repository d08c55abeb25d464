"""The model registry over HTTP (Replicate's shapes where Replicate has the call):

    POST   /v1/models/{ns}/{model}/versions          register a pushed image (cogkit push --platform)
    GET    /v1/models                                the gateway's catalog plus the platform models
    POST   /v1/models                                create a model {"owner", "name", "visibility"}
    GET    /v1/models/{ns}/{model}                   one model, with its latest version
    PATCH  /v1/models/{ns}/{model}                   {"visibility": "public" | "private", "description"}
    DELETE /v1/models/{ns}/{model}
    GET    /v1/models/{ns}/{model}/versions          {"next": null, "previous": null, "results": [...]}
    GET    /v1/models/{ns}/{model}/versions/{ref}    id, short digest or tag
    DELETE /v1/models/{ns}/{model}/versions/{ref}

Errors are {"detail": "<sentence>", "status": N, "title": ...}, the contract push relies on.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.auth import KeyInfo
from server.platform.registry import Model, RegistryError
from server.platform.service import Platform

router = APIRouter()
TITLES = {400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found", 409: "Conflict",
          422: "Invalid input", 503: "Unavailable"}


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status, "title": TITLES.get(status, "Error")},
                        status_code=status, headers=headers)


async def platform_call(request: Request, work: Callable[..., Any], *args: Any,
                        status: int = 200) -> JSONResponse:
    """Authenticate, run `work(key, *args)` off the event loop, answer its result or its RegistryError."""
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    try:
        result = await asyncio.to_thread(work, key, *args)
    except RegistryError as e:
        return problem(e.status, str(e))
    if isinstance(result, JSONResponse):
        return result
    return JSONResponse(result, status_code=status)


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.gateway.platform
    return platform


def _visible_model(request: Request, key: KeyInfo, ns: str, name: str) -> Model:
    model = _platform(request).registry.get_model(ns, name, None if key.admin else key.tenant_id)
    if model is None:
        raise RegistryError(f"there is no model {ns}/{name} (or it is private to another tenant)", 404)
    return model


def _owned_model(request: Request, key: KeyInfo, ns: str, name: str) -> Model:
    model = _visible_model(request, key, ns, name)
    if model.tenant_id != key.tenant_id and not key.admin:
        raise RegistryError(f"{ns}/{name} belongs to another tenant", 403)
    return model


@router.post("/v1/models/{ns}/{name}/versions")
async def register_version(request: Request, ns: str, name: str) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> JSONResponse:
        platform = _platform(request)
        version, created = platform.registry.register_version(ns, name, key.tenant_id, key.admin, body)
        return JSONResponse(version.public(), status_code=201 if created else 200)
    return await platform_call(request, work)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    gw = request.app.state.gateway

    def work(key: KeyInfo) -> dict[str, Any]:
        platform = [{**m.view(), "object": "model", "kind": "platform", "owned_by": m.namespace}
                    for m in gw.platform.registry.list_models(None if key.admin else key.tenant_id)]
        return {"object": "list", "data": gw.catalog.listing() + platform}
    return await platform_call(request, work)


@router.post("/v1/models")
async def create_model(request: Request) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RegistryError("the body must be a JSON object with owner and name", 400)
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise RegistryError("visibility: expected public or private")
        model = _platform(request).registry.create_model(
            str(body.get("owner") or ""), str(body.get("name") or ""), key.tenant_id, key.admin,
            visibility == "public", str(body.get("description") or ""))
        return model.view()
    return await platform_call(request, work, status=201)


@router.get("/v1/models/{ns}/{name}")
async def get_model(request: Request, ns: str, name: str) -> JSONResponse:
    return await platform_call(request, lambda key: _visible_model(request, key, ns, name).view())


@router.patch("/v1/models/{ns}/{name}")
async def update_model(request: Request, ns: str, name: str) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> dict[str, Any]:
        _owned_model(request, key, ns, name)
        if not isinstance(body, dict):
            raise RegistryError("the body must be a JSON object", 400)
        visibility = body.get("visibility")
        if visibility not in (None, "public", "private"):
            raise RegistryError("visibility: expected public or private")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise RegistryError("description: expected a string")
        registry = _platform(request).registry
        registry.update_model(ns, name, None if visibility is None else visibility == "public", description)
        return _visible_model(request, key, ns, name).view()
    return await platform_call(request, work)


@router.delete("/v1/models/{ns}/{name}")
async def delete_model(request: Request, ns: str, name: str) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        _owned_model(request, key, ns, name)
        _platform(request).registry.delete_model(ns, name)
        return {"deleted": f"{ns}/{name}"}
    return await platform_call(request, work)


@router.get("/v1/models/{ns}/{name}/versions")
async def list_versions(request: Request, ns: str, name: str) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        _visible_model(request, key, ns, name)
        versions = _platform(request).registry.list_versions(ns, name)
        return {"next": None, "previous": None, "results": [v.public() for v in versions]}
    return await platform_call(request, work)


@router.get("/v1/models/{ns}/{name}/versions/{ref}")
async def get_version(request: Request, ns: str, name: str, ref: str) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        _visible_model(request, key, ns, name)
        version = _platform(request).registry.find_version(ns, name, ref)
        if version is None:
            raise RegistryError(f"{ns}/{name} has no version {ref!r}", 404)
        return version.public()
    return await platform_call(request, work)


@router.delete("/v1/models/{ns}/{name}/versions/{ref}")
async def delete_version(request: Request, ns: str, name: str, ref: str) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        _owned_model(request, key, ns, name)
        registry = _platform(request).registry
        version = registry.find_version(ns, name, ref)
        if version is None:
            raise RegistryError(f"{ns}/{name} has no version {ref!r}", 404)
        registry.delete_version(ns, name, version.id)
        return {"deleted": version.id}
    return await platform_call(request, work)

