"""The Dockerfile of a model image, generated from cog.yaml.

Layers go from the least to the most often changed, so that editing predict.py
rebuilds only the last layer and a new requirement reinstalls only Python deps:

  base      FROM python:X-slim (or a CUDA image), its Python, the user
  runtime   /opt/cogkit/venv with the server's dependencies: built on `base` alone, so the
            same layer serves every project on that image and Python, whatever its
            environment or system packages
  system    base + cog.yaml's environment and system packages
  pip       build-only: pip.conf + CA bundle from the host (never in the final image)
  deps      /opt/model venv from the requirements file, copied alone first
  final     system + deps + build.run + runtime + the SDK + weights + code + labels

The build context is laid out by the builder (see ContextLayout): project files
under src/, weights under .cogkit/weights/, generated files under .cogkit/.
Index credentials and certificates only reach the `pip` stage; the final stage
copies the finished venvs out of it, so `docker history` and the image's files
never show them. Only the classic builder's features are used (no BuildKit).
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths

from cogkit import __version__
from cogkit.build import cuda as cuda_table
from cogkit.config import Config

PREFIX_ENV = "COGKIT_BASE_IMAGE_PREFIX"
MODEL_VENV = "/opt/model"
RUNTIME_VENV = "/opt/cogkit/venv"
SDK_DIR = "/opt/cogkit/sdk"
SRC_DIR = "/src"
PIP_DIR = "/tmp/cogkit-pip"
FREEZE_FILE = f"{MODEL_VENV}/cogkit-pip-freeze.txt"
USER_ID = 1000  # numeric, so it works whatever name (if any) the base image gives it
PORT = 5000
# The server's own dependencies (pyproject's, less the CLI-only typer and docker).
RUNTIME_REQUIREMENTS = ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2.6", "httpx>=0.27", "pyyaml>=6"]

DEFAULT_WEIGHTS_THRESHOLD = 10 * 1024 * 1024
WEIGHT_DIRS = ("weights", "checkpoints", "ckpt")
# Never sent to the engine: VCS data, caches, local environments.
ALWAYS_IGNORED = [".git", "**/.git", "**/__pycache__", "**/*.pyc", ".cog", ".cogkit", ".venv"]

LABEL_CONFIG = "run.cog.config"
LABEL_SCHEMA = "run.cog.openapi_schema"
LABEL_VERSION = "run.cog.version"
LABEL_FREEZE = "run.cog.pip_freeze"


class ContextLayout:
    """Where the builder puts things in the build context (relative paths)."""
    dockerfile = "Dockerfile"
    pip_dir = ".cogkit/pip"            # pip.conf (+ ca.crt): build-only
    pip_conf = ".cogkit/pip/pip.conf"
    ca_bundle = ".cogkit/pip/ca.crt"
    requirements = ".cogkit/requirements.txt"
    local_requirements = ".cogkit/local"  # project files named in the requirements (sdists, wheels)
    sdk = ".cogkit/sdk"                # copies of the cogkit/ and cog/ packages
    weights = ".cogkit/weights"        # large files, mirrored at their paths under /src
    src = "src"


@dataclass
class ProjectFiles:
    """The project's files (relative paths) split into code and weights."""
    code: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)


def base_image_prefix(prefix: str | None = None) -> str:
    """The mirror prefix put before every base image name, e.g. "registry.local/hub/"."""
    return os.environ.get(PREFIX_ENV, "") if prefix is None else prefix


def base_image(config: Config, prefix: str | None = None) -> str:
    """python:{version}-slim for CPU models, the CUDA image for GPU ones; behind the prefix."""
    if config.build.gpu:
        name = cuda_table.choose(config.requirements(), config.build.cuda).image
    else:
        name = f"python:{config.build.python_version}-slim"
    return base_image_prefix(prefix) + name


def requirements_text(config: Config) -> str:
    """The requirements file the deps stage installs from (cog.yaml's, plus the torch index for GPU)."""
    reqs = config.requirements()
    lines = []
    if config.build.gpu and reqs:
        index = cuda_table.choose(reqs, config.build.cuda).torch_index
        if index:
            lines.append(f"--extra-index-url {index}")
    return "\n".join(lines + reqs) + ("\n" if lines or reqs else "")


def local_requirement_files(config: Config) -> list[str]:
    """Requirement lines that are files of the project (./dist/pkg.tar.gz, a wheel): they go
    into the deps stage with the same relative paths, so the lines resolve there as here."""
    root = Path(config.project_dir).resolve()
    found = []
    for line in config.requirements():
        candidate = line.strip()
        if not candidate or candidate.startswith("-") or "://" in candidate:
            continue
        path = (root / candidate).resolve()
        if path.is_file() and path.is_relative_to(root):
            found.append(path.relative_to(root).as_posix())
    return found


def select_files(project_dir: str | os.PathLike, separate_weights: bool = False,
                 threshold: int = DEFAULT_WEIGHTS_THRESHOLD) -> ProjectFiles:
    """The files that go into the image, honouring .dockerignore; with
    separate_weights, files of at least `threshold` bytes (other than .py) and
    everything under a top-level weights/ or checkpoints/ folder are weights."""
    root = Path(project_dir)
    patterns = list(ALWAYS_IGNORED)
    ignore_file = root / ".dockerignore"
    if ignore_file.is_file():
        patterns += [line.strip() for line in ignore_file.read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
    out = ProjectFiles()
    for rel in sorted(exclude_paths(str(root), patterns, dockerfile=".dockerignore")):
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            continue
        rel = rel.replace(os.sep, "/")
        if separate_weights and _is_weight(rel, path, threshold):
            out.weights.append(rel)
        else:
            out.code.append(rel)
    return out


def _is_weight(rel: str, path: Path, threshold: int) -> bool:
    if rel.split("/", 1)[0] in WEIGHT_DIRS and "/" in rel:
        return True
    return not rel.endswith(".py") and not path.is_symlink() and path.stat().st_size >= threshold


def quote_label(value: str) -> str:
    """A Dockerfile double-quoted word: the builder unescapes \\\\, \\" and \\$ and expands $VARS."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def labels(config: Config, openapi: dict | None, version: str = __version__) -> dict[str, str]:
    out = {LABEL_CONFIG: json.dumps(config.raw, separators=(",", ":"), sort_keys=True, default=str),
           LABEL_VERSION: version}
    if openapi is not None:
        out[LABEL_SCHEMA] = json.dumps(openapi, separators=(",", ":"), sort_keys=True)
    return out


def run_command(port: int = PORT) -> list[str]:
    """The image's CMD; pass another port to run it with --network host."""
    return [f"{RUNTIME_VENV}/bin/python", "-m", "cogkit.runtime", "--project", SRC_DIR,
            "--python", f"{MODEL_VENV}/bin/python", "--host", "0.0.0.0", "--port", str(port)]


def _apt(packages: Iterable[str]) -> str:
    names = " ".join(shlex.quote(p) for p in packages)
    # --no-install-recommends and dropped lists keep the layer small; noninteractive avoids tzdata prompts.
    return ("RUN apt-get update -qq \\\n"
            f" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {names} \\\n"
            " && apt-get clean && rm -rf /var/lib/apt/lists/*")


def _gpu_python(version: str) -> str:
    """CUDA images (Ubuntu 22.04) have no Python: 3.10 comes from Ubuntu, others from deadsnakes."""
    packages = f"python{version} python{version}-venv ca-certificates"
    if version == "3.10":
        return _apt(packages.split())
    return ("RUN apt-get update -qq \\\n"
            " && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
            " software-properties-common gpg-agent \\\n"
            " && add-apt-repository -y ppa:deadsnakes/ppa \\\n"
            f" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages} \\\n"
            " && apt-get purge -y -qq --auto-remove software-properties-common gpg-agent \\\n"
            " && apt-get clean && rm -rf /var/lib/apt/lists/*")


def secret_steps(config: Config) -> list[int]:
    """The build.run steps that mount secrets."""
    return [i for i, mounts in enumerate(config.build.run_mounts) if mounts]


def shell_argv(command: str) -> list[str]:
    """How a build.run command runs, as _run_step has the shell run it: one line with `sh -c`,
    a multi-line script with `sh -e` (each line a command, stopping at the first failure)."""
    return ["sh", "-e", "-c", command] if len(command.strip().splitlines()) > 1 else ["sh", "-c", command.strip()]


def _run_step(command: str, mounts: list[dict] | None = None) -> str:
    """A build.run command; a multi-line script (YAML `|`) is fed to sh line by line, since a
    Dockerfile line cannot hold newlines and joining them would change what the shell runs.
    Secret mounts are written as BuildKit's RUN --mount=type=secret (for --debug only: the
    builder runs those steps itself)."""
    prefix = "RUN " + "".join(f"--mount=type=secret,id={m['id']},target={m['target']} " for m in mounts or [])
    lines = command.strip().splitlines()
    if len(lines) <= 1:
        return f"{prefix}{command.strip()}"
    return f"{prefix}printf '%s\\n' " + " ".join(shlex.quote(line) for line in lines) + " | sh -e"


def _pip_settings() -> list[str]:
    return [f"COPY {ContextLayout.pip_dir}/ {PIP_DIR}/",
            f"ENV PIP_CONFIG_FILE={PIP_DIR}/pip.conf PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
            "PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1"]


def _site_packages(venv: str) -> str:
    return f"\"$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')\""


def generate(config: Config, openapi: dict | None = None, *, has_requirements: bool | None = None,
             has_weights: bool = False, prefix: str | None = None, version: str = __version__,
             resume: tuple[str, int] | None = None, stop_before: int | None = None) -> str:
    """The Dockerfile text. `has_requirements` defaults to whether cog.yaml lists any.

    For build.run steps with secret mounts (run by the builder in a container, since the
    classic builder has no RUN --mount; see secret_steps.py): `stop_before=k` ends the final
    stage just before run step k, and `resume=(image, k)` starts it FROM that image (the
    committed result of step k-1) at run step k. Without either, a secret step is written
    in BuildKit's notation, as `--debug` shows it."""
    b = config.build
    py = f"python{b.python_version}"
    if has_requirements is None:
        has_requirements = bool(config.requirements())
    L = ContextLayout
    out = [f"# Generated by cogkit {version} from cog.yaml; for the classic Docker builder.",
           f"FROM {base_image(config, prefix)} AS base",
           "ENV PYTHONUNBUFFERED=1 LANG=C.UTF-8"]
    if b.gpu:
        out.append(_gpu_python(b.python_version))
    out.append(f"RUN (getent passwd {USER_ID} >/dev/null || useradd --uid {USER_ID} --user-group --create-home "
               f"--shell /bin/sh cog) && mkdir -p {SRC_DIR} && chown {USER_ID}:{USER_ID} {SRC_DIR}")

    runtime_reqs = " ".join(shlex.quote(r) for r in RUNTIME_REQUIREMENTS)
    out += ["", "# Build-only: the host's pip index settings and CA bundle (here and in the pip stage).",
            "# Nothing of them reaches the final image, only the venvs copied out of these stages.",
            "FROM base AS runtime", *_pip_settings(),
            f"RUN {py} -m venv {RUNTIME_VENV} \\\n"
            f" && {RUNTIME_VENV}/bin/pip install --progress-bar off {runtime_reqs} \\\n"
            f" && echo {SDK_DIR} > {_site_packages(RUNTIME_VENV)}/cogkit.pth"]

    out += ["", "FROM base AS system"]
    if config.environment:
        # cog.yaml's environment applies to the build steps and at run time, as in Cog.
        out.append("ENV " + " ".join(f"{k}={quote_label(v)}" for k, v in config.environment.items()))
    if b.system_packages:
        out.append(_apt(b.system_packages))

    out += ["", "FROM system AS pip", *_pip_settings()]

    deps = [f"{py} -m venv {MODEL_VENV}"]
    local_files = local_requirement_files(config)
    if has_requirements:
        # Local artifacts sit under local/ with their project paths, and pip runs from there.
        in_dir = f"cd {PIP_DIR}/local && " if local_files else ""
        deps.append(f"{in_dir}{MODEL_VENV}/bin/pip install --progress-bar off -r {PIP_DIR}/requirements.txt")
    deps += [f"echo {SDK_DIR} > {_site_packages(MODEL_VENV)}/cogkit-sdk.pth",
             f"{MODEL_VENV}/bin/python -m pip freeze > {FREEZE_FILE}"]
    out += ["", "FROM pip AS deps",
            f"COPY {L.requirements} {PIP_DIR}/requirements.txt",
            *([f"COPY {L.local_requirements}/ {PIP_DIR}/local/"] if local_files else []),
            "RUN " + " \\\n && ".join(deps)]

    if resume is None:
        out += ["", "FROM system", f"COPY --from=deps {MODEL_VENV} {MODEL_VENV}"]
    else:
        out += ["", f"FROM {resume[0]}"]
    steps = list(zip(b.run, b.run_mounts or [[]] * len(b.run)))
    out += [_run_step(cmd, mounts) for cmd, mounts in steps[resume[1] if resume else 0:stop_before]]
    if stop_before is not None:
        return "\n".join(out) + "\n"
    out += [f"COPY --from=runtime {RUNTIME_VENV} {RUNTIME_VENV}",
            f"COPY {L.sdk}/ {SDK_DIR}/"]
    if has_weights:
        out.append(f"COPY --chown={USER_ID}:{USER_ID} {L.weights}/ {SRC_DIR}/")
    out += [f"COPY --chown={USER_ID}:{USER_ID} {L.src}/ {SRC_DIR}/",
            f"WORKDIR {SRC_DIR}",
            f"EXPOSE {PORT}",
            f"USER {USER_ID}:{USER_ID}"]
    out += [f"LABEL {k}={quote_label(v)}" for k, v in labels(config, openapi, version).items()]
    out.append("CMD " + json.dumps(run_command()))
    return "\n".join(out) + "\n"


def label_dockerfile(image: str) -> str:
    """The second pass that adds labels only known after the build (pip freeze): no new layer."""
    return f"FROM {image}\n"
