"""The model registry: namespaces, models and their versions, in the gateway's store.

A namespace belongs to the tenant that first pushed into it; its models are private to that
tenant unless made public. A version is one pushed image (by digest) with the OpenAPI schema
and cog config read from its labels, and what it needs to run. Versions are resolved from a
model string: `@ns/model` is the latest version, `@ns/model:REF` the version whose id, id
prefix, short digest or image tag is REF.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from server.platform.tables import deployments, models, namespaces, versions
from server.store import Store
from server.store.tables import utcnow

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HARDWARE_KEYS = {"gpus": int, "gpu_memory_mb": int, "cpus": float, "memory_mb": int}
SHORT_REF = 7          # the fewest characters of an id or digest that may name a version


class RegistryError(ValueError):
    """Bad input or a conflict; `status` is the HTTP status to answer with, the message names the field."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Version:
    id: str
    namespace: str
    model: str
    image: str
    digest: str
    tag: str | None
    openapi_schema: dict[str, Any]
    cog_config: dict[str, Any]
    hardware: dict[str, Any]
    created_at: datetime

    @property
    def model_name(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def pull_ref(self) -> str:
        """The image by digest: what every replica runs, whatever the tag points at now."""
        return f"{repository_of(self.image)}@{self.digest}"

    @property
    def max_concurrency(self) -> int:
        value = (self.cog_config.get("concurrency") or {}).get("max") or 1
        return max(1, int(value))

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model_name, "image": self.image, "digest": self.digest,
                "tag": self.tag, "created_at": self.created_at.isoformat(), "openapi_schema": self.openapi_schema,
                "cog_config": self.cog_config, "hardware": self.hardware, "cog_version": None}


@dataclass(frozen=True)
class Model:
    namespace: str
    name: str
    tenant_id: str
    public: bool
    description: str
    created_at: datetime
    latest: Version | None = None
    version_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def task(self) -> str:
        """What the model does, for listings: a chat model, a text stream, a file maker, ..."""
        return task_of(self.latest.openapi_schema if self.latest else {})

    def view(self) -> dict[str, Any]:
        from cogkit.inputs import input_schema
        schema: dict[str, Any] = {}
        if self.latest is not None:
            try:
                schema = input_schema(self.latest.openapi_schema)[0]
            except Exception:  # noqa: BLE001 - a schema we cannot read is listed without its inputs
                schema = {}
        return {"owner": self.namespace, "name": self.name, "id": f"@{self.full_name}",
                "visibility": "public" if self.public else "private", "description": self.description,
                "created_at": self.created_at.isoformat(), "task": self.task(), "input_schema": schema,
                "versions": self.version_count,
                "latest_version": self.latest.public() if self.latest else None}


def repository_of(image: str) -> str:
    """"host:5050/ns/m:tag" (or "...@sha256:...") -> "host:5050/ns/m"."""
    base = image.split("@", 1)[0]
    head, _, last = base.rpartition("/")
    return f"{head}/{last.partition(':')[0]}" if head else last.partition(":")[0]


def tag_of(image: str) -> str | None:
    base = image.split("@", 1)[0]
    last = base.rsplit("/", 1)[-1]
    return last.rpartition(":")[2] if ":" in last else None


def task_of(openapi: dict[str, Any]) -> str:
    output = ((openapi.get("components") or {}).get("schemas") or {}).get("Output") or {}
    inputs = (((openapi.get("components") or {}).get("schemas") or {}).get("Input") or {}).get("properties") or {}
    if "messages" in inputs:
        return "chat"
    if output.get("x-cog-array-type") == "iterator":
        return "text-generation" if (output.get("items") or {}).get("type") == "string" else "stream"
    if output.get("format") == "uri" or (output.get("items") or {}).get("format") == "uri":
        return "file-generation"
    return "prediction"


def version_id(namespace: str, model: str, digest: str) -> str:
    """A version's id: stable for a model and digest, so a re-push of the same image is the same version."""
    return hashlib.sha256(f"{namespace}/{model}@{digest}".encode()).hexdigest()[:32]


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value or ""):
        raise RegistryError(f"{what}: {value!r} is not a valid name (lowercase letters, digits, '_', '.', '-', "
                            "starting with a letter or digit, at most 64 characters)")
    return value


def check_hardware(value: Any, where: str = "hardware") -> dict[str, Any]:
    """{"gpus": 1, "gpu_memory_mb": 8000, "cpus": 2, "memory_mb": 4096}, every key optional."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: expected an object with {', '.join(HARDWARE_KEYS)}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        kind = HARDWARE_KEYS.get(k)
        if kind is None:
            raise RegistryError(f"{where}.{k}: unknown key (expected one of {', '.join(HARDWARE_KEYS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (kind is int and v != int(v)):
            raise RegistryError(f"{where}.{k}: expected a non-negative {'integer' if kind is int else 'number'}")
        out[k] = kind(v)
    return out


def _version(row: Any) -> Version:
    return Version(row.id, row.namespace, row.model, row.image, row.digest, row.tag, row.openapi_schema or {},
                   row.cog_config or {}, row.hardware or {}, row.created_at)


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- permissions ----
    def namespace_owner(self, namespace: str) -> str | None:
        with self.store.engine.connect() as conn:
            owner = conn.execute(select(namespaces.c.tenant_id).where(namespaces.c.name == namespace)).scalar()
        return str(owner) if owner is not None else None

    def check_writer(self, namespace: str, tenant_id: str, admin: bool) -> str:
        """The tenant owning `namespace` (claimed for `tenant_id` when nobody owns it), or 403."""
        owner = self.namespace_owner(namespace)
        if owner is None:
            return tenant_id
        if owner != tenant_id and not admin:
            raise RegistryError(f"the namespace {namespace!r} belongs to another tenant; push into your own", 403)
        return owner

    # ---- models ----
    def get_model(self, namespace: str, name: str, tenant_id: str | None = None) -> Model | None:
        """The model, if it exists and `tenant_id` may see it (None: any tenant, for admins)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(models).where(models.c.namespace == namespace,
                                                    models.c.name == name)).first()
            if row is None or not self._visible(row, tenant_id):
                return None
            rows = conn.execute(select(versions).where(versions.c.namespace == namespace, versions.c.model == name)
                                .order_by(versions.c.created_at.desc(), versions.c.id)).all()
        return Model(row.namespace, row.name, row.tenant_id, row.public, row.description, row.created_at,
                     _version(rows[0]) if rows else None, len(rows))

    @staticmethod
    def _visible(row: Any, tenant_id: str | None) -> bool:
        return tenant_id is None or row.public or row.tenant_id == tenant_id

    def list_models(self, tenant_id: str | None) -> list[Model]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(models).order_by(models.c.namespace, models.c.name)).all()
            vrows = conn.execute(select(versions).order_by(versions.c.created_at.desc(), versions.c.id)).all()
        latest: dict[tuple[str, str], Version] = {}
        counts: dict[tuple[str, str], int] = {}
        for v in vrows:
            key = (v.namespace, v.model)
            latest.setdefault(key, _version(v))
            counts[key] = counts.get(key, 0) + 1
        return [Model(r.namespace, r.name, r.tenant_id, r.public, r.description, r.created_at,
                      latest.get((r.namespace, r.name)), counts.get((r.namespace, r.name), 0))
                for r in rows if self._visible(r, tenant_id)]

    def create_model(self, namespace: str, name: str, tenant_id: str, admin: bool = False, public: bool = False,
                     description: str = "") -> Model:
        check_name(namespace, "namespace")
        check_name(name, "name")
        owner = self.check_writer(namespace, tenant_id, admin)
        now = utcnow()
        with self.store.begin(immediate=True) as conn:
            conn.execute(self.store.insert(namespaces).values(name=namespace, tenant_id=owner, created_at=now)
                         .on_conflict_do_nothing())
            conn.execute(self.store.insert(models).values(
                namespace=namespace, name=name, tenant_id=owner, public=public, description=description,
                created_at=now).on_conflict_do_nothing())
        model = self.get_model(namespace, name)
        assert model is not None
        return model

    def update_model(self, namespace: str, name: str, public: bool | None = None,
                     description: str | None = None) -> None:
        values: dict[str, Any] = {}
        if public is not None:
            values["public"] = public
        if description is not None:
            values["description"] = description
        if values:
            with self.store.begin() as conn:
                conn.execute(update(models).where(models.c.namespace == namespace, models.c.name == name)
                             .values(**values))

    def delete_model(self, namespace: str, name: str) -> bool:
        with self.store.begin(immediate=True) as conn:
            self._refuse_if_deployed(conn, namespace, name, None)
            conn.execute(delete(versions).where(versions.c.namespace == namespace, versions.c.model == name))
            gone = conn.execute(delete(models).where(models.c.namespace == namespace, models.c.name == name))
        return bool(gone.rowcount)

    # ---- versions ----
    def register_version(self, namespace: str, name: str, tenant_id: str, admin: bool, body: Any) -> tuple[Version, bool]:
        """The contract of cogkit/build/registry.py: (version, created). The same digest again is the same version."""
        if not isinstance(body, dict):
            raise RegistryError("the body must be a JSON object with image, digest, openapi_schema, cog_config", 400)
        image, digest = body.get("image"), body.get("digest")
        if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
            raise RegistryError("image: expected the pushed image reference, e.g. registry.example.com/ns/model:tag")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise RegistryError("digest: expected the manifest digest the push returned, sha256: and 64 hex digits")
        schema, config = body.get("openapi_schema", {}), body.get("cog_config", {})
        if not isinstance(schema, dict):
            raise RegistryError("openapi_schema: expected an object (the image's run.cog.openapi_schema label)")
        if not isinstance(config, dict):
            raise RegistryError("cog_config: expected an object (cog.yaml as JSON, the run.cog.config label)")
        if schema:
            from cogkit.inputs import input_schema
            from cogkit.schema import SchemaError
            try:
                input_schema(schema)
            except (SchemaError, KeyError, TypeError, ValueError) as e:
                raise RegistryError(f"openapi_schema: has no readable Input schema ({e})") from None
        hardware = check_hardware(body.get("hardware"))
        self.create_model(namespace, name, tenant_id, admin)
        vid = version_id(namespace, name, digest)
        with self.store.begin(immediate=True) as conn:
            existing = conn.execute(select(versions).where(versions.c.id == vid)).first()
            if existing is not None:
                return _version(existing), False
            conn.execute(versions.insert().values(
                id=vid, namespace=namespace, model=name, image=image, digest=digest, tag=tag_of(image),
                openapi_schema=schema, cog_config=config, hardware=hardware, created_at=utcnow()))
            row = conn.execute(select(versions).where(versions.c.id == vid)).one()
        return _version(row), True

    def list_versions(self, namespace: str, name: str) -> list[Version]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(versions).where(versions.c.namespace == namespace, versions.c.model == name)
                                .order_by(versions.c.created_at.desc(), versions.c.id)).all()
        return [_version(r) for r in rows]

    def get_version_by_id(self, vid: str) -> Version | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(versions).where(versions.c.id == vid)).first()
        return _version(row) if row else None

    def find_version(self, namespace: str, name: str, ref: str | None) -> Version | None:
        """`ref` None: the latest; else an id, id prefix, digest, short digest (hex after sha256:) or tag."""
        candidates = self.list_versions(namespace, name)
        if not ref:
            return candidates[0] if candidates else None
        ref = ref.removeprefix("sha256:")
        short = len(ref) >= SHORT_REF
        matchers: list[Callable[[Version], bool]] = [
            lambda v: v.id == ref, lambda v: v.tag == ref,
            lambda v: short and v.digest.removeprefix("sha256:").startswith(ref),
            lambda v: short and v.id.startswith(ref)]
        for match in matchers:
            hits = [v for v in candidates if match(v)]
            if hits:
                return hits[0]   # newest first: a moved tag names its newest push
        return None

    def delete_version(self, namespace: str, name: str, vid: str) -> bool:
        with self.store.begin(immediate=True) as conn:
            self._refuse_if_deployed(conn, namespace, name, vid)
            gone = conn.execute(delete(versions).where(versions.c.namespace == namespace, versions.c.model == name,
                                                       versions.c.id == vid))
        return bool(gone.rowcount)

    @staticmethod
    def _refuse_if_deployed(conn: Any, namespace: str, name: str, vid: str | None) -> None:
        query = select(deployments.c.name).where(deployments.c.namespace == namespace, deployments.c.model == name)
        if vid is not None:
            query = query.where(deployments.c.version_id == vid)
        used = conn.execute(query).scalars().all()
        if used:
            raise RegistryError(f"deployed as {', '.join(used)}: delete the deployment first", 409)
