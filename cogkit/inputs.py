"""Validating a prediction's input against the predictor's OpenAPI schema.

The HTTP server turns InputValidationError into a FastAPI-style 422 body
({"detail": errors}); the CLI uses parse_cli_value for `-i key=value`. Standard
library only: the rules come from the schema, not from pydantic models.
"""
from __future__ import annotations

import copy
import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

from cogkit.schema import REF, SchemaError


class InputValidationError(Exception):
    """One error dict per bad field, all of them: {"loc": ["body", "input", field], "msg": ..., "type": ...}."""

    def __init__(self, errors: list[dict]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'][2:])) or 'input'}: {e['msg']}" for e in errors))


def _err(loc: list, msg: str, typ: str) -> dict:
    return {"loc": ["body", "input", *loc], "msg": msg, "type": typ}


def _json_type(value: Any) -> str:
    for typ, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                      (list, "array"), (dict, "object")):
        if isinstance(value, typ):
            return name
    return "null" if value is None else type(value).__name__


def validate_input(openapi: dict, payload: object, mode: str = "predict", ignore_undeclared: bool = False) -> dict:
    """The input with defaults filled in, or InputValidationError listing every bad field
    (see InputRules.validate; this reads the schema afresh, for one-off use)."""
    return InputRules(openapi, mode).validate(payload, ignore_undeclared)


class InputRules:
    """One entry point's input schema, read once (enums inlined, fields in x-order) and
    then used for every request: the server validates thousands of inputs a second."""

    def __init__(self, openapi: dict, mode: str = "predict") -> None:
        schema, _ = input_schema(openapi, mode)
        self.props: dict[str, dict] = schema.get("properties", {})
        self.required = set(schema.get("required", []))
        self.ordered = sorted(self.props.items(), key=lambda kv: kv[1].get("x-order", math.inf))
        self.secrets = {name for name, prop in self.props.items() if prop.get("x-cog-secret")}

    def undeclared(self, payload: object) -> list[str]:
        """Input fields the model does not declare (Cog's HTTP API ignores them)."""
        return [name for name in payload if name not in self.props] if isinstance(payload, dict) else []

    def validate(self, payload: object, ignore_undeclared: bool = False) -> dict:
        """The input with defaults filled in, or InputValidationError listing every bad field.

        A missing (None) payload counts as {}: PredictionRequest.input is optional. A Secret
        input whose default the schema masks ("**********") is left out when not given.
        Fields the model does not declare are errors, unless ignore_undeclared (Cog's HTTP
        API drops them; undeclared() names them)."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise InputValidationError([_err([], f"input must be an object, got {_json_type(payload)}",
                                             "type_error.dict")])
        errors: list[dict] = []
        if not ignore_undeclared:
            errors += [_err([name], "unexpected field", "value_error.extra") for name in self.undeclared(payload)]
        out: dict[str, Any] = {}
        for name, prop in self.ordered:
            if name in payload:
                out[name] = _check(prop, payload[name], [name], errors)
            elif name in self.required:
                errors.append(_err([name], "field required", "value_error.missing"))
            elif prop.get("x-cog-secret") and prop.get("default") == "**********":
                continue  # a masked Secret default: leave it out so the predictor's own default applies
            else:
                # No default means an optional input: the predictor gets None, as in Cog.
                default = prop.get("default")
                out[name] = copy.deepcopy(default) if isinstance(default, (list, dict)) else default
        if errors:
            raise InputValidationError(errors)
        return out


def _check(prop: dict, value: Any, loc: list, errors: list[dict]) -> Any:
    """The value (ints made of integral floats), appending an error for anything wrong with it."""
    if value is None:
        # As in Cog: an explicit null is rejected even for an Optional input (omit it to get None);
        # only an untyped (Any) input takes it.
        if any(key in prop for key in ("type", "anyOf", "enum")):
            errors.append(_err(loc, "must not be null (omit the field to leave it unset)", "type_error.none.not_allowed"))
        return None
    if isinstance(prop.get("anyOf"), list):  # a union input (`str | float`): the first variant that fits
        for variant in prop["anyOf"]:
            attempt: list[dict] = []
            checked = _check(variant, value, loc, attempt)
            if not attempt:
                return checked
        kinds = ", ".join(str(v.get("type", "any")) for v in prop["anyOf"] if isinstance(v, dict))
        errors.append(_err(loc, f"expected one of: {kinds}; got {_json_type(value)}", "type_error.union"))
        return value
    typ = prop.get("type")
    n = len(errors)
    if typ == "string":
        if not isinstance(value, str):
            errors.append(_err(loc, f"expected string, got {_json_type(value)}", "type_error.str"))
        else:
            _check_string(prop, value, loc, errors)
    elif typ == "integer":
        if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
            value = int(value)  # JSON 3.0 for an integer is fine, as in pydantic
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(_err(loc, f"expected integer, got {_json_type(value)}", "type_error.integer"))
    elif typ == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(_err(loc, f"expected number, got {_json_type(value)}", "type_error.float"))
        elif not math.isfinite(value):
            errors.append(_err(loc, "expected a finite number", "type_error.float"))
    elif typ == "boolean":
        if not isinstance(value, bool):
            errors.append(_err(loc, f"expected boolean, got {_json_type(value)}", "type_error.bool"))
    elif typ == "array":
        if not isinstance(value, list):
            errors.append(_err(loc, f"expected array, got {_json_type(value)}", "type_error.list"))
        else:
            items = prop.get("items") or {}
            value = [_check(items, v, [*loc, i], errors) for i, v in enumerate(value)]
    elif typ == "object" and not isinstance(value, dict):
        errors.append(_err(loc, f"expected object, got {_json_type(value)}", "type_error.dict"))
    if len(errors) > n or typ not in ("integer", "number", "string"):
        return value
    if typ in ("integer", "number"):
        if prop.get("minimum") is not None and value < prop["minimum"]:
            errors.append(_err(loc, f"ensure this value is greater than or equal to {prop['minimum']}",
                               "value_error.number.not_ge"))
        if prop.get("maximum") is not None and value > prop["maximum"]:
            errors.append(_err(loc, f"ensure this value is less than or equal to {prop['maximum']}",
                               "value_error.number.not_le"))
    enum = prop.get("enum")
    if enum is not None and len(errors) == n and value not in enum:
        errors.append(_err(loc, "must be one of " + ", ".join(json.dumps(e) for e in enum), "type_error.enum"))
    return value


def undeclared_fields(openapi: dict, payload: object, mode: str = "predict") -> list[str]:
    """Input fields the model does not declare (Cog's HTTP API ignores them)."""
    return InputRules(openapi, mode).undeclared(payload)


def _check_string(prop: dict, value: str, loc: list, errors: list[dict]) -> None:
    if prop.get("format") == "uri" and not _is_url(value):
        errors.append(_err(loc, "expected an http(s) URL or a data URI", "value_error.url"))
    if prop.get("minLength") is not None and len(value) < prop["minLength"]:
        errors.append(_err(loc, f"ensure this value has at least {prop['minLength']} characters",
                           "value_error.any_str.min_length"))
    if prop.get("maxLength") is not None and len(value) > prop["maxLength"]:
        errors.append(_err(loc, f"ensure this value has at most {prop['maxLength']} characters",
                           "value_error.any_str.max_length"))
    pattern = prop.get("pattern")
    if pattern is not None:
        try:
            ok = re.match(pattern, value) is not None  # Cog's pydantic `regex` uses re.match
        except re.error:
            ok = True  # a broken pattern is the model's bug, not the caller's
        if not ok:
            errors.append(_err(loc, f'string does not match regex "{pattern}"', "value_error.str.regex"))


def _is_url(value: str) -> bool:
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme == "data":
        return "," in value  # data:[<mediatype>][;base64],<data>
    if scheme in ("http", "https"):
        return bool(urlsplit(value).netloc)
    return False


def parse_cli_value(openapi: dict, name: str, raw: str, mode: str = "predict") -> object:
    """`-i name=raw` -> a typed value by the input's schema ("5" -> 5, "true" -> True, JSON for lists)."""
    schema, _ = input_schema(openapi, mode)
    prop = schema.get("properties", {}).get(name)
    if prop is None:
        raise InputValidationError([_err([name], "unexpected field", "value_error.extra")])
    try:
        return _parse(prop, raw)
    except ValueError as e:
        raise InputValidationError([_err([name], str(e), "type_error")]) from None


def _parse(prop: dict, raw: str) -> Any:
    typ = prop.get("type")
    if prop.get("nullable") and typ != "string" and raw in ("null", "None"):
        return None
    if typ == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"expected integer, got {raw!r}") from None
    if typ == "number":
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    if typ == "boolean":
        word = raw.strip().lower()
        if word in ("true", "1", "yes"):
            return True
        if word in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if typ == "array":
        if raw.lstrip().startswith("["):
            value = _load(raw, "a JSON array")
            if not isinstance(value, list):
                raise ValueError(f"expected a JSON array, got {raw!r}")
            return value
        return [_parse(prop.get("items") or {}, raw)]  # a single value is a one-item list
    if typ == "object":
        value = _load(raw, "a JSON object")
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {raw!r}")
        return value
    if typ is None:  # Any: JSON if it parses, else the string
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _load(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ValueError(f"expected {what}: {e}") from None


# ---- reading a built schema: the input object, its file and secret fields

def input_schema(openapi: dict, mode: str = "predict") -> tuple[dict, dict]:
    """(the Input/TrainingInput object schema with $ref/allOf enums inlined, the components dict)."""
    components = openapi.get("components", {}).get("schemas", {})
    key = "TrainingInput" if mode == "train" else "Input"
    if key not in components:
        raise SchemaError(f"the schema has no {key} component (is there a {mode} entry point?)")
    return _inline(copy.deepcopy(components[key]), components), components


def _inline(schema: Any, components: dict, depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > 32:
        return schema
    ref = schema.get("$ref")
    all_of = schema.get("allOf")
    if ref is None and isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        ref = all_of[0].get("$ref")
    if isinstance(ref, str) and ref.startswith(REF) and isinstance(components.get(ref[len(REF):]), dict):
        # the property's own title/description win over the enum's "An enumeration."
        target = {k: v for k, v in components[ref[len(REF):]].items() if k not in ("title", "description")}
        schema = {**copy.deepcopy(target), **{k: v for k, v in schema.items() if k not in ("$ref", "allOf")}}
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {k: _inline(v, components, depth + 1) for k, v in schema["properties"].items()}
    if "items" in schema:
        schema["items"] = _inline(schema["items"], components, depth + 1)
    return schema


def file_fields(openapi: dict, mode: str = "predict") -> dict[str, str]:
    """Input name -> "uri" (one file) or "uri-list" (a list of files), for inputs the runtime downloads."""
    schema, _ = input_schema(openapi, mode)
    out = {}
    for name, prop in schema.get("properties", {}).items():
        items = prop.get("items")
        if prop.get("format") == "uri":
            out[name] = "uri"
        elif prop.get("type") == "array" and isinstance(items, dict) and items.get("format") == "uri":
            out[name] = "uri-list"
    return out


def secret_fields(openapi: dict, mode: str = "predict") -> set[str]:
    """Input names declared as Secret: masked wherever a prediction is shown."""
    schema, _ = input_schema(openapi, mode)
    return {name for name, prop in schema.get("properties", {}).items() if prop.get("x-cog-secret")}
