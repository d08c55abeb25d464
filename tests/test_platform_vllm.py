"""`engine: vllm` deployments through the store, the API, the CLI and YAML, like Cog deployments:
every field checked by name (in a real store, SQLite and PostgreSQL, and over HTTP), and one made
at runtime by the CLI against a running gateway, run by its controller as real vLLM (the CPU build,
a tiny random Llama made here), called with the openai SDK, changed, deleted, its replica gone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from pg import pg_url, store_url  # noqa: F401 - fixtures
from vllm_support import VLLM_ARGS, VLLM_ENV, tiny_llama, vllm_missing

from tests.gateway_harness import ROOT, GatewayProc
from tests.net import until

DIGEST = "sha256:" + "a" * 64
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
PROMPT = [{"role": "user", "content": "Say something long."}]


@pytest.fixture
def deployments(store_url):  # noqa: F811
    from server.platform.deployments import Deployments
    from server.platform.registry import Registry
    from server.store import Store
    store = Store(store_url)
    yield Registry(store), Deployments(store, Registry(store))
    store.close()


def _engine(**over) -> dict:
    return {"name": "acme/tiny", "engine": "vllm", "model": "/models/tiny", "args": {"max_model_len": 512}, **over}


def test_engine_deployment_fields_are_checked_by_name(deployments) -> None:
    from server.platform.registry import RegistryError
    reg, store = deployments
    reg.register_version("acme", "pushed", "t1", False, {"image": "127.0.0.1:5050/acme/pushed:v1", "digest": DIGEST,
                                                         "openapi_schema": {}, "cog_config": {}})
    for body, field, status in (
            (_engine(engine="tgi"), "engine", 422),
            (_engine(args={"max_model_len": "big"}), "args.max_model_len", 422),
            (_engine(args={"tensor_parallel_size": 0}), "args.tensor_parallel_size", 422),
            (_engine(args={"gpu_memory_utilization": 1.5}), "args.gpu_memory_utilization", 422),
            (_engine(args={"enable_prefix_caching": "yes"}), "args.enable_prefix_caching", 422),
            (_engine(args={"dtype": "float64"}), "args.dtype", 422),
            (_engine(args={"port": 9}), "args.port", 422),
            (_engine(args={"lora_modules": ["a", "b"]}), "args.lora_modules", 422),
            (_engine(args={"tensor_parallel_size": 2}, hardware={"gpus": 1}), "args.tensor_parallel_size", 422),
            (_engine(model="models/tiny"), "model", 422),
            (_engine(model=None), "model", 422),
            (_engine(extra_args="--seed 1"), "extra_args", 422),
            (_engine(extra_args=["--port=9"]), "extra_args", 422),
            (_engine(version="v1"), "version", 422),           # a Cog field: unknown for an engine
            (_engine(max_replicas=0), "max_replicas", 422),
            (_engine(name="tiny"), "name", 422),
            (_engine(name="acme/pushed"), "name", 409)):       # a pushed model's name
        with pytest.raises(RegistryError) as e:
            store.put(body, "t1", True)
        assert str(e.value).startswith(field) and e.value.status == status, (body, str(e.value))
    with pytest.raises(RegistryError) as e:
        store.put(_engine(), "t1", False)
    assert e.value.status == 403 and str(e.value).startswith("engine")   # it names a host path: admins only

    d, created = store.put(_engine(args={**VLLM_ARGS, "my_flag": "x"}, extra_args=["--seed", "3"], min_replicas=1,
                                   env={"A": 1}), "t1", True)
    assert created and d.engine == "vllm" and d.target_concurrency == 8.0 and d.queue_limit == 256
    view = d.public()
    assert view["engine"] == "vllm" and view["model"] == "/models/tiny" and view["args"]["my_flag"] == "x"
    assert store.desired() == []                                           # the Cog side sees none of it
    assert [e.name for e in store.engine_deployments()] == ["acme/tiny"]

    from server.platform.config import PlatformConfig
    from server.platform.vllm_deployments import desired
    as_process = desired(d, PlatformConfig())
    assert as_process.image == "" and as_process.engine == "vllm" and as_process.mounts == ()
    argv = list(as_process.command)
    assert argv[argv.index("--model") + 1] == "/models/tiny" and argv[argv.index("--served-model-name") + 1] == \
        "acme/tiny" and argv[argv.index("--max-model-len") + 1] == "512" and "--enforce-eager" in argv
    assert argv[-2:] == ["--seed", "3"] and argv[argv.index("--my-flag") + 1] == "x"
    in_image = desired(d, PlatformConfig(vllm_image="cogkit-gpu:1", vllm_mounts=["/venv"]))
    assert in_image.image == "cogkit-gpu:1" and in_image.mounts == ("/models/tiny", "/venv")
    assert in_image.command[0] == "python3.11"                             # the image's own python

    with pytest.raises(RegistryError) as e:
        store.patch("acme/tiny", {"args": {"max_model_len": -1}})
    assert str(e.value).startswith("args.max_model_len")
    with pytest.raises(RegistryError) as e:
        store.patch("acme/tiny", {"engine": "cog"})
    assert str(e.value).startswith("engine")
    with pytest.raises(RegistryError) as e:
        store.patch("acme/tiny", {"max_replicas": 2}, admin=False)
    assert e.value.status == 403
    changed = store.patch("acme/tiny", {"args": {**VLLM_ARGS, "max_model_len": 256}, "max_replicas": 2})
    assert changed.engine_spec["extra_args"] == ["--seed", "3"]            # untouched fields stay
    assert desired(changed, PlatformConfig()).spec_hash() != as_process.spec_hash()   # its replicas are replaced
    with pytest.raises(RegistryError) as e:
        store.put({"model": "acme/pushed", "name": "acme/tiny"}, "t1", True)
    assert e.value.status == 409                                           # a Cog deployment cannot take it over

    [from_yaml] = store.load_yaml("deployments:\n  - {engine: vllm, name: acme/yaml, model: /m, args: {seed: 1}}\n",
                                  "t1", True)
    assert from_yaml.engine_spec["args"] == {"seed": 1}
    with pytest.raises(RegistryError) as e:
        store.load_yaml("- {engine: vllm, name: acme/y2, model: /m, args: {seed: -1}}\n", "t1", True)
    assert str(e.value).startswith("deployments[0].args.seed")
    assert store.delete("acme/tiny") and store.engine_deployment("acme/tiny") is None


def test_config_entries_are_seeded_into_the_store(deployments) -> None:
    from server.platform.vllm import VllmDeploymentConfig
    from server.platform.vllm_deployments import body_of
    _, store = deployments
    config = VllmDeploymentConfig(name="acme/seeded", model="/m", args={"dtype": "float32"}, gpus=1,
                                  min_replicas=1, prefix_affinity=False, output_price=2e-6)
    d, _ = store.put(body_of(config), "", True)
    spec = d.engine_spec
    assert (d.min_replicas, d.hardware, spec["prefix_affinity"], spec["output_price"]) == (1, {"gpus": 1}, False, 2e-6)
    again, created = store.put(body_of(config), "", True)                  # every start: replaced, not doubled
    assert not created and again.created_at == d.created_at


def test_sleep_when_idle_turns_on_vllm_sleep_mode_for_the_replicas(deployments) -> None:
    """The deployment's switch reaches the controller (sleep instead of stop), the server's dev
    endpoints (VLLM_SERVER_DEV_MODE) and, on GPU hosts only, --enable-sleep-mode (CPU refuses it)."""
    from server.platform.config import PlatformConfig
    from server.platform.registry import RegistryError
    from server.platform.vllm_deployments import desired
    _, store = deployments
    with pytest.raises(RegistryError) as e:
        store.put(_engine(sleep_when_idle="yes"), "t1", True)
    assert str(e.value).startswith("sleep_when_idle") and e.value.status == 422
    plain, _ = store.put(_engine(), "t1", True)
    off = desired(plain, PlatformConfig())
    assert not off.sleep_when_idle and "VLLM_SERVER_DEV_MODE" not in off.env
    on_cpu = desired(store.patch("acme/tiny", {"sleep_when_idle": True}), PlatformConfig())
    assert on_cpu.sleep_when_idle and on_cpu.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--enable-sleep-mode" not in on_cpu.command
    on_gpu = desired(store.patch("acme/tiny", {"hardware": {"gpus": 1}}), PlatformConfig())
    assert on_gpu.sleep_when_idle and "--enable-sleep-mode" in on_gpu.command
    assert on_gpu.spec_hash() != on_cpu.spec_hash()


def test_engine_deployments_over_http_name_the_bad_field(gateway) -> None:  # noqa: F811
    gw = gateway({"platform": {"controller": False}})
    tenant_key = gw.new_key("t1")
    with gw.http(gw.admin_key) as c:
        bad = c.post("/v1/deployments", json=_engine(args={"tensor_parallel_size": "two"}))
        assert bad.status_code == 422 and bad.json()["detail"].startswith("args.tensor_parallel_size"), bad.text
        bad = c.post("/v1/deployments", json=_engine(engine="triton"))
        assert bad.status_code == 422 and bad.json()["detail"].startswith("engine"), bad.text
        made = c.post("/v1/deployments", json=_engine())
        assert made.status_code == 201 and made.json()["engine"] == "vllm", made.text
        assert c.post("/v1/deployments", json=_engine()).status_code == 409
        assert c.get("/v1/deployments/acme/tiny").json()["args"] == {"max_model_len": 512}
    with gw.http(tenant_key) as c:
        assert c.post("/v1/deployments", json=_engine(name="t1/tiny")).status_code == 403
        # callable by every tenant (public by default); this gateway runs no controller, so: 503
        resp = c.post("/v1/chat/completions", json={"model": "@acme/tiny", "messages": PROMPT, "max_tokens": 2})
        assert resp.status_code == 503 and "controller" in resp.text, resp.text
    with gw.http(gw.admin_key) as c:
        assert c.patch("/v1/deployments/acme/tiny", json={"public": False}).status_code == 200
    with gw.http(tenant_key) as c:      # private now (once the resolver's 1 s cache has passed): not known
        resp = until(lambda: (r := c.post("/v1/chat/completions", json={"model": "@acme/tiny", "messages": PROMPT,
                                                                          "max_tokens": 2})).status_code != 503 and r,
                     10, "the deployment to turn private")
        assert resp.status_code in (400, 404) and "acme/tiny" in resp.text, resp.text


# ---------------------------------------------------------------- real vLLM, made at runtime
def _cli(gw: GatewayProc, key: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COGKIT_API_KEY": key, "COGKIT_GATEWAY_URL": gw.url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "server.platform_cli", "deployments", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _records(process_dir: Path) -> list[dict]:
    out = []
    for path in sorted(process_dir.glob("proc-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_vllm_deployment_made_at_runtime_is_called_then_deleted(tmp_path) -> None:
    missing = vllm_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    model = tiny_llama()
    process_dir = tmp_path / "processes"
    config = {"state_dir": str(tmp_path / "state"),
              "platform": {"interval": 0.3, "instance": f"pv-{uuid.uuid4().hex[:8]}", "process_dir": str(process_dir)}}
    gw = GatewayProc(config, tmp_path, "gw")
    name = f"pv{uuid.uuid4().hex[:6]}/tiny"
    try:
        key = gw.new_key(f"pv{uuid.uuid4().hex[:6]}")
        args = [f"--arg={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in VLLM_ARGS.items()]
        env = [f"--env={k}={v}" for k, v in VLLM_ENV.items()]
        made = _cli(gw, gw.admin_key, "create", str(model), "--engine", "vllm", "--name", name, "--min", "1",
                    *args, *env)
        assert made.returncode == 0 and name in made.stdout, made.stdout + made.stderr
        bad = _cli(gw, gw.admin_key, "create", str(model), "--engine", "vllm", "--name", name + "x",
                   "--arg", "max_model_len=zero")
        assert bad.returncode != 0 and "args.max_model_len" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
        assert "Traceback" not in bad.stderr

        def ready() -> list[dict]:
            return [r for r in _records(process_dir) if _healthy(r["url"])]
        [replica] = until(ready, 600, f"the vLLM replica of {name} to answer /health\n{gw.logs()[-3000:]}")
        assert replica["labels"]["run.cogkit.deployment"] == name

        client = gw.openai(key)
        text, usage = "", None
        for chunk in client.chat.completions.create(model=f"@{name}", messages=PROMPT, max_tokens=16, stream=True,
                                                    stream_options={"include_usage": True}, **GREEDY):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens == 16 and text, (text, usage)
        listed = _cli(gw, gw.admin_key, "list")
        assert name in listed.stdout and "1/1 ready" in listed.stdout, listed.stdout + listed.stderr

        gone = _cli(gw, gw.admin_key, "delete", name)
        assert gone.returncode == 0, gone.stderr
        until(lambda: not _records(process_dir) and not _alive(replica["pid"]), 60,
              f"the replica of {name} to stop once deleted\n{gw.logs()[-2000:]}")
        resp = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": f"@{name}", "messages": PROMPT, "max_tokens": 2}, timeout=30)
        assert 400 <= resp.status_code < 500 and name in resp.text, resp.text
    finally:
        gw.close()
        for record in _records(process_dir):
            try:
                os.killpg(record["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_example_files_declare_a_valid_engine_deployment(deployments) -> None:
    import yaml

    from server.platform.config import PlatformConfig
    from server.platform.vllm_deployments import body_of
    _, store = deployments
    example = ROOT / "examples" / "models" / "vllm-engine"
    [applied] = store.load_yaml((example / "deployment.yaml").read_text(), "", True)
    [entry] = PlatformConfig(**yaml.safe_load((example / "gateway.yaml").read_text())["platform"]).vllm
    seeded, created = store.put(body_of(entry), "", True)
    assert not created and seeded.name == applied.name == "examples/tiny-llama"   # the same deployment, twice
    assert seeded.engine_spec["args"] == applied.engine_spec["args"]
