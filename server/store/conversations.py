"""Storage of the Responses API's conversations (server/conversations.py keeps the recent ones in
memory too): one row per stored response, its canonical messages, readable by its tenant only."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from . import Store
from .tables import conversations, utcnow


class ConversationRepo:
    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, id: str, tenant_id: str, messages: list[dict[str, Any]]) -> None:
        """Saving the same response id again is a no-op (a retried write)."""
        with self.store.begin() as conn:
            conn.execute(self.store.insert(conversations)  # type: ignore[no-untyped-call]  # (Store.insert: either dialect's)
                         .values(id=id, tenant_id=tenant_id, messages=messages, created_at=utcnow())
                         .on_conflict_do_nothing())

    def get(self, id: str, tenant_id: str) -> list[dict[str, Any]] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(conversations.c.messages)
                               .where(conversations.c.id == id, conversations.c.tenant_id == tenant_id)).first()
        return list(row[0]) if row is not None else None

    def purge_expired(self, retention_s: float) -> int:
        cutoff = utcnow() - timedelta(seconds=retention_s)
        with self.store.begin() as conn:
            return int(conn.execute(delete(conversations).where(conversations.c.created_at < cutoff)).rowcount or 0)
