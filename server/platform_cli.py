"""The platform's commands, a Typer app plugged into `cogkit` (entry point `cogkit.commands`):

    cogkit up                                   gateway + registry API + controller, the examples deployed
    cogkit models list | get NS/M | versions NS/M | delete NS/M [--version REF] | publish NS/M [--private]
    cogkit deployments list | get NAME | create NS/M [--min N --max N ...] | update NAME ... | delete NAME
    cogkit deployments create /weights --engine vllm --name NS/M [--arg max_model_len=512 ...] (admin key)
    cogkit deployments apply -f deployments.yaml
    cogkit call MODEL -i name=value ...         any model string through the gateway, streamed

Why `call`: `cogkit run` is Cog's verb for a local prediction, and `cogkit predict openai/gpt-4o`
would read `openai/gpt-4o` as an image to run. `call` says it goes to the gateway, as a remote call.
Every command but `up` talks to a running gateway: --url ($COGKIT_GATEWAY_URL), --key ($COGKIT_API_KEY).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import typer

URL_OPTION = typer.Option("http://127.0.0.1:8080", "--url", envvar="COGKIT_GATEWAY_URL", help="The gateway")
KEY_OPTION = typer.Option(None, "--key", envvar="COGKIT_API_KEY", help="An API key of the gateway")

models_app = typer.Typer(help="Models pushed to the platform, and their versions", no_args_is_help=True)
deployments_app = typer.Typer(help="Which model versions run, with how many replicas", no_args_is_help=True)


def fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def api(url: str, key: str | None, method: str, path: str, body: Any = None, content: str | None = None) -> Any:
    """One call to the gateway's API; an error answer is printed as its sentence, exit 1."""
    if not key:
        fail("no API key: --key or $COGKIT_API_KEY (`cogkit up` prints the admin key)")
    try:
        resp = httpx.request(method, url.rstrip("/") + path, json=body, content=content, timeout=60,
                             headers={"authorization": f"Bearer {key}"})
    except httpx.HTTPError as e:
        fail(f"cannot reach the gateway at {url} ({type(e).__name__}); is it running (`cogkit up`)?")
    try:
        payload = resp.json()
    except ValueError:
        payload = {"detail": resp.text[:300]}
    if resp.status_code >= 400:
        detail = payload.get("detail") or (payload.get("error") or {}).get("message") or payload
        fail(f"{resp.status_code}: {detail}")
    return payload


def show(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


# ---- models ----
@models_app.command("list")
def models_list(url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    """The platform models this key may call."""
    for m in api(url, key, "GET", "/v1/models")["data"]:
        if m.get("kind") == "platform":
            latest = (m.get("latest_version") or {}).get("id", "-")
            typer.echo(f"{m['id']:40} {m['task']:16} {m['visibility']:8} {m['versions']} versions, latest {latest[:12]}")


@models_app.command("get")
def models_get(model: str, url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    show(api(url, key, "GET", f"/v1/models/{model.lstrip('@')}"))


@models_app.command("versions")
def models_versions(model: str, url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    for v in api(url, key, "GET", f"/v1/models/{model.lstrip('@')}/versions")["results"]:
        typer.echo(f"{v['id'][:12]}  {v['tag'] or '-':12} {v['digest'][:19]}  {v['created_at']}")


@models_app.command("delete")
def models_delete(model: str, version: str | None = typer.Option(None, "--version", help="Only this version"),
                  url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    path = f"/v1/models/{model.lstrip('@')}" + (f"/versions/{version}" if version else "")
    typer.echo(f"Deleted {api(url, key, 'DELETE', path)['deleted']}")


@models_app.command("publish")
def models_publish(model: str, private: bool = typer.Option(False, "--private", help="Make it private again"),
                   url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    """Let every tenant call the model (or, --private, only its own)."""
    got = api(url, key, "PATCH", f"/v1/models/{model.lstrip('@')}",
              {"visibility": "private" if private else "public"})
    typer.echo(f"{got['id']} is {got['visibility']}")


# ---- deployments ----
def _fields(min_replicas: int | None, max_replicas: int | None, idle: float | None,
            target: float | None, version: str | None, env: list[str], gpus: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas), ("idle_timeout", idle),
                        ("target_concurrency", target), ("version", version)):
        if value is not None:
            body[name] = value
    if env:
        pairs = [e.partition("=") for e in env]
        if any(not sep for _k, sep, _v in pairs):
            fail("--env: expected NAME=value")
        body["env"] = {k: v for k, _sep, v in pairs}
    if gpus is not None:
        body["hardware"] = {"gpus": gpus}
    return body


MIN_OPT = typer.Option(None, "--min", help="Replicas always running (0: scale to zero)")
MAX_OPT = typer.Option(None, "--max", help="Replicas at most")
IDLE_OPT = typer.Option(None, "--idle-timeout", help="Seconds idle before a replica is stopped")
TARGET_OPT = typer.Option(None, "--target", help="Concurrent requests per replica to aim for")
VERSION_OPT = typer.Option(None, "--version", help="A version id, short digest or tag (default: the latest)")
ENV_OPT = typer.Option([], "--env", "-e", help="NAME=value for the replicas; repeatable")
GPUS_OPT = typer.Option(None, "--gpus", help="GPUs per replica")
ENGINE_OPT = typer.Option(None, "--engine", help="vllm: MODEL is a weights directory vLLM serves (default: a "
                          "pushed model ns/m)")
ARG_OPT = typer.Option([], "--arg", help="engine: vllm: name=value, one of vLLM's engine arguments; repeatable")
EXTRA_OPT = typer.Option([], "--extra-arg", help="engine: vllm: one more word of vLLM's command line; repeatable")


def _engine_fields(engine: str | None, args: list[str], extra: list[str]) -> dict[str, Any]:
    if not engine:
        if args or extra:
            fail("--arg and --extra-arg are for --engine vllm")
        return {}
    pairs = [a.partition("=") for a in args]
    if any(not sep or not k for k, sep, _v in pairs):
        fail("--arg: expected name=value, e.g. --arg max_model_len=512")
    body: dict[str, Any] = {"engine": engine}
    if args:
        body["args"] = {k: _guess(v) for k, _sep, v in pairs}
    if extra:
        body["extra_args"] = list(extra)
    return body


@deployments_app.command("list")
def deployments_list(url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    for d in api(url, key, "GET", "/v1/deployments")["results"]:
        replicas = (d.get("status") or {}).get("replicas") or []
        ready = sum(1 for r in replicas if r["state"] == "ready")
        failure = ((d.get("status") or {}).get("last_failure") or {}).get("reason")
        typer.echo(f"{d['name']:36} {ready}/{len(replicas)} ready  min {d['min_replicas']} max {d['max_replicas']}"
                   + (f"  last failure: {failure}" if failure else ""))


@deployments_app.command("get")
def deployments_get(name: str, url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    show(api(url, key, "GET", f"/v1/deployments/{name}"))


@deployments_app.command("create")
def deployments_create(model: str, name: str | None = typer.Option(None, "--name", help="Default: the model's"),
                       min_replicas: int | None = MIN_OPT, max_replicas: int | None = MAX_OPT,
                       idle: float | None = IDLE_OPT, target: float | None = TARGET_OPT,
                       version: str | None = VERSION_OPT, env: list[str] = ENV_OPT,
                       gpus: int | None = GPUS_OPT, engine: str | None = ENGINE_OPT, args: list[str] = ARG_OPT,
                       extra: list[str] = EXTRA_OPT, url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    body = {"model": model if engine else model.lstrip("@"),
            **_fields(min_replicas, max_replicas, idle, target, version, env, gpus), **_engine_fields(engine, args, extra)}
    if engine and not name:
        fail("--name: an engine deployment needs the name it is called by, e.g. --name acme/tiny-llama")
    if name:
        body["name"] = name
    typer.echo(f"Created deployment {api(url, key, 'POST', '/v1/deployments', body)['name']}")


@deployments_app.command("update")
def deployments_update(name: str, min_replicas: int | None = MIN_OPT, max_replicas: int | None = MAX_OPT,
                       idle: float | None = IDLE_OPT, target: float | None = TARGET_OPT,
                       version: str | None = VERSION_OPT, env: list[str] = ENV_OPT,
                       gpus: int | None = GPUS_OPT, args: list[str] = ARG_OPT, extra: list[str] = EXTRA_OPT,
                       url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    body = _fields(min_replicas, max_replicas, idle, target, version, env, gpus)
    if args or extra:     # the engine's arguments replace the deployment's (a PATCH of args is whole)
        body.update({k: v for k, v in _engine_fields("vllm", args, extra).items() if k != "engine"})
    if not body:
        fail("nothing to change: give --min, --max, --idle-timeout, --target, --version, --env, --gpus, --arg "
             "or --extra-arg")
    api(url, key, "PATCH", f"/v1/deployments/{name}", body)
    typer.echo(f"Updated deployment {name}")


@deployments_app.command("delete")
def deployments_delete(name: str, url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    api(url, key, "DELETE", f"/v1/deployments/{name}")
    typer.echo(f"Deleted deployment {name}; its replicas drain, then stop")


FILE_OPT = typer.Option(..., "-f", "--file", help="YAML: deployments: [{model: ns/m, ...}]")
INPUTS_OPT = typer.Option([], "-i", "--input", help="name=value; name=@file for a file. Repeatable.")
OUTPUT_OPT = typer.Option(None, "-o", "--output", help="Where to write a file output")


@deployments_app.command("apply")
def deployments_apply(file: Path = FILE_OPT,
                      url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    if not file.is_file():
        fail(f"no such file {file}")
    for d in api(url, key, "POST", "/v1/deployments:apply", content=file.read_text())["results"]:
        typer.echo(f"Applied deployment {d['name']}")


# ---- calling a model from a terminal ----
def call(model: str = typer.Argument(..., help="Any model string: @ns/model[:version], openai/gpt-4o-mini, ..."),
         inputs: list[str] = INPUTS_OPT, output: Path | None = OUTPUT_OPT,
         no_stream: bool = typer.Option(False, "--no-stream", help="Wait for the whole answer"),
         url: str = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    """Call a model through the gateway; output streams as it comes, file outputs are written to disk."""
    from cogkit.client import Client, GatewayError
    from cogkit.local import write_file_outputs

    values = _call_inputs(model, inputs, url, key)
    streamed: list[Any] = []
    final: dict[str, Any] = {}
    with Client(url, key) as client:
        try:
            if no_stream:
                final = client.run(model, values)
            else:
                for event in client.run(model, values, stream=True):
                    if event.event == "output":
                        streamed.append(event.data)
                        if isinstance(event.data, str) and not event.data.startswith("data:"):
                            typer.echo(event.data, nl=False)
                    elif event.event == "logs":
                        sys.stderr.write(str(event.data))
                    elif event.event == "completed":
                        final = event.data if isinstance(event.data, dict) else {}
        except GatewayError as e:
            fail(str(e))
    if streamed and all(isinstance(s, str) and not s.startswith("data:") for s in streamed):
        typer.echo()
        return
    result, written = write_file_outputs(final.get("output"), str(output) if output else None)
    for path in written:
        typer.echo(f"Written output to {path}")
    if not written:
        typer.echo(result if isinstance(result, str) else json.dumps(result, indent=2))


def _call_inputs(model: str, pairs: list[str], url: str, key: str | None) -> dict[str, Any]:
    """-i pairs, typed by the model's schema for a platform model (JSON-ish guesses otherwise)."""
    from cogkit.inputs import InputValidationError, parse_cli_value
    from cogkit.local import file_to_data_uri

    openapi: dict[str, Any] = {}
    if model.startswith("@"):
        base, _, ref = model[1:].partition(":")
        version = api(url, key, "GET", f"/v1/models/{base}/versions/{ref}") if ref else \
            (api(url, key, "GET", f"/v1/models/{base}").get("latest_version") or {})
        openapi = version.get("openapi_schema") or {}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            fail(f"-i {pair!r}: expected name=value (or name=@file for a file)")
        if raw.startswith("@"):
            if not Path(raw[1:]).is_file():
                fail(f"-i {name}: no such file {raw[1:]}")
            out[name] = file_to_data_uri(raw[1:])
            continue
        try:
            out[name] = parse_cli_value(openapi, name, raw) if openapi else _guess(raw)
        except InputValidationError as e:
            fail(f"-i {name}: {e}")
    return out


def _guess(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (int, float, bool, list, dict)) else raw


def register(app: typer.Typer) -> None:
    from server.platform_up import up
    app.add_typer(models_app, name="models")
    app.add_typer(deployments_app, name="deployments")
    app.command("call")(call)
    app.command("up")(up)


def main() -> None:
    app = typer.Typer(help="cogkit platform commands", no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
