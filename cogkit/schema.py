"""The OpenAPI schema of a predictor, computed statically.

predict.py is read with `ast` and never imported: the model's code usually needs
torch, a GPU or weights that the process building the schema does not have. The
document has the shape Cog's server produces, so existing clients keep working.
"""
from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogkit.schema_document import (
    REF,
    fixed_components,
    job_paths,
    request_response,
    simple,
)

__all__ = ["REF", "SchemaError", "build_openapi", "title_case"]


class SchemaError(Exception):
    """The predictor's signature can't be turned into a schema; the message says where and why."""


SUPPORTED_INPUTS = "str, int, float, bool, cog.Path, cog.File, cog.Secret, list[T], dict, Any, Optional[T] / T | None"
SUPPORTED_OUTPUTS = (SUPPORTED_INPUTS + ", Iterator[T], AsyncIterator[T], ConcatenateIterator[str], "
                     "a BaseModel subclass or TypedDict defined in a .py file of the project")

_MISSING: Any = object()

# Modules whose names mean the same thing to us, whatever spelling the user imports.
_COG_MODULES = {"cog", "cogkit", "cogkit.sdk", "cogkit.sdk.types", "cogkit.sdk.predictor",
                "cog.types", "cog.predictor", "cog.base_predictor"}
_TYPING_MODULES = {"typing", "typing_extensions", "collections.abc"}

_KINDS = {
    ("cog", "Path"): "Path", ("cog", "File"): "Path", ("cog", "URLPath"): "Path", ("pathlib", "Path"): "Path",
    ("cog", "Secret"): "Secret", ("cog", "Input"): "Input", ("cog", "streaming"): "streaming",
    ("cog", "BaseModel"): "BaseModel", ("pydantic", "BaseModel"): "BaseModel",
    ("cog", "BasePredictor"): "BasePredictor", ("cog", "BaseRunner"): "BaseRunner",
    ("cog", "ConcatenateIterator"): "ConcatenateIterator", ("cog", "AsyncConcatenateIterator"): "ConcatenateIterator",
    ("cog", "Iterator"): "Iterator", ("cog", "AsyncIterator"): "Iterator",
    ("typing", "Optional"): "Optional", ("typing", "Union"): "Union", ("typing", "Any"): "Any",
    ("typing", "Annotated"): "Annotated", ("cog", "Opaque"): "Opaque", ("typing", "TypedDict"): "TypedDict",
    ("typing", "NotRequired"): "NotRequired", ("typing", "Required"): "Required",
    ("typing", "List"): "list", ("typing", "Dict"): "dict",
    ("typing", "Iterator"): "Iterator", ("typing", "AsyncIterator"): "Iterator",
    ("typing", "Generator"): "Iterator", ("typing", "AsyncGenerator"): "Iterator",
    ("builtins", "str"): "str", ("builtins", "int"): "int", ("builtins", "float"): "float",
    ("builtins", "bool"): "bool", ("builtins", "list"): "list", ("builtins", "dict"): "dict",
}
_BUILTINS = {"str", "int", "float", "bool", "list", "dict"}

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"}, "Path": {"type": "string", "format": "uri"},
    "Secret": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True},
}
_INPUT_ARGS = {"default", "description", "ge", "le", "min_length", "max_length", "regex", "choices", "deprecated",
               "accept"}


def _group(module: str) -> str:
    if module in _COG_MODULES or module.startswith("cogkit.sdk."):
        return "cog"
    if module in _TYPING_MODULES:
        return "typing"
    if module.split(".")[0] == "pydantic":
        return "pydantic"
    return module


def title_case(name: str) -> str:
    """Cog's (pydantic's) default field title: "num_outputs" -> "Num Outputs"."""
    return name.title().replace("_", " ")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _Module:
    """One parsed source file: its imports, top-level constants, classes and functions."""

    def __init__(self, path: Path, label: str, load: Callable[[str, str], _Module | None] = lambda _m, _f: None) -> None:
        self.label = label
        self._load = load  # (dotted module, importing file) -> that project file's _Module, if it is one
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(f"{label}: file not found ({path})") from None
        try:
            tree = ast.parse(source, filename=label)
        except SyntaxError as e:
            raise SchemaError(f"{label}:{e.lineno}: syntax error: {e.msg}") from None
        self.names: dict[str, tuple[str, str]] = {}  # local name -> (module group, imported name)
        self.modules: dict[str, str] = {}  # local alias -> dotted module
        self.star: list[str] = []  # groups imported with `from x import *`
        self.consts: dict[str, ast.expr] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for stmt in tree.body:
            self._collect(stmt, top=True)

    def _collect(self, stmt: ast.stmt, top: bool) -> None:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.asname:
                    self.modules[a.asname] = a.name
                else:  # `import collections.abc` binds `collections`
                    head = a.name.split(".")[0]
                    self.modules[head] = head
        elif isinstance(stmt, ast.ImportFrom):
            group = _group(stmt.module or "") if not stmt.level else "<relative>"
            for a in stmt.names:
                if a.name == "*":
                    self.star.append(group)
                else:
                    self.names[a.asname or a.name] = (group, a.name)
        elif isinstance(stmt, (ast.If, ast.Try)):
            # try: from cog import X / except ImportError: ... and `if TYPE_CHECKING:` imports
            blocks = [stmt.body, stmt.orelse] + ([h.body for h in stmt.handlers] if isinstance(stmt, ast.Try) else [])
            for block in blocks:
                for s in block:
                    self._collect(s, top=False)
        elif not top:
            return
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            self.consts[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            self.consts[stmt.target.id] = stmt.value
        elif isinstance(stmt, ast.ClassDef):
            self.classes[stmt.name] = stmt
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.functions[stmt.name] = stmt

    def kind(self, node: ast.AST) -> str | None:
        """What a name in an annotation or call refers to: "int", "Path", "Optional", "class:Foo"..."""
        if isinstance(node, ast.Constant) and node.value is None:
            return "None"
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if rest:
            module = self.modules.get(head)
            if module is None:
                return None
            modname, _, attr = f"{module}.{rest}".rpartition(".")
            return _KINDS.get((_group(modname), attr))
        if head in self.names:
            known = _KINDS.get(self.names[head])
            if known is None and self.foreign(head) is not None:
                return "class:" + head  # a class from another file of the project
            return known
        if head in self.classes:
            return "class:" + head
        if head in _BUILTINS:
            return head
        for group in self.star:
            if (group, head) in _KINDS:
                return _KINDS[(group, head)]
        if head == "Any":  # a bare Any that was never imported still means "anything"
            return "Any"
        return None

    # ---- annotations -> JSON schema

    def _unstring(self, node: ast.expr, where: str) -> ast.expr:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "list[str]" forward refs
            try:
                return ast.parse(node.value, mode="eval").body
            except SyntaxError:
                raise SchemaError(f"{where}: cannot parse the string annotation {node.value!r}") from None
        return node

    def type_schema(self, node: ast.expr, where: str, output: bool = False, top: bool = True,
                    seen: tuple[str, ...] = ()) -> dict:
        node = self._unstring(node, where)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._union(_flatten_or(node), node, where, output, seen)
        head, args = node, []
        if isinstance(node, ast.Subscript):
            head = node.value
            args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        kind = self.kind(head)
        if kind == "Annotated" and args:
            if any(self.kind(a) == "Opaque" for a in args[1:]):
                # Opaque: an object the schema does not look into (a list of them stays a list)
                inner = self._unstring(args[0], where)
                is_list = self.kind(inner.value if isinstance(inner, ast.Subscript) else inner) == "list"
                return {"type": "array", "items": {"type": "object"}} if is_list else {"type": "object"}
            return self.type_schema(args[0], where, output, top, seen)  # other metadata says nothing to Cog
        if kind in ("NotRequired", "Required") and len(args) == 1:  # TypedDict field markers
            return self.type_schema(args[0], where, output, top, seen)
        if kind == "Optional" and len(args) == 1:
            return self._union([args[0], ast.Constant(None)], node, where, output, seen)
        if kind == "Union" and args:
            return self._union(args, node, where, output, seen)
        if kind in _PRIMITIVES and not args:
            return dict(_PRIMITIVES[kind])
        if kind == "list" and len(args) <= 1:
            items = self.type_schema(args[0], where, output, False, seen) if args else {}
            return {"type": "array", "items": items}
        if kind == "dict":
            if len(args) == 2 and self.kind(self._unstring(args[1], where)) != "Any":
                return {"type": "object", "additionalProperties": self.type_schema(args[1], where, output, False, seen)}
            return {"type": "object"}
        if kind == "Any":
            return {}
        if output and top and kind in ("Iterator", "ConcatenateIterator"):
            items = self.type_schema(args[0], where, output, False, seen) if args else {}
            schema = {"type": "array", "items": items, "x-cog-array-type": "iterator"}
            if kind == "ConcatenateIterator":
                schema["x-cog-array-display"] = "concatenate"
            return schema
        if output and top and kind == "None":
            return {"nullable": True}
        if kind and kind.startswith("class:") and (owner := self.foreign(kind[6:])) is not None:
            # defined in another file: read it there, with that file's imports
            module, name = owner
            return module.type_schema(ast.Name(id=name), where, output, top, seen)
        if kind and kind.startswith("class:") and self._is_typeddict(kind[6:]):
            # As Cog: a TypedDict input is a plain object; as an output, its fields are listed.
            return self._typeddict_schema(kind[6:], where, seen) if output else {"type": "object"}
        if output and kind and kind.startswith("class:"):
            return self._model_schema(kind[6:], where, seen)
        if isinstance(head, ast.Name) and head.id in self.names and kind is None:
            group = self.names[head.id][0]
            if group not in ("cog", "typing", "pydantic", "builtins"):  # Cog's words for it
                raise SchemaError(f"{where}: cannot resolve type '{head.id}' (imported from '{group}'); a type "
                                  f"from another file must be a class defined in that .py file of the project")
        supported = SUPPORTED_OUTPUTS if output else SUPPORTED_INPUTS
        raise SchemaError(f"{where}: unsupported type '{ast.unparse(node)}'; supported "
                          f"{'output' if output else 'input'} types: {supported}")

    def _union(self, members: list[ast.expr], node: ast.expr, where: str, output: bool, seen: tuple) -> dict:
        members = [self._unstring(m, where) for m in members]
        rest = [m for m in members if self.kind(m) != "None"]
        nullable = len(rest) < len(members)
        if len(rest) == 1 and nullable:
            schema = self.type_schema(rest[0], where, output, False, seen)
            schema["nullable"] = True
            return schema
        if output or len(rest) < 2:
            raise SchemaError(f"{where}: unsupported union '{ast.unparse(node)}'; "
                              + ("an output may only be Optional[T] (T | None)" if output else "give at least one type"))
        # An input union (`str | float`): any of the variants, as Cog's generator writes it.
        variants = [self.type_schema(m, where, False, False, seen) for m in rest]
        if nullable:
            variants = [{**v, "nullable": True} for v in variants]
        return {"anyOf": variants, **({"nullable": True} if nullable else {})}

    def _is_model(self, name: str, seen: frozenset = frozenset()) -> bool:
        if (owner := self.foreign(name)) is not None:
            return owner[0]._is_model(owner[1], seen)
        cls = self.classes[name]
        for base in cls.bases:
            k = self.kind(base)
            if k == "BaseModel":
                return True
            if k and k.startswith("class:") and k[6:] not in seen and self._is_model(k[6:], seen | {name}):
                return True
        return False

    def foreign(self, name: str) -> tuple[_Module, str] | None:
        """(module, class name there) for `from other_file import Name` naming a class of the project."""
        if name in self.classes or name not in self.names:
            return None
        group, imported = self.names[name]
        module = self._load(group, self.label) if group not in ("cog", "typing", "pydantic", "<relative>") else None
        if module is None or imported not in module.classes:
            return None
        return module, imported

    def _is_typeddict(self, name: str) -> bool:
        return any(self.kind(base) == "TypedDict" for base in self.classes[name].bases)

    def _typeddict_schema(self, name: str, where: str, seen: tuple) -> dict:
        """A TypedDict output: its fields, required unless NotRequired[...] (or total=False)."""
        if name in seen:
            raise SchemaError(f"{where}: class '{name}' refers to itself; recursive outputs are not supported")
        cls = self.classes[name]
        total = not any(k.arg == "total" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in cls.keywords)
        props: dict[str, dict] = {}
        required: list[str] = []
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            field = stmt.target.id
            annotation = self._unstring(stmt.annotation, where)
            marker = self.kind(annotation.value) if isinstance(annotation, ast.Subscript) else None
            fwhere = f"{self.label}:{stmt.lineno}: field '{field}' of {name}"
            props[field] = {**self.type_schema(annotation, fwhere, True, False, seen + (name,)),
                            "title": title_case(field)}
            if marker == "Required" or (total and marker != "NotRequired"):
                required.append(field)
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            schema["required"] = required
        return schema

    def _model_schema(self, name: str, where: str, seen: tuple) -> dict:
        if not self._is_model(name):
            raise SchemaError(f"{where}: class '{name}' is not a BaseModel subclass; outputs that are "
                              f"objects must subclass cog.BaseModel (or pydantic.BaseModel)")
        if name in seen:
            raise SchemaError(f"{where}: class '{name}' refers to itself; recursive outputs are not supported")
        props: dict[str, dict] = {}
        required: list[str] = []
        for cls in self._model_chain(name):
            for stmt in cls.body:
                if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                    continue
                if "ClassVar" in ast.unparse(stmt.annotation):
                    continue
                field = stmt.target.id
                fwhere = f"{self.label}:{stmt.lineno}: field '{field}' of {name}"
                prop = {"title": title_case(field),
                        **self.type_schema(stmt.annotation, fwhere, True, False, seen + (name,))}
                if stmt.value is None:
                    if not prop.get("nullable"):  # an Optional field may be left out, as in Cog
                        required.append(field)
                else:
                    try:
                        default = self.literal(stmt.value)
                    except ValueError:  # Field(...) or a factory: not required, default unknown
                        default = None
                    if default is not None:
                        prop["default"] = default
                props[field] = prop
        schema = {"type": "object", "title": name, "properties": props}
        if required:
            schema["required"] = [f for f in props if f in required]
        return schema

    def _model_chain(self, name: str) -> list[ast.ClassDef]:
        """Local classes from the furthest base down, so subclass fields come last (dataclass order)."""
        chain: list[ast.ClassDef] = []
        todo = [name]
        while todo:
            cls = self.classes[todo.pop()]
            if cls in chain:
                continue
            chain.insert(0, cls)
            # (a base class from another file is not followed: its fields are not listed)
            todo += [k[6:] for k in map(self.kind, cls.bases)
                     if k and k.startswith("class:") and k[6:] in self.classes]
        return chain

    # ---- literal values (defaults and Input(...) arguments)

    def literal(self, node: ast.expr, depth: int = 0) -> Any:
        """The value of a literal expression, following simple top-level constants; ValueError otherwise."""
        if depth > 20:
            raise ValueError("too deeply nested")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (bytes, type(...))):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.literal(e, depth + 1) for e in node.elts]
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]  # None: a `**spread`, not a literal
            if len(keys) == len(node.keys):
                return {self.literal(k, depth + 1): self.literal(v, depth + 1) for k, v in zip(keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.literal(node.operand, depth + 1)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name) and node.id in self.consts:
            return self.literal(self.consts[node.id], depth + 1)
        if isinstance(node, ast.Call) and self.kind(node.func) == "Secret" and not node.keywords:
            return "**********"  # Cog masks secret defaults in the schema
        raise ValueError(ast.unparse(node))

    def field(self, default: ast.expr | None, where: str) -> dict:
        """The Input(...) declaration (or plain default) of one parameter, as literal values."""
        if default is None:
            return {}
        if not (isinstance(default, ast.Call) and self.kind(default.func) == "Input"):
            return {"default": self._arg(default, where, "default")}
        if len(default.args) > 1:
            raise SchemaError(f"{where}: Input() takes at most one positional argument (the default)")
        out = {"default": self._arg(default.args[0], where, "default")} if default.args else {}
        for kw in default.keywords:
            if kw.arg is None:
                raise SchemaError(f"{where}: Input(**...) is not supported; pass the arguments by name")
            if kw.arg in _INPUT_ARGS:
                out[kw.arg] = self._arg(kw.value, where, kw.arg)
        return out

    def _arg(self, node: ast.expr, where: str, name: str) -> Any:
        try:
            return self.literal(node)
        except ValueError:
            raise SchemaError(
                f"{where}: the {name} must be a literal (number, string, bool, None, or a list of them) "
                f"or a top-level constant of such a literal, got '{ast.unparse(node)}'") from None


def _flatten_or(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flatten_or(node.left) + _flatten_or(node.right)
    return [node]


class _Builder:
    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.modules: dict[str, _Module] = {}

    def module(self, rel: str) -> _Module:
        path = self.project_dir / rel
        if not path.exists() and not rel.endswith(".py") and (self.project_dir / (rel + ".py")).exists():
            rel += ".py"
            path = self.project_dir / rel
        if rel not in self.modules:
            self.modules[rel] = _Module(path, rel, self.imported)
        return self.modules[rel]

    def imported(self, dotted: str, importer: str) -> _Module | None:
        """The project file `import dotted` reads, from the project root or beside the importer (as the
        model's sys.path has them); a package's __init__ is not followed, as Cog's generator doesn't."""
        rel = dotted.replace(".", "/") + ".py"
        for candidate in (rel, str(Path(importer).parent / rel)):
            if (self.project_dir / candidate).is_file():
                return self.module(str(Path(candidate)))
        return None

    def entry(self, ref: str, mode: str) -> tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef, str, bool]:
        """The function (or method) a ref names: (module, node, display name, is a method)."""
        rel, sep, name = ref.partition(":")
        if not sep or not rel or not name:
            raise SchemaError(f"invalid {mode} reference '{ref}': expected 'file.py:ClassOrFunction'")
        mod = self.module(rel)
        if name in mod.functions:
            return mod, mod.functions[name], name, False
        if name not in mod.classes:
            raise SchemaError(f"{rel}: no class or function named '{name}' (from {mode} reference '{ref}')")
        methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        runner = False
        for cls in mod._model_chain(name):  # furthest base first, so overrides win
            runner = runner or any(mod.kind(b) == "BaseRunner" for b in cls.bases)
            for stmt in cls.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods[stmt.name] = stmt
        if mode == "train":
            wanted = ["train"]
        else:  # mirrors cogkit.sdk.predictor.entry_method
            wanted = ["run", "predict"] if runner else ["predict", "run"]
        for method in wanted:
            if method in methods:
                node = methods[method]
                static = any(mod.kind(d) is None and _dotted(d) == "staticmethod" for d in node.decorator_list)
                return mod, node, f"{name}.{method}", not static
        raise SchemaError(f"{rel}:{mod.classes[name].lineno}: class '{name}' has no "
                          f"{' or '.join(m + '()' for m in wanted)} method")

    def is_streaming(self, ref: str) -> bool:
        """Whether the predict entry point carries Cog's `@streaming` decorator."""
        mod, fn, _, _ = self.entry(ref, "predict")
        for decorator in fn.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if mod.kind(target) == "streaming":
                return True
        return False

    def analyze(self, ref: str, mode: str, input_key: str, used: dict) -> tuple[dict, dict, dict]:
        """(input schema, output schema, enum components) of one entry point."""
        mod, fn, qual, is_method = self.entry(ref, mode)
        a = fn.args
        if a.vararg or a.kwarg:
            raise SchemaError(f"{mod.label}:{fn.lineno}: {qual}() takes *args/**kwargs; declare each input "
                              f"as a named, annotated parameter instead")
        positional = a.posonlyargs + a.args
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        params = list(zip(positional, defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
        if is_method:
            params = params[1:]

        props: dict[str, dict] = {}
        required: list[str] = []
        enums: dict[str, dict] = {}
        for order, (arg, default) in enumerate(params):
            name = arg.arg
            where = f"{mod.label}:{arg.lineno}: parameter '{name}' of {qual}()"
            if arg.annotation is None:
                raise SchemaError(f"{where}: missing type annotation (e.g. '{name}: str'); "
                                  f"supported input types: {SUPPORTED_INPUTS}")
            typ = mod.type_schema(arg.annotation, where)
            nullable = typ.pop("nullable", False)
            union = "anyOf" in typ
            field = mod.field(default, where)
            prop: dict[str, Any] = {}
            choices = field.get("choices")
            if choices is not None:
                enum_name = _enum_name(name, input_key, used)
                used[enum_name] = enums[enum_name] = _enum_schema(name, typ, choices, where)
                prop["allOf"] = [{"$ref": f"#/components/schemas/{enum_name}"}]
            else:
                prop["title"] = title_case(name)
                prop.update(typ)
            value = field.get("default", _MISSING)
            if value is None and typ.get("x-cog-secret"):
                nullable = True  # `api_key: Secret = Input(default=None)`: an optional credential, as in Cog
            if value is None and not nullable:
                # Cog: None on a non-Optional input is no default ("generate one at run time"): required.
                value = _MISSING
            if value is not _MISSING:
                prop["default"] = value  # including `"default": null` for an Optional input
            prop["x-order"] = order
            for key, schema_key in (("description", "description"), ("ge", "minimum"), ("le", "maximum"),
                                    ("min_length", "minLength"), ("max_length", "maxLength"),
                                    ("regex", "pattern")):
                if field.get(key) is not None:
                    prop[schema_key] = field[key]
            if field.get("deprecated"):
                prop["deprecated"] = True
            if field.get("accept") is not None:
                prop["x-cog-accept"] = field["accept"]  # the MIME types a file input takes
            if nullable:
                prop["nullable"] = True
            if value is _MISSING and (union or not nullable):
                required.append(name)
            props[name] = prop

        schema = {"title": input_key, "type": "object", "properties": props}
        if required:
            schema["required"] = required
        if fn.returns is None:
            raise SchemaError(f"{mod.label}:{fn.lineno}: {qual}() has no return type annotation; add one "
                              f"(e.g. '-> str' or '-> Path'); supported output types: {SUPPORTED_OUTPUTS}")
        output = mod.type_schema(fn.returns, f"{mod.label}:{fn.lineno}: return type of {qual}()", output=True)
        return schema, output, enums


def _enum_name(name: str, input_key: str, used: dict) -> str:
    # Cog names the enum after the parameter; a clash (a train input of the same name,
    # or a parameter called "Status") gets a prefixed name instead.
    return name if name not in used else f"{input_key}_{name}"


def _enum_schema(name: str, typ: dict, choices: Any, where: str) -> dict:
    if not isinstance(choices, list) or not choices:
        raise SchemaError(f"{where}: choices must be a non-empty list")
    checks = {"string": lambda v: isinstance(v, str),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    check = checks.get(str(typ.get("type"))) if "format" not in typ else None
    if check is None:
        raise SchemaError(f"{where}: choices are only supported for str, int and float inputs")
    bad = [c for c in choices if not check(c)]
    if bad:
        raise SchemaError(f"{where}: choice {bad[0]!r} is not a {typ['type']}")
    return {"type": typ["type"], "enum": choices, "title": name, "description": "An enumeration."}


def build_openapi(project_dir: str | Path, predict_ref: str | None, train_ref: str | None = None) -> dict:
    """The OpenAPI document for a project's predict (and optional train) entry points."""
    builder = _Builder(Path(project_dir))
    paths: dict[str, dict] = {
        "/": simple("get", "Root", "root__get", "Response Root  Get"),
        "/health-check": simple("get", "Healthcheck", "healthcheck_health_check_get",
                                 "Response Healthcheck Health Check Get"),
    }
    components = fixed_components()
    reserved = {"Input", "Output", "TrainingInput", "TrainingOutput", "PredictionRequest", "PredictionResponse",
                "TrainingRequest", "TrainingResponse"}
    used: dict[str, Any] = {**components, **dict.fromkeys(reserved)}
    for ref, mode, prefix, in_key, out_key in ((predict_ref, "predict", "Prediction", "Input", "Output"),
                                               (train_ref, "train", "Training", "TrainingInput", "TrainingOutput")):
        if not ref:
            continue
        inputs, output, enums = builder.analyze(ref, mode, in_key, used)
        streaming = mode == "predict" and builder.is_streaming(ref)
        components[in_key] = inputs
        components[out_key] = {**output, "title": "Output"}  # Cog titles the training output "Output" too
        components.update(enums)
        components.update(request_response(prefix, in_key, out_key))
        paths.update(job_paths(mode == "train"))
        if streaming:  # `@cog.streaming`: the one mark that lets clients ask for server-sent events
            paths["/predictions"]["post"]["x-cog-streaming"] = True
    paths["/shutdown"] = simple("post", "Start Shutdown", "start_shutdown_shutdown_post",
                                 "Response Start Shutdown Shutdown Post")
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": paths,
            "components": {"schemas": components}}
