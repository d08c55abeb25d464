"""The node-local weight cache: a model version's weights, keyed by version and content hash,
checked against their hashes when loaded, evicted least recently used under a disk budget.

Layout: ROOT/<version>/manifest.json and the files next to it. A snapshot is written under a
temporary name and renamed into place, so a crash never leaves half a snapshot that looks whole.

Two digests per file, both computed while it is written: sha256 is its identity (the content
hash, what a registry can vouch for), xxh3-128 is what a load checks. A load has to read every
byte anyway; xxh3 hashes at memory speed (~10 GB/s a core, sha256 ~1.5), so the check costs a
fraction of the read. The full check maps each file with its pages populated in one go and hashes
the map; `Snapshot.tensors` then hands out views into that same map, so the bytes are read once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import xxhash

# version id -> the files of its weights, each a name and its bytes in chunks
Origin = Callable[[str], Iterable[tuple[str, Iterable[bytes]]]]
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_CHUNK = 8 * 2**20


class SnapshotError(Exception):
    """A snapshot failed verification or cannot be stored; the message says which file and why."""


@dataclass(frozen=True)
class SnapshotFile:
    name: str
    size: int
    sha256: str
    xxh3_128: str = ""  # absent in manifests written before it: their full check re-hashes sha256


@dataclass(frozen=True)
class Snapshot:
    version: str
    content_hash: str  # sha256 over the files' names and hashes
    path: Path
    files: tuple[SnapshotFile, ...]
    # file name -> its map, filled by the full check so that loading reuses the pages it read
    mapped: dict[str, mmap.mmap] = field(default_factory=dict, compare=False, repr=False)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def tensors(self, name: str) -> dict[str, memoryview]:
        """The tensors of one safetensors file, as views into a memory map of it."""
        mapped = self.mapped.get(name)
        if mapped is None:
            return read_safetensors(self.path / name)
        return parse_safetensors(name, memoryview(mapped))


def map_file(path: Path, populate: bool = False) -> mmap.mmap:
    """A read-only map of the file; `populate` faults every page in at once (one system call
    instead of a page fault per 4 KiB), for a file about to be read whole."""
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            return mmap.mmap(-1, 1)  # an empty file cannot be mapped; one zero byte stands in
        if populate and hasattr(mmap, "MAP_POPULATE"):
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_safetensors(path: Path) -> dict[str, memoryview]:
    """Parse a safetensors file (8-byte header length, JSON header, data) without copying data."""
    return parse_safetensors(path.name, memoryview(map_file(path)))


def parse_safetensors(name: str, view: memoryview) -> dict[str, memoryview]:
    if len(view) < 8:
        raise SnapshotError(f"{name}: too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", view[:8])
    if 8 + header_len > len(view):
        raise SnapshotError(f"{name}: header length {header_len} runs past the end of the file")
    try:
        header = json.loads(bytes(view[8:8 + header_len]))
    except ValueError:
        raise SnapshotError(f"{name}: the safetensors header is not JSON") from None
    data = view[8 + header_len:]
    tensors = {}
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if not 0 <= begin <= end <= len(data):
            raise SnapshotError(f"{name}: tensor {tensor!r} lies outside the file")
        tensors[tensor] = data[begin:end]
    return tensors


def directory_origin(root: Path) -> Origin:
    """Weights under ROOT/<version>/ (an object store or registry blob mount, in production)."""

    def fetch(version: str) -> Iterable[tuple[str, Iterable[bytes]]]:
        base = root / version
        if not base.is_dir():
            raise SnapshotError(f"origin has no weights for version {version!r}")
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            yield str(path.relative_to(base)), _chunks(path)

    return fetch


def _chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _content_hash(files: Iterable[SnapshotFile]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f"{f.name}\0{f.sha256}\n".encode())
    return digest.hexdigest()


class SnapshotCache:
    def __init__(self, root: Path, budget_bytes: int, clock: Callable[[], float] = time.time) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes: expected > 0, got {budget_bytes}")
        self.root, self.budget_bytes, self._clock = root, budget_bytes, clock
        root.mkdir(parents=True, exist_ok=True)
        for partial in root.glob(".partial-*"):  # left by a crash mid-write
            shutil.rmtree(partial, ignore_errors=True)

    def versions(self) -> frozenset[str]:
        """What NodeReading.cached_versions reports for this node."""
        return frozenset(p.parent.name for p in self.root.glob("*/manifest.json"))

    def usage_bytes(self) -> int:
        return sum(s.size for s in self._all())

    def get(self, version: str, verify: Literal["full", "sizes"] = "full") -> Snapshot | None:
        """The snapshot if present and intact; a damaged one is evicted and None returned.
        `full` hashes every byte (xxh3-128, through the map its tensors are then read from);
        `sizes` checks file sizes only (hashes were checked on write)."""
        snapshot = self._read(version)
        if snapshot is None:
            return None
        try:
            self._verify(snapshot, verify)
        except SnapshotError:
            self.evict(version)
            return None
        self._touch(snapshot)
        return snapshot

    def materialize(self, version: str, origin: Origin, content_hash: str | None = None) -> Snapshot:
        """The version's snapshot, fetched from the origin unless already here (and intact).
        `content_hash`, when known (from the registry), must match what arrives."""
        existing = self.get(version, verify="sizes")
        if existing is not None and content_hash in (None, existing.content_hash):
            return existing
        if not _SAFE.match(version):
            raise SnapshotError(f"version: {version!r} is not a safe directory name")
        partial = self.root / f".partial-{version}-{time.monotonic_ns()}"
        partial.mkdir()
        try:
            files = []
            for name, chunks in origin(version):
                target = (partial / name).resolve()
                if partial.resolve() not in target.parents:
                    raise SnapshotError(f"origin file {name!r} escapes the snapshot directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, check, size = hashlib.sha256(), xxhash.xxh3_128(), 0
                with target.open("wb") as out:
                    for chunk in chunks:
                        digest.update(chunk)
                        check.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                files.append(SnapshotFile(name, size, digest.hexdigest(), check.hexdigest()))
            snapshot = Snapshot(version, _content_hash(files), self.root / version, tuple(files))
            if content_hash is not None and snapshot.content_hash != content_hash:
                raise SnapshotError(f"{version}: content hash {snapshot.content_hash} is not the expected {content_hash}")
            self._write_manifest(partial, snapshot)
            self.evict(version)
            partial.rename(self.root / version)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self._evict_to_budget(keep=version)
        return snapshot

    def prefetch(self, versions: Iterable[str], origin: Origin) -> list[Snapshot]:
        """Materialize what the scheduler expects to place here next, most wanted first."""
        return [self.materialize(v, origin) for v in versions]

    def evict(self, version: str) -> None:
        shutil.rmtree(self.root / version, ignore_errors=True)

    # --- internals -------------------------------------------------------------------

    def _write_manifest(self, directory: Path, snapshot: Snapshot) -> None:
        manifest = {"version": snapshot.version, "content_hash": snapshot.content_hash,
                    "last_used": self._clock(), "files": [vars(f) for f in snapshot.files]}
        (directory / "manifest.json").write_text(json.dumps(manifest))

    def _read(self, version: str) -> Snapshot | None:
        path = self.root / version / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            files = tuple(SnapshotFile(**f) for f in manifest["files"])
            return Snapshot(manifest["version"], manifest["content_hash"], path.parent, files)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _verify(self, snapshot: Snapshot, verify: str) -> None:
        if _content_hash(snapshot.files) != snapshot.content_hash:
            raise SnapshotError(f"{snapshot.version}: manifest does not match its content hash")
        for f in snapshot.files:
            path = snapshot.path / f.name
            if not path.is_file() or path.stat().st_size != f.size:
                raise SnapshotError(f"{snapshot.version}/{f.name}: missing or of the wrong size")
            if verify == "full":
                mapped = map_file(path, populate=True)
                view = memoryview(mapped)[:f.size]  # an empty file's stand-in byte is not hashed
                if f.xxh3_128:
                    ok = xxhash.xxh3_128_hexdigest(view) == f.xxh3_128
                else:
                    ok = hashlib.sha256(view).hexdigest() == f.sha256
                view.release()
                if not ok:
                    mapped.close()
                    raise SnapshotError(f"{snapshot.version}/{f.name}: content does not match its hash")
                snapshot.mapped[f.name] = mapped

    def _touch(self, snapshot: Snapshot) -> None:
        path = snapshot.path / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["last_used"] = self._clock()
        path.write_text(json.dumps(manifest))

    def _all(self) -> list[Snapshot]:
        return [s for p in self.root.glob("*/manifest.json") if (s := self._read(p.parent.name)) is not None]

    def _last_used(self, snapshot: Snapshot) -> float:
        try:
            return float(json.loads((snapshot.path / "manifest.json").read_text())["last_used"])
        except (OSError, ValueError, KeyError):
            return 0.0

    def _evict_to_budget(self, keep: str) -> None:
        """Least recently used out first, never the snapshot just written."""
        snapshots = sorted(self._all(), key=self._last_used)
        used = sum(s.size for s in snapshots)
        for snapshot in snapshots:
            if used <= self.budget_bytes:
                break
            if snapshot.version != keep:
                self.evict(snapshot.version)
                used -= snapshot.size
