"""What `cogkit build` checks before it asks the engine for anything (and all
that `cogkit build --check` does): an entry point to build, Cog's rules for CUDA
torch pins, each input's default against its own constraints, and the --secret
flags against the secret mounts build.run asks for."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogkit.config import Config, requirement_name


class BuildCheckError(Exception):
    """The project cannot be built as it is; the message says what to change."""


@dataclass
class Secret:
    id: str
    src: str | None = None  # a file
    env: str | None = None  # or an environment variable


def parse_secret(flag: str) -> Secret:
    """`--secret id=NAME,src=FILE` or `--secret id=NAME,env=VAR`, as docker build takes them."""
    fields: dict[str, str] = {}
    for part in flag.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("id", "src", "source", "env", "type"):
            raise BuildCheckError(f"--secret {flag!r}: expected id=NAME,src=FILE or id=NAME,env=VAR")
        fields["src" if key == "source" else key] = value
    if not fields.get("id") or ("src" in fields) == ("env" in fields):
        raise BuildCheckError(f"--secret {flag!r}: expected id=NAME and one of src=FILE or env=VAR")
    return Secret(fields["id"], fields.get("src"), fields.get("env"))


def check_secrets(config: Config, secrets: list[Secret], cwd: Path) -> None:
    given = {s.id for s in secrets}
    for secret in secrets:
        if secret.src is not None and not (cwd / secret.src).is_file():
            raise BuildCheckError(f"--secret id={secret.id}: no such file {secret.src}")
        if secret.env is not None and secret.env not in os.environ:
            raise BuildCheckError(f"--secret id={secret.id}: environment variable {secret.env} is not set")
    for i, mounts in enumerate(config.build.run_mounts):
        for mount in mounts:
            if mount["id"] not in given:
                raise BuildCheckError(f"build.run[{i}] mounts the secret {mount['id']!r}: give it with "
                                      f"--secret id={mount['id']},src=FILE (or env=VAR)")


def secret_values(secrets: list[Secret], cwd: Path) -> dict[str, bytes]:
    """id -> the secret's bytes (its file's, or its environment variable's); checked by check_secrets."""
    return {s.id: (cwd / s.src).read_bytes() if s.src is not None else os.environ[s.env or ""].encode()
            for s in secrets}


def check_config(config: Config) -> None:
    if not (config.predict or config.train):
        raise BuildCheckError("cog.yaml has no run (or predict) entry point, e.g. run: \"run.py:Runner\"; "
                              "there is no model to build")
    if config.build.gpu:
        for line in config.requirements():
            if requirement_name(line) == "torch" and not re.search(r"[=<>~]|@", line):
                raise BuildCheckError(f"torch version must be specified when using CUDA (gpu: true): "
                                      f"pin it in cog.yaml's requirements, e.g. torch==2.5.1 (got {line.strip()!r})")


def _violation(prop: dict[str, Any], value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if prop.get("minimum") is not None and value < prop["minimum"]:
            return f"{value} is less than the minimum {prop['minimum']}"
        if prop.get("maximum") is not None and value > prop["maximum"]:
            return f"{value} is greater than the maximum {prop['maximum']}"
    if isinstance(value, str):
        if prop.get("minLength") is not None and len(value) < prop["minLength"]:
            return f"{value!r} is shorter than the minimum length {prop['minLength']}"
        if prop.get("maxLength") is not None and len(value) > prop["maxLength"]:
            return f"{value!r} is longer than the maximum length {prop['maxLength']}"
        if prop.get("pattern") is not None and not re.search(prop["pattern"], value):
            return f"{value!r} does not match the pattern {prop['pattern']!r}"
    if prop.get("enum") is not None and value not in prop["enum"]:
        return f"{value!r} is not one of the choices {prop['enum']}"
    return None


def check_schema(openapi: dict[str, Any]) -> None:
    """Cog rejects at build time what no request could ever satisfy."""
    from cogkit.inputs import input_schema

    for component in ("Input", "TrainingInput"):
        if component not in openapi.get("components", {}).get("schemas", {}):
            continue
        schema, _ = input_schema(openapi, "train" if component == "TrainingInput" else "predict")
        for name, prop in schema.get("properties", {}).items():
            if prop.get("x-cog-accept") is not None and not _is_file(prop):
                raise BuildCheckError(f'input "{name}": accept is only valid on Path or File inputs')
            if "default" in prop and prop["default"] is not None:
                problem = _violation(prop, prop["default"])
                if problem:
                    raise BuildCheckError(f'invalid default for input "{name}": {problem}')


def _is_file(prop: dict[str, Any]) -> bool:
    items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
    options = [prop, items, *[o for o in prop.get("anyOf", []) if isinstance(o, dict)]]
    return any(o.get("format") == "uri" for o in options)
