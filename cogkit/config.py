"""Load and validate Cog's cog.yaml.

Every problem is reported as one ConfigError sentence that names the key path
and, when known, the cog.yaml line, so users can fix their file without
guessing. Depends only on pyyaml and the standard library.
"""
from __future__ import annotations

import difflib
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

FILENAME = "cog.yaml"

TOP_KEYS = ["build", "image", "predict", "run", "train", "concurrency", "environment", "weights", "tests", "model"]
BUILD_KEYS = ["gpu", "cuda", "cudnn", "python_version", "python_packages", "python_requirements",
              "system_packages", "run", "pre_install", "cog_runtime", "fast"]
CONCURRENCY_KEYS = ["max", "default_target"]
RUN_ITEM_KEYS = ["command", "mounts"]
MIN_PYTHON_MINOR = 10  # as Cog 0.23
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """A cog.yaml problem; str() is a complete human sentence."""

    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.key = key
        self.line = line


@dataclass
class BuildConfig:
    python_version: str = "3.11"
    python_packages: list[str] = field(default_factory=list)
    python_requirements: str | None = None
    system_packages: list[str] = field(default_factory=list)
    gpu: bool = False
    cuda: str | None = None
    run: list[str] = field(default_factory=list)
    run_mounts: list[list[dict]] = field(default_factory=list)  # per run command: its `mounts` (secrets)


@dataclass
class Config:
    project_dir: pathlib.Path
    build: BuildConfig = field(default_factory=BuildConfig)
    predict: str | None = None
    train: str | None = None
    image: str | None = None
    concurrency_max: int = 1
    environment: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # deprecated fields, worded as Cog words them

    def requirements(self) -> list[str]:
        """python_packages, the lines of python_requirements (with -r includes expanded), then
        what Cog's SDK brings into every model's environment that the project does not pin itself."""
        reqs = list(self.build.python_packages)
        if self.build.python_requirements:
            reqs += _read_requirements(self.project_dir / self.build.python_requirements, set())
        if any("--hash" in r for r in reqs):
            return reqs  # hash-checking mode: pip would refuse anything unhashed added here
        pinned = {requirement_name(r) for r in reqs}
        return reqs + [r for r in SDK_REQUIREMENTS if requirement_name(r) not in pinned]


# Cog's SDK depends on these, so real projects import them without listing them.
SDK_REQUIREMENTS = ("requests>=2", "pyyaml>=6", "structlog>=24", "typing_extensions>=4.4")


def requirement_name(line: str) -> str:
    """The normalized project name of a requirement line ("PyYAML==6.0" -> "pyyaml")."""
    name = re.split(r"[\s<>=!~;\[@]", line.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def load_config(project_dir: str | os.PathLike = ".") -> Config:
    path = pathlib.Path(project_dir) / FILENAME
    if not path.is_file():
        raise ConfigError(f"No {FILENAME} found in {pathlib.Path(project_dir).resolve()}; "
                          f"run `cogkit init` to create one")
    return parse_config(path.read_text(encoding="utf-8"), project_dir)


def parse_config(text: str, project_dir: str | os.PathLike) -> Config:
    return _Parser(text, pathlib.Path(project_dir)).parse()


def split_ref(ref: str) -> tuple[str, str]:
    """"predict.py:Predictor" -> ("predict.py", "Predictor")."""
    file, sep, name = ref.rpartition(":") if isinstance(ref, str) else ("", "", "")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"expected a reference of the form 'file.py:Name', got {ref!r}")
    return file, name


def _read_requirements(path: pathlib.Path, seen: set[pathlib.Path]) -> list[str]:
    path = path.resolve()
    if path in seen:  # a cycle of -r includes; each file counts once
        return []
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read requirements file {path}: {e.strerror}", key="build.python_requirements")
    out = []
    for line in text.replace("\\\n", "").splitlines():  # join pip's line continuations
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # pip comments: whole-line or after whitespace
        m = re.match(r"(?:-r|--requirement)(?:\s+|=)?(\S+)$", line)
        if m:
            out += _read_requirements(path.parent / m.group(1), seen)
        elif line:
            out.append(line)
    return out


def _deprecations(raw: dict) -> list[str]:
    """Cog's deprecation warnings for a cog.yaml (its wording: the suite checks it)."""
    build = raw.get("build") if isinstance(raw.get("build"), dict) else {}
    found = []
    if raw.get("predict"):
        found.append('deprecated field "predict": use "run" instead')
    if isinstance(raw.get("concurrency"), dict) and raw["concurrency"].get("max") is not None:
        found.append('deprecated field "concurrency.max": use "@cog.concurrent(max=...)" instead')
    if build.get("python_packages"):
        found.append('deprecated field "build.python_packages": use "build.python_requirements" instead')
    if build.get("pre_install"):
        found.append('deprecated field "build.pre_install": use "build.run" instead')
    return found


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else repr(value)


def _key_str(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


class _Parser:
    def __init__(self, text: str, project_dir: pathlib.Path):
        self.text = text
        self.project_dir = project_dir
        self.lines: dict[tuple, int] = {}     # key path -> 1-based line of the key (or list item)
        self.scalars: dict[tuple, str] = {}   # key path -> the scalar exactly as written

    def fail(self, path: tuple, what: str):
        # A key that isn't written (e.g. a missing 'command') points at its nearest written parent.
        line = next((self.lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.lines), None)
        where = f"{FILENAME} line {line}" if line else FILENAME
        raise ConfigError(f"{where}: {_key_str(path)} {what}", key=_key_str(path), line=line)

    def parse(self) -> Config:
        try:
            root = yaml.compose(self.text)
            raw = yaml.safe_load(self.text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else None
            where = f"{FILENAME} line {line}" if line else FILENAME
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}", line=line)
        if root is not None:
            self._index(root, ())
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{FILENAME}: the file must be a mapping of keys like 'build:' and 'predict:', "
                              f"got {_describe(raw)}")
        self._check_keys(raw, (), TOP_KEYS)

        build = self._build(self.get(raw, ("build",), dict, "a mapping") or {})
        predict = self._ref(raw, "predict")
        if raw.get("run") is not None:
            if predict is not None:
                self.fail(("run",), "is a synonym for predict; set only one of them")
            predict = self._ref(raw, "run")
        concurrency = self.get(raw, ("concurrency",), dict, "a mapping") or {}
        self._check_keys(concurrency, ("concurrency",), CONCURRENCY_KEYS)
        cmax = self._positive_int(concurrency, ("concurrency", "max")) or 1
        target = self._positive_int(concurrency, ("concurrency", "default_target"))
        if target is not None and target > cmax:
            self.fail(("concurrency", "default_target"), f"must not exceed concurrency.max ({cmax}), got {target}")
        self.get(raw, ("weights",), list, "a list")  # weights and tests are accepted but unused
        return Config(
            project_dir=self.project_dir, build=build, predict=predict, train=self._ref(raw, "train"),
            image=self.get(raw, ("image",), str, "a string"), concurrency_max=cmax,
            environment=self._environment(raw.get("environment")), raw=raw, warnings=_deprecations(raw),
        )

    def _index(self, node: yaml.Node, path: tuple):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                sub = path + (k.value,)
                self.lines[sub] = k.start_mark.line + 1
                if k.value in seen:  # PyYAML would silently keep the last one
                    self.fail(sub, "is set more than once")
                seen.add(k.value)
                self._index(v, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self._index(item, path + (i,))
        else:
            self.scalars[path] = node.value

    def _check_keys(self, mapping: dict, path: tuple, allowed: list[str]):
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                section = f"in {_key_str(path)}" if path else "at the top level"
                self.fail(path + (key,), f"is not a known key; {hint}allowed keys {section}: {', '.join(allowed)}")

    def get(self, mapping: dict, path: tuple, typ: type, expected: str):
        """mapping[last key], None when absent or null, else checked against typ."""
        value = mapping.get(path[-1])
        if value is not None and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
            self.fail(path, f"must be {expected}, got {_describe(value)}")
        return value

    def _str_list(self, mapping: dict, path: tuple) -> list[str]:
        items = self.get(mapping, path, list, "a list of strings") or []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(path + (i,), f"must be a string, got {_describe(item)}")
        return items

    def _version(self, mapping: dict, path: tuple, pattern: str, expected: str) -> str | None:
        if mapping.get(path[-1]) is None:
            return None
        # Use the text as written: YAML reads `3.10` as the float 3.1.
        text = self.scalars.get(path, "") if isinstance(mapping[path[-1]], (str, int, float)) else ""
        m = re.fullmatch(pattern, text.strip())
        if not m:
            self.fail(path, f"must be {expected}, got {_describe(mapping[path[-1]])}")
        return m

    def _positive_int(self, mapping: dict, path: tuple) -> int | None:
        value = self.get(mapping, path, int, "a whole number of at least 1")
        if value is not None and value < 1:
            self.fail(path, f"must be a whole number of at least 1, got {value}")
        return value

    def _build(self, b: dict) -> BuildConfig:
        self._check_keys(b, ("build",), BUILD_KEYS)
        p = lambda key: ("build", key)  # noqa: E731
        cfg = BuildConfig()
        py = self._version(b, p("python_version"), r"3\.(\d+)(\.\d+)?", "a Python version like \"3.11\"")
        if py:
            if int(py.group(1)) < MIN_PYTHON_MINOR:
                self.fail(p("python_version"), f"is {py.group(0)!r}: invalid build.python_version \"{py.group(0)}\": "
                                               f"minimum supported Python version is 3.{MIN_PYTHON_MINOR}")
            cfg.python_version = f"3.{int(py.group(1))}"
        cuda = self._version(b, p("cuda"), r"\d+(\.\d+)*", "a CUDA version like \"12.1\"")
        cfg.cuda = cuda.group(0) if cuda else None
        self._version(b, p("cudnn"), r"\d+(\.\d+)*", "a cuDNN version like \"8\"")
        if b.get("gpu") is not None and not isinstance(b["gpu"], bool):
            self.fail(p("gpu"), f"must be true or false, got {_describe(b['gpu'])}")
        cfg.gpu = bool(b.get("gpu"))
        # pre_install is deprecated in Cog; its entries are installed like extra python_packages.
        cfg.python_packages = self._str_list(b, p("python_packages")) + self._str_list(b, p("pre_install"))
        cfg.system_packages = self._str_list(b, p("system_packages"))
        req = self.get(b, p("python_requirements"), str, "a path to a requirements file")
        if req is not None and not (self.project_dir / req).is_file():
            self.fail(p("python_requirements"), f"names {req!r}, which does not exist in {self.project_dir}")
        cfg.python_requirements = req
        for i, cmd in enumerate(self.get(b, p("run"), list, "a list of commands") or []):
            item = p("run") + (i,)
            mounts: list[dict] = []
            if isinstance(cmd, dict):
                self._check_keys(cmd, item, RUN_ITEM_KEYS)
                mounts = self.get(cmd, item + ("mounts",), list, "a list") or []
                for j, mount in enumerate(mounts):
                    where = item + ("mounts", j)
                    if not isinstance(mount, dict) or mount.get("type") != "secret" or not mount.get("id") \
                            or not mount.get("target"):
                        self.fail(where, "must be a secret mount: {type: secret, id: NAME, target: PATH}")
                cmd = cmd.get("command")
                if not isinstance(cmd, str):
                    self.fail(item + ("command",), f"must be a command string, got {_describe(cmd)}")
            elif not isinstance(cmd, str):
                self.fail(item, f"must be a command string or a mapping with 'command', got {_describe(cmd)}")
            cfg.run.append(cmd)
            cfg.run_mounts.append(mounts)
        return cfg

    def _ref(self, raw: dict, key: str) -> str | None:
        ref = self.get(raw, (key,), str, "a string like \"predict.py:Predictor\"")
        if ref is None:
            return None
        try:
            file, _ = split_ref(ref)
        except ConfigError:
            self.fail((key,), f"must have the form \"file.py:Name\", got {ref!r}")
        if not (self.project_dir / file).is_file():
            self.fail((key,), f"refers to {file!r}, which does not exist in {self.project_dir}")
        return ref

    def _environment(self, env: Any) -> dict[str, str]:
        path = ("environment",)
        out: dict[str, str] = {}
        if env is None:
            return out
        if isinstance(env, list):  # Cog's own form: ["NAME=value", ...]
            pairs = []
            for i, entry in enumerate(env):
                if not isinstance(entry, str) or "=" not in entry:
                    self.fail(path + (i,), f"must be a \"NAME=value\" string, got {_describe(entry)}")
                pairs.append((path + (i,), *entry.split("=", 1)))
        elif isinstance(env, dict):
            pairs = []
            for name, value in env.items():
                if isinstance(value, (dict, list)) or value is None:
                    self.fail(path + (name,), f"must be a string value, got {_describe(value)}")
                # The text as written, so `DEBUG: true` stays "true" rather than "True".
                pairs.append((path + (name,), str(name), self.scalars.get(path + (name,), str(value))))
        else:
            self.fail(path, f"must be a list of \"NAME=value\" strings or a mapping, got {_describe(env)}")
        for where, name, value in pairs:
            if not ENV_NAME.fullmatch(name):
                self.fail(where, f"has an invalid variable name {name!r}")
            if name in out:
                self.fail(where, f"sets {name} more than once")
            out[name] = value
        return out
