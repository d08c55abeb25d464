"""The `cogkit` commands that work with model images: build, debug, run, login,
push, and the --image paths of predict, train and serve. Like cli.py, they only
parse arguments and call cogkit.build; every expected failure is one clear
line (or a build step's output), never a traceback.

cli.py calls `register(app, <the cli module>)`: the commands share its Typer
app and its helpers (fail, note, input parsing and output writing).
"""
from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import typer

_cli: Any = None  # cogkit.cli (or __main__ under `python -m cogkit.cli`), set by register()
PLATFORM_ENV = "COGKIT_PLATFORM_URL"
TOKEN_ENV = "COGKIT_PLATFORM_TOKEN"
PROJECT_OPTION = typer.Option(Path("."), "--project", "-p", help="The project directory")


def register(app: typer.Typer, cli: ModuleType) -> None:
    global _cli
    _cli = cli
    app.command("build")(build)
    app.command("debug")(debug)
    app.command("run")(run)
    app.command("login")(login)
    app.command("push")(push)


def fail(message: str) -> None:
    _cli.fail(message)


def note(message: str) -> None:
    _cli.note(message)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Expected failures of the image modules, as one `Error: ...` line and exit code 1."""
    import docker.errors

    from cogkit.build.builder import BuildError
    from cogkit.build.cuda import CudaError
    from cogkit.build.registry import RegistryError
    from cogkit.config import ConfigError
    from cogkit.schema import SchemaError

    try:
        yield
    except (BuildError, RegistryError, ConfigError, SchemaError, CudaError) as e:
        fail(str(e))
    except docker.errors.APIError as e:  # the engine refused something we did not foresee
        fail(f"the Docker engine said: {getattr(e, 'explanation', None) or e}")


def _connect() -> Any:
    from cogkit.build.builder import connect
    with errors():
        return connect()


# --- build and debug -------------------------------------------------------------

def build(
    tag: Optional[str] = typer.Option(None, "-t", "--tag",
                                      help="Image name (default: cog.yaml's image, else cog-<directory>)"),
    separate_weights: bool = typer.Option(False, "--separate-weights",
                                          help="Put weights (large files, weights/) in a layer of their own"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build every layer afresh"),
    check: bool = typer.Option(False, "--check", help="Only check cog.yaml and the schema, as a build would"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Build the project's model image with the Docker engine (progress on stderr)."""
    from cogkit.build import builder
    from cogkit.schema import build_openapi

    config = _cli._config(project)  # a missing or broken cog.yaml is a clear error before the engine is asked
    if check:
        with errors():
            if config.predict or config.train:
                build_openapi(config.project_dir, config.predict, config.train)
        note("cog.yaml and the schema check out (nothing built: --check)")
        return
    client = _connect()
    with errors():
        builder.build(project, tag, separate_weights=separate_weights, no_cache=no_cache, client=client,
                      progress=builder.stderr_progress)


def debug(
    separate_weights: bool = typer.Option(False, "--separate-weights", help="As `cogkit build --separate-weights`"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Print the Dockerfile `cogkit build` generates for the project."""
    from cogkit.build import dockerfile as df
    from cogkit.schema import build_openapi

    config = _cli._config(project)
    with errors():
        openapi = build_openapi(config.project_dir, config.predict, config.train) if (
            config.predict or config.train) else None
        files = df.select_files(config.project_dir, separate_weights)
        typer.echo(df.generate(config, openapi, has_weights=bool(files.weights)), nl=False)


# --- running images ------------------------------------------------------------------

def _image_for(client: Any, project: Path, image: Optional[str], use_image: bool) -> str:
    from cogkit.build.builder import default_tag

    if image and use_image:
        fail("give either --image IMAGE or --use-image, not both")
    if use_image:
        image = default_tag(_cli._config(project))
    assert image
    import docker.errors
    try:
        client.inspect_image(image)
    except docker.errors.ImageNotFound:
        hint = "build it first: `cogkit build`" if use_image else f"build it (`cogkit build -t {image}`) or pull it"
        fail(f"there is no image {image} in the Docker engine; {hint}")
    return image


def run_in_image(project: Path, image: Optional[str], use_image: bool, inputs: list[str], output: Optional[Path],
                 mode: str) -> None:
    """`cogkit predict/train --image`: start the image, send one request, write outputs like the local path."""
    from cogkit.build import container, registry

    client = _connect()
    image = _image_for(client, project, image, use_image)
    with errors():
        openapi, _ = registry.image_metadata(image, client)
    if not openapi:
        fail(f"{image} has no run.cog.openapi_schema label; is it a model image built by cogkit or Cog?")
    if mode == "train" and "TrainingInput" not in openapi.get("components", {}).get("schemas", {}):
        fail(f"{image} has no train entry point")
    values = _cli._parse_inputs(openapi, inputs, mode)
    streamed: list[Any] = []
    concatenate = _cli.is_concatenated(openapi, mode)
    note(f"Starting {image}")
    with errors():
        with container.start(image, client=client) as model:
            setup_logs = (model.health.get("setup") or {}).get("logs") or ""
            if setup_logs.strip():
                note(setup_logs.rstrip())
            note(f"Running {mode} on {image}")
            prediction = model.predict(values, mode, timeout=None,
                                       on_event=_cli.stream_listener(streamed, concatenate))
    _cli.show_result(mode, prediction.get("status", "failed"), prediction.get("output"), prediction.get("error"),
                     output, streamed, concatenate)


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_foreground(image: str, port: int, host: str = "127.0.0.1") -> None:
    """Run the image until Ctrl-C (or SIGTERM), showing its log; then stop the container."""
    from cogkit.build import container

    if host != "127.0.0.1":
        fail(f"a model image is served on 127.0.0.1 only (its container shares the host network); not {host}")
    client = _connect()
    image = _image_for(client, Path("."), image, False)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    note(f"Starting {image} on 127.0.0.1:{port}")
    with errors():
        model = container.start(image, port=port, client=client)
    try:
        typer.echo(f"Serving {image} on {model.url} (Ctrl-C stops it)")
        for chunk in client.logs(model.container, stream=True, follow=True):
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
        state = model.state()
        fail(f"the container of {image} exited (code {state.get('ExitCode')})")
    except KeyboardInterrupt:
        note(f"Stopping {image}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        model.stop()


def run(
    image: str = typer.Argument(..., help="The model image"),
    port: int = typer.Option(5000, "--port", help="Port on 127.0.0.1 for its HTTP API"),
) -> None:
    """Run a model image on 127.0.0.1:PORT in the foreground; Ctrl-C stops it."""
    run_foreground(image, port)


# --- registries and the platform ----------------------------------------------------------

def login(
    registry_host: str = typer.Argument(..., metavar="REGISTRY",
                                        help="Registry host, e.g. r.example.com or 127.0.0.1:5050"),
    username: Optional[str] = typer.Option(None, "--username", "-u", help="Asked for when not given"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin"),
) -> None:
    """Check credentials with a registry and store them (in your home, mode 600) for push."""
    from cogkit.build import registry

    host = registry_host.removeprefix("https://").removeprefix("http://").rstrip("/")
    if username is None:
        username = typer.prompt("Username")
    password = sys.stdin.read().rstrip("\r\n") if password_stdin else typer.prompt("Password", hide_input=True)
    if not password:
        fail("the password is empty")
    client = _connect()
    with errors():
        registry.login(host, username, password, client=client)
    typer.echo(f"Login succeeded: {username} at {host} (stored in {registry.credentials_path()})")


def _namespace_and_model(name: str, host: str) -> tuple[str, str]:
    path = name[len(host) + 1:] if name.startswith(host + "/") else name
    parts = path.split("/")
    if len(parts) != 2 or not all(parts):
        fail(f"{name} is not REGISTRY/namespace/model; the platform registers versions of namespace/model")
    return parts[0], parts[1]


def push(
    ref: str = typer.Argument(..., metavar="REGISTRY/NAMESPACE/MODEL[:TAG]", help="Where to push"),
    platform: Optional[str] = typer.Option(None, "--platform", envvar=PLATFORM_ENV,
                                           help=f"Register the pushed version with this platform (or ${PLATFORM_ENV})"),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV,
                                        help=f"The platform's API token (or ${TOKEN_ENV})"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Push an image; if REF is not a local image yet, the project's built image is tagged REF first.
    Prints the digest."""
    import docker.errors

    from cogkit.build import builder, registry

    client = _connect()
    with errors():
        name, tag = registry.split_ref(ref)
    ref = f"{name}:{tag}"
    host = registry.registry_of(ref)
    if platform:
        if not token:
            fail(f"registering with {platform} needs a token: --token or ${TOKEN_ENV}")
        namespace, model = _namespace_and_model(name, host)
    try:
        client.inspect_image(ref)
    except docker.errors.ImageNotFound:
        local = builder.default_tag(_cli._config(project))
        try:
            client.inspect_image(local)
        except docker.errors.ImageNotFound:
            fail(f"{ref} is not a local image, and the project has no built image {local} to push as it: "
                 f"run `cogkit build` first")
        with errors():
            client.tag(local, name, tag)
        note(f"Tagged {local} as {ref}")
    with errors():
        digest = registry.push(ref, progress=note, client=client)
    typer.echo(digest)
    note(f"Pushed {ref}; pull it by digest as {name}@{digest}")
    if platform:
        with errors():
            openapi, cog_config = registry.image_metadata(ref, client)
            version = registry.register_version(platform, namespace, model, ref, digest, openapi, token or "",
                                                cog_config=cog_config)
        typer.echo(f"Registered version {version.get('id', '?')} of {namespace}/{model} with {platform}")
