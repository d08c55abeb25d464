"""Prints the reference Input/Output schema of a project, as Cog 0.23 sees it.

Runs inside the Cog 0.23 virtualenv (started by tests/cog_reference.py), never
in ours: the types, defaults, optionality and output shape come from Cog's own
SDK introspection (`cog._inspector.create_predictor`), and the few rules by
which Cog's build lays an input field into the document (required unless it
has a real default, `None` defaults of non-nullable fields dropped, `Secret`
with `default=None` nullable, choices as an enum) follow Cog's schema generator
(pkg/schema/openapi_spec.go). Cog 0.23's server serves only the schema its Go
CLI wrote at build time, which this machine cannot build, so this is as close
to Cog's own answer as we can ask.

Usage: python cog_reference_schema.py PROJECT_DIR predict.py:Predictor
Prints {"Input": {...}, "Output": {...}} or {"error": "..."}.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any


def input_schema(info: Any, adt: Any, declared: set[str], accepts: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in info.inputs.items():
        ft = field.type
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            prop["enum"] = list(field.choices)  # Cog: allOf $ref to an enum component; compared by values
        else:
            prop["title"] = name.replace("_", " ").title()
            prop.update(ft.json_type())
            if "anyOf" in prop and ft.repetition is adt.Repetition.OPTIONAL:  # the generator marks each variant
                prop["anyOf"] = [{**variant, "nullable": True} for variant in prop["anyOf"]]
        nullable = ft.repetition in (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
        if ft.primitive is adt.PrimitiveType.SECRET and ft.repetition is adt.Repetition.REQUIRED \
                and field.default is None and name in declared:
            nullable = True
        has_default = field.default is not None or (nullable and name in declared)
        if not has_default and (ft.union_variants is not None or ft.repetition in (
                adt.Repetition.REQUIRED, adt.Repetition.REPEATED)):
            required.append(name)
        if has_default:
            prop["default"] = ft.json_encode(field.default) if field.default is not None else None
        if nullable:
            prop["nullable"] = True
        for key, value in (("description", field.description), ("minimum", field.ge), ("maximum", field.le),
                           ("minLength", field.min_length), ("maxLength", field.max_length),
                           ("pattern", field.regex)):
            if value is not None:
                prop[key] = value
        if field.deprecated:
            prop["deprecated"] = True
        if name in accepts:  # Input(accept=...): the SDK keeps it out of InputField, the generator writes it
            prop["x-cog-accept"] = accepts[name]
        properties[name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def main() -> None:
    project, ref = os.path.abspath(sys.argv[1]), sys.argv[2]
    os.chdir(project)
    warnings.simplefilter("ignore")
    sys.path.insert(0, project)
    from cog import _adt as adt
    from cog import _inspector

    file_name, _, attr = ref.partition(":")
    module_name = file_name[:-3].replace("/", ".") if file_name.endswith(".py") else file_name
    try:
        info = _inspector.create_predictor(module_name, attr)
    except Exception as e:  # noqa: BLE001 - reported to the test, which compares it
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return
    declared, accepts = _declared_defaults(sys.modules[module_name], attr)
    try:
        output = info.output.json_type()
    except Exception as e:  # noqa: BLE001
        output = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps({"Input": input_schema(info, adt, declared, accepts), "Output": output}, default=str))


def _declared_defaults(module: Any, attr: str) -> tuple[set[str], dict[str, str]]:
    """Inputs whose parameter has a default: a bare one, or Input(default=...); and
    each Input(accept="...") given.
    Read from the source, as Cog's generator does: at run time `Input()` and
    `Input(default=None)` are the same object."""
    import ast
    import inspect

    from cog._inspector import _selected_predict_method
    obj = getattr(module, attr)
    fn = _selected_predict_method(obj, attr)[1] if inspect.isclass(obj) else obj
    fn = inspect.unwrap(fn)
    try:
        tree = ast.parse(inspect.getsource(fn).strip() if not inspect.isclass(obj) else
                         _dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return set(inspect.signature(fn).parameters), {}
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    args = [*node.args.posonlyargs, *node.args.args]
    pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
    pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
    names = set()
    accepts = {}
    for arg, default in pairs:
        if isinstance(default, ast.Call) and getattr(default.func, "id", getattr(default.func, "attr", "")) == "Input":
            if default.args or any(k.arg == "default" for k in default.keywords):
                names.add(arg.arg)
            for k in default.keywords:
                if k.arg == "accept" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str):
                    accepts[arg.arg] = k.value.value
        else:
            names.add(arg.arg)
    return names, accepts


def _dedent(source: str) -> str:
    import textwrap
    return textwrap.dedent(source)


if __name__ == "__main__":
    main()
