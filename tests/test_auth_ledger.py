"""Keys, secrets, credits, rate limits and usage on a real SQLite file, a real
PostgreSQL and a real Redis, including several engines/processes sharing them."""
from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from server.auth import Auth, AuthError, Conflict, hash_key
from server.ledger import InsufficientCredits, Ledger, RateLimited, UsageRecord
from server.store import Store
from server.store.tables import api_keys, provider_secrets
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def auth(store: Store) -> Auth:
    return Auth(store, Fernet.generate_key())


def tenant(auth: Auth, **kwargs) -> str:
    return auth.create_tenant(f"t-{uuid.uuid4().hex[:10]}", **kwargs).id


@pytest.fixture(scope="module")
def redis_url():
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("redis-server is not installed: apt-get install redis-server", pytrace=False)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cogkit-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


# -- keys ---------------------------------------------------------------------------
def test_keys_are_stored_hashed(auth: Auth, store: Store) -> None:
    tid = tenant(auth)
    info, plaintext = auth.create_key(tid, "ci", rpm=5)
    assert plaintext.startswith("ck-") and len(plaintext) > 40
    with store.engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == info.id)).mappings().one()
    assert row["key_hash"] == hash_key(plaintext)
    assert plaintext not in repr(dict(row))
    assert plaintext.startswith(row["prefix"]) and len(row["prefix"]) < 12
    if store.sqlite_path:  # not anywhere in the database files either
        for path in store.sqlite_path.parent.glob(store.sqlite_path.name + "*"):
            assert plaintext.encode() not in path.read_bytes()
    assert auth.authenticate(plaintext) == info
    assert auth.authenticate(plaintext + "x") is None
    assert auth.authenticate("sk-whatever") is None and auth.authenticate(None) is None
    assert all(k.id != info.id or k.prefix == info.prefix for k in auth.list_keys(tid))


def test_revocation_reaches_other_processes_within_the_ttl(store: Store) -> None:
    key = Fernet.generate_key()
    here, there = Auth(store, key, cache_ttl=0.5), Auth(store, key, cache_ttl=0.5)
    tid = tenant(here)
    info, plaintext = here.create_key(tid, "k")
    assert there.authenticate(plaintext) == info       # cached over there now
    assert here.revoke_key(info.id) and here.revoke_key(info.id)
    assert here.authenticate(plaintext) is None         # at once where revoked
    assert there.authenticate(plaintext) == info        # still cached elsewhere...
    time.sleep(0.6)
    assert there.authenticate(plaintext) is None        # ...for at most the TTL
    assert not here.revoke_key("key_missing")
    assert here.get_key(info.id).revoked


def test_tenants(auth: Auth) -> None:
    tid = tenant(auth, name="Acme Inc")
    assert auth.get_tenant(tid).name == "Acme Inc"
    with pytest.raises(Conflict):
        auth.create_tenant(tid)
    with pytest.raises(AuthError):
        auth.create_tenant("Bad Id!")
    with pytest.raises(AuthError):
        auth.create_key("no-such-tenant")


def test_first_start_admin_key_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    auth = Auth(store, Fernet.generate_key())
    plaintext = auth.first_start_admin_key()
    info = auth.authenticate(plaintext)
    assert info.admin and info.tenant_id == "default"
    assert auth.first_start_admin_key() is None
    assert Auth(store, Fernet.generate_key()).first_start_admin_key() is None
    store.close()


def test_first_start_admin_key_race_on_postgres(pg_url: str) -> None:  # noqa: F811
    from pg import create_database, drop_database
    url = create_database()
    stores = [Store(url) for _ in range(4)]
    results: list = []
    threads = [threading.Thread(target=lambda s=s: results.append(Auth(s, Fernet.generate_key())
                                                                  .first_start_admin_key())) for s in stores]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len([r for r in results if r]) == 1 and len(results) == 4
    for s in stores:
        s.close()
    drop_database(url)


# -- provider secrets ---------------------------------------------------------------
def test_provider_secrets_encrypted_at_rest(auth: Auth, store: Store) -> None:
    tid = tenant(auth)
    secret, own = "sk-live-" + uuid.uuid4().hex, "sk-own-" + uuid.uuid4().hex
    auth.set_provider_secret(None, "openai", secret)
    auth.set_provider_secret(tid, "openai", own)
    with store.engine.connect() as conn:
        rows = conn.execute(select(provider_secrets).where(provider_secrets.c.name == "openai")).mappings().all()
    assert rows and all(secret not in repr(dict(r)) and own not in repr(dict(r)) for r in rows)
    assert {auth._fernet.decrypt(r["ciphertext"].encode()).decode() for r in rows} >= {secret, own}
    assert auth.get_provider_secret(tid, "openai") == own                 # the tenant's own first
    assert auth.get_provider_secret("other", "openai") == secret          # then the global one
    assert auth.get_provider_secret(tid, "openai", fallback_global=False) == own
    assert auth.get_provider_secret(None, "anthropic") is None
    listed = auth.list_provider_secrets(tid)
    assert {(r["tenant_id"], r["name"], r["last4"]) for r in listed} == {(None, "openai", secret[-4:]),
                                                                         (tid, "openai", own[-4:])}
    assert secret not in repr(listed) and own not in repr(listed)
    auth.set_provider_secret(None, "openai", "sk-rotated-123456")        # replace in place
    assert auth.get_provider_secret(None, "openai") == "sk-rotated-123456"
    assert auth.delete_provider_secret(tid, "openai") and not auth.delete_provider_secret(tid, "openai")
    assert auth.get_provider_secret(tid, "openai") == "sk-rotated-123456"
    with pytest.raises(RuntimeError, match="master key"):
        Auth(store, Fernet.generate_key()).get_provider_secret(None, "openai")


def test_master_key_file_and_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("COGKIT_MASTER_KEY", raising=False)
    store = Store(tmp_path / "gw.db")
    Auth(store).set_provider_secret(None, "openai", "sk-abcdefgh")
    keyfile = tmp_path / "gw.db.key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert Auth(store).get_provider_secret(None, "openai") == "sk-abcdefgh"   # same key next start
    monkeypatch.setenv("COGKIT_MASTER_KEY", keyfile.read_text().strip())
    keyfile.unlink()
    assert Auth(store).get_provider_secret(None, "openai") == "sk-abcdefgh"
    assert not keyfile.exists()
    monkeypatch.setenv("COGKIT_MASTER_KEY", "not-a-key")
    with pytest.raises(ValueError, match="COGKIT_MASTER_KEY"):
        Auth(store)
    store.close()


# -- credits ------------------------------------------------------------------------
def test_credits_reserve_settle_and_402(auth: Auth, store: Store) -> None:
    ledger = Ledger(store)
    tid = tenant(auth)
    unlimited = ledger.reserve(tid, 1000.0)
    assert not unlimited.limited
    ledger.settle(unlimited, 3.0)
    ledger.set_credits(tid, 1.0)
    r = ledger.reserve(tid, 0.75)
    assert ledger.credits(tid) == {"balance": 1.0, "reserved": 0.75, "available": 0.25, "spent": 0.0}
    with pytest.raises(InsufficientCredits) as exc:
        ledger.reserve(tid, 0.5)
    assert exc.value.available == pytest.approx(0.25)
    ledger.settle(r, 0.1)
    ledger.settle(r, 0.1)                                   # once only
    assert ledger.credits(tid) == {"balance": 0.9, "reserved": 0.0, "available": 0.9, "spent": 0.1}
    failed = ledger.reserve(tid, 0.9)
    ledger.settle(failed, 0)                               # failure: release, charge nothing
    assert ledger.credits(tid)["available"] == pytest.approx(0.9)
    ledger.settle(ledger.reserve(tid, 0.5), 0.9)           # actual above the estimate: charged in full
    assert ledger.credits(tid)["balance"] == 0.0
    with pytest.raises(InsufficientCredits):
        ledger.reserve(tid, 0)                              # nothing left, even for a free estimate
    assert ledger.add_credits(tid, 2.0)["available"] == 2.0
    ledger.set_credits(tid, None)
    assert ledger.credits(tid)["balance"] is None and not ledger.reserve(tid, 5).limited
    with pytest.raises(LookupError):
        ledger.set_credits("no-such-tenant", 1.0)


def test_concurrent_reservations_never_overdraw(auth: Auth, store_url: str) -> None:
    tid = tenant(auth)
    ledgers = [Ledger(Store(store_url)) for _ in range(2)]   # two engines, as two processes
    ledgers[0].set_credits(tid, 1.0)
    won, lost = [], []

    def take(i: int) -> None:
        try:
            won.append(ledgers[i % 2].reserve(tid, 0.1))
        except InsufficientCredits:
            lost.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(24)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 10 and len(lost) == 14
    assert ledgers[1].credits(tid)["available"] == pytest.approx(0.0)
    for ledger in ledgers:
        ledger.store.close()


# -- rate limits: on the ledger's injectable clock, never waiting for a real window ------------
# A window start of its own per test run: the counters of earlier runs (Redis keeps them two
# windows, the store until purged) are never in it.
WINDOW_START = (int(time.time()) // 60 + 10_000 + uuid.uuid4().int % 10_000) * 60


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_limits_rpm_tpm_and_windows(auth: Auth, store: Store) -> None:
    clock = Clock(1_699_999_990.0)                         # 10 s into a window
    ledger = Ledger(store, clock=clock)
    info, _ = auth.create_key(tenant(auth), rpm=3, tpm=100)
    assert ledger.check_rate(info, 10).remaining_requests == 2
    ledger.check_rate(info, 10)
    ledger.check_rate(info, 10)
    with pytest.raises(RateLimited) as exc:
        ledger.check_rate(info, 10)
    assert exc.value.kind == "requests" and exc.value.retry_after == 50
    clock.now += 50                                         # the next window
    ledger.check_rate(info, 90)
    with pytest.raises(RateLimited) as exc:
        ledger.check_rate(info, 20)                         # 110 > 100 tokens
    assert exc.value.kind == "tokens" and exc.value.retry_after == 60
    assert ledger.check_rate(info, 10).remaining_tokens == 0   # the rejected 20 were given back
    ledger.count_tokens(info, 5)
    unlimited, _ = auth.create_key(info.tenant_id)
    for _ in range(20):
        ledger.check_rate(unlimited, 10_000)


def _rate_limit_holds_under_threads(store_url: str, auth: Auth, redis_url: str | None) -> None:
    info, _ = auth.create_key(tenant(auth), rpm=10)
    clock = Clock(WINDOW_START + 10)                        # one window for the whole test: no waiting
    ledgers = [Ledger(Store(store_url), redis_url, clock=clock) for _ in range(2)]
    passed, limited = [], []

    def hit(i: int) -> None:
        try:
            ledgers[i % 2].check_rate(info)
            passed.append(i)
        except RateLimited as exc:
            limited.append(exc.retry_after)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(30)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(passed) == 10 and len(limited) == 20 and all(r == 50 for r in limited)
    for ledger in ledgers:
        ledger.store.close()


def test_rate_limit_across_engines_and_threads(auth: Auth, store_url: str) -> None:
    _rate_limit_holds_under_threads(store_url, auth, None)


def test_rate_limit_in_redis(auth: Auth, store_url: str, redis_url: str) -> None:
    _rate_limit_holds_under_threads(store_url, auth, redis_url)


def test_rate_limit_across_processes(auth: Auth, store_url: str) -> None:
    info, _ = auth.create_key(tenant(auth), rpm=5)
    now = WINDOW_START + 30                                 # every process on the same clock, one window
    script = (
        "import sys\n"
        "from server.auth import KeyInfo\n"
        "from server.ledger import Ledger, RateLimited\n"
        "from server.store import Store\n"
        f"key = KeyInfo(id={info.id!r}, tenant_id={info.tenant_id!r}, admin=False, rpm=5, tpm=None, name='')\n"
        "ok = 0\n"
        "for _ in range(4):\n"
        "    Ledger(Store(sys.argv[1]), clock=lambda: float(sys.argv[2])).check_rate(key); ok += 1\n"
        "print(ok)\n")
    out = subprocess.run([sys.executable, "-c", script, store_url, str(now)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
    ledger = Ledger(Store(store_url), clock=Clock(now))
    ledger.check_rate(info)                                 # the 5th
    with pytest.raises(RateLimited):
        ledger.check_rate(info)
    ledger.store.close()


# -- usage and spend ----------------------------------------------------------------
def test_record_is_idempotent_and_spend_groups(auth: Auth, store: Store) -> None:
    ledger = Ledger(store)
    tid, other = tenant(auth), tenant(auth)
    base = datetime(2024, 3, 1, tzinfo=timezone.utc)
    rows = [  # model, provider, key, in, out, cost, metadata, minutes after base
        ("gpt-x", "openai", "k1", 10, 5, 0.5, {"team": "search", "n": 1}, 0),
        ("gpt-x", "azure", "k2", 20, 10, 1.0, {"team": "ads"}, 1),
        ("claude", "anthropic", "k1", 30, 15, 2.0, {"team": "search"}, 2),
        ("claude", "anthropic", "k1", 40, 20, 4.0, {}, 120),
    ]
    ids = []
    for model, provider, key, i, o, cost, meta, minutes in rows:
        rec = UsageRecord(request_id=f"req-{uuid.uuid4().hex}", tenant_id=tid, key_id=key, model=model,
                          provider=provider, upstream_model=model + "-2024", input_tokens=i, output_tokens=o,
                          cost=cost, latency_ms=120.5, ttft_ms=30.0, status="ok", failovers=1,
                          attempted=["a", provider], metadata=meta, created_at=base + timedelta(minutes=minutes))
        assert ledger.record(rec) is True
        assert ledger.record(rec) is False                  # billed once, ever
        assert ledger.record(UsageRecord(request_id=rec.request_id, tenant_id=tid, cost=99.0)) is False
        ids.append(rec.request_id)
    ledger.record(UsageRecord(request_id=f"req-{uuid.uuid4().hex}", tenant_id=other, model="gpt-x", cost=50.0,
                              metadata={"team": "search"}, created_at=base))
    with pytest.raises(ValueError):
        ledger.record(UsageRecord(request_id="bad", tenant_id=tid, status="weird"))

    def groups(group_by: str, **kwargs) -> dict:
        return {r["group"]: (r["requests"], r["input_tokens"], r["output_tokens"], r["cost"])
                for r in ledger.spend(tid, group_by, **kwargs)}

    assert groups("model") == {"claude": (2, 70, 35, 6.0), "gpt-x": (2, 30, 15, 1.5)}
    assert groups("provider") == {"anthropic": (2, 70, 35, 6.0), "openai": (1, 10, 5, 0.5),
                                  "azure": (1, 20, 10, 1.0)}
    assert groups("key") == {"k1": (3, 80, 40, 6.5), "k2": (1, 20, 10, 1.0)}
    assert groups("metadata.team") == {"search": (2, 40, 20, 2.5), "ads": (1, 20, 10, 1.0), None: (1, 40, 20, 4.0)}
    assert groups("metadata.n") == {"1": (1, 10, 5, 0.5), None: (3, 90, 45, 7.0)}
    assert groups("model", start=base + timedelta(minutes=1), end=base + timedelta(minutes=3)) == \
        {"claude": (1, 30, 15, 2.0), "gpt-x": (1, 20, 10, 1.0)}
    assert ledger.spend(tid, "model", start=base + timedelta(days=1)) == []
    assert [r["group"] for r in ledger.spend(tid, "model")] == ["claude", "gpt-x"]   # by cost
    for bad in ("tenant", "metadata.", "metadata.a'b", "metadata.x y"):
        with pytest.raises(ValueError):
            ledger.spend(tid, bad)
    recent = ledger.requests(tid, limit=3)
    assert [r.request_id for r in recent] == [ids[3], ids[2], ids[1]]
    assert recent[0].attempted == ["a", "anthropic"] and recent[0].created_at.tzinfo == timezone.utc
    assert recent[1].metadata == {"team": "search"} and recent[1].cost == 2.0
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM usage")).scalar() >= 5


def test_batches_record_settle_and_bill_exactly_once(auth: Auth, store: Store) -> None:
    ledger = Ledger(store)
    a, b = tenant(auth), tenant(auth)
    ledger.set_credits(a, 10.0)

    def rec(tid: str, cost: float) -> UsageRecord:
        return UsageRecord(request_id=f"req-{uuid.uuid4().hex}", tenant_id=tid, model="m", cost=cost,
                           input_tokens=1, output_tokens=2, metadata={"n": 1})

    recs = [rec(a, 0.5), rec(a, 0.25), rec(b, 1.0)]
    assert ledger.record_many(recs[:2]) == {recs[0].request_id, recs[1].request_id}
    assert ledger.record_many(recs) == {recs[2].request_id}          # the ones recorded before: kept as they were
    assert ledger.record_many([]) == set()
    with pytest.raises(ValueError):                                    # one bad row: nothing of the batch
        ledger.record_many([rec(a, 1.0), UsageRecord(request_id="bad", tenant_id=a, status="weird")])
    assert len(ledger.requests(a, 10)) == 2

    held = [ledger.reserve(a, 1.0), ledger.reserve(a, 2.0), ledger.reserve(b, 5.0)]
    assert ledger.credits(a)["reserved"] == 3.0
    ledger.settle_many([(held[0], 0.5), (held[1], 0.25), (held[2], 1.0)])
    ledger.settle_many([(held[0], 0.5)])                               # once per reservation
    assert ledger.credits(a) == {"balance": 9.25, "reserved": 0.0, "available": 9.25, "spent": 0.75}
    assert ledger.credits(b)["spent"] == 0.0                           # b has no credits row: nothing to move

    # bill_many: the usage rows, and the money only for the rows that were new, in one transaction.
    bills = [(ledger.reserve(a, 1.0), rec(a, 0.5)), (ledger.reserve(a, 1.0), rec(a, 0.25)), (None, rec(b, 3.0))]
    assert ledger.bill_many(bills) == {r.request_id for _h, r in bills}
    assert ledger.credits(a) == {"balance": 8.5, "reserved": 0.0, "available": 8.5, "spent": 1.5}
    again = [(ledger.reserve(a, 1.0), r) for _h, r in bills[:2]]        # the same requests billed again
    assert ledger.bill_many(again) == set()
    assert ledger.credits(a)["spent"] == 1.5 and ledger.credits(a)["reserved"] == 2.0   # not charged twice
    assert ledger.spend(a, "model") == [{"group": "m", "requests": 4, "input_tokens": 4, "output_tokens": 8,
                                         "cost": 1.5}]
