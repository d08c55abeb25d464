"""The `cogkit` command, run as a user runs it: a real process in a real
working directory, on every example."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES
from PIL import Image

COGKIT = [sys.executable, "-m", "cogkit.cli"]


def cogkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*COGKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())


def test_predict_hello_world(tmp_path):
    r = cogkit("predict", "-p", str(EXAMPLES / "hello-world"), "-i", "name=cli", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello cli"
    assert "greeting cli" in r.stderr  # the predictor's logs


def test_predict_image_writes_output_file(tmp_path):
    Image.new("RGB", (40, 20), "green").save(tmp_path / "in.png")
    r = cogkit("predict", "-p", str(EXAMPLES / "image-filter"), "-i", "image=@in.png", "-i", "mode=grayscale",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "output.png").mode == "L"
    r = cogkit("predict", "-p", str(EXAMPLES / "image-filter"), "-i", "image=@in.png", "-o", "chosen.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "chosen.png").exists()


def test_predict_streaming_text(tmp_path):
    r = cogkit("predict", "-p", str(EXAMPLES / "text-stream"), "-i", "prompt=the quick fox", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["the", " quick", " fox"]  # as Cog's CLI shows an iterator's output


def test_predict_function_and_async(tmp_path):
    r = cogkit("predict", "-p", str(EXAMPLES / "function-predictor"), "-i", "numbers=[2, 3]", "-i", "scale=0.5",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 2.5
    r = cogkit("predict", "-p", str(EXAMPLES / "async-concurrent"), "-i", "text=hi", "-i", "delay=0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [">h", "i"]


def test_train_then_predict_with_weights(tmp_path):
    r = cogkit("train", "-p", str(EXAMPLES / "trainer"), "-i", "corpus=red blue red", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # As Cog's CLI: the training's output goes to ./weights, as JSON; a file inside an object stays a data URI.
    out = json.loads((tmp_path / "weights").read_text())
    assert out["vocabulary_size"] == 2 and out["weights"].startswith("data:application/json;base64,")
    counts = base64.b64decode(out["weights"].split(",", 1)[1])
    assert json.loads(counts) == {"red": 2, "blue": 1}
    (tmp_path / "counts.json").write_bytes(counts)
    env = {**os.environ, "COG_WEIGHTS": str(tmp_path / "counts.json")}
    r = subprocess.run([*COGKIT, "predict", "-p", str(EXAMPLES / "trainer"), "-i", "word=red"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def test_bad_inputs_are_clear_errors(tmp_path):
    r = cogkit("predict", "-p", str(EXAMPLES / "text-stream"), "-i", "max_tokens=lots", cwd=tmp_path)
    assert r.returncode == 1
    assert "max_tokens" in r.stderr and "Traceback" not in r.stderr
    r = cogkit("predict", "-p", str(EXAMPLES / "hello-world"), "-i", "nope=1", cwd=tmp_path)
    assert r.returncode == 1 and "nope" in r.stderr
    r = cogkit("predict", "-p", str(EXAMPLES / "image-filter"), "-i", "image=@missing.png", cwd=tmp_path)
    assert r.returncode == 1 and "missing.png" in r.stderr
    r = cogkit("predict", cwd=tmp_path)  # no cog.yaml here
    assert r.returncode == 1 and "cog.yaml" in r.stderr and "Traceback" not in r.stderr


def test_init_then_predict_and_schema(tmp_path):
    r = cogkit("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cog.yaml").exists() and (tmp_path / "run.py").exists()
    before = (tmp_path / "run.py").read_text()
    (tmp_path / "run.py").write_text(before + "# mine\n")
    r = cogkit("init", cwd=tmp_path)
    assert r.returncode == 0 and "Skipped existing" in r.stderr  # never overwrites, as Cog's
    assert (tmp_path / "run.py").read_text() == before + "# mine\n"
    r = cogkit("predict", "-i", "prompt=echo me", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "echo me"
    schema = json.loads(cogkit("schema", cwd=tmp_path).stdout)
    assert schema["components"]["schemas"]["Input"]["required"] == ["prompt"]


def test_environment_is_reused_while_requirements_unchanged(tmp_path):
    from cogkit.config import load_config
    from cogkit.venv import cache_root, env_key

    r = cogkit("predict", "-p", str(EXAMPLES / "image-filter"), "-i", "image=@" + str(_png(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    env_dir = cache_root() / "envs" / env_key(load_config(EXAMPLES / "image-filter"))
    marker = (env_dir / ".complete").stat().st_mtime_ns
    r = cogkit("predict", "-p", str(EXAMPLES / "image-filter"), "-i", "image=@" + str(_png(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0
    assert "Installing" not in r.stderr
    assert (env_dir / ".complete").stat().st_mtime_ns == marker


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)
    return path
