"""The node-local weight cache: materialize, verify on load, LRU eviction under a budget, pre-fetch."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import xxhash

from scheduler.snapshots import (
    SnapshotCache,
    SnapshotError,
    directory_origin,
    read_safetensors,
)


def safetensors_bytes(tensors: dict[str, bytes]) -> bytes:
    header, data, offset = {}, b"", 0
    for name, raw in tensors.items():
        header[name] = {"dtype": "U8", "shape": [len(raw)], "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    for version, size in (("v1", 1000), ("v2", 2000), ("v3", 3000)):
        (root / version).mkdir(parents=True)
        (root / version / "model.safetensors").write_bytes(
            safetensors_bytes({"w": bytes([ord(version[1])]) * size, "b": b"\x01\x02"}))
        (root / version / "config.json").write_text('{"layers": 2}')
    return root


def test_materialize_then_load_memory_mapped(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    snapshot = cache.materialize("v1", directory_origin(origin))
    assert {f.name for f in snapshot.files} == {"model.safetensors", "config.json"}
    assert cache.versions() == {"v1"}
    loaded = cache.get("v1")
    assert loaded is not None and loaded.content_hash == snapshot.content_hash
    tensors = loaded.tensors("model.safetensors")
    assert bytes(tensors["w"]) == b"1" * 1000 and bytes(tensors["b"]) == b"\x01\x02"
    # a second materialize finds it: the origin is not asked again
    assert cache.materialize("v1", lambda v: (_ for _ in ()).throw(AssertionError("fetched"))) == loaded


def test_a_damaged_snapshot_is_evicted_on_load(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    snapshot = cache.materialize("v1", directory_origin(origin))
    target = snapshot.path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte flipped: only the full check sees it
    target.write_bytes(bytes(data))
    assert cache.get("v1", verify="sizes") is not None
    assert cache.get("v1") is None and cache.versions() == frozenset()
    cache.materialize("v1", directory_origin(origin))
    (cache.root / "v1" / "config.json").write_text("{}")  # wrong size
    assert cache.get("v1", verify="sizes") is None


def test_the_full_check_hashes_xxh3_and_loads_from_the_same_map(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    snapshot = cache.materialize("v2", directory_origin(origin))
    weights = next(f for f in snapshot.files if f.name == "model.safetensors")
    raw = (origin / "v2" / "model.safetensors").read_bytes()
    assert weights.xxh3_128 == xxhash.xxh3_128_hexdigest(raw) and weights.sha256 == hashlib.sha256(raw).hexdigest()
    loaded = cache.get("v2")
    assert loaded is not None and set(loaded.mapped) == {"model.safetensors", "config.json"}
    assert bytes(loaded.tensors("model.safetensors")["w"]) == b"2" * 2000
    # a byte flipped inside a tensor, the file's size unchanged: the load refuses it and evicts it
    target = loaded.path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert cache.get("v2") is None and "v2" not in cache.versions()


def test_a_manifest_without_xxh3_is_checked_by_sha256(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    snapshot = cache.materialize("v1", directory_origin(origin))
    manifest_path = snapshot.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for f in manifest["files"]:
        del f["xxh3_128"]  # as written before the second digest existed
    manifest_path.write_text(json.dumps(manifest))
    assert cache.get("v1") is not None
    target = snapshot.path / "config.json"
    target.write_text('{"layers": 3}')  # same size
    assert cache.get("v1") is None


def test_expected_content_hash_must_match(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    with pytest.raises(SnapshotError, match="content hash .* is not the expected 00"):
        cache.materialize("v1", directory_origin(origin), content_hash="00")
    assert cache.versions() == frozenset() and not list(cache.root.glob(".partial-*"))


def test_lru_eviction_under_the_disk_budget(tmp_path: Path, origin: Path) -> None:
    now = [0.0]
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=5200, clock=lambda: now[0])
    fetch = directory_origin(origin)
    for version in ("v1", "v2"):
        now[0] += 1
        cache.materialize(version, fetch)
    now[0] += 1
    assert cache.get("v1") is not None  # v1 used after v2: v2 is now the least recent
    now[0] += 1
    cache.materialize("v3", fetch)
    assert cache.versions() == {"v1", "v3"}
    assert cache.usage_bytes() <= 5200


def test_prefetch_materializes_what_is_expected_next(tmp_path: Path, origin: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    assert [s.version for s in cache.prefetch(["v2", "v3"], directory_origin(origin))] == ["v2", "v3"]
    assert cache.versions() == {"v2", "v3"}
    with pytest.raises(SnapshotError, match="origin has no weights for version 'v9'"):
        cache.prefetch(["v9"], directory_origin(origin))


def test_bad_safetensors_and_names_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(SnapshotError, match="header length"):
        read_safetensors(bad)
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**6)
    with pytest.raises(SnapshotError, match="escapes"):
        cache.materialize("v1", lambda v: [("../evil", [b"x"])])
    with pytest.raises(SnapshotError, match="not a safe directory name"):
        cache.materialize("../v1", lambda v: [])
