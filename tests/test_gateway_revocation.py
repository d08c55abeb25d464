"""Key revocation against the real app (issue 8): immediate on the replica that revoked the key,
within auth_cache_ttl on another replica sharing the store."""
from __future__ import annotations

import time

from tests.gateway_harness import provider


def _config(fake, ttl: float) -> dict:
    return {"providers": [provider("openai", fake)], "auth_cache_ttl": ttl,
            "models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "openai"}]}]}


def _status(gw, key: str) -> int:
    with gw.http(key) as c:
        return c.get("/v1/models").status_code


def test_revocation_is_immediate_here_and_bounded_elsewhere(fakes, gateway):
    fake = fakes("openai")
    here = gateway(_config(fake, 2.0), name="here")
    there = gateway(_config(fake, 2.0), name="there")     # the same SQLite store (one state_dir)
    key = here.new_key("acme")
    [key_id] = [k["id"] for k in here.admin("GET", "/admin/keys?tenant_id=acme")["data"]]
    for _ in range(3):                                      # trusted, and cached, on both replicas
        assert _status(here, key) == 200 and _status(there, key) == 200
    here.admin("POST", f"/admin/keys/{key_id}/revoke")
    assert _status(here, key) == 401                        # at once, no cache in the way
    revoked = time.monotonic()
    while _status(there, key) == 200:
        assert time.monotonic() - revoked < 2.0 + 1.0, "the other replica kept trusting a revoked key"
        time.sleep(0.05)
    with here.openai(key) as client:
        try:
            client.models.list()
        except Exception as e:  # noqa: BLE001 - the SDK's AuthenticationError
            assert getattr(e, "status_code", None) == 401
        else:
            raise AssertionError("a revoked key still works")
