"""Managed virtual environments for running a project locally: one per
distinct (Python version, requirements), built once and reused while they are
unchanged. The SDK (`cog`, `cogkit`) is made importable through a .pth file
pointing at a copy of just our packages, so nothing else of the host leaks in
and the model's own pins (an old pydantic, say) win."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cogkit.config import Config

Progress = Callable[[str], None]
_PACKAGES = ("cogkit", "cog")


class EnvError(Exception):
    """The environment could not be prepared; says which step and why."""


def cache_root() -> Path:
    return Path(os.environ.get("COGKIT_CACHE_DIR") or Path.home() / ".cache" / "cogkit")


def find_python(version: str) -> str:
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version == current:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found:
        return found
    raise EnvError(f"build.python_version is {version}, but no python{version} is installed here "
                   f"(this machine has {current}); install it, or use `cogkit build` to run in a container")


def env_key(config: Config) -> str:
    text = "\n".join([config.build.python_version, *config.requirements()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sdk_source() -> Path:
    return Path(__file__).resolve().parent.parent


def _sync_sdk(env_dir: Path) -> None:
    """Refresh the copy of our packages when the installed cogkit changed."""
    root = _sdk_source()
    stamp = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            stamp.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    target = env_dir / "cogkit-sdk"
    stamp_file = target / ".stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp.hexdigest():
        return
    shutil.rmtree(target, ignore_errors=True)
    for package in _PACKAGES:
        shutil.copytree(root / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    stamp_file.write_text(stamp.hexdigest())


def _site_packages(env_dir: Path) -> Path:
    python = env_dir / "bin" / "python"
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _run(cmd: list[str], step: str, progress: Progress) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-29:], line]
        progress(line)
    if proc.wait() != 0:
        raise EnvError(f"{step} failed (exit code {proc.returncode}):\n" + "\n".join(tail))


def ensure_env(config: Config, progress: Progress = lambda _line: None) -> str:
    """Path to the Python of the project's environment, built if needed."""
    requirements = config.requirements()
    env_dir = cache_root() / "envs" / env_key(config)
    python = env_dir / "bin" / "python"
    if not (env_dir / ".complete").exists():
        base = find_python(config.build.python_version)
        building = env_dir.with_name(env_dir.name + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        progress(f"Creating a Python {config.build.python_version} environment in {env_dir}")
        # pip is only seeded when there is something to install: a bare venv takes 0.1 s.
        _run([base, "-m", "venv", *([] if requirements else ["--without-pip"]), str(building)],
             "creating the virtual environment", progress)
        if requirements:
            progress(f"Installing {len(requirements)} requirement(s): {', '.join(requirements)}")
            req_file = building / "requirements.txt"
            req_file.write_text("\n".join(requirements) + "\n")
            _run([str(building / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                  "--progress-bar", "off", "-r", str(req_file)], "pip install", progress)
        # venvs hard-code their own path: build in place of the final name once done.
        shutil.rmtree(env_dir, ignore_errors=True)
        building.rename(env_dir)
        _fix_paths(env_dir, building)
        (env_dir / ".complete").write_text("\n".join(requirements))
        progress("Environment ready")
    _sync_sdk(env_dir)
    pth = _site_packages(env_dir) / "cogkit-sdk.pth"
    if not pth.exists():
        pth.write_text(str(env_dir / "cogkit-sdk") + "\n")
    return str(python)


def _fix_paths(env_dir: Path, old: Path) -> None:
    """Rewrite the build path baked into the venv's scripts and pyvenv.cfg."""
    for path in [env_dir / "pyvenv.cfg", *(env_dir / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if str(old) in text:
                path.write_text(text.replace(str(old), str(env_dir)))

