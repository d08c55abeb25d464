"""`cogkit run`, `predict` and `train`: one code path, as Cog's CLI behaves.

Inputs come from `-i name=value` (repeated names make a list, `@file` reads a
file) or from `--json` (a JSON object, `@file.json`, or `-`/`@-` for stdin); they
are checked against the schema before anything starts ("unknown input", "missing
required input"). The prediction runs in the project's managed environment, or
in a model image when one is named. Outputs are shown as Cog shows them: a
string raw, files written as output.<ext> (output.0.<ext>, ... for lists) with
"Written output to: ...", anything else as indented JSON; with --json the whole
prediction is printed (or written to -o) as JSON.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from cogkit.cli_common import fail, note, project_config, warn

INPUT_HELP = "Input as name=value; name=@file reads a file. Repeat a name for a list."
JSON_HELP = "Inputs as a JSON object: inline, @file.json, or - (or @-) for stdin"
OUTPUT_HELP = "Where to write the output (any output; with --json, the prediction as JSON)"


@dataclass
class Request:
    mode: str  # "predict" or "train"
    image: str | None
    inputs: list[str]
    json_input: str | None
    output: Path | None
    project: Path
    env: list[str]
    mount_src: bool = False  # with an image: the project mounted at /src (see cli.py's --mount-src)


def _input_props(openapi: dict[str, Any], mode: str) -> tuple[dict[str, Any], list[str]]:
    from cogkit.inputs import input_schema
    from cogkit.schema import SchemaError

    try:
        schema, _ = input_schema(openapi, mode)
    except SchemaError as e:
        fail(str(e))
    return schema.get("properties", {}), list(schema.get("required", []))


def check_names(openapi: dict[str, Any], names: list[str], mode: str) -> None:
    """Cog's CLI rejects inputs the model does not declare before it starts anything."""
    props, _ = _input_props(openapi, mode)
    unknown = sorted({n for n in names if n not in props})
    if not unknown:
        return
    valid = ", ".join(sorted(props))
    suffix = f"valid inputs are: {valid}" if props else "model does not accept inputs"
    if len(unknown) == 1:
        fail(f'unknown input "{unknown[0]}"; {suffix}')
    fail("unknown inputs " + ", ".join(f'"{n}"' for n in unknown) + f"; {suffix}")


def file_to_data_uri(path: str) -> str:
    """A file input travels as a data URI, as with Cog."""
    expanded = os.path.expanduser(path)
    try:
        with open(expanded, "rb") as f:
            data = f.read()
    except OSError as e:
        fail(f"failed to read file {path!r}: {e.strerror}")
    media_type = mimetypes.guess_type(expanded)[0] or "application/octet-stream"
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _read_json_inputs(source: str) -> dict[str, Any]:
    if source in ("-", "@-"):
        text = sys.stdin.read()
    elif source.startswith("@"):
        try:
            text = Path(source[1:]).read_text()
        except OSError as e:
            fail(f"Failed to read JSON from file {source[1:]!r}: {e.strerror}")
    else:
        text = source
    try:
        value = json.loads(text)
    except ValueError as e:
        fail(f"Failed to parse JSON: {e}")
    if not isinstance(value, dict):
        fail("Failed to parse JSON: --json must be a JSON object of input names to values")
    return value


def parse_inputs(openapi: dict[str, Any], pairs: list[str], json_input: str | None, mode: str) -> dict[str, Any]:
    """The raw input object from -i pairs or --json, names checked; values typed by the schema."""
    from cogkit.inputs import InputValidationError, parse_cli_value

    if json_input is not None and pairs:
        fail("Must use one of --json or --input to provide model inputs")
    if json_input is not None:
        values = _read_json_inputs(json_input)
        check_names(openapi, list(values), mode)
        return {k: file_to_data_uri(v[1:]) if isinstance(v, str) and v.startswith("@") else v
                for k, v in values.items()}
    grouped: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"Failed to parse input '{pair}', expected format is 'name=value'")
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        grouped.setdefault(name, []).append(value)
    check_names(openapi, list(grouped), mode)
    props, _ = _input_props(openapi, mode)
    raw: dict[str, Any] = {}
    def typed(name: str, value: str) -> Any:
        if value.startswith("@"):
            return file_to_data_uri(value[1:])
        try:
            return parse_cli_value(openapi, name, value, mode)
        except InputValidationError:
            return value  # as Cog: kept as the string it is, and validation says what was expected

    try:
        for name, values in grouped.items():
            is_list = props[name].get("type") == "array"
            parsed = [typed(name, v) for v in values]
            if is_list:
                # each value is one item (a file, or a value parsed as a one-item list or a JSON list)
                items: list[Any] = []
                for value, item in zip(values, parsed):
                    items.extend(item if isinstance(item, list) and not value.startswith("@") else [item])
                raw[name] = items
            else:
                if len(parsed) > 1:
                    fail(f'input "{name}" was given {len(parsed)} times but takes one value')
                raw[name] = parsed[0]
    except InputValidationError as e:
        fail(_validation_message(e, openapi, mode))
    return raw


def _validation_message(e: Any, openapi: dict[str, Any] | None = None, mode: str = "predict") -> str:
    props = _input_props(openapi, mode)[0] if openapi else {}
    messages = []
    for err in e.errors:
        loc = ".".join(str(p) for p in err.get("loc", []) if p not in ("body", "input"))
        if err.get("type") == "value_error.missing":
            messages.append(f'missing required input "{loc}"')
        elif err.get("type") == "type_error.enum" and loc in props and props[loc].get("enum"):
            messages.append(f'invalid input "{loc}": must be one of: '
                            + ", ".join(str(v) for v in props[loc]["enum"]))
        else:
            messages.append(f'invalid input "{loc}": {err.get("msg")}' if loc else str(err.get("msg")))
    return messages[0] if len(messages) == 1 else "input validation failed:\n- " + "\n- ".join(messages)


def validate(openapi: dict[str, Any], raw: dict[str, Any], mode: str) -> dict[str, Any]:
    from cogkit.inputs import InputValidationError, validate_input

    try:
        return validate_input(openapi, raw, mode)
    except InputValidationError as e:
        fail(_validation_message(e, openapi, mode))


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"-e {pair!r}: expected name=value")
        out[key] = value
    return out


# --- running --------------------------------------------------------------------------

def run(request: Request) -> None:
    if request.image:
        from cogkit import cli_images
        openapi = cli_images.image_openapi(request.image, request.mode)
    else:
        openapi = _project_openapi(request)
    raw = parse_inputs(openapi, request.inputs, request.json_input, request.mode)
    values = validate(openapi, raw, request.mode)
    note("Running training..." if request.mode == "train" else "Running prediction...")
    if request.image:
        from cogkit import cli_images
        # The server fills in defaults itself (and, as Cog's, refuses an explicit null for them).
        prediction = cli_images.predict_in_image(request.image, raw, request.mode, _env_pairs(request.env),
                                                 source=request.project if request.mount_src else None)
    else:
        prediction = _predict_locally(request, values)
    show(prediction, openapi, request)


def _project_openapi(request: Request) -> dict[str, Any]:
    from cogkit.schema import SchemaError, build_openapi

    config = project_config(request.project)
    ref = config.predict if request.mode == "predict" else config.train
    if not ref:
        example = "run.py:Runner" if request.mode == "predict" else "train.py:train"
        key = "run" if request.mode == "predict" else "train"
        fail(f"cog.yaml has no '{key}' entry point (e.g. {key}: \"{example}\")")
    try:
        return build_openapi(config.project_dir, config.predict, config.train)
    except SchemaError as e:
        fail(str(e))


def _predict_locally(request: Request, values: dict[str, Any]) -> dict[str, Any]:
    from cogkit.local import SetupFailed, run_prediction
    from cogkit.venv import EnvError, ensure_env

    config = project_config(request.project)
    config.environment.update(_env_pairs(request.env))
    try:
        python = ensure_env(config, lambda line: note(f"  {line}"))
    except EnvError as e:
        fail(str(e))

    def on_event(event: str, data: Any) -> None:
        if event == "logs":
            sys.stderr.write(data)
            sys.stderr.flush()

    try:
        prediction = run_prediction(config, python, values, request.mode, on_event,
                                    lambda logs: sys.stderr.write(logs) if logs.strip() else None)
    except SetupFailed as e:
        fail(str(e))
    return {"status": prediction.status, "output": prediction.output, "error": prediction.error,
            "metrics": prediction.metrics}


# --- showing the result --------------------------------------------------------------------

def _output_schema(openapi: dict[str, Any], mode: str) -> dict[str, Any]:
    schemas = openapi.get("components", {}).get("schemas", {})
    schema = schemas.get("Output" if mode == "predict" else "TrainingOutput") or {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = schemas.get(ref.rsplit("/", 1)[-1], schema)
    return schema


def _is_uri(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string" and schema.get("format") == "uri"


def write_data_uri(value: str, destination: str) -> str:
    """Cog's WriteDataURLToFile: keep the destination's extension, else one from the media type."""
    from cogkit.runtime.files import decode_data_uri

    data, media_type = decode_data_uri(value)
    base, ext = os.path.splitext(destination)
    if ext[1:].isdigit():
        base, ext = destination, ""
    if not ext:
        ext = mimetypes.guess_extension(media_type or "") or ""
    path = base + ext
    with open(path, "wb") as f:
        f.write(data)
    note(f"Written output to: {path}")
    return path


def _write_files(output: Any, schema: dict[str, Any], destination: str) -> Any:
    if _is_uri(schema) and isinstance(output, str) and output.startswith("data:"):
        return write_data_uri(output, destination)
    if schema.get("type") == "array" and _is_uri(schema.get("items")) and isinstance(output, list):
        base, ext = os.path.splitext(destination)
        return [write_data_uri(item, f"{base}.{i}{ext}") if isinstance(item, str) and item.startswith("data:")
                else item for i, item in enumerate(output)]
    return output


def _destination(output: Path | None, fallback: str) -> str:
    if output is None:
        if Path(fallback).is_dir():
            fail(f'Default output name "{fallback}" conflicts with directory, provide --output')
        return fallback
    path = Path(os.path.expanduser(str(output)).removeprefix("@"))
    if path.is_dir():
        return str(path / fallback)
    if not os.access(path.parent if str(path.parent) else ".", os.W_OK):
        fail(f"Output path is not writable: Output directory is not writable: {path.parent}")
    return str(path)


def _write_text(text: str, path: str) -> None:
    Path(path).write_text(text)
    note(f"Written output to: {path}")


def show(prediction: dict[str, Any], openapi: dict[str, Any], request: Request) -> None:
    schema = _output_schema(openapi, request.mode)
    needs_json = request.json_input is not None
    fallback = "output.json" if needs_json else ("weights" if request.mode == "train" else "output")
    destination = _destination(request.output, fallback)
    status = prediction.get("status")
    output = prediction.get("output")
    if status == "succeeded" and output is not None:
        files_at = os.path.splitext(destination)[0] if needs_json else destination
        output = _write_files(output, schema, files_at)
    if needs_json:
        if request.output and not destination.endswith(".json"):
            warn(f"--output value does not have a .json suffix: {os.path.basename(destination)}")
        shown = {"status": status, "output": output, "error": prediction.get("error") or ""}
        if prediction.get("metrics"):
            shown["metrics"] = prediction["metrics"]
        text = json.dumps(shown, indent=2, ensure_ascii=False)
        if request.output:
            _write_text(text, destination)
        else:
            typer.echo(text)
        if status != "succeeded":
            raise typer.Exit(1)
        return
    if status != "succeeded":
        fail(f'Prediction failed with status "{status}": {prediction.get("error") or ""}')
    if output is None:
        warn("No output generated")
        return
    if _is_uri(schema) or (schema.get("type") == "array" and _is_uri(schema.get("items"))):
        return
    text = output if schema.get("type") == "string" and isinstance(output, str) else json.dumps(
        output, indent=2, ensure_ascii=False)
    if request.output or request.mode == "train":  # Cog writes a training's output to ./weights
        _write_text(text, destination)
    else:
        typer.echo(text)
