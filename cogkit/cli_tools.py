"""`cogkit init`, `exec` and `doctor`: a starter project, a command run in the
model's environment (the managed one here, or a model image's), and Cog's
project checks with their fixes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from cogkit.cli_common import fail, note, project_config

STARTER_YAML = """\
# Configuration for a Cog-compatible model: https://cog.run/yaml
build:
  # set to true if your model requires a GPU
  gpu: false
  # python version in the form '3.11' or '3.11.4'
  python_version: "3.11"
  # python_packages:
  #   - "torch==2.3.1"
# run.py defines how runs are handled by your model
run: "run.py:Runner"
"""

STARTER_RUN = '''\
from cog import BaseRunner, Input, Path


class Runner(BaseRunner):
    def setup(self) -> None:
        """Load the model into memory to make running multiple requests efficient."""

    def run(self, prompt: str = Input(description="What to say back")) -> str:
        """Run the model on a single input."""
        return prompt
'''


def init(directory: Path = typer.Argument(Path("."), help="Where to write cog.yaml and run.py")) -> None:
    """Write a starter cog.yaml and run.py (existing files are kept)."""
    note("Setting up the current directory for use with Cog...")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("cog.yaml", STARTER_YAML), ("run.py", STARTER_RUN)):
        path = directory / name
        if path.exists():
            note(f"Skipped existing {path}")
            continue
        path.write_text(text)
        note(f"Wrote {path}")


def exec_command(
    command: list[str] = typer.Argument(..., help="The command and its arguments"),
    image: str | None = typer.Option(None, "--image", help="Run it in this model image (a container)"),
    project: Path = typer.Option(Path("."), "--project", help="The project directory"),
) -> None:
    """Run a command in the model's environment: the project's managed environment,
    its directory as the working directory (or, with --image, a container of the image)."""
    if image:
        code = _exec_in_image(image, command)
    else:
        code = _exec_locally(project, command)
    raise typer.Exit(code)


def _exec_locally(project: Path, command: list[str]) -> int:
    from cogkit.venv import EnvError, ensure_env

    config = project_config(project)
    try:
        python = ensure_env(config, lambda line: note(f"  {line}"))
    except EnvError as e:
        fail(str(e))
    bin_dir = str(Path(python).parent)
    env = {**os.environ, **config.environment, "VIRTUAL_ENV": str(Path(bin_dir).parent),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)  # the model sees its environment, not the host's
    try:
        return subprocess.call(command, cwd=config.project_dir, env=env)
    except FileNotFoundError:
        fail(f"{command[0]}: command not found in the model's environment")
    except KeyboardInterrupt:
        return 130


def _exec_in_image(image: str, command: list[str]) -> int:
    """`docker run` so that stdin and a terminal pass through as they are."""
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else []
    try:
        return subprocess.call(["docker", "run", "--rm", "-i", *tty, "--network", "host", image, *command])
    except FileNotFoundError:
        fail("the docker command is not installed here")


def doctor(
    fix: bool = typer.Option(False, "--fix", help="Apply the safe fixes"),
    project: Path = typer.Option(Path("."), "--project", help="The project directory"),
) -> None:
    """Check the project for common issues (as Cog's doctor, experimental); --fix migrates deprecated code."""
    from cogkit import doctor as checks

    note("NOTE: doctor is experimental. Behavior and checks may change in future versions.")
    note("Running cogkit doctor --fix..." if fix else "Running cogkit doctor...")
    errors = warnings = fixed = 0
    group = None
    for result in checks.run(project, fix):
        if result.group != group:
            group = result.group
            note(group)
        if result.error:
            note(f"  \u2717 {result.description}: {result.error}")
            errors += 1
        elif not result.findings:
            note(f"  \u2713 {result.description}")
            continue
        elif result.fixed:
            note(f"  \u2713 Fixed: {result.description}")
            fixed += len(result.findings)
        else:
            worst = checks.ERROR if any(f.severity == checks.ERROR for f in result.findings) else checks.WARNING
            mark = "\u2717" if worst == checks.ERROR else "!"
            note(f"  {mark} {result.description}")
            errors += sum(f.severity == checks.ERROR for f in result.findings)
            warnings += sum(f.severity == checks.WARNING for f in result.findings)
        for finding in result.findings:
            where = f"{finding.file}:{finding.line} \u2014 " if finding.line else (
                f"{finding.file} \u2014 " if finding.file else "")
            note(f"    {where}{finding.message}")
            if fix and not result.fixed:
                note(f"    Remediation: {finding.remediation}" if finding.remediation else "    (no auto-fix available)")
    if fixed:
        note(f"Fixed {fixed} issue{'s' if fixed != 1 else ''}."
             + (f" {errors} unfixed error{'s' if errors != 1 else ''}." if errors else ""))
    elif errors or warnings:
        parts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in ((errors, "error"), (warnings, "warning")) if n]
        note(f"Found {', '.join(parts)}.")
    else:
        note("Everything looks good: no issues found.")
    if errors:
        raise typer.Exit(1)


weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Cog's managed weights: import them into the store and registry, pull them back.")


def _project_raw(project: Path) -> tuple[Path, dict]:
    config = project_config(project)
    return config.project_dir, config.raw


@weights_app.command("import")
def weights_import(project: Path = typer.Option(Path("."), "--project", help="The project directory")) -> None:
    """Store cog.yaml's weights locally, push them to the model's registry, write weights.lock."""
    from cogkit import weights

    directory, raw = _project_raw(project)
    try:
        weights.import_weights(directory, raw, note)
    except weights.WeightsError as e:
        fail(str(e))


@weights_app.command("pull")
def weights_pull(
    names: list[str] = typer.Argument(None, help="Only these weights (default: all in weights.lock)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the store, the lockfile and each file"),
    project: Path = typer.Option(Path("."), "--project", help="The project directory"),
) -> None:
    """Fill the local store with the weights weights.lock names, from the registry."""
    from cogkit import weights

    directory, _ = _project_raw(project)
    try:
        weights.pull_weights(directory, list(names or []), verbose, note)
    except weights.WeightsError as e:
        fail(str(e))


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
    app.command("init")(init)
    app.command("doctor")(doctor)
    app.command("exec", context_settings={"allow_interspersed_args": False,
                                          "ignore_unknown_options": True})(exec_command)
