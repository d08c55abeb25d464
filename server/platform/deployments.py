"""Deployments in the store: which model version runs with how many replicas, declared by an
operator (API, CLI or YAML). The controller reads them as DesiredDeployments; it writes back
each deployment's observed status (replicas, last failure)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import delete, select, update

from scheduler.autoscaler import ScalePolicy
from scheduler.controller import DesiredDeployment
from server.platform.registry import Registry, RegistryError, check_hardware, check_name
from server.platform.tables import deployments
from server.store import Store
from server.store.tables import utcnow

MB = 1_000_000
FIELDS = {  # name -> (type, default, check)
    "min_replicas": (int, 0), "max_replicas": (int, 1), "idle_timeout": (float, 300.0),
    "target_concurrency": (float, 1.0), "queue_limit": (int, 64), "cold_start_timeout": (float, 300.0),
}


@dataclass(frozen=True)
class Deployment:
    name: str
    tenant_id: str
    namespace: str
    model: str
    version_id: str | None
    min_replicas: int
    max_replicas: int
    idle_timeout: float
    target_concurrency: float
    queue_limit: int
    cold_start_timeout: float
    env: dict[str, str]
    hardware: dict[str, Any]
    status: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def model_name(self) -> str:
        return f"{self.namespace}/{self.model}"

    def public(self, live: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_name, "version": self.version_id or "latest",
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "idle_timeout": self.idle_timeout, "target_concurrency": self.target_concurrency,
                "queue_limit": self.queue_limit, "cold_start_timeout": self.cold_start_timeout,
                "env": sorted(self.env), "hardware": self.hardware, "status": live or self.status,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}


def _row(r: Any) -> Deployment:
    return Deployment(r.name, r.tenant_id, r.namespace, r.model, r.version_id, r.min_replicas, r.max_replicas,
                      r.idle_timeout, r.target_concurrency, r.queue_limit, r.cold_start_timeout, r.env or {},
                      r.hardware or {}, r.status or {}, r.created_at, r.updated_at)


def check_body(body: Any, partial: bool = False) -> dict[str, Any]:
    """A deployment's fields from an API/YAML body, each checked; a bad one -> RegistryError naming it."""
    if not isinstance(body, dict):
        raise RegistryError("the body must be a JSON object", 400)
    known = {"name", "model", "version", "env", "hardware", *FIELDS}
    for key in body:
        if key not in known:
            raise RegistryError(f"{key}: unknown field (expected one of {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for key, (kind, default) in FIELDS.items():
        value = body.get(key, None if partial else default)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                (kind is int and value != int(value)):
            raise RegistryError(f"{key}: expected a non-negative {'integer' if kind is int else 'number'}")
        out[key] = kind(value)
    if "max_replicas" in out and "min_replicas" in out and out["max_replicas"] < out["min_replicas"]:
        raise RegistryError("max_replicas: must be at least min_replicas")
    if out.get("max_replicas") == 0:
        raise RegistryError("max_replicas: must be at least 1")
    if out.get("target_concurrency") == 0:
        raise RegistryError("target_concurrency: must be above 0")
    if "env" in body:
        env = body["env"]
        if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
            raise RegistryError("env: expected an object of NAME: value")
        out["env"] = {k: str(v) for k, v in env.items()}
    if "hardware" in body:
        out["hardware"] = check_hardware(body["hardware"])
    if "version" in body:
        version = body["version"]
        if version is not None and not isinstance(version, str):
            raise RegistryError("version: expected a version id, short digest or tag (or null for the latest)")
        out["version"] = None if version in (None, "", "latest") else version
    return out


def split_model(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or value.lstrip("@").count("/") != 1:
        raise RegistryError("model: expected namespace/model")
    namespace, name = value.lstrip("@").split("/")
    return check_name(namespace, "model"), check_name(name, "model")


class Deployments:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store, self.registry = store, registry

    def get(self, name: str) -> Deployment | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(deployments).where(deployments.c.name == name)).first()
        return _row(row) if row else None

    def list_deployments(self, tenant_id: str | None = None) -> list[Deployment]:
        query = select(deployments).order_by(deployments.c.name)
        if tenant_id is not None:
            query = query.where(deployments.c.tenant_id == tenant_id)
        with self.store.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).all()]

    def for_model(self, namespace: str, model: str) -> list[Deployment]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(deployments).where(deployments.c.namespace == namespace,
                                                          deployments.c.model == model)).all()
        return [_row(r) for r in rows]

    def put(self, body: Any, tenant_id: str, admin: bool, name: str | None = None) -> tuple[Deployment, bool]:
        """Create or replace a deployment (by name; default name: the model's); returns (it, created)."""
        fields = check_body(body)
        namespace, model_name = split_model(body.get("model"))
        model = self.registry.get_model(namespace, model_name, None if admin else tenant_id)
        if model is None:
            raise RegistryError(f"model: there is no model {namespace}/{model_name} (push a version first)", 404)
        if model.tenant_id != tenant_id and not admin:
            raise RegistryError(f"model: {namespace}/{model_name} belongs to another tenant", 403)
        version = fields.pop("version", None)
        if version is not None:
            found = self.registry.find_version(namespace, model_name, version)
            if found is None:
                raise RegistryError(f"version: {namespace}/{model_name} has no version {version!r}", 404)
            version = found.id
        elif model.latest is None:
            raise RegistryError(f"model: {namespace}/{model_name} has no version yet (push one first)", 422)
        name = name or body.get("name") or f"{namespace}/{model_name}"
        if not isinstance(name, str) or name.count("/") != 1:
            raise RegistryError("name: expected a name like ns/model")
        for part in name.split("/"):
            check_name(part, "name")
        existing = self.get(name)
        if existing is not None and existing.tenant_id != model.tenant_id and not admin:
            raise RegistryError(f"name: the deployment {name} belongs to another tenant", 403)
        now = utcnow()
        values = {"tenant_id": model.tenant_id, "namespace": namespace, "model": model_name, "version_id": version,
                  "env": fields.pop("env", {}), "hardware": fields.pop("hardware", {}), **fields, "updated_at": now}
        with self.store.begin(immediate=True) as conn:
            if existing is None:
                conn.execute(deployments.insert().values(name=name, status={}, created_at=now, **values))
            else:
                conn.execute(update(deployments).where(deployments.c.name == name).values(**values))
        got = self.get(name)
        assert got is not None
        return got, existing is None

    def patch(self, name: str, body: Any) -> Deployment:
        existing = self.get(name)
        if existing is None:
            raise RegistryError(f"there is no deployment {name}", 404)
        fields = check_body(body, partial=True)
        if "model" in body or "name" in body:
            raise RegistryError("model: a deployment's model cannot change; create another deployment")
        merged_min = fields.get("min_replicas", existing.min_replicas)
        if fields.get("max_replicas", existing.max_replicas) < merged_min:
            raise RegistryError("max_replicas: must be at least min_replicas")
        if "version" in fields:
            version = fields.pop("version")
            if version is not None:
                found = self.registry.find_version(existing.namespace, existing.model, version)
                if found is None:
                    raise RegistryError(f"version: {existing.model_name} has no version {version!r}", 404)
                version = found.id
            fields["version_id"] = version
        with self.store.begin() as conn:
            conn.execute(update(deployments).where(deployments.c.name == name)
                         .values(**fields, updated_at=utcnow()))
        got = self.get(name)
        assert got is not None
        return got

    def delete(self, name: str) -> bool:
        with self.store.begin() as conn:
            return bool(conn.execute(delete(deployments).where(deployments.c.name == name)).rowcount)

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        with self.store.begin() as conn:
            conn.execute(update(deployments).where(deployments.c.name == name).values(status=status))

    def load_yaml(self, text: str, tenant_id: str, admin: bool) -> list[Deployment]:
        """`deployments: [{model: ns/m, min_replicas: 0, ...}, ...]` (or the list alone), each put."""
        data = yaml.safe_load(text) or []
        items = data.get("deployments", []) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise RegistryError("deployments: expected a list of deployments")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(self.put(item, tenant_id, admin)[0])
            except RegistryError as e:
                raise RegistryError(f"deployments[{i}].{e}", e.status) from None
        return out

    # ---- what the controller reads ----
    def desired(self) -> list[DesiredDeployment]:
        out = []
        for d in self.list_deployments():
            version = (self.registry.get_version_by_id(d.version_id) if d.version_id
                       else self.registry.find_version(d.namespace, d.model, None))
            if version is None:
                continue
            hw = {**version.hardware, **d.hardware}
            policy = ScalePolicy(d.min_replicas, d.max_replicas, d.target_concurrency, d.idle_timeout)
            out.append(DesiredDeployment(
                name=d.name, model=d.model_name, version_id=version.id, image=version.pull_ref,
                max_concurrency=version.max_concurrency, policy=policy, env=d.env, gpus=int(hw.get("gpus", 0)),
                gpu_memory_bytes=int(hw.get("gpu_memory_mb", 0)) * MB, cpus=hw.get("cpus"),
                memory_bytes=int(hw["memory_mb"]) * MB if hw.get("memory_mb") else None,
                queue_limit=d.queue_limit, cold_start_timeout=d.cold_start_timeout))
        return out
