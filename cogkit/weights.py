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
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LOCKFILE = "weights.lock"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
# Cog's managed-weights format (its specs/draft-weights.md): the manifest's artifactType, its
# config blob (a file index) and the annotations on the manifest, its layers and the bundle index.
ARTIFACT_TYPE = "application/vnd.cog.weight.v1"
CONFIG_TYPE = "application/vnd.cog.weight.config.v1+json"
ANNOTATION_NAME = "run.cog.weight.name"
ANNOTATION_TARGET = "run.cog.weight.target"
ANNOTATION_SET_DIGEST = "run.cog.weight.set-digest"
ANNOTATION_SIZE = "run.cog.weight.size.uncompressed"
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")  # the OCI distribution spec's tag grammar
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


@dataclass
class ModelRef:
    """Where a model is pushed: registry host, repository and tag (Cog's ResolveModelRef)."""
    host: str
    repo: str
    tag: str

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.repo}"

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost"


def model_ref(raw: dict[str, Any]) -> ModelRef | None:
    """The model ref, as Cog resolves it: COG_MODEL (REGISTRY/REPO[:TAG]) wins outright; else
    cog.yaml's `model:` with COG_MODEL_REGISTRY, COG_MODEL_REPO and COG_MODEL_TAG over it. Without
    a tag, a UTC timestamp (20260508T153042Z) is the tag. None when neither names a repository."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    full = os.environ.get("COG_MODEL", "")
    if full:
        first, _, rest = full.partition("/")
        if not rest or not _looks_like_host(first) or "@" in rest:
            raise WeightsError(f"COG_MODEL={full!r} is not REGISTRY/REPOSITORY[:TAG] "
                               f"(e.g. registry.example.com/user/model:v1)")
        repo, _, tag = rest.partition(":")
        return _checked(ModelRef(first, repo, tag or stamp), "COG_MODEL")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise WeightsError("cog.yaml's `model:` must be a repository such as namespace/name")
    env_repo = os.environ.get("COG_MODEL_REPO", "")
    if not model and not env_repo:
        return None
    host, repo = "", str(model or "")
    first, _, rest = repo.partition("/")
    if rest and _looks_like_host(first):  # model names its own registry
        host, repo = first, rest
    host = os.environ.get("COG_MODEL_REGISTRY") or host
    if not host:
        raise WeightsError("no registry for the model: set COG_MODEL_REGISTRY or give `model:` with a host")
    tag = os.environ.get("COG_MODEL_TAG", "")
    if tag.startswith("cog-"):
        raise WeightsError(f"COG_MODEL_TAG={tag!r}: the cog- prefix is kept for tags cogkit makes itself")
    return _checked(ModelRef(host, env_repo or repo, tag or stamp), "COG_MODEL_TAG" if tag else "the model ref")


def _checked(ref: ModelRef, what: str) -> ModelRef:
    if not _TAG.match(ref.tag):
        raise WeightsError(f"{what}: tag {ref.tag!r} is not a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]*)")
    if not ref.repo or ref.repo != ref.repo.lower() or "//" in ref.repo or ref.repo.endswith("/"):
        raise WeightsError(f"{what}: repository {ref.repo!r} must be lowercase path components "
                           f"(e.g. namespace/name)")
    return ref


def repository(raw: dict[str, Any]) -> tuple[str, str]:
    """(registry host, repository) the weights go to: the model's own repository."""
    ref = model_ref(raw)
    if ref is None:
        raise WeightsError("cog.yaml has no `model:` (e.g. model: namespace/name) to push weights to")
    return ref.host, ref.repo


def set_digest(files: list[dict[str, Any]]) -> str:
    """Cog's weight set digest: sha256 over `<hex>  <path>` lines sorted by path (sha256sum's
    form), so it names the files' content whatever the layers."""
    lines = sorted(f"{f['digest'].removeprefix('sha256:')}  {f['path']}" for f in files)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _blob(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
        """PUT a manifest (or index) under tag; returns its digest, that of the bytes sent."""
        body = json.dumps(manifest, separators=(",", ":")).encode()
        self._check(self.http.put(f"{self.base}/manifests/{tag}", content=body,
                                  headers={"content-type": manifest["mediaType"]}), f"pushing {tag}")
        return _blob(body)

    def descriptor(self, reference: str) -> dict[str, Any]:
        """{mediaType, digest, size} of the manifest at reference (a tag or a digest)."""
        accept = ", ".join((MANIFEST_TYPE, "application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json"))
        response = self.http.get(f"{self.base}/manifests/{reference}", headers={"accept": accept})
        if response.status_code == 404:
            raise WeightsError(f"{self.base.split('/v2/', 1)[0]}: no manifest {reference} in this repository")
        self._check(response, f"reading the manifest {reference}")
        return {"mediaType": response.headers["content-type"].split(";")[0].strip(),
                "digest": _blob(response.content), "size": len(response.content)}

    def fetch_blob(self, digest: str, target: Path) -> None:
        with self.http.stream("GET", f"{self.base}/blobs/{digest}") as response:
            if response.status_code != 200:
                raise WeightsError(f"fetching {digest}: the registry answered {response.status_code}")
            tmp = target.with_name(target.name + f".part-{os.getpid()}")
            with open(tmp, "wb") as f:
                f.writelines(response.iter_bytes())
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
    entries: list[dict[str, Any]] = []
    for weight in weights:
        progress(f"Importing {weight.name} from file://{weight.source}")
        files: list[dict[str, Any]] = []
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
    for entry in entries:
        for file in entry["files"]:
            registry.push_blob(file["digest"], stored(file["digest"]))
        entry["setDigest"] = set_digest(entry["files"])
        entry["size"] = sum(f["size"] for f in entry["files"])
        # One layer per file, the file's own bytes (Cog packs tars; a layer here is the file itself,
        # so the store, pull and mounts keep working by file digest). The config blob is Cog's file index.
        config = json.dumps({"name": entry["name"], "target": entry["target"], "setDigest": entry["setDigest"],
                             "files": [{"path": f["path"], "layer": f["digest"], "size": f["size"],
                                        "digest": f["digest"]} for f in sorted(entry["files"],
                                                                               key=lambda f: f["path"])]},
                            separators=(",", ":")).encode()
        registry.push_blob(_blob(config), data=config)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": _blob(config), "size": len(config)},
                    "layers": [{"mediaType": "application/octet-stream", "digest": f["digest"], "size": f["size"],
                                "annotations": {"org.opencontainers.image.title": f["path"],
                                                ANNOTATION_SIZE: str(f["size"])}}
                               for f in entry["files"]],
                    "annotations": {ANNOTATION_NAME: entry["name"], ANNOTATION_TARGET: entry["target"],
                                    ANNOTATION_SET_DIGEST: entry["setDigest"]}}
        tag = f"cog-weight.{entry['name']}.{entry['setDigest'].removeprefix('sha256:')[:12]}"  # as Cog tags them
        entry["digest"] = registry.push_manifest(tag, manifest)
        entry["reference"] = f"{host}/{repo}@{entry['digest']}"
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
        lock = json.loads(path.read_text())
    except ValueError as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("weights", []), list):
        raise WeightsError(f"{path} must be a JSON object with a `weights` list: run `cogkit weights import` again")
    return lock


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
