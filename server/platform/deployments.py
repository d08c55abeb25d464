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
from server.platform.vllm import ENGINE as VLLM
from server.platform.vllm_deployments import DEFAULTS as VLLM_DEFAULTS
from server.platform.vllm_deployments import SPEC_FIELDS, EngineFieldError, check_gpus, check_spec
from server.store import Store
from server.store.tables import utcnow

MB = 1_000_000
FIELDS = {  # name -> (type, default, check)
    "min_replicas": (int, 0), "max_replicas": (int, 1), "idle_timeout": (float, 300.0),
    "target_concurrency": (float, 1.0), "queue_limit": (int, 64), "cold_start_timeout": (float, 300.0),
}
ENGINES = ("cog", VLLM)    # cog: a pushed model version; vllm: a weights directory served by vLLM


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
    engine: str = "cog"
    engine_spec: dict[str, Any] | None = None      # engine: vllm: model (weights), args, ... (vllm_deployments.py)

    @property
    def model_name(self) -> str:
        return f"{self.namespace}/{self.model}"

    def visible_to(self, tenant_id: str) -> bool:
        """An engine deployment is callable by every tenant unless made private; a Cog one follows its model."""
        return self.tenant_id == tenant_id or bool((self.engine_spec or {}).get("public"))

    def public(self, live: dict[str, Any] | None = None) -> dict[str, Any]:
        engine: dict[str, Any] = {"model": self.model_name, "version": self.version_id or "latest"}
        if self.engine_spec is not None:
            engine = dict(self.engine_spec)
        return {"name": self.name, "engine": self.engine, **engine,
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "idle_timeout": self.idle_timeout, "target_concurrency": self.target_concurrency,
                "queue_limit": self.queue_limit, "cold_start_timeout": self.cold_start_timeout,
                "env": sorted(self.env), "hardware": self.hardware, "status": live or self.status,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}


def _row(r: Any) -> Deployment:
    return Deployment(r.name, r.tenant_id, r.namespace, r.model, r.version_id, r.min_replicas, r.max_replicas,
                      r.idle_timeout, r.target_concurrency, r.queue_limit, r.cold_start_timeout, r.env or {},
                      r.hardware or {}, r.status or {}, r.created_at, r.updated_at, r.engine or "cog",
                      r.engine_spec)


def engine_of(body: Any) -> str:
    engine = body.get("engine", "cog") if isinstance(body, dict) else "cog"
    if engine not in ENGINES:
        raise RegistryError(f"engine: expected one of {', '.join(ENGINES)} (cog: a pushed model version; "
                            f"vllm: a weights directory served by vLLM), not {engine!r}")
    return str(engine)


def check_body(body: Any, partial: bool = False, engine: str = "cog") -> dict[str, Any]:
    """A deployment's fields from an API/YAML body, each checked; a bad one -> RegistryError naming it."""
    if not isinstance(body, dict):
        raise RegistryError("the body must be a JSON object", 400)
    known = {"name", "model", "engine", "env", "hardware", *FIELDS, *(SPEC_FIELDS if engine == VLLM else {"version"})}
    for key in body:
        if key not in known:
            raise RegistryError(f"{key}: unknown field for an engine: {engine} deployment "
                                f"(expected one of {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for key, (kind, _cog_default) in FIELDS.items():
        default = VLLM_DEFAULTS.get(key, _cog_default) if engine == VLLM else _cog_default
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

    def engine_deployment(self, name: str) -> Deployment | None:
        """The vLLM deployment of that name, else None (a Cog one, or none)."""
        d = self.get(name)
        return d if d is not None and d.engine == VLLM else None

    def list_deployments(self, tenant_id: str | None = None) -> list[Deployment]:
        query = select(deployments).order_by(deployments.c.name)
        if tenant_id is not None:
            query = query.where(deployments.c.tenant_id == tenant_id)
        with self.store.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).all()]

    def for_model(self, namespace: str, model: str) -> list[Deployment]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(deployments).where(deployments.c.namespace == namespace,
                                                          deployments.c.model == model,
                                                          deployments.c.engine == "cog")).all()
        return [_row(r) for r in rows]

    def put(self, body: Any, tenant_id: str, admin: bool, name: str | None = None) -> tuple[Deployment, bool]:
        """Create or replace a deployment (by name; default name: the model's); returns (it, created)."""
        if engine_of(body) == VLLM:
            return self._put_engine(body, tenant_id, admin, name)
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
        if existing is not None and existing.engine != "cog":
            raise RegistryError(f"name: the deployment {name} is an engine: {existing.engine} deployment", 409)
        values = {"tenant_id": model.tenant_id, "namespace": namespace, "model": model_name, "version_id": version,
                  "env": fields.pop("env", {}), "hardware": fields.pop("hardware", {}), **fields,
                  "engine": "cog", "engine_spec": None}
        return self._write(name, existing, values)

    def _put_engine(self, body: dict[str, Any], tenant_id: str, admin: bool,
                    name: str | None) -> tuple[Deployment, bool]:
        """An engine: vllm deployment: its name is the model string (@ns/model), its model a weights path."""
        if not admin:
            raise RegistryError("engine: a vllm deployment names a path and a command line on the platform's "
                                "host: creating or changing one needs an admin key", 403)
        fields = check_body(body, engine=VLLM)
        name = name or body.get("name")
        if not isinstance(name, str) or name.count("/") != 1:
            raise RegistryError("name: expected the model string's name, like ns/model (called as @ns/model)")
        namespace, model_name = (check_name(part, "name") for part in name.split("/"))
        if self.registry.get_model(namespace, model_name, None) is not None:
            raise RegistryError(f"name: {name} is a pushed model's name; an engine deployment needs its own", 409)
        try:
            spec = check_spec(body)
            hardware = fields.pop("hardware", {})
            check_gpus(spec, hardware)
        except EngineFieldError as e:
            raise RegistryError(e.message, e.status) from None
        existing = self.get(name)
        if existing is not None and existing.engine != VLLM:
            raise RegistryError(f"name: the deployment {name} runs a pushed model (engine: cog)", 409)
        values = {"tenant_id": existing.tenant_id if existing else tenant_id, "namespace": namespace,
                  "model": model_name, "version_id": None, "env": fields.pop("env", {}), "hardware": hardware,
                  **fields, "engine": VLLM, "engine_spec": spec}
        return self._write(name, existing, values)

    def _write(self, name: str, existing: Deployment | None, values: dict[str, Any]) -> tuple[Deployment, bool]:
        now = utcnow()
        values = {**values, "updated_at": now}
        with self.store.begin(immediate=True) as conn:
            if existing is None:
                conn.execute(deployments.insert().values(name=name, status={}, created_at=now, **values))
            else:
                conn.execute(update(deployments).where(deployments.c.name == name).values(**values))
        got = self.get(name)
        assert got is not None
        return got, existing is None

    def patch(self, name: str, body: Any, admin: bool = True) -> Deployment:
        existing = self.get(name)
        if existing is None:
            raise RegistryError(f"there is no deployment {name}", 404)
        if existing.engine == VLLM and not admin:
            raise RegistryError("engine: changing a vllm deployment needs an admin key", 403)
        if isinstance(body, dict) and body.get("engine", existing.engine) != existing.engine:
            raise RegistryError(f"engine: a deployment's engine cannot change (it is {existing.engine}); "
                                "create another deployment")
        fields = check_body(body, partial=True, engine=existing.engine)
        if "name" in body or ("model" in body and existing.engine != VLLM):
            raise RegistryError("model: a deployment's model cannot change; create another deployment")
        if existing.engine == VLLM:
            try:
                fields["engine_spec"] = check_spec(body, base=existing.engine_spec)
                check_gpus(fields["engine_spec"], fields.get("hardware", existing.hardware))
            except EngineFieldError as e:
                raise RegistryError(e.message, e.status) from None
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

    def engine_deployments(self) -> list[Deployment]:
        return [d for d in self.list_deployments() if d.engine == VLLM]

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
        """The Cog deployments as the controller runs them (engine ones: vllm_deployments.desired)."""
        out = []
        for d in self.list_deployments():
            if d.engine != "cog":
                continue
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
