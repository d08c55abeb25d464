"""Build a model image with the Docker engine (docker SDK, classic builder).

We lay out the build context ourselves (a tar streamed to the engine), so the
generated files, the project's code and its weights each land where the
generated Dockerfile expects them, and nothing outside the project leaks in.
Host pip settings travel as a build-only file (see dockerfile.py), never as
build args, because the classic builder records build args in `docker history`.
"""
from __future__ import annotations

import configparser
import io
import os
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.utils import kwargs_from_env

import cogkit
from cogkit.build import dockerfile as df
from cogkit.build import secret_steps
from cogkit.config import Config, load_config

Progress = Callable[[str], None]
TAIL_LINES = 30
# Proxy settings are build args the engine keeps out of `docker history` by design.
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY",
              "http_proxy", "https_proxy", "no_proxy", "ftp_proxy", "all_proxy")
HOW_TO_START = ("start one (`sudo systemctl start docker`), or run `bash .ci/docker-services.sh` "
                "and export the DOCKER_HOST it prints")


class BuildError(Exception):
    """The image could not be built; the message says which step failed and why."""


class EngineUnavailable(BuildError):
    """No Docker engine answers at DOCKER_HOST."""


class BaseImageMissing(BuildError):
    """The base image is neither in the engine nor pullable."""


class StepFailed(BuildError):
    def __init__(self, message: str, step: str, tail: list[str]):
        super().__init__(message)
        self.step = step
        self.tail = tail


@dataclass
class BuildResult:
    image: str                       # the tag
    id: str                          # sha256:... of the final image
    base_image: str
    labels: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def connect(base_url: str | None = None, timeout: int = 600) -> docker.APIClient:
    """A client for the engine at base_url or DOCKER_HOST (default socket otherwise)."""
    kwargs = kwargs_from_env()
    if base_url:
        kwargs["base_url"] = base_url
    where = kwargs.get("base_url") or "unix:///var/run/docker.sock"
    try:
        client = docker.APIClient(version="auto", timeout=timeout, **kwargs)
        client.ping()
    except Exception as e:  # the SDK raises DockerException, requests or OS errors alike
        raise EngineUnavailable(f"cannot reach a Docker engine at {where} ({_short_reason(e)}); {HOW_TO_START}") from e
    return client


def _short_reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def default_tag(config: Config) -> str:
    """cog.yaml's image:, else cog-<directory> like Cog."""
    if config.image:
        return config.image
    name = re.sub(r"[^a-z0-9_.-]+", "-", Path(config.project_dir).resolve().name.lower()).strip("-.") or "model"
    return f"cog-{name}"


# --- host pip settings ---------------------------------------------------------

def _pip_config_files() -> list[Path]:
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), home / ".pip" / "pip.conf", xdg / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def host_pip_settings() -> tuple[dict[str, str], Path | None]:
    """The host's index settings (env beats pip.conf, like pip) and its CA bundle.

    URLs and paths only the host can see (file://, find-links) are dropped: the
    build runs in a container that does not have them."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read([str(p) for p in _pip_config_files()])
    settings: dict[str, str] = {}
    for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries", "cert"):
        for section in ("global", "install"):
            if parser.has_option(section, key):
                settings[key] = parser.get(section, key)
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if key == "timeout":
            env = os.environ.get("PIP_DEFAULT_TIMEOUT") or env
        if env:
            settings[key] = env
    for key in ("index-url", "extra-index-url"):
        if key in settings:
            urls = [u for u in settings[key].split() if not u.startswith("file:") and "://" in u]
            settings[key] = " ".join(urls)
            if not urls:
                del settings[key]
    cert = settings.pop("cert", None)
    candidates = [cert, os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                  "/etc/ssl/certs/ca-certificates.crt"]
    ca = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    return settings, ca


def pip_conf(settings: dict[str, str], has_ca: bool) -> str:
    lines = ["[global]"] + [f"{k} = {v}" for k, v in sorted(settings.items())]
    if has_ca:
        lines.append(f"cert = {df.PIP_DIR}/ca.crt")
    return "\n".join(lines) + "\n"


# --- build context ---------------------------------------------------------------

def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner and times don't matter in the image (COPY sets them); fixed values keep the layer cache stable.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(_normalize(info), io.BytesIO(data))


def _sdk_files() -> list[tuple[Path, str]]:
    """(file, path under the sdk folder) for our cogkit/ and cog/ packages."""
    root = Path(cogkit.__file__).resolve().parent.parent
    out = []
    for package in ("cogkit", "cog"):
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.append((path, path.relative_to(root).as_posix()))
    return out


def write_context(config: Config, dockerfile_text: str, files: df.ProjectFiles,
                  settings: dict[str, str], ca: Path | None) -> tempfile.SpooledTemporaryFile:
    """The build context as an uncompressed tar, spooled to disk when large (weights)."""
    L = df.ContextLayout
    out = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add_bytes(tar, L.dockerfile, dockerfile_text.encode())
        _add_bytes(tar, L.pip_conf, pip_conf(settings, ca is not None).encode())
        if ca is not None:
            _add_bytes(tar, L.ca_bundle, ca.read_bytes())
        _add_bytes(tar, L.requirements, df.requirements_text(config).encode())
        for rel in df.local_requirement_files(config):
            tar.add(str(Path(config.project_dir) / rel), f"{L.local_requirements}/{rel}", recursive=False,
                    filter=_normalize)
        for path, rel in _sdk_files():
            tar.add(str(path), f"{L.sdk}/{rel}", recursive=False, filter=_normalize)
        root = Path(config.project_dir)
        for where, rels in ((L.weights, files.weights), (L.src, files.code)):
            for rel in rels:
                tar.add(str(root / rel), f"{where}/{rel}", recursive=False, filter=_normalize)
    out.seek(0)
    return out


# --- the build -------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the engine colours a step's stderr red
_BUILDER_NOISE = re.compile(r"\s*(---> |Removing intermediate container )")


class _Stream:
    """Follows the engine's JSON messages: prints them, remembers the step and its output."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.step = ""
        self.tail: list[str] = []
        self.image_id: str | None = None

    def feed(self, chunk: dict) -> None:
        if "error" in chunk:
            self.fail(chunk.get("errorDetail", {}).get("message") or chunk["error"])
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        text = chunk.get("stream") or chunk.get("status")
        if not text:
            return
        for line in _ANSI.sub("", str(text)).splitlines():
            line = line.rstrip()
            if not line:
                continue
            if re.match(r"Step \d+/\d+ : ", line):
                self.step, self.tail = line, []
            elif not _BUILDER_NOISE.match(line):
                self.tail = [*self.tail[-(TAIL_LINES - 1):], line]
            # Long lines (the schema LABEL) would flood a terminal; the step keeps its full text.
            self.progress(line if len(line) <= 240 else line[:237] + "...")

    def fail(self, error: str) -> None:
        error = error.strip()
        code = re.search(r"returned a non-zero code: (\d+)$", error)
        if code:  # the engine repeats the whole command; the step line already shows it
            error = f"(the command exited with code {code.group(1)})"
        if self.step:
            raise StepFailed(f"the build failed at {self.step}\n" + "".join(f"  | {t}\n" for t in self.tail)
                             + f"{error}", self.step, self.tail)
        raise BuildError(f"the build failed before its first step: {error}")


def ensure_base_image(client: docker.APIClient, image: str, progress: Progress, pull: bool = True) -> None:
    try:
        client.inspect_image(image)
        return  # present: nothing is pulled
    except docker.errors.ImageNotFound:
        pass
    reason = "pulling is disabled"
    if pull:
        progress(f"Pulling base image {image}")
        try:
            for chunk in client.pull(image, stream=True, decode=True):
                if "error" in chunk:
                    raise docker.errors.APIError(chunk["error"])
            client.inspect_image(image)
            return
        except docker.errors.APIError as e:
            reason = _short_reason(Exception(getattr(e, "explanation", None) or str(e)))
    raise BaseImageMissing(
        f"the base image {image} is not in the Docker engine and could not be pulled ({reason}). "
        f"Load or pull it there (`docker pull {image}`); without access to its registry, set "
        f"{df.PREFIX_ENV} to your mirror's prefix (python:3.11-slim becomes PREFIXpython:3.11-slim), "
        f"or run `bash .ci/docker-services.sh`, which builds cogkit-base/python:3.11-slim locally")


def _run_build(client: docker.APIClient, context, tag: str | None, progress: Progress, *,
               no_cache: bool = False, labels: dict[str, str] | None = None) -> str:
    stream = _Stream(progress)
    buildargs = {k: os.environ[k] for k in PROXY_ARGS if os.environ.get(k)}
    try:
        for chunk in client.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                  pull=False, nocache=no_cache, network_mode="host", buildargs=buildargs,
                                  labels=labels, decode=True, timeout=None):
            stream.feed(chunk)
    except docker.errors.APIError as e:
        stream.fail(getattr(e, "explanation", None) or str(e))
    if not stream.image_id:  # older engines only print "Successfully built <short id>"
        stream.image_id = client.inspect_image(tag)["Id"] if tag else None
    if not stream.image_id:
        raise BuildError("the engine finished the build without reporting an image id")
    return stream.image_id


def _read_file(client: docker.APIClient, image: str, path: str) -> str:
    container = client.create_container(image, command=["true"], user="0")
    try:
        chunks, _ = client.get_archive(container["Id"], path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return member.read().decode() if member else ""
    finally:
        client.remove_container(container["Id"], force=True)


def _build_steps(client: docker.APIClient, config: Config, openapi: dict | None, files: df.ProjectFiles,
                 prefix: str | None, no_cache: bool, progress: Progress, secrets: dict[str, bytes]) -> str:
    """The generated Dockerfile, built in pieces around the build.run steps that mount secrets
    (each run by secret_steps in a container, committed, and built FROM); the image's id."""
    settings, ca = host_pip_settings()
    resume: tuple[str, int] | None = None
    for stop in [*df.secret_steps(config), None]:
        text = df.generate(config, openapi, has_weights=bool(files.weights), prefix=prefix, resume=resume,
                           stop_before=stop)
        with write_context(config, text, files, settings, ca) as context:
            image_id = _run_build(client, context, None, progress, no_cache=no_cache)
        if stop is None:
            return image_id
        step = f"build.run[{stop}] (with secret mounts; run by cogkit, not by the builder)"
        progress(f"Step {step}: {config.build.run[stop]}")
        try:
            image_id = secret_steps.run(client, image_id, config.build.run[stop], config.build.run_mounts[stop],
                                        secrets, progress, step)
        except secret_steps.SecretStepFailed as e:
            raise StepFailed(str(e), step, e.tail) from None
        resume = (image_id, stop + 1)
    raise AssertionError("unreachable: the last piece has no stop")


def build(project_dir: str | os.PathLike = ".", tag: str | None = None, *, separate_weights: bool = False,
          weights_threshold: int = df.DEFAULT_WEIGHTS_THRESHOLD, progress: Progress = stderr_progress,
          prefix: str | None = None, client: docker.APIClient | None = None, no_cache: bool = False,
          pull_base: bool = True, openapi: dict | None = None,
          secrets: dict[str, bytes] | None = None) -> BuildResult:
    """Build the project's image and tag it; returns its id and labels. `secrets` (id -> value)
    feed build.run's secret mounts; they reach no layer of the image."""
    from cogkit.schema import build_openapi

    started = time.monotonic()
    config = load_config(project_dir)
    if openapi is None and (config.predict or config.train):
        openapi = build_openapi(config.project_dir, config.predict, config.train)
    tag = tag or default_tag(config)
    client = client or connect()
    base = df.base_image(config, prefix)
    ensure_base_image(client, base, progress, pull=pull_base)

    files = df.select_files(config.project_dir, separate_weights, weights_threshold)
    if separate_weights:
        size = sum((Path(config.project_dir) / w).stat().st_size for w in files.weights)
        progress(f"Weights in their own layer: {len(files.weights)} file(s), {size / 1e6:.1f} MB")
    image_id = _build_steps(client, config, openapi, files, prefix, no_cache, progress, secrets or {})

    # Second pass, no new layer: the pip freeze is only known once deps are installed.
    freeze = _read_file(client, image_id, df.FREEZE_FILE)
    with tempfile.TemporaryFile() as context:
        with tarfile.open(fileobj=context, mode="w") as tar:
            _add_bytes(tar, df.ContextLayout.dockerfile, df.label_dockerfile(image_id).encode())
        context.seek(0)
        image_id = _run_build(client, context, tag, lambda _line: None, labels={df.LABEL_FREEZE: freeze})
    labels = client.inspect_image(image_id)["Config"].get("Labels") or {}
    progress(f"Built {tag} ({image_id[:19]})")
    return BuildResult(tag, image_id, base, labels, time.monotonic() - started)
