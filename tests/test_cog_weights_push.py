"""`cogkit push` in model mode (Cog's bundle push), against the real Docker engine and
registry of .ci/docker-services.sh: `weights import`, then `push`, then the index read back
from the registry over HTTP, each descriptor's digest resolving to the manifest it names,
and the image pulled by digest and run with its weights mounted. Plus the errors that
come before any build, and the model ref's resolution from cog.yaml and COG_MODEL*."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import docker.errors
import httpx
import pytest

from cogkit import weights
from cogkit.build import bundle, container

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
COGKIT = [sys.executable, "-m", "cogkit.cli"]
ACCEPT = ", ".join(("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"))
PREDICT = '''from pathlib import Path

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, text: str) -> str:
        alpha = Path("/srv/weights-alpha/data.bin").read_text()
        beta = Path("/srv/weights-beta/sub/b.txt").read_text()
        return f"{text}: {alpha} {beta}"
'''


def _project(root: Path, name: str) -> Path:
    """Targets outside /src: the weights reach a run only by being mounted, not in the image's copy of the project."""
    project = root / name
    (project / "weights-alpha").mkdir(parents=True)
    (project / "weights-beta" / "sub").mkdir(parents=True)
    (project / "weights-alpha" / "data.bin").write_text("AAAA")
    (project / "weights-beta" / "sub" / "b.txt").write_text("BBBB")
    (project / "weights-beta" / "c.json").write_text("{}")
    (project / "predict.py").write_text(PREDICT)
    (project / "cog.yaml").write_text(
        'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\nmodel: cogkit-test/unused\n'
        "weights:\n"
        "  - name: alpha\n    target: /srv/weights-alpha\n    source:\n      uri: file://./weights-alpha\n"
        "  - name: beta\n    target: /srv/weights-beta\n    source:\n      uri: file://./weights-beta\n")
    return project


def _cogkit(project: Path, env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*COGKIT, *args], cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


def _get(repository: str, reference: str, what: str = "manifests") -> httpx.Response:
    host, _, repo = repository.partition("/")
    response = httpx.get(f"http://{host}/v2/{repo}/{what}/{reference}", headers={"Accept": ACCEPT}, timeout=30)
    assert response.status_code == 200, (reference, response.status_code, response.text[:300])
    return response


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_push_publishes_one_index_of_the_image_and_its_weights(engine, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    project = _project(tmp_path, f"bundle-{run}")
    repository = f"{REGISTRY}/cogkit-test/bundle-{run}"
    env = {"COG_MODEL": f"{repository}:v1", "COGKIT_CACHE_DIR": str(tmp_path / "cache")}

    imported = _cogkit(project, env, "weights", "import")
    assert imported.returncode == 0, imported.stderr
    pushed = _cogkit(project, env, "push")
    assert pushed.returncode == 0, pushed.stderr
    local_image = f"cog-bundle-{run}"
    by_digest = ""
    try:
        assert f"Pushing to {repository}:v1..." in pushed.stderr
        tree = dict(re.findall(r"^  (?:[├└]─ )?(model|image|weight  alpha|weight  beta)\s+(\S+@sha256:[0-9a-f]{64})$",
                               pushed.stderr, re.MULTILINE))
        assert set(tree) == {"model", "image", "weight  alpha", "weight  beta"}, pushed.stderr
        assert pushed.stdout.strip() == tree["model"]

        # The tag names the index; its bytes hash to the digest the push printed.
        index_response = _get(repository, "v1")
        assert index_response.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
        assert f"{repository}@{_sha256(index_response.content)}" == tree["model"]
        index = index_response.json()
        image, *weight_entries = index["manifests"]
        assert f"{repository}@{image['digest']}" == tree["image"]
        assert image["platform"] == {"os": "linux", "architecture": "amd64"}

        lock = {e["name"]: e for e in json.loads((project / "weights.lock").read_text())["weights"]}
        assert [e["annotations"]["run.cog.weight.name"] for e in weight_entries] == ["alpha", "beta"]
        for entry in weight_entries:
            name = entry["annotations"]["run.cog.weight.name"]
            assert f"{repository}@{entry['digest']}" == tree[f"weight  {name}"]
            assert entry["artifactType"] == "application/vnd.cog.weight.v1"
            assert entry["platform"] == {"os": "unknown", "architecture": "unknown"}
            # Each descriptor resolves to the weight manifest it names, byte for byte.
            manifest_response = _get(repository, entry["digest"])
            assert _sha256(manifest_response.content) == entry["digest"]
            assert len(manifest_response.content) == entry["size"]
            manifest = manifest_response.json()
            assert manifest["artifactType"] == "application/vnd.cog.weight.v1"
            assert manifest["annotations"]["run.cog.weight.name"] == name
            assert manifest["annotations"]["run.cog.weight.target"] == f"/srv/weights-{name}"
            # The set digest is sha256sum's listing of the files, recomputed here from the source directory.
            source = project / f"weights-{name}"
            listing = sorted(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(source)}"
                             for p in source.rglob("*") if p.is_file())
            expected = _sha256("\n".join(listing).encode())
            assert manifest["annotations"]["run.cog.weight.set-digest"] == expected
            assert entry["annotations"]["run.cog.weight.set-digest"] == expected == lock[name]["setDigest"]
            assert entry["annotations"]["run.cog.weight.size.uncompressed"] == str(
                sum(p.stat().st_size for p in source.rglob("*") if p.is_file()))
            config = _get(repository, manifest["config"]["digest"], "blobs").json()
            assert sorted(f["path"] for f in config["files"]) == sorted(
                str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
            for layer in manifest["layers"]:
                assert _sha256(_get(repository, layer["digest"], "blobs").content) == layer["digest"]

        # The image entry is the image: gone from the engine, it comes back by digest and runs.
        image_manifest = _get(repository, image["digest"])
        assert _sha256(image_manifest.content) == image["digest"]
        image_id = engine.inspect_image(local_image)["Id"]
        engine.remove_image(local_image)
        with pytest.raises(docker.errors.ImageNotFound):
            engine.inspect_image(image_id)
        by_digest = tree["image"]
        assert container.pull(by_digest, client=engine) == image_id
        predicted = _cogkit(project, env, "predict", by_digest, "-i", "text=hi")
        assert predicted.returncode == 0, predicted.stderr
        assert "hi: AAAA BBBB" in predicted.stdout
    finally:
        for ref in (local_image, by_digest):
            if ref:
                try:
                    engine.remove_image(ref)
                except docker.errors.APIError:
                    pass


def test_push_without_weights_lock_says_to_import_before_building(tmp_path: Path) -> None:
    project = _project(tmp_path, "no-lock")
    result = _cogkit(project, {"COG_MODEL": f"{REGISTRY}/cogkit-test/no-lock:v1"}, "push", timeout=120)
    assert result.returncode == 1
    assert "weights.lock" in result.stderr and "cogkit weights import" in result.stderr
    assert "Traceback" not in result.stderr and "Building" not in result.stderr


def test_push_with_a_weight_missing_from_the_registry_fails_before_building(tmp_path: Path) -> None:
    project = _project(tmp_path, "missing-weight")
    missing = "sha256:" + "0" * 64
    (project / "weights.lock").write_text(json.dumps({"version": 1, "weights": [
        {"name": n, "target": f"/src/weights-{n}", "files": [], "digest": missing, "setDigest": missing}
        for n in ("alpha", "beta")]}))
    result = _cogkit(project, {"COG_MODEL": f"{REGISTRY}/cogkit-test/missing-{uuid.uuid4().hex[:8]}:v1"}, "push",
                     timeout=120)
    assert result.returncode == 1
    assert "weight 'alpha' is not in" in result.stderr and "cogkit weights import" in result.stderr
    assert "Traceback" not in result.stderr and "Building" not in result.stderr


def test_push_rejects_a_positional_ref_in_model_mode(tmp_path: Path) -> None:
    project = _project(tmp_path, "positional")
    result = _cogkit(project, {"COG_MODEL": f"{REGISTRY}/cogkit-test/positional:v1"}, "push",
                     f"{REGISTRY}/other/model:v1", timeout=120)
    assert result.returncode == 1
    assert "positional image argument not supported with 'model' config" in result.stderr
    assert "COG_MODEL_TAG" in result.stderr


def test_model_ref_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COG_MODEL", "COG_MODEL_REGISTRY", "COG_MODEL_REPO", "COG_MODEL_TAG"):
        monkeypatch.delenv(var, raising=False)
    assert weights.model_ref({}) is None
    with pytest.raises(weights.WeightsError, match="COG_MODEL_REGISTRY"):
        weights.model_ref({"model": "ns/name"})
    monkeypatch.setenv("COG_MODEL_REGISTRY", "r.example.com")
    ref = weights.model_ref({"model": "ns/name"})
    assert ref is not None and (ref.host, ref.repo) == ("r.example.com", "ns/name")
    assert re.fullmatch(r"\d{8}T\d{6}Z", ref.tag), ref.tag  # no tag given: a UTC timestamp, as Cog's
    monkeypatch.setenv("COG_MODEL_TAG", "cog-image.v1")
    with pytest.raises(weights.WeightsError, match="cog- prefix"):
        weights.model_ref({"model": "ns/name"})
    monkeypatch.setenv("COG_MODEL_TAG", "v2")
    monkeypatch.setenv("COG_MODEL_REPO", "other/repo")
    assert str(weights.model_ref({"model": "ns/name"})) == "r.example.com/other/repo:v2"
    monkeypatch.setenv("COG_MODEL", "localhost:5050/a/b:v3")  # wins over all the others
    assert str(weights.model_ref({"model": "ns/name"})) == "localhost:5050/a/b:v3"
    monkeypatch.setenv("COG_MODEL", "a/b:v3")
    with pytest.raises(weights.WeightsError, match="REGISTRY/REPOSITORY"):
        weights.model_ref({})
    monkeypatch.setenv("COG_MODEL", "localhost:5050/Upper/b:v3")
    with pytest.raises(weights.WeightsError, match="lowercase"):
        weights.model_ref({})


def test_ref_tree_lines_up_as_cogs() -> None:
    tree = bundle.ref_tree(bundle.PushedBundle("h/m@sha256:i", "h/m@sha256:a",
                                               [("alpha", "h/m@sha256:w1"), ("be", "h/m@sha256:w2")]))
    assert tree.splitlines() == ["  model   h/m@sha256:i",
                                 "  ├─ image   h/m@sha256:a",
                                 "  ├─ weight  alpha  h/m@sha256:w1",
                                 "  └─ weight  be     h/m@sha256:w2"]
