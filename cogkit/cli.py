"""The `cogkit` command. Commands only parse arguments and call the modules
that do the work; every expected failure prints one clear line, never a traceback."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from cogkit.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build, run and serve Cog-compatible models; run the gateway.")


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    typer.secho(message, dim=True, err=True)


def _config(project: Path) -> Any:
    try:
        return load_config(project)
    except ConfigError as e:
        fail(str(e))


STARTER_YAML = """\
# Configuration for a Cog-compatible model: https://cog.run/yaml
build:
  python_version: "3.11"
  # python_packages:
  #   - "torch==2.3.1"
predict: "predict.py:Predictor"
"""

STARTER_PREDICT = '''\
from cog import BasePredictor, Input, Path


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the model into memory to make running multiple predictions efficient."""

    def predict(self, prompt: str = Input(description="What to say back")) -> str:
        """Run a single prediction on the model."""
        return prompt
'''


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="Where to write cog.yaml and predict.py")) -> None:
    """Write a starter cog.yaml and predict.py."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("cog.yaml", STARTER_YAML), ("predict.py", STARTER_PREDICT)):
        path = directory / name
        if path.exists():
            fail(f"{path} already exists; not overwriting it")
        path.write_text(text)
        typer.echo(f"Wrote {path}")


def _parse_inputs(openapi: dict[str, Any], pairs: list[str], mode: str) -> dict[str, Any]:
    from cogkit.inputs import InputValidationError, parse_cli_value, validate_input
    from cogkit.local import file_to_data_uri

    raw: dict[str, Any] = {}
    try:
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                fail(f"-i {pair!r}: expected name=value (or name=@file for a file)")
            if value.startswith("@"):
                path = Path(value[1:])
                if not path.is_file():
                    fail(f"-i {name}: no such file {path}")
                raw[name] = file_to_data_uri(str(path))
            else:
                raw[name] = parse_cli_value(openapi, name, value, mode)
        return validate_input(openapi, raw, mode)
    except InputValidationError as e:
        fail("invalid input:\n" + "\n".join(f"  {err['loc'][-1]}: {err['msg']}" for err in e.errors))
    return {}


def _run_local(project: Path, inputs: list[str], output: Optional[Path], mode: str) -> None:
    from cogkit.local import SetupFailed, run_prediction
    from cogkit.schema import SchemaError, build_openapi
    from cogkit.venv import EnvError, ensure_env

    config = _config(project)
    ref = config.predict if mode == "predict" else config.train
    if not ref:
        fail(f"cog.yaml has no '{mode}' entry point (e.g. {mode}: \"{mode}.py:{'Predictor' if mode == 'predict' else 'train'}\")")
    try:
        openapi = build_openapi(config.project_dir, config.predict, config.train)
    except SchemaError as e:
        fail(str(e))
    values = _parse_inputs(openapi, inputs, mode)
    try:
        python = ensure_env(config, lambda line: note(f"  {line}"))
    except EnvError as e:
        fail(str(e))
    streamed: list[Any] = []
    concatenate = is_concatenated(openapi, mode)
    note(f"Running {mode} on {ref}")
    try:
        prediction = run_prediction(config, python, values, mode, stream_listener(streamed, concatenate),
                                    lambda logs: note(logs.rstrip()) if logs.strip() else None)
    except SetupFailed as e:
        fail(str(e))
    show_result(mode, prediction.status, prediction.output, prediction.error, output, streamed, concatenate)


def is_concatenated(openapi: dict[str, Any], mode: str) -> bool:
    schemas = openapi.get("components", {}).get("schemas", {})
    return schemas.get("Output" if mode == "predict" else "TrainingOutput", {}).get(
        "x-cog-array-display") == "concatenate"


def stream_listener(streamed: list[Any], concatenate: bool) -> Any:
    """Logs go to stderr and streamed text to stdout as they come; outputs are kept in `streamed`."""
    def on_event(event: str, data: Any) -> None:
        if event == "logs":
            sys.stderr.write(data)
        elif event == "output":
            streamed.append(data)
            if isinstance(data, str) and not data.startswith("data:"):
                typer.echo(data, nl=not concatenate)
    return on_event


def show_result(mode: str, status: str, output_value: Any, error: Optional[str], output: Optional[Path],
                streamed: list[Any], concatenate: bool) -> None:
    """Fail unless it succeeded; write file outputs; print what was not streamed already."""
    from cogkit.local import write_file_outputs

    if status != "succeeded":
        fail(f"{mode} {status}: {error or ''}".rstrip(": "))
    result, written = write_file_outputs(output_value, str(output) if output else None)
    for path in written:
        typer.echo(f"Written output to {path}")
    if streamed:
        if concatenate:
            typer.echo()
        return
    if isinstance(result, str):
        if not written:
            typer.echo(result)
    elif not (isinstance(result, list) and written and all(isinstance(r, str) for r in result)):
        typer.echo(json.dumps(result, indent=2))


INPUT_HELP = "Input as name=value; name=@file for a file input. Repeatable."


IMAGE_HELP = "Run it in this model image (through its HTTP API) instead of a local environment"
USE_IMAGE_HELP = "Run it in the image `cogkit build` made from this project (its default tag)"


@app.command()
def predict(
    inputs: list[str] = typer.Option([], "-i", "--input", help=INPUT_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write a file output"),
    project: Path = typer.Option(Path("."), "--project", "-p", help="The project directory"),
    image: Optional[str] = typer.Option(None, "--image", help=IMAGE_HELP),
    use_image: bool = typer.Option(False, "--use-image", help=USE_IMAGE_HELP),
) -> None:
    """Run a prediction locally, in a managed environment built from cog.yaml (or in an image)."""
    if image or use_image:
        from cogkit import cli_images
        cli_images.run_in_image(project, image, use_image, inputs, output, "predict")
        return
    _run_local(project, inputs, output, "predict")


@app.command()
def train(
    inputs: list[str] = typer.Option([], "-i", "--input", help=INPUT_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write a file output"),
    project: Path = typer.Option(Path("."), "--project", "-p", help="The project directory"),
    image: Optional[str] = typer.Option(None, "--image", help=IMAGE_HELP),
    use_image: bool = typer.Option(False, "--use-image", help=USE_IMAGE_HELP),
) -> None:
    """Run training locally (cog.yaml's train: entry point), or in an image."""
    if image or use_image:
        from cogkit import cli_images
        cli_images.run_in_image(project, image, use_image, inputs, output, "train")
        return
    _run_local(project, inputs, output, "train")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(5000, "--port", "-p", help="Port to listen on"),
    project: Path = typer.Option(Path("."), "--project", help="The project directory"),
    upload_url: Optional[str] = typer.Option(None, help="PUT file outputs under this URL instead of inlining them"),
    image: Optional[str] = typer.Option(None, "--image", help="Serve this model image instead (in a container)"),
) -> None:
    """Serve the project's HTTP prediction API (Cog-compatible), or a model image's."""
    if image:
        from cogkit import cli_images
        if upload_url:
            fail("--upload-url is not supported with --image")
        cli_images.run_foreground(image, port, host)
        return
    from cogkit.runtime.serve import serve as run_server
    from cogkit.schema import SchemaError
    from cogkit.venv import EnvError, ensure_env

    config = _config(project)
    try:
        python = ensure_env(config, lambda line: note(f"  {line}"))
        note(f"Serving on http://{host}:{port}")
        run_server(str(config.project_dir), python, host, port, upload_url)
    except (EnvError, SchemaError) as e:
        fail(str(e))


@app.command()
def schema(project: Path = typer.Option(Path("."), "--project", "-p", help="The project directory")) -> None:
    """Print the OpenAPI schema of the project's predictor (read statically, nothing imported)."""
    from cogkit.schema import SchemaError, build_openapi

    config = _config(project)
    try:
        typer.echo(json.dumps(build_openapi(config.project_dir, config.predict, config.train), indent=2))
    except SchemaError as e:
        fail(str(e))


# The image commands (build, debug, run, login, push) live in cli_images.py. It is handed
# this module, which under `python -m cogkit.cli` is __main__ rather than cogkit.cli.
from cogkit import cli_images as _cli_images  # noqa: E402

_cli_images.register(app, sys.modules[__name__])

# The gateway side: `cogkit gateway`, and the admin commands that talk to a running one.
from server import admin_cli as _admin_cli  # noqa: E402
from server.gateway_cli import gateway as _gateway  # noqa: E402

app.command("gateway")(_gateway)
app.add_typer(_admin_cli.keys_app, name="keys")
app.add_typer(_admin_cli.providers_app, name="providers")
app.add_typer(_admin_cli.tenants_app, name="tenants")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
