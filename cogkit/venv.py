"""Managed virtual environments for running a project locally: one per
distinct (Python version, requirements), built once and reused while they are
unchanged. The SDK (`cog`, `cogkit`) is made importable through a .pth file
pointing at a copy of just our packages, so nothing else of the host leaks in
and the model's own pins (an old pydantic, say) win."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cogkit.config import Config

Progress = Callable[[str], None]
_PACKAGES = ("cogkit", "cog")
SDK_COPY_MAX_AGE_S = 24 * 3600  # an SDK copy older than this is no longer imported from


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


def _sync_sdk(env_dir: Path) -> Path:
    """A copy of our packages for this environment, refreshed when the installed
    cogkit changed. Each version lives in its own directory, built aside and
    renamed into place: a process still importing from an older copy is never
    pulled out from under (old copies go only once they are a day old)."""
    root = _sdk_source()
    stamp = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            stamp.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    target = env_dir / f"cogkit-sdk-{stamp.hexdigest()[:16]}"
    if target.exists():
        return target
    building = Path(tempfile.mkdtemp(prefix=".sdk-building-", dir=env_dir))
    for package in _PACKAGES:
        shutil.copytree(root / package, building / package, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        building.rename(target)
    except OSError:  # another process put the same copy in place first
        shutil.rmtree(building, ignore_errors=True)
    for old in env_dir.glob("cogkit-sdk-*"):
        if old != target and time.time() - old.stat().st_mtime > SDK_COPY_MAX_AGE_S:
            shutil.rmtree(old, ignore_errors=True)
    return target


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
    """Path to the Python of the project's environment, built if needed.

    Safe with several `cogkit` processes at once: one builds while the others
    wait on a file lock; an environment is built under a temporary name and
    renamed into place only once complete, and one in place is never deleted."""
    env_dir = cache_root() / "envs" / env_key(config)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (env_dir / ".complete").exists():
        with open(env_dir.with_name(env_dir.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if not (env_dir / ".complete").exists():
                _build_env(config, env_dir, progress)
    sdk = _sync_sdk(env_dir)
    pth = _site_packages(env_dir) / "cogkit-sdk.pth"
    if not pth.exists() or pth.read_text().strip() != str(sdk):
        tmp = pth.with_name(f".cogkit-sdk.pth.{os.getpid()}")
        tmp.write_text(str(sdk) + "\n")
        os.replace(tmp, pth)  # atomic: a starting interpreter reads the old or the new, never half
    return str(env_dir / "bin" / "python")


def _build_env(config: Config, env_dir: Path, progress: Progress) -> None:
    """Build in a temporary directory, then rename it to env_dir (called under the lock)."""
    requirements = config.requirements()
    base = find_python(config.build.python_version)
    if env_dir.exists():  # left incomplete by an older cogkit or a crash: nobody can be using it
        stale = env_dir.with_name(f"{env_dir.name}.stale-{os.getpid()}")
        env_dir.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    building = env_dir.with_name(env_dir.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    progress(f"Creating a Python {config.build.python_version} environment in {env_dir}")
    # pip is only seeded when there is something to install: a bare venv takes 0.1 s.
    _run([base, "-m", "venv", *([] if requirements else ["--without-pip"]), str(building)],
         "creating the virtual environment", progress)
    try:
        if requirements:
            progress(f"Installing {len(requirements)} requirement(s): {', '.join(requirements)}")
            req_file = building / "requirements.txt"
            req_file.write_text("\n".join(requirements) + "\n")
            _run([str(building / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                  "--progress-bar", "off", "-r", str(req_file)], "pip install", progress)
        # venvs hard-code their own path: point it at the final name, then move there in one step.
        _fix_paths(building, building, env_dir)
        (building / ".complete").write_text("\n".join(requirements))
        building.rename(env_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    progress("Environment ready")


def _fix_paths(env_dir: Path, old: Path, new: Path) -> None:
    """Rewrite the build path baked into the venv's scripts and pyvenv.cfg."""
    for path in [env_dir / "pyvenv.cfg", *(env_dir / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if str(old) in text:
                path.write_text(text.replace(str(old), str(new)))

