"""Secret mounts in build.run (`mounts: [{type: secret, id, target}]`) on the real engine,
which has only the classic builder: the step sees the secret at its target, and the
secret reaches neither a layer, nor the image's files, nor its history."""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREDICTOR = ("from cog import BasePredictor\n\nclass Predictor(BasePredictor):\n"
             "    def predict(self, n: int) -> int:\n        return n\n")


def _project(tmp_path: Path, digest: str) -> Path:
    """Step 0 checks the secret by its hash (so the command never holds its value), at a
    target whose folders do not exist; step 1 checks that the target is gone again."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "predict.py").write_text(PREDICTOR)
    (project / "cog.yaml").write_text(f"""build:
  python_version: "3.11"
  run:
    - command: >-
        test "$(sha256sum /etc/cogkit-test/deep/token | cut -d' ' -f1)" = "{digest}"
        && cp /etc/hostname /step0-ran
      mounts:
        - type: secret
          id: token
          target: /etc/cogkit-test/deep/token
    - command: test ! -e /etc/cogkit-test && touch /step1-ran
predict: "predict.py:Predictor"
""")
    return project


def _cogkit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def _docker(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], capture_output=True, timeout=300, check=False)


@pytest.fixture
def engine() -> None:
    from cogkit.build import builder

    try:
        builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"needs the Docker engine: {e}; here: eval \"$(bash .ci/docker-services.sh --env)\"",
                    pytrace=False)


def test_a_secret_mount_reaches_the_step_and_no_layer(tmp_path: Path, engine: None) -> None:
    value = f"cogkit-secret-{secrets.token_hex(16)}"
    secret_file = tmp_path / "token.txt"  # outside the project: the project's files are copied into the image
    secret_file.write_text(value)
    project = _project(tmp_path, hashlib.sha256(value.encode()).hexdigest())
    image = f"cogkit-test-secrets-{secrets.token_hex(4)}"
    try:
        r = _cogkit(project, "build", "-t", image, "--secret", f"id=token,src={secret_file}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "with secret mounts" in r.stderr

        history = _docker("history", "--no-trunc", image)
        assert history.returncode == 0 and b"cogkit-secret-step" in history.stdout
        assert value.encode() not in history.stdout

        saved = _docker("save", image)
        assert saved.returncode == 0
        layers = []
        with tarfile.open(fileobj=io.BytesIO(saved.stdout)) as outer:
            for member in outer.getmembers():
                data = outer.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
                assert value.encode() not in data, f"the secret is in {member.name} of `docker save`"
                if member.name.endswith("layer.tar") or member.name.startswith("blobs/"):
                    layers.append(data)
        assert layers

        listing = _docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                          "ls /step0-ran /step1-ran && ! ls -d /etc/cogkit-test /tmp/cogkit-secrets 2>/dev/null")
        assert listing.returncode == 0, listing.stdout + listing.stderr

        r = _cogkit(project, "predict", image, "-i", "n=7")
        assert r.returncode == 0 and r.stdout.strip() == "7", r.stderr[-3000:]
    finally:
        _docker("rmi", "-f", image)


def test_a_wrong_secret_fails_that_step_and_a_missing_one_is_named(tmp_path: Path, engine: None) -> None:
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("not the expected value")
    project = _project(tmp_path, "0" * 64)
    image = f"cogkit-test-secrets-{secrets.token_hex(4)}"
    try:
        r = _cogkit(project, "build", "-t", image, "--secret", f"id=token,src={secret_file}")
        assert r.returncode != 0
        assert "build.run[0]" in r.stderr and "exited with code 1" in r.stderr and "Traceback" not in r.stderr
        assert _docker("image", "inspect", image).returncode != 0

        r = _cogkit(project, "build", "-t", image)
        assert r.returncode != 0
        assert "--secret id=token" in r.stderr and "Traceback" not in r.stderr
    finally:
        _docker("rmi", "-f", image)
