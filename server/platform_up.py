"""`cogkit up`: the whole platform in one process on the embedded default (gateway + registry API +
controller, SQLite under $COGKIT_HOME, the local Docker engine and OCI registry, a simulated GPU
inventory where NVML sees no GPU), then the example models built, pushed and deployed with
progress bars, a first call to each (its cold start), and how to call them.

Ctrl-C stops it cleanly: the replicas are stopped and removed. A second `cogkit up` finds the
same store: versions already pushed are the same versions, deployments are replaced in place,
replicas a killed run left are adopted.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import typer

EXAMPLES = ("hello-world", "text-stream", "async-concurrent", "image-filter")
SIMULATED_INVENTORY = """\
# A simulated node for `cogkit up` on a machine without NVIDIA GPUs (NVML finds none).
nodes:
  - name: local
    cpus: {cpus}
    memory: 16GiB
    gpus: {{count: 1, name: Simulated GPU, memory: 24GiB, compute_capability: "8.0"}}
"""

EXAMPLES_OPT = typer.Option(None, "--examples-dir", help="Directory of example models (default: examples/models here)")
CONFIG_OPT = typer.Option(None, "--config", "-c", help="A gateway config to start from")


def up(
    port: int = typer.Option(8080, "--port", help="Port of the gateway on 127.0.0.1"),
    registry: str = typer.Option("127.0.0.1:5050", "--registry", help="The OCI registry images are pushed to"),
    examples: Path | None = EXAMPLES_OPT,
    deploy_examples: bool = typer.Option(True, "--examples/--no-examples", help="Build and deploy the examples"),
    config: Path | None = CONFIG_OPT,
    namespace: str = typer.Option("examples", "--namespace", help="Namespace of the example models"),
) -> None:
    """Start the platform here, deploy the example models, print how to call them. Ctrl-C stops it."""
    import uvicorn

    from server.app import create_app
    from server.config import ConfigError, load_config
    from server.gateway_cli import tune_gc_for_serving
    from server.store import cogkit_home

    home = cogkit_home()
    home.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if cfg.platform is None:
        from server.platform.config import PlatformConfig
        cfg.platform = PlatformConfig(inventory=_inventory_file(home))
    app = create_app(cfg)
    key = _admin_key(app.state.gateway, home)
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=cfg.logging.access_log, timeout_graceful_shutdown=10))
    typer.echo(f"cogkit platform on {url} (store {app.state.gateway.store!r}); Ctrl-C stops it")
    if deploy_examples:
        root = examples or Path(__file__).resolve().parent.parent / "examples" / "models"
        worker = threading.Thread(target=_deploy_all, args=(server, url, key, registry, root, namespace),
                                  daemon=True)
        worker.start()
    tune_gc_for_serving()
    try:
        server.run()
    except KeyboardInterrupt:
        pass     # uvicorn re-raises the Ctrl-C it handled, after the clean shutdown
    typer.echo("Stopped; the replicas were stopped and removed.")


def _inventory_file(home: Path) -> str | None:
    """None when NVML sees a GPU (the real inventory); else a simulated one, written once."""
    from scheduler.telemetry.nvml import nvml_available
    if nvml_available():
        return None
    path = home / "inventory.yaml"
    if not path.exists():
        path.write_text(SIMULATED_INVENTORY.format(cpus=os.cpu_count() or 1))
    return str(path)


def _admin_key(gateway: Any, home: Path) -> str:
    """The admin key `up` prints each time: made on first start and kept (mode 600) in $COGKIT_HOME."""
    path = home / "admin-key"
    key: str | None = gateway.auth.first_start_admin_key()
    if key is None and path.exists():
        return path.read_text().strip()
    if key is None:   # the store was made by `cogkit gateway`, whose key was shown once: make one for `up`
        from server.auth import DEFAULT_TENANT
        if gateway.auth.get_tenant(DEFAULT_TENANT) is None:
            gateway.auth.create_tenant(DEFAULT_TENANT)
        key = str(gateway.auth.create_key(DEFAULT_TENANT, name="cogkit up", admin=True)[1])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _deploy_all(server: Any, url: str, key: str, registry: str, root: Path, ns: str) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not _wait_started(server):
        return
    names = [n for n in EXAMPLES if (root / n / "cog.yaml").is_file()]
    deployed: list[str] = []
    with Progress(SpinnerColumn(), TextColumn("{task.fields[model]:18}"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), transient=False) as progress:
        for name in names:
            task = progress.add_task("build", model=name, total=None)
            ref = f"{registry}/{ns}/{name}:latest"
            steps = ((["build", "-t", ref, "--project", str(root / name)], "build"),
                     (["push", ref, "--platform", url, "--token", key], "push"))
            if all(_step(progress, task, args, what) for args, what in steps):
                try:
                    httpx.put(f"{url}/v1/deployments/{ns}/{name}", timeout=30,
                              headers={"authorization": f"Bearer {key}"},
                              json={"model": f"{ns}/{name}", "min_replicas": 0, "max_replicas": 2,
                                    "idle_timeout": 600}).raise_for_status()
                except httpx.HTTPError as e:
                    progress.update(task, description=f"[red]deploy failed: {e}")
                    continue
                progress.update(task, description="cold start: starting a replica")
                deployed.append(name)
                _first_call(progress, task, url, key, f"{ns}/{name}")
            progress.update(task, total=1, completed=1)
    _print_usage(url, key, [f"{ns}/{n}" for n in deployed])


def _wait_started(server: Any) -> bool:
    import time
    while not server.started:
        if server.should_exit:
            return False
        time.sleep(0.1)
    return True


def _step(progress: Any, task: Any, args: list[str], what: str) -> bool:
    """One `cogkit` command, its output lines shown as the task's description."""
    proc = subprocess.Popen([sys.executable, "-m", "cogkit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            last = line.strip()
            progress.update(task, description=f"{what}: {last[:80]}")
    if proc.wait() != 0:
        progress.update(task, description=f"[red]{what} failed: {last[:100]}")
        return False
    return True


def _first_call(progress: Any, task: Any, url: str, key: str, name: str) -> None:
    schema = httpx.get(f"{url}/v1/models/{name}", headers={"authorization": f"Bearer {key}"},
                       timeout=30).json().get("input_schema") or {}
    required = schema.get("required") or []
    if required:   # inputs we cannot make up: the replica starts on the first real call instead
        progress.update(task, description="deployed (scales from zero on the first call)")
        return
    try:
        resp = httpx.post(f"{url}/ai/run/@{name}", json={}, timeout=600,
                          headers={"authorization": f"Bearer {key}"})
    except httpx.HTTPError as e:
        progress.update(task, description=f"[red]first call failed: {type(e).__name__}")
        return
    cold = resp.headers.get("x-cogkit-cold-start-ms")
    outcome = f"ready, cold start {float(cold) / 1000:.1f}s" if cold else "ready"
    progress.update(task, description=outcome if resp.status_code == 200 else f"[red]{resp.status_code}: {resp.text[:80]}")


def _print_usage(url: str, key: str, deployed: list[str]) -> None:
    model = f"@{deployed[0]}" if deployed else "@examples/hello-world"
    typer.echo(f"""
The platform is up. Admin key: {key}

  curl {url}/ai/run/{model} -H "Authorization: Bearer {key}" -d '{{"name": "you"}}'

  cogkit call {model} -i name=you --url {url} --key {key}

  import cogkit;   cogkit.Client("{url}", api_key="{key}").run("{model}", {{"name": "you"}})["output"]

  import replicate; replicate.Client(api_token="{key}", base_url="{url}").run("{model[1:]}", input={{"name": "you"}})

  from openai import OpenAI;  OpenAI(base_url="{url}/v1", api_key="{key}")   # for chat models

Models: {", ".join("@" + n for n in deployed) or "none deployed"}. Ctrl-C stops the platform.
""")
