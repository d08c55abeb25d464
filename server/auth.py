"""Tenants, API keys and provider secrets (BYOK).

API keys are `ck-<random>`; only their sha256 hash and a short display
prefix are stored. `authenticate` caches lookups in-process for
`cache_ttl` seconds (the gateway's `auth_cache_ttl`, default 5): a revoked key
keeps working for at most that long on *other* gateway processes; the revoking
process drops it at once (this is the only key cache: the gateway asks `cached`).

Provider secrets are Fernet-encrypted with the master key: $COGKIT_MASTER_KEY
(a Fernet key: `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`),
else a key generated once and kept in a 0600 file next to the SQLite DB
(`<db>.key`; for PostgreSQL, $COGKIT_HOME/master.key — set COGKIT_MASTER_KEY
when gateways on several hosts share one database). Secret values are never
returned by list calls (name + last 4 characters only) and never logged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, func, select, update

from .store import Store, cogkit_home
from .store.tables import api_keys, provider_secrets, tenants, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "ck-"
DEFAULT_TENANT = "default"
TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class AuthError(ValueError):
    """A bad argument or a conflict (unknown tenant, duplicate id); message is safe to show."""


class NotFound(AuthError):
    pass


class Conflict(AuthError):
    pass


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str
    admin: bool
    rpm: int | None
    tpm: int | None
    name: str
    prefix: str = ""
    revoked: bool = False
    created_at: datetime | None = None

    def public(self) -> dict:
        return {"id": self.id, "tenant_id": self.tenant_id, "name": self.name, "prefix": self.prefix,
                "admin": self.admin, "rpm": self.rpm, "tpm": self.tpm, "revoked": self.revoked,
                "created_at": self.created_at.isoformat() if self.created_at else None}


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: datetime

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "created_at": self.created_at.isoformat()}


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def load_master_key(store: Store) -> bytes:
    """$COGKIT_MASTER_KEY, else the key file (created 0600 on first use)."""
    env = os.environ.get("COGKIT_MASTER_KEY", "").strip()
    if env:
        _check_fernet_key(env.encode(), "COGKIT_MASTER_KEY")
        return env.encode()
    path = (store.sqlite_path.with_name(store.sqlite_path.name + ".key") if store.sqlite_path
            else cogkit_home() / "master.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: if two processes race, one writes and both read the same key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
            log.info("generated master key %s", path)
        except FileExistsError:
            pass
    for _ in range(50):  # the racing writer may not have written yet
        key = path.read_bytes().strip()
        if key:
            break
        time.sleep(0.02)
    _check_fernet_key(key, str(path))
    return key


def _check_fernet_key(key: bytes, where: str) -> None:
    try:
        Fernet(key)
    except (ValueError, TypeError):   # what Fernet raises for a key of the wrong shape
        raise ValueError(f"{where} is not a Fernet key (32 url-safe base64-encoded bytes)") from None


def _key_info(row) -> KeyInfo:
    return KeyInfo(id=row["id"], tenant_id=row["tenant_id"], admin=bool(row["admin"]), rpm=row["rpm"],
                   tpm=row["tpm"], name=row["name"], prefix=row["prefix"], revoked=bool(row["revoked"]),
                   created_at=row["created_at"])


class Auth:
    def __init__(self, store: Store, master_key: bytes | None = None, cache_ttl: float = 5.0) -> None:
        self.store = store
        self._fernet = Fernet(master_key or load_master_key(store))
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}   # key hash -> (expires, info)
        self._lock = threading.Lock()

    # -- tenants -----------------------------------------------------------------
    def create_tenant(self, id: str, name: str | None = None) -> Tenant:
        if not TENANT_ID_RE.match(id or ""):
            raise AuthError("tenant id must be 1-63 of a-z 0-9 _ . - (starting with a letter or digit)")
        tenant = Tenant(id=id, name=name or id, created_at=utcnow())
        with self.store.begin() as conn:
            # RETURNING, not rowcount: SQLAlchemy only promises rowcount for UPDATE/DELETE.
            inserted = conn.execute(self.store.insert(tenants).values(**tenant.__dict__)
                                    .on_conflict_do_nothing().returning(tenants.c.id)).first()
        if not inserted:
            raise Conflict(f"tenant {id!r} already exists")
        return tenant

    def get_tenant(self, id: str) -> Tenant | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(tenants).where(tenants.c.id == id)).mappings().first()
        return Tenant(**row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self.store.engine.connect() as conn:
            return [Tenant(**row) for row in conn.execute(select(tenants).order_by(tenants.c.id)).mappings()]

    # -- keys --------------------------------------------------------------------
    def create_key(self, tenant_id: str, name: str = "", admin: bool = False, rpm: int | None = None,
                   tpm: int | None = None) -> tuple[KeyInfo, str]:
        """A new key; the plaintext is returned here once and never stored."""
        for limit, label in ((rpm, "rpm"), (tpm, "tpm")):
            if limit is not None and limit < 1:
                raise AuthError(f"{label} must be a positive integer or unset")
        if self.get_tenant(tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        with self.store.begin() as conn:
            return self._insert_key(conn, tenant_id, name, admin, rpm, tpm)

    def _insert_key(self, conn, tenant_id, name, admin, rpm, tpm) -> tuple[KeyInfo, str]:
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(id="key_" + uuid.uuid4().hex[:16], tenant_id=tenant_id, admin=admin, rpm=rpm, tpm=tpm,
                       name=name, prefix=plaintext[:10], created_at=utcnow())
        conn.execute(api_keys.insert().values(id=info.id, tenant_id=tenant_id, name=name, key_hash=hash_key(plaintext),
                                              prefix=info.prefix, admin=admin, rpm=rpm, tpm=tpm, revoked=False,
                                              created_at=info.created_at))
        return info, plaintext

    def list_keys(self, tenant_id: str | None = None) -> list[KeyInfo]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        with self.store.engine.connect() as conn:
            return [_key_info(row) for row in conn.execute(query).mappings()]

    def get_key(self, key_id: str) -> KeyInfo | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return _key_info(row) if row else None

    def revoke_key(self, key_id: str) -> bool:
        """True if the key existed (revoking twice is fine)."""
        with self.store.begin() as conn:
            found = conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).first()
            conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked.is_(False))
                         .values(revoked=True, revoked_at=utcnow()))
        with self._lock:  # take effect here at once; other processes within cache_ttl
            self._cache = {h: v for h, v in self._cache.items() if not (v[1] and v[1].id == key_id)}
        return bool(found)

    def cached(self, plaintext: str | None) -> KeyInfo | None:
        """The key's info if this process validated it within cache_ttl; None otherwise (then ask
        `authenticate`). No I/O: the event loop may call it."""
        if not plaintext or not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
            return None
        with self._lock:
            hit = self._cache.get(hash_key(plaintext))
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def authenticate(self, plaintext: str | None) -> KeyInfo | None:
        """The key's info, or None for an unknown or revoked key."""
        if not plaintext or not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
            return None
        digest = hash_key(plaintext)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        with self.store.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == digest)).mappings().first()
        info = _key_info(row) if row and not row["revoked"] else None
        with self._lock:
            if len(self._cache) > 10_000:  # bound memory under a flood of bad keys
                self._cache.clear()
            self._cache[digest] = (now + self.cache_ttl, info)
        return info

    def first_start_admin_key(self) -> str | None:
        """On an empty store: create the default tenant and an admin key, return its
        plaintext (print it once). None afterwards, and for all but one of several
        processes starting together."""
        with self.store.engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(api_keys)).scalar():
                return None
        with self.store.begin(immediate=True) as conn:
            # Check-then-insert must not interleave with another process doing the same:
            # SQLite's IMMEDIATE transaction already serializes it; PostgreSQL needs a lock.
            if self.store.dialect == "postgresql":
                conn.exec_driver_sql("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            if conn.execute(select(func.count()).select_from(api_keys)).scalar():
                return None
            conn.execute(self.store.insert(tenants).values(id=DEFAULT_TENANT, name=DEFAULT_TENANT, created_at=utcnow())
                         .on_conflict_do_nothing())
            _, plaintext = self._insert_key(conn, DEFAULT_TENANT, "admin", True, None, None)
        return plaintext

    # -- provider secrets ----------------------------------------------------------
    def set_provider_secret(self, tenant_id: str | None, name: str, value: str) -> dict:
        """Create or replace a secret: per tenant, or global with tenant_id=None."""
        if not name or not value:
            raise AuthError("secret name and value must not be empty")
        if tenant_id is not None and self.get_tenant(tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        now = utcnow()
        row = {"tenant_id": tenant_id or "", "name": name, "ciphertext": self._fernet.encrypt(value.encode()).decode(),
               "last4": value[-4:] if len(value) >= 8 else "", "created_at": now, "updated_at": now}
        stmt = self.store.insert(provider_secrets).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=["tenant_id", "name"],
                                          set_={"ciphertext": row["ciphertext"], "last4": row["last4"], "updated_at": now})
        with self.store.begin() as conn:
            conn.execute(stmt)
        return {"tenant_id": tenant_id, "name": name, "last4": row["last4"], "updated_at": now.isoformat()}

    def get_provider_secret(self, tenant_id: str | None, name: str, fallback_global: bool = True) -> str | None:
        """The tenant's own secret, else (fallback_global) the global one, else None."""
        scopes = [tenant_id or ""] + ([""] if fallback_global and tenant_id else [])
        with self.store.engine.connect() as conn:
            rows = {r.tenant_id: r.ciphertext for r in conn.execute(
                select(provider_secrets.c.tenant_id, provider_secrets.c.ciphertext)
                .where(provider_secrets.c.name == name, provider_secrets.c.tenant_id.in_(scopes)))}
        for scope in scopes:
            if scope in rows:
                try:
                    return self._fernet.decrypt(rows[scope].encode()).decode()
                except InvalidToken:
                    raise RuntimeError(f"provider secret {name!r} cannot be decrypted: wrong master key?") from None
        return None

    def list_provider_secrets(self, tenant_id: str | None = None, include_global: bool = True,
                              all_scopes: bool = False) -> list[dict]:
        """Masked: tenant_id (None = global), name, last4, updated_at. Never the value.
        The tenant's (plus global ones), only global ones (tenant_id None), or all (all_scopes)."""
        scopes = [tenant_id or ""] + ([""] if include_global and tenant_id else [])
        query = (select(provider_secrets.c.tenant_id, provider_secrets.c.name, provider_secrets.c.last4,
                        provider_secrets.c.updated_at)
                 .order_by(provider_secrets.c.tenant_id, provider_secrets.c.name))
        if not all_scopes:
            query = query.where(provider_secrets.c.tenant_id.in_(scopes))
        with self.store.engine.connect() as conn:
            return [{"tenant_id": r.tenant_id or None, "name": r.name, "last4": r.last4,
                     "updated_at": r.updated_at.isoformat()} for r in conn.execute(query)]

    def delete_provider_secret(self, tenant_id: str | None, name: str) -> bool:
        with self.store.begin() as conn:
            return bool(conn.execute(delete(provider_secrets).where(
                provider_secrets.c.tenant_id == (tenant_id or ""), provider_secrets.c.name == name)).rowcount)
