"""What every `cogkit` command module shares: one-line errors and notes on
stderr, and reading the project's cog.yaml as a clear error."""
from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from cogkit.config import Config, ConfigError, load_config

PROJECT_OPTION = typer.Option(Path("."), "--project", help="The project directory")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    typer.secho(message, dim=True, err=True)


def warn(message: str) -> None:
    typer.secho(f"Warning: {message}", fg=typer.colors.YELLOW, err=True)


def find_project(project: Path) -> Path:
    """The project directory: `project`, or (left at the default ".") the nearest
    directory upwards that has a cog.yaml, as Cog finds it from a subdirectory."""
    if project != Path(".") or (project / "cog.yaml").is_file():
        return project
    here = Path.cwd()
    for directory in (here, *here.parents):
        if (directory / "cog.yaml").is_file():
            return directory
    return project


def project_config(project: Path) -> Config:
    try:
        return load_config(find_project(project))
    except ConfigError as e:
        fail(str(e))
