"""Deployments over HTTP: which model version runs, with how many replicas.

    GET    /v1/deployments                       the caller's (an admin: all), with live status
    POST   /v1/deployments                       {"model": "ns/m", "version"?, "min_replicas", ...}; 409 if it exists
                                                 {"engine": "vllm", "name": "ns/m", "model": "/weights",
                                                 "args": {...}}: vLLM serves it (admin keys only;
                                                 server/platform/vllm_deployments.py)
    GET    /v1/deployments/{ns}/{name}
    PUT    /v1/deployments/{ns}/{name}           create or replace
    PATCH  /v1/deployments/{ns}/{name}           change some fields (min/max replicas, version, ...)
    DELETE /v1/deployments/{ns}/{name}           its replicas are drained, then stopped
    POST   /v1/deployments:apply                 a YAML document of deployments (text/yaml body)
    GET    /v1/scheduler/explain?deployment=ns/m where one more replica would go, each candidate's
                                                 score terms (admin keys only: it shows the whole fleet)
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.auth import KeyInfo
from server.platform.api_models import _platform, json_body, platform_call, problem
from server.platform.deployments import Deployment
from server.platform.registry import RegistryError

router = APIRouter()


def _view(request: Request, d: Deployment) -> dict[str, Any]:
    controller = _platform(request).controller
    return d.public(controller.snapshot(d.name) or None if controller else None)


def _mine(request: Request, key: KeyInfo, name: str) -> Deployment:
    d = _platform(request).deployments.get(name)
    if d is None or (d.tenant_id != key.tenant_id and not key.admin):
        raise RegistryError(f"there is no deployment {name}", 404)
    return d


def _changed(request: Request) -> None:
    controller = _platform(request).controller
    if controller is not None:
        controller.wake()


@router.get("/v1/deployments")
async def list_deployments(request: Request) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        items = _platform(request).deployments.list_deployments(None if key.admin else key.tenant_id)
        return {"next": None, "previous": None, "results": [_view(request, d) for d in items]}
    return await platform_call(request, work)


@router.post("/v1/deployments")
async def create_deployment(request: Request) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> JSONResponse:
        store = _platform(request).deployments
        if isinstance(body, dict):
            engine = body.get("engine", "cog") != "cog"   # an engine deployment's model is a path, not its name
            name = body.get("name") or (None if engine else str(body.get("model") or "").lstrip("@") or None)
            if isinstance(name, str) and store.get(name) is not None:
                raise RegistryError(f"name: a deployment {name} exists; PUT or PATCH /v1/deployments/{name}", 409)
        d, _ = store.put(body, key.tenant_id, key.admin)
        _changed(request)
        return JSONResponse(_view(request, d), status_code=201)
    return await platform_call(request, work)


@router.post("/v1/deployments:apply")
async def apply_deployments(request: Request) -> JSONResponse:
    text = (await request.body()).decode(errors="replace")

    def work(key: KeyInfo) -> dict[str, Any]:
        items = _platform(request).deployments.load_yaml(text, key.tenant_id, key.admin)
        _changed(request)
        return {"results": [_view(request, d) for d in items]}
    return await platform_call(request, work)


@router.get("/v1/deployments/{ns}/{name}")
async def get_deployment(request: Request, ns: str, name: str) -> JSONResponse:
    return await platform_call(request, lambda key: _view(request, _mine(request, key, f"{ns}/{name}")))


@router.put("/v1/deployments/{ns}/{name}")
async def put_deployment(request: Request, ns: str, name: str) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> JSONResponse:
        full = f"{ns}/{name}"
        store = _platform(request).deployments
        if store.get(full) is not None:
            _mine(request, key, full)
        d, created = store.put(body, key.tenant_id, key.admin, name=full)
        _changed(request)
        return JSONResponse(_view(request, d), status_code=201 if created else 200)
    return await platform_call(request, work)


@router.patch("/v1/deployments/{ns}/{name}")
async def patch_deployment(request: Request, ns: str, name: str) -> JSONResponse:
    body = await json_body(request)

    def work(key: KeyInfo) -> dict[str, Any]:
        _mine(request, key, f"{ns}/{name}")
        d = _platform(request).deployments.patch(f"{ns}/{name}", body, key.admin)
        _changed(request)
        return _view(request, d)
    return await platform_call(request, work)


@router.delete("/v1/deployments/{ns}/{name}")
async def delete_deployment(request: Request, ns: str, name: str) -> JSONResponse:
    def work(key: KeyInfo) -> dict[str, Any]:
        if _mine(request, key, f"{ns}/{name}").engine != "cog" and not key.admin:
            raise RegistryError("engine: deleting an engine deployment needs an admin key", 403)
        _platform(request).deployments.delete(f"{ns}/{name}")
        _changed(request)
        return {"deleted": f"{ns}/{name}"}
    return await platform_call(request, work)


@router.get("/v1/scheduler/explain")
async def explain_placement(request: Request, deployment: str | None = None) -> JSONResponse:
    key = await request.app.state.gateway.authenticate(request)
    if not key.admin:
        return problem(403, "the placement explain shows every node and replica: it needs an admin key")
    if not deployment:
        return problem(422, "deployment: expected a query parameter naming a deployment, e.g. ?deployment=acme/hello")
    platform = _platform(request)
    # On the event loop when the controller holds the deployment (its state lives there); else a store read.
    explained = (platform.explain(deployment) if platform.controller is not None
                 and deployment in platform.controller.desired else await asyncio.to_thread(platform.explain, deployment))
    if explained is None:
        return problem(404, f"deployment: there is no deployment {deployment}")
    return JSONResponse(explained)
