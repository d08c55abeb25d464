"""Cog's managed weights: cog.yaml's `weights:` (name, target, source) are
imported into a local content store and pushed to the model's registry as one
OCI artifact each; weights.lock records every file's digest; `pull` fills the
store again from the registry; a run mounts each weight at its target,
assembled from the store by hard links. Step 7's snapshots build on this."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LOCKFILE = "weights.lock"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cog.weights.v1"
EMPTY_CONFIG = b"{}"
Progress = Callable[[str], None]


class WeightsError(Exception):
    """A weights step failed; the message says which weight and why."""


@dataclass
class Weight:
    name: str
    target: str
    source: str
    include: list[str]
    exclude: list[str]


def declared(raw: dict[str, Any]) -> list[Weight]:
    """cog.yaml's `weights:` entries."""
    out = []
    for i, entry in enumerate(raw.get("weights") or []):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("target"):
            raise WeightsError(f"cog.yaml weights[{i}] needs a name and a target")
        source = entry.get("source") or {}
        if not isinstance(source, dict) or not str(source.get("uri", "")).startswith("file://"):
            raise WeightsError(f"weight {entry['name']!r}: source.uri must be a file://DIRECTORY "
                               f"(the only source this machine can import from)")
        out.append(Weight(entry["name"], entry["target"], source["uri"][len("file://"):],
                          list(source.get("include") or []), list(source.get("exclude") or [])))
    return out


def store_root() -> Path:
    base = os.environ.get("COG_CACHE_DIR") or os.environ.get("COGKIT_CACHE_DIR")
    return Path(base or Path.home() / ".cache" / "cogkit") / "weights" / "files" / "sha256"


def stored(digest: str) -> Path:
    return store_root() / digest.removeprefix("sha256:")


def repository(raw: dict[str, Any]) -> tuple[str, str]:
    """(registry host, repository) from cog.yaml's `model:` and COG_MODEL_REGISTRY."""
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise WeightsError("cog.yaml has no `model:` (e.g. model: namespace/name) to push weights to")
    host = os.environ.get("COG_MODEL_REGISTRY")
    first, _, rest = model.partition("/")
    if "." in first or ":" in first:  # model names its own registry
        return first, rest
    if not host:
        raise WeightsError("no registry for the weights: set COG_MODEL_REGISTRY or give `model:` with a host")
    return host, model


def _files(project: Path, weight: Weight) -> list[Path]:
    root = (project / weight.source).resolve()
    if not root.is_dir():
        raise WeightsError(f"weight {weight.name!r}: {weight.source} is not a directory")
    chosen = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        name = path.name

        def matches(patterns: list[str], rel: str = rel, name: str = name) -> bool:
            return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)
        if (not weight.include or matches(weight.include)) and not matches(weight.exclude):
            chosen.append(path)
    return chosen


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class Registry:
    """The OCI distribution API, enough for blobs and one manifest per weight."""

    def __init__(self, host: str, repo: str) -> None:
        from cogkit.build import registry as credentials

        auth = credentials.credentials(host)
        scheme = "http" if host.startswith(("127.0.0.1", "localhost")) else "https"
        self.base = f"{scheme}://{host}/v2/{repo}"
        self.http = httpx.Client(timeout=300, auth=(auth["username"], auth["password"]) if auth else None)

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 300:
            raise WeightsError(f"{what}: the registry answered {response.status_code} {response.text[:200]}")
        return response

    def push_blob(self, digest: str, data_path: Path | None = None, data: bytes | None = None) -> None:
        if self.http.head(f"{self.base}/blobs/{digest}").status_code == 200:
            return
        start = self._check(self.http.post(f"{self.base}/blobs/uploads/"), f"starting the upload of {digest}")
        location = start.headers["location"]
        url = location if location.startswith("http") else self.base.split("/v2/")[0] + location
        body = data if data is not None else (data_path.read_bytes() if data_path else b"")
        url += ("&" if "?" in url else "?") + f"digest={digest}"  # keeps the registry's own _state query
        self._check(self.http.put(url, content=body,
                                  headers={"content-type": "application/octet-stream"}), f"uploading {digest}")

    def push_manifest(self, tag: str, manifest: dict[str, Any]) -> str:
        response = self._check(self.http.put(f"{self.base}/manifests/{tag}", content=json.dumps(manifest),
                                             headers={"content-type": MANIFEST_TYPE}), f"pushing {tag}")
        return response.headers.get("docker-content-digest", "")

    def fetch_blob(self, digest: str, target: Path) -> None:
        with self.http.stream("GET", f"{self.base}/blobs/{digest}") as response:
            if response.status_code != 200:
                raise WeightsError(f"fetching {digest}: the registry answered {response.status_code}")
            tmp = target.with_name(target.name + f".part-{os.getpid()}")
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        if _digest(tmp) != digest:
            tmp.unlink()
            raise WeightsError(f"fetching {digest}: the bytes do not match their digest")
        tmp.rename(target)


def import_weights(project: Path, raw: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Store each weight's files, push them, write weights.lock; returns the lock."""
    weights = declared(raw)
    if not weights:
        raise WeightsError("cog.yaml declares no weights")
    host, repo = repository(raw)
    store_root().mkdir(parents=True, exist_ok=True)
    entries = []
    for weight in weights:
        progress(f"Importing {weight.name} from file://{weight.source}")
        files = []
        for path in _files(project, weight):
            digest = _digest(path)
            if not stored(digest).exists():
                shutil.copyfile(path, stored(digest))
            files.append({"path": str(path.relative_to((project / weight.source).resolve())), "digest": digest,
                          "size": path.stat().st_size})
        progress(f"  {weight.name}: {len(files)} file(s), {sum(f['size'] for f in files)} bytes")
        entries.append({"name": weight.name, "target": weight.target, "files": files})
    progress("Download complete")
    progress(f"Pushing {len(entries)} weight(s) to {host}/{repo}")
    registry = Registry(host, repo)
    config_digest = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
    registry.push_blob(config_digest, data=EMPTY_CONFIG)
    for entry in entries:
        for file in entry["files"]:
            registry.push_blob(file["digest"], stored(file["digest"]))
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest,
                               "size": len(EMPTY_CONFIG)},
                    "layers": [{"mediaType": "application/octet-stream", "digest": f["digest"], "size": f["size"],
                                "annotations": {"org.opencontainers.image.title": f["path"]}}
                               for f in entry["files"]]}
        digest = registry.push_manifest(f"weights-{entry['name']}", manifest)
        entry["reference"] = f"{host}/{repo}@{digest}" if digest else f"{host}/{repo}:weights-{entry['name']}"
        progress(f"  pushed {entry['name']} as {entry['reference']}")
    lock = {"version": 1, "model": f"{host}/{repo}", "weights": entries}
    (project / LOCKFILE).write_text(json.dumps(lock, indent=2) + "\n")
    progress(f"Wrote {LOCKFILE}")
    return lock


def read_lock(project: Path) -> dict[str, Any]:
    path = project / LOCKFILE
    if not path.is_file():
        raise WeightsError(f"no {LOCKFILE} in {project}: run `cogkit weights import` first")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from None


def pull_weights(project: Path, names: list[str], verbose: bool, progress: Progress) -> None:
    """Fetch the files weights.lock names that the local store lacks."""
    lock = read_lock(project)
    entries = lock.get("weights", [])
    unknown = [n for n in names if n not in {e["name"] for e in entries}]
    if unknown:
        raise WeightsError(f"unknown weight(s): {', '.join(unknown)}; weights.lock has "
                           f"{', '.join(e['name'] for e in entries)}")
    chosen = [e for e in entries if not names or e["name"] in names]
    if verbose:
        progress(f"Cache: {store_root()}")
        progress(f"Lockfile: {project / LOCKFILE}")
    pulled = 0
    for entry in chosen:
        missing = [f for f in entry["files"] if not stored(f["digest"]).exists()]
        total = len(entry["files"])
        if not missing:
            progress(f"{entry['name']}: cached ({total}/{total} files)" if verbose else f"{entry['name']}: cached")
            continue
        if verbose:
            progress(f"{entry['name']}: {total - len(missing)} cached / {len(missing)} missing / {total} total")
            for f in missing:
                progress(f"  layer {f['digest'].removeprefix('sha256:')}  {f['path']}")
        progress(f"Pulling {entry['name']} ({len(missing)} file(s))")
        host, _, rest = entry.get("reference", lock["model"]).partition("/")
        registry = Registry(host, rest.split("@")[0].split(":")[0])
        store_root().mkdir(parents=True, exist_ok=True)
        for f in missing:
            registry.fetch_blob(f["digest"], stored(f["digest"]))
        progress("Download complete")
        progress(f"{entry['name']}: done")
        pulled += 1
    if pulled:
        progress(f"Pulled {pulled} weight(s)")
    else:
        progress(f"All {len(chosen)} weight(s) already cached")


@contextmanager
def mounted(project: Path, raw: dict[str, Any]) -> Iterator[dict[str, str]]:
    """{host dir: target} for each locked weight, assembled from the store by hard links
    under .cog/mounts/<run>/ and removed afterwards. Nothing when cog.yaml declares none."""
    if not raw.get("weights"):
        yield {}
        return
    lock = read_lock(project)
    run_dir = project / ".cog" / "mounts" / uuid.uuid4().hex[:12]
    try:
        volumes = {}
        for entry in lock.get("weights", []):
            directory = run_dir / entry["name"]
            for f in entry["files"]:
                source = stored(f["digest"])
                if not source.exists():
                    raise WeightsError(f"weight {entry['name']!r} is not in the local store ({f['path']}): "
                                       f"run `cogkit weights pull`")
                target = directory / f["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:  # another filesystem: copy instead
                    shutil.copyfile(source, target)
            directory.mkdir(parents=True, exist_ok=True)
            volumes[str(directory.resolve())] = entry["target"]
        yield volumes
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
