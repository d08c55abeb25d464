"""`cogkit train|run IMAGE --mount-src`: the project mounted at /src over the image's copy,
as Cog's `cog train`/`cog predict` run an image they built from source, so what the
model writes in its working directory lands in the project, owned by the caller."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = """from cog import BaseModel, Path


class TrainingOutput(BaseModel):
    weights: Path


def train(n: int) -> TrainingOutput:
    with open("weights.bin", "w") as fh:
        fh.write("a" * n)
    return TrainingOutput(weights=Path("weights.bin"))
"""


def _cogkit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900, check=False)


def test_training_writes_into_the_mounted_project(tmp_path: Path) -> None:
    from cogkit.build import builder

    try:
        builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"needs the Docker engine: {e}; here: eval \"$(bash .ci/docker-services.sh --env)\"",
                    pytrace=False)
    project = tmp_path / "project"
    project.mkdir()
    (project / "cog.yaml").write_text('build:\n  python_version: "3.11"\ntrain: "train.py:train"\n')
    (project / "train.py").write_text(TRAIN)
    image = f"cogkit-test-mount-src-{secrets.token_hex(4)}"
    try:
        r = _cogkit(project, "build", "-t", image)
        assert r.returncode == 0, r.stderr[-3000:]

        r = _cogkit(project, "train", image, "-i", "n=5")  # the image as built: its /src is its own
        assert r.returncode == 0, r.stderr[-3000:]
        assert not (project / "weights.bin").exists()

        r = _cogkit(project, "train", image, "--mount-src", "-i", "n=42")
        assert r.returncode == 0, r.stderr[-3000:]
        written = project / "weights.bin"
        assert written.read_text() == "a" * 42
        assert written.stat().st_uid == os.getuid()

        r = _cogkit(project, "train", "--mount-src", "-i", "n=1")
        assert r.returncode != 0 and "--mount-src goes with an image" in r.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
