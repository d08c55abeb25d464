"""The `cogkit` commands that work with model images: build, debug, login,
push, and the image paths of run/predict/train and serve. Like cli.py, they
only parse arguments and call cogkit.build; every expected failure is one clear
line (or a build step's output), never a traceback.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from cogkit.cli_common import fail, find_project, note, project_config

PLATFORM_ENV = "COGKIT_PLATFORM_URL"
TOKEN_ENV = "COGKIT_PLATFORM_TOKEN"
PROJECT_OPTION = typer.Option(Path("."), "--project", "-p", help="The project directory")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("debug")(debug)
    app.command("login")(login)
    app.command("push")(push)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Expected failures of the image modules, as one `Error: ...` line and exit code 1."""
    import docker.errors

    from cogkit.build.builder import BuildError
    from cogkit.build.checks import BuildCheckError
    from cogkit.build.cuda import CudaError
    from cogkit.build.registry import RegistryError
    from cogkit.config import ConfigError
    from cogkit.schema import SchemaError

    try:
        yield
    except (BuildError, BuildCheckError, RegistryError, ConfigError, SchemaError, CudaError) as e:
        fail(str(e))
    except docker.errors.APIError as e:  # the engine refused something we did not foresee
        fail(f"the Docker engine said: {getattr(e, 'explanation', None) or e}")


def connect_engine() -> Any:
    from cogkit.build.builder import connect
    with errors():
        return connect()


# --- build and debug -------------------------------------------------------------

def build(
    tag: str | None = typer.Option(None, "-t", "--tag",
                                   help="Image name (default: cog.yaml's image, else cog-<directory>)"),
    separate_weights: bool = typer.Option(False, "--separate-weights",
                                          help="Put weights (large files, weights/) in a layer of their own"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build every layer afresh"),
    secrets: list[str] = typer.Option([], "--secret", help="A secret for build.run mounts: id=NAME,src=FILE "
                                                           "or id=NAME,env=VAR (repeatable)"),
    debug_output: bool = typer.Option(False, "--debug", help="Show the generated Dockerfile and every build step"),
    check: bool = typer.Option(False, "--check", help="Only check cog.yaml and the schema, as a build would"),
    use_cog_base_image: str = typer.Option("false", "--use-cog-base-image", metavar="[=true|false]",
                                           help="Accepted as Cog takes it; cogkit builds on its own base images"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Build the project's model image with the Docker engine (progress on stderr)."""
    if use_cog_base_image.lower() not in ("true", "false", "1", "0"):
        fail(f"--use-cog-base-image takes true or false, not {use_cog_base_image!r}")
    if use_cog_base_image.lower() in ("true", "1"):
        note("Note: cogkit builds on its own base images (python:X-slim, or CUDA for gpu: true), "
             "not on Cog's cog-base images")
    from cogkit.build import builder, checks
    from cogkit.build import dockerfile as df
    from cogkit.schema import build_openapi

    config = project_config(project)  # a missing or broken cog.yaml is a clear error before the engine is asked
    for warning in config.warnings:
        note(f"Warning: {warning}")
    with errors():
        checks.check_config(config)
        openapi = build_openapi(config.project_dir, config.predict, config.train)
        checks.check_schema(openapi)
        parsed_secrets = [checks.parse_secret(flag) for flag in secrets]
        checks.check_secrets(config, parsed_secrets, Path.cwd())
    if debug_output:
        files = df.select_files(config.project_dir, separate_weights)
        note(df.generate(config, openapi, has_weights=bool(files.weights)))
    if check:
        note("cog.yaml and the schema check out (nothing built: --check)")
        return
    client = connect_engine()
    with errors():
        result = builder.build(config.project_dir, tag, separate_weights=separate_weights, no_cache=no_cache,
                               client=client, progress=builder.stderr_progress, openapi=openapi,
                               secrets=checks.secret_values(parsed_secrets, Path.cwd()))
    note(f"Image built as {result.image}")


def debug(
    separate_weights: bool = typer.Option(False, "--separate-weights", help="As `cogkit build --separate-weights`"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Print the Dockerfile `cogkit build` generates for the project."""
    from cogkit.build import dockerfile as df
    from cogkit.schema import build_openapi

    config = project_config(project)
    with errors():
        openapi = build_openapi(config.project_dir, config.predict, config.train) if (
            config.predict or config.train) else None
        files = df.select_files(config.project_dir, separate_weights)
        typer.echo(df.generate(config, openapi, has_weights=bool(files.weights)), nl=False)


# --- running images ------------------------------------------------------------------

def default_image(project: Path) -> str:
    """The tag `cogkit build` gives the project's image."""
    from cogkit.build.builder import default_tag
    return default_tag(project_config(project))


def _require_image(client: Any, image: str) -> None:
    import docker.errors
    try:
        client.inspect_image(image)
    except docker.errors.ImageNotFound:
        fail(f"there is no image {image} in the Docker engine; build it (`cogkit build -t {image}`) or pull it")


def image_openapi(image: str, mode: str) -> dict[str, Any]:
    """The schema a model image carries in its run.cog.openapi_schema label."""
    from cogkit.build import registry

    client = connect_engine()
    _require_image(client, image)
    with errors():
        openapi, _ = registry.image_metadata(image, client)
    if not openapi:
        fail(f"{image} has no run.cog.openapi_schema label; is it a model image built by cogkit or Cog?")
    if mode == "train" and "TrainingInput" not in openapi.get("components", {}).get("schemas", {}):
        fail(f"{image} has no train entry point")
    return openapi


def predict_in_image(image: str, values: dict[str, Any], mode: str, env: dict[str, str],
                     source: Path | None = None) -> dict[str, Any]:
    """Start the image, send one request, stop it; setup and prediction logs go to stderr.
    Ctrl-C (or SIGTERM) at any moment stops it too: no container is left, exit code 130.
    With `source`, the project found from there is mounted at /src."""
    from cogkit.build import container

    _stop_signals_interrupt()
    try:
        client = connect_engine()
        note(f"Starting Docker image {image} and running setup()...")
        with _one_container(client) as name, errors(), project_weights() as volumes:
            src = str(find_project(source).resolve()) if source is not None else None
            model = container.start(image, env=env, client=client, name=name, volumes=volumes, source=src)
            setup_logs = (model.health.get("setup") or {}).get("logs") or ""
            if setup_logs.strip():
                sys.stderr.write(setup_logs)
            prediction = model.predict(values, mode, timeout=None)
    except KeyboardInterrupt:
        fail(f"interrupted; the container of {image} is stopped and removed", code=130)
    if prediction.get("logs"):
        sys.stderr.write(prediction["logs"])
    return prediction


@contextlib.contextmanager
def project_weights() -> Iterator[dict[str, str]]:
    """Run from a project whose cog.yaml declares weights: they are mounted at their targets."""
    from cogkit import weights
    from cogkit.config import ConfigError, load_config

    directory = find_project(Path("."))
    try:
        raw = load_config(directory).raw if (directory / "cog.yaml").is_file() else {}
    except ConfigError:
        raw = {}
    try:
        with weights.mounted(directory, raw) as volumes:
            yield volumes
    except weights.WeightsError as e:
        fail(str(e))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_signals_interrupt() -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, even when started with SIGINT ignored (`cmd &`)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _one_container(client: Any) -> Iterator[str]:
    """A name for the container the command is about to start, and its removal when the
    command ends, however it ends. The name is chosen first, so an interrupt that lands
    between the engine creating the container and us learning its id still finds it;
    once removal begins, further Ctrl-Cs are ignored so they cannot cut it short."""
    import uuid

    from cogkit.build import container

    name = f"cogkit-{uuid.uuid4().hex[:16]}"
    try:
        yield name
    finally:
        while True:
            try:  # an interrupt already on its way may land before the handlers are swapped
                for stop_signal in STOP_SIGNALS:
                    signal.signal(stop_signal, signal.SIG_IGN)
                break
            except KeyboardInterrupt:
                continue
        container.remove(client, name)


def serve_image(image: str, port: int, host: str = "127.0.0.1", upload_url: str | None = None) -> None:
    """Run the image until Ctrl-C (or SIGTERM), showing its log; then stop the container.
    Whenever the interrupt lands (before the container exists, while it starts, while it
    serves, or again while it stops) the command ends cleanly (exit 0) and leaves no container."""
    from cogkit.build import container

    if host != "127.0.0.1":
        fail(f"a model image is served on 127.0.0.1 only (its container shares the host network); not {host}")
    _stop_signals_interrupt()
    try:
        client = connect_engine()
        _require_image(client, image)
        note(f"Starting {image} on 127.0.0.1:{port}")
        with _one_container(client) as name, project_weights() as volumes:
            try:
                with errors():
                    model = container.start(image, port=port, client=client, upload_url=upload_url, wait=False,
                                            name=name, volumes=volumes)
                typer.echo(f"Serving {image} on {model.url} (Ctrl-C stops it)")
                for chunk in client.logs(model.container, stream=True, follow=True):
                    sys.stderr.write(chunk.decode(errors="replace"))
                    sys.stderr.flush()
                state = model.state()
                fail(f"the container of {image} exited (code {state.get('ExitCode')})")
            except KeyboardInterrupt:
                note(f"Stopping {image}")
    except KeyboardInterrupt:
        pass  # before the container existed, or while the note was printed: nothing is left either way


# --- registries and the platform ----------------------------------------------------------

def login(
    registry_host: str = typer.Argument(..., metavar="REGISTRY",
                                        help="Registry host, e.g. r.example.com or 127.0.0.1:5050"),
    username: str | None = typer.Option(None, "--username", "-u", help="Asked for when not given"),
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
    client = connect_engine()
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
    ref: str | None = typer.Argument(None, metavar="[REGISTRY/NAMESPACE/MODEL[:TAG]]",
                                     help="Where to push (default: cog.yaml's image); not with a model ref"),
    platform: str | None = typer.Option(None, "--platform", envvar=PLATFORM_ENV,
                                           help=f"Register the pushed version with this platform (or ${PLATFORM_ENV})"),
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV,
                                        help=f"The platform's API token (or ${TOKEN_ENV})"),
    project: Path = PROJECT_OPTION,
) -> None:
    """Push an image; if REF is not a local image yet, the project's built image is tagged REF first.
    Prints the digest. With a model ref (cog.yaml's model: or $COG_MODEL), builds the project and
    pushes one OCI index of the image and its managed weights instead, as Cog's model push."""
    import docker.errors

    from cogkit import weights
    from cogkit.build import builder, registry

    config = project_config(project) if (find_project(project) / "cog.yaml").is_file() else None
    try:
        model = weights.model_ref(config.raw) if config else None
    except weights.WeightsError as e:
        fail(str(e))
    if model is not None and config is not None:
        if ref:
            fail("positional image argument not supported with 'model' config\n"
                 "  use COG_MODEL to override the full reference\n"
                 "  use COG_MODEL_TAG to override just the tag")
        _push_model(model, config, project, platform)
        return
    if not ref:
        if config is None or not config.image:
            fail("To push images, you must either set the 'image' option in cog.yaml or pass an image name as an "
                 "argument. For example, 'cogkit push registry.example.com/your-username/model-name'")
        ref = config.image
    client = connect_engine()
    with errors():
        name, tag = registry.split_ref(ref)
    ref = f"{name}:{tag}"
    host = registry.registry_of(ref)
    if platform:
        if not token:
            fail(f"registering with {platform} needs a token: --token or ${TOKEN_ENV}")
        namespace, model_name = _namespace_and_model(name, host)
    try:
        client.inspect_image(ref)
    except docker.errors.ImageNotFound:
        local = builder.default_tag(project_config(project))
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
            version = registry.register_version(platform, namespace, model_name, ref, digest, openapi, token or "",
                                                cog_config=cog_config)
        typer.echo(f"Registered version {version.get('id', '?')} of {namespace}/{model_name} with {platform}")


def _push_model(model: Any, config: Any, project: Path, platform: str | None) -> None:
    """Model mode: build the project, then push its image and weights as one OCI index to the model ref."""
    from cogkit import weights
    from cogkit.build import builder, bundle

    if platform:
        fail("--platform registers a single image; a model ref pushes an index (unset COG_MODEL and "
             "cog.yaml's model: to push and register the image alone)")
    if config.image:
        fail("'image' in cog.yaml cannot be combined with a model ref (cog.yaml's model: or COG_MODEL*): "
             "remove 'image' from cog.yaml, or unset COG_MODEL, COG_MODEL_REGISTRY, COG_MODEL_REPO, COG_MODEL_TAG")
    try:  # before the build: a missing weights.lock or weight fails in seconds, not after minutes of building
        entries = bundle.locked_weights(config.project_dir, config.raw)
        descriptors = bundle.weight_descriptors(model, entries)
    except weights.WeightsError as e:
        fail(str(e))
    note(f"Building Docker image from environment in cog.yaml as {model}...")
    build(tag=None, separate_weights=False, no_cache=False, secrets=[], debug_output=False, check=False,
          use_cog_base_image="false", project=project)
    if entries:
        note(f"\n{len(entries)} managed weight(s)")
    note(f"\nPushing to {model}...")
    client = connect_engine()
    try:
        with errors():
            pushed = bundle.push(model, builder.default_tag(config), descriptors, client, progress=note)
    except weights.WeightsError as e:
        fail(str(e))
    sys.stderr.write(f"\n{bundle.ref_tree(pushed)}\n")
    typer.echo(pushed.model)
