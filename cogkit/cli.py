"""The `cogkit` command, typed as Cog users type `cog`. Commands only parse
arguments and call the modules that do the work; every expected failure prints
one clear line, never a traceback. Commands from other packages (the gateway's)
plug in through the `cogkit.commands` entry-point group: cogkit never imports them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cogkit import cli_images, cli_predict, cli_tools
from cogkit.cli_common import fail, note, project_config, warn

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build, run and serve Cog-compatible models; run the gateway.")
PROJECT = typer.Option(Path("."), "--project", "-p", help="The project directory")
IMAGE_ARG = typer.Argument(None, metavar="[IMAGE]", help="Run in this model image instead of the project here")


def _predict_command(mode: str, image: str | None, inputs: list[str], json_input: str | None,
                     output: Path | None, project: Path, env: list[str], image_option: str | None,
                     use_image: bool, mount_src: bool) -> None:
    if image and image_option:
        fail("give the image once: as an argument or with --image")
    chosen = image or image_option
    if use_image:
        if chosen:
            fail("give either an image or --use-image, not both")
        chosen = cli_images.default_image(project)
    if mount_src and not chosen:
        fail("--mount-src goes with an image (IMAGE, --image or --use-image)")
    cli_predict.run(cli_predict.Request(mode, chosen, inputs, json_input, output, project, env, mount_src))


def _options(mode: str, warn_deprecated: bool = False):  # type: ignore[no-untyped-def]
    def command(
        image: str | None = IMAGE_ARG,
        inputs: list[str] = typer.Option([], "-i", "--input", help=cli_predict.INPUT_HELP),
        json_input: str | None = typer.Option(None, "--json", help=cli_predict.JSON_HELP),
        output: Path | None = typer.Option(None, "-o", "--output", help=cli_predict.OUTPUT_HELP),
        env: list[str] = typer.Option([], "-e", "--env", help="Environment variable for the model, name=value"),
        project: Path = PROJECT,
        image_option: str | None = typer.Option(None, "--image", help="Same as the IMAGE argument"),
        use_image: bool = typer.Option(False, "--use-image", help="Run in the image `cogkit build` made here"),
        mount_src: bool = typer.Option(False, "--mount-src", help=(
            "With an image: mount the project at /src over the image's copy, as `cog predict` does when it "
            "builds from source, so files the model writes there land in the project (it runs as your user)")),
    ) -> None:
        if warn_deprecated and mode == "predict":
            warn('"cog predict" is deprecated, use "cog run" (cogkit run)')
        elif warn_deprecated:  # Cog's wording (cobra's deprecation line); cogkit keeps the command working
            warn('Command "train" is deprecated, the train command will be removed in a future version of Cog')
        _predict_command(mode, image, inputs, json_input, output, project, env, image_option, use_image, mount_src)
    return command


app.command("run", help="Run a prediction: in the project's managed environment, or in IMAGE.")(_options("predict"))
app.command("predict", help="The old name of `run` (Cog's): run a prediction.")(_options("predict", True))
app.command("train", help="Run training (cog.yaml's train: entry point), locally or in IMAGE.")(
    _options("train", True))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(5000, "--port", "-p", help="Port to listen on"),
    project: Path = typer.Option(Path("."), "--project", help="The project directory"),
    upload_url: str | None = typer.Option(None, help="PUT file outputs under this URL instead of inlining them"),
    image: str | None = typer.Option(None, "--image", help="Serve this model image instead (in a container)"),
) -> None:
    """Serve the project's HTTP prediction API (Cog-compatible), or a model image's; Ctrl-C stops it."""
    if image:
        cli_images.serve_image(image, port, host, upload_url)
        return
    from cogkit.runtime.serve import serve as run_server
    from cogkit.schema import SchemaError
    from cogkit.venv import EnvError, ensure_env

    config = project_config(project)
    try:
        python = ensure_env(config, lambda line: note(f"  {line}"))
        note(f"Serving on http://{host}:{port}")
        run_server(str(config.project_dir), python, host, port, upload_url)
    except (EnvError, SchemaError) as e:
        fail(str(e))


@app.command()
def schema(project: Path = PROJECT) -> None:
    """Print the OpenAPI schema of the project's predictor (read statically, nothing imported)."""
    from cogkit.schema import SchemaError, build_openapi

    config = project_config(project)
    try:
        typer.echo(json.dumps(build_openapi(config.project_dir, config.predict, config.train), indent=2))
    except SchemaError as e:
        fail(str(e))


cli_images.register(app)
cli_tools.register(app)


def load_plugins(target: typer.Typer) -> None:
    """Mount each `cogkit.commands` entry point; a broken one is a one-line note, and
    the other commands still work."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="cogkit.commands"):
        try:
            entry.load()(target)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin must not break unrelated commands
            note(f"cogkit: the {entry.name!r} commands ({entry.value}) could not be loaded: "
                 f"{type(e).__name__}: {e}")


def _own_command(argv: list[str]) -> bool:
    """Whether argv names one of cogkit's own commands: then the plugins (the gateway's and
    scheduler's, ~0.25 s of imports) are not loaded, since every `cog` line of a model author
    pays that start-up time. Help and unknown names still see every command."""
    names = {c.name or (c.callback.__name__.replace("_", "-") if c.callback else "") for c in app.registered_commands}
    names |= {g.name for g in app.registered_groups if g.name}
    return len(argv) > 1 and argv[1] in names


def main() -> None:
    if not _own_command(sys.argv):
        load_plugins(app)
    # Cog's `--use-cog-base-image` is a flag that may also take =true/=false.
    sys.argv = [("--use-cog-base-image=true" if arg == "--use-cog-base-image" else arg) for arg in sys.argv]
    app()


if __name__ == "__main__":
    main()
