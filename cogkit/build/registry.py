"""Push model images to an OCI registry and register them with a cogkit platform.

Credentials
    `login()` checks them with the registry (through the Docker engine) and keeps
    them in ~/.config/cogkit/credentials.json ($COGKIT_CONFIG_DIR or
    $XDG_CONFIG_HOME/cogkit when set), mode 600, in Docker's config.json shape:
        {"auths": {"registry.example.com": {"auth": base64("user:password")}}}
    They live in the user's home, never in a project, and are sent only to the
    registry they were given for.

Platform API (the server side implements exactly this)
    POST {platform_url}/v1/models/{namespace}/{model}/versions
    Authorization: Bearer {token}
    Content-Type: application/json
    {
      "image": "registry.example.com/ns/model:tag",   # where the platform pulls from
      "digest": "sha256:...",                          # manifest digest returned by the push
      "openapi_schema": {...},                         # the image's run.cog.openapi_schema label
      "cog_config": {...}                              # cog.yaml as JSON (run.cog.config label)
    }
    201 Created (200 if this digest was already registered for the model):
      {"id": "<version id>", "model": "ns/model", "image": "...", "digest": "sha256:...",
       "created_at": "<ISO 8601>", ...}
    Errors: 400/422 the body is invalid, 401/403 the token is missing or not allowed
    for this namespace, 404 no such model; each with {"detail": "<sentence>"}.
"""
from __future__ import annotations

import base64
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from cogkit.build.builder import connect

Progress = Callable[[str], None]
DEFAULT_REGISTRY = "docker.io"
_AUTH_WORDS = ("unauthorized", "authentication required", "denied", "401", "403", "no basic auth credentials")


class RegistryError(Exception):
    """A push, login or registration failed; the message says what to do."""


class AuthError(RegistryError):
    """The registry or platform refused the credentials."""


def config_dir() -> Path:
    if os.environ.get("COGKIT_CONFIG_DIR"):
        return Path(os.environ["COGKIT_CONFIG_DIR"])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cogkit"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _load() -> dict[str, Any]:
    path = credentials_path()
    if not path.exists():
        return {"auths": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read {path} ({e}); remove it and log in again") from e
    data.setdefault("auths", {})
    return data


def _save(data: dict[str, Any]) -> None:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    # Created 600 from the start: the password is never readable by others, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def registry_of(image_ref: str) -> str:
    """The registry host of an image reference, Docker's way: the first part if it looks like a host."""
    first, sep, _ = image_ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def split_ref(image_ref: str) -> tuple[str, str]:
    """"host:5000/ns/img:tag" -> ("host:5000/ns/img", "tag"); the tag defaults to latest."""
    if "@" in image_ref:
        raise RegistryError(f"{image_ref} names a digest; push a tag instead")
    name, _, tag = image_ref.rpartition(":")
    if not name or "/" in tag:  # the colon belonged to host:port
        return image_ref, "latest"
    return name, tag


def credentials(registry: str) -> dict[str, str] | None:
    """The stored {"username", "password", "serveraddress"} for registry, if any."""
    entry = _load()["auths"].get(registry)
    if not entry or "auth" not in entry:
        return None
    username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": username, "password": password, "serveraddress": registry}


def login(registry: str, username: str, password: str, client: docker.APIClient | None = None,
          verify: bool = True) -> None:
    """Check the credentials with the registry (unless verify=False), then store them."""
    if verify:
        client = client or connect()
        try:
            client.login(username, password, registry=registry, reauth=True, dockercfg_path=os.devnull)
        except docker.errors.APIError as e:
            message = getattr(e, "explanation", None) or str(e)
            if any(w in message.lower() for w in _AUTH_WORDS):
                raise AuthError(f"{registry} refused the username or password for {username} ({message})") from e
            raise RegistryError(f"cannot log in to {registry}: {message}") from e
    data = _load()
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    data["auths"][registry] = {"auth": token}
    _save(data)


def logout(registry: str) -> bool:
    data = _load()
    removed = data["auths"].pop(registry, None) is not None
    if removed:
        _save(data)
    return removed


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def push(image_ref: str, progress: Progress = _stderr, client: docker.APIClient | None = None) -> str:
    """Push a local image by its tag; returns the manifest digest (sha256:...)."""
    client = client or connect()
    repository, tag = split_ref(image_ref)
    registry = registry_of(image_ref)
    auth = credentials(registry)
    try:
        client.inspect_image(image_ref)
    except docker.errors.ImageNotFound:
        raise RegistryError(f"there is no local image {image_ref} to push; build or tag it first") from None
    progress(f"Pushing {image_ref}")
    last_status: dict[str, str] = {}
    digest = None
    try:
        for chunk in client.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                _push_failed(image_ref, registry, chunk.get("errorDetail", {}).get("message") or chunk["error"], auth)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            status, layer = chunk.get("status", ""), chunk.get("id")
            if layer:
                # One line per layer and state ("Pushed", "Layer already exists"), not every byte count.
                if last_status.get(layer) != status:
                    last_status[layer] = status
                    progress(f"  {layer}: {status}")
            elif status:
                m = re.search(r"digest: (sha256:[0-9a-f]{64})", status)
                digest = digest or (m.group(1) if m else None)
                progress(status)
    except docker.errors.APIError as e:
        _push_failed(image_ref, registry, getattr(e, "explanation", None) or str(e), auth)
    if not digest:
        raise RegistryError(f"the push of {image_ref} finished without a digest from {registry}")
    return digest


def _push_failed(image_ref: str, registry: str, message: str, auth: dict | None) -> None:
    if any(w in message.lower() for w in _AUTH_WORDS):
        hint = ("the stored credentials were refused; log in again" if auth
                else "no credentials are stored for it; log in first")
        raise AuthError(f"{registry} refused the push of {image_ref}: {message} ({hint}: "
                        f"`cogkit login {registry}`)")
    raise RegistryError(f"pushing {image_ref} to {registry} failed: {message}")


def image_metadata(image_ref: str, client: docker.APIClient | None = None) -> tuple[dict, dict]:
    """(openapi_schema, cog_config) read back from a built image's labels."""
    client = client or connect()
    labels = client.inspect_image(image_ref)["Config"].get("Labels") or {}
    return (json.loads(labels.get("run.cog.openapi_schema") or "{}"),
            json.loads(labels.get("run.cog.config") or "{}"))


def register_version(platform_url: str, namespace: str, model: str, image_ref: str, digest: str,
                     openapi_schema: dict, token: str, cog_config: dict | None = None,
                     timeout: float = 30) -> dict:
    """Tell the platform about a pushed image (see the module docstring); returns the version."""
    url = f"{platform_url.rstrip('/')}/v1/models/{namespace}/{model}/versions"
    body = {"image": image_ref, "digest": digest, "openapi_schema": openapi_schema, "cog_config": cog_config or {}}
    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.HTTPError as e:
        raise RegistryError(f"cannot reach the platform at {platform_url}: {e}") from e
    try:
        payload = response.json()
    except ValueError:
        payload = {"detail": response.text[:300]}
    if response.status_code in (401, 403):
        raise AuthError(f"the platform refused the token for {namespace}/{model} "
                        f"({response.status_code}: {payload.get('detail', '')})")
    if response.status_code >= 400:
        raise RegistryError(f"registering {image_ref} as a version of {namespace}/{model} failed "
                            f"({response.status_code}: {payload.get('detail', payload)})")
    return payload
