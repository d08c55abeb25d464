"""`cogkit doctor`: Cog's project checks, and with fix=True its safe migrations
(deprecated imports, pydantic.BaseModel outputs, predict: -> run:). Each check
returns findings; a fixable check also rewrites the files it found them in.
Nothing is imported from the project: files are read as text and parsed with ast."""
from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ERROR, WARNING = "error", "warning"


@dataclass
class Finding:
    severity: str
    message: str
    file: str = ""
    line: int = 0
    remediation: str = ""


@dataclass
class CheckResult:
    group: str
    description: str
    findings: list[Finding] = field(default_factory=list)
    fixed: bool = False
    error: str | None = None  # the fix failed (or the check could not run)


@dataclass
class Project:
    directory: Path
    raw: dict | None = None
    load_error: str | None = None

    @classmethod
    def load(cls, directory: Path) -> Project:
        path = directory / "cog.yaml"
        if not path.is_file():
            return cls(directory, None, "missing")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            return cls(directory, None, str(e))
        return cls(directory, raw if isinstance(raw, dict) else {}, None)

    def python_files(self) -> list[Path]:
        skip = {".git", ".cog", ".venv", "venv", "__pycache__", "node_modules"}
        return sorted(p for p in self.directory.rglob("*.py") if not skip & set(p.relative_to(self.directory).parts))

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.directory))


# --- config ------------------------------------------------------------------------

def check_config_parse(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Config", "Config parsing")
    if project.load_error == "missing":
        result.findings.append(Finding(ERROR, "cog.yaml not found", remediation='Run "cog init" to create a cog.yaml'))
    elif project.load_error:
        result.findings.append(Finding(ERROR, f"cog.yaml has invalid YAML: {project.load_error}",
                                       remediation="Fix the YAML syntax in cog.yaml"))
    return result


_DEPRECATED_FIELDS = {
    "python_packages": ("use a requirements file instead", "python_requirements"),
    "pre_install": ("use build.run instead", "run"),
}


def check_config_deprecated(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Config", "Deprecated fields")
    build = (project.raw or {}).get("build") or {}
    for name, (why, replacement) in _DEPRECATED_FIELDS.items():
        if isinstance(build, dict) and build.get(name):
            result.findings.append(Finding(WARNING, f'"{name}" is deprecated: {why}', "cog.yaml",
                                           remediation=f'Use "{replacement}" instead'))
    return result


def _entry_ref(raw: dict) -> tuple[str, str] | None:
    for key in ("run", "predict"):
        if isinstance(raw.get(key), str):
            return key, raw[key]
    return None


def check_predict_ref(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Config", "Predict reference")
    ref = _entry_ref(project.raw or {})
    if project.raw is None or ref is None:
        return result
    key, value = ref
    file_name, sep, name = value.partition(":")
    if not sep or not file_name.endswith(".py") or not name:
        result.findings.append(Finding(ERROR, f"{key} reference {value!r} must be in the form 'file.py:ClassName'",
                                       "cog.yaml", remediation=f'Set {key} to "run.py:Runner" in cog.yaml'))
        return result
    path = project.directory / file_name
    if not path.is_file():
        result.findings.append(Finding(ERROR, f"{file_name} not found", remediation=(
            f"Create {file_name} or update the {key} field in cog.yaml")))
        return result
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError as e:
        result.findings.append(Finding(ERROR, f"cannot parse {file_name}: {e}", file_name))
        return result
    defined = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    assigned = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    imported = [a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names]
    if name not in defined + assigned + imported:
        message = f'class "{name}" not found in {file_name}'
        if defined:
            message += f"; found: {', '.join(defined)}"
        result.findings.append(Finding(ERROR, message, file_name, remediation=(
            f"Add class {name} to {file_name} or update the {key} field in cog.yaml")))
    return result


# --- python ---------------------------------------------------------------------------

_DEPRECATED_IMPORTS = {
    "ExperimentalFeatureWarning": "ExperimentalFeatureWarning was removed in cog 0.17; "
                                  "current_scope().record_metric() is no longer experimental",
}


def check_deprecated_imports(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Python", "Deprecated imports")
    for path in project.python_files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if re.match(r"\s*from\s+cog(\.types)?\s+import\b", line):
                for name, message in _DEPRECATED_IMPORTS.items():
                    if re.search(rf"\b{name}\b", line):
                        result.findings.append(Finding(ERROR, message, project.rel(path), number,
                                                       remediation=f"Remove the import of {name} from cog"))
    if fix and result.findings:
        for rel in {f.file for f in result.findings}:
            path = project.directory / rel
            path.write_text(_drop_deprecated_imports(path.read_text()))
        result.fixed = True
    return result


def _drop_deprecated_imports(text: str) -> str:
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"(\s*)from\s+cog(?:\.types)?\s+import\s+(.+?)\s*$", line)
        if m and any(re.search(rf"\b{n}\b", line) for n in _DEPRECATED_IMPORTS):
            names = [n.strip() for n in m.group(2).strip("()").split(",") if n.strip()]
            kept = [n for n in names if n.split(" as ")[0] not in _DEPRECATED_IMPORTS]
            if kept:
                out.append(f"{m.group(1)}from cog import {', '.join(kept)}\n")
            continue
        if any(re.search(rf"filterwarnings\(.*\b{n}\b", line) for n in _DEPRECATED_IMPORTS):
            continue
        out.append(line)
    return _drop_unused_warnings_import("".join(out))


def _drop_unused_warnings_import(text: str) -> str:
    if re.search(r"^import warnings\n", text, re.MULTILINE) and text.count("warnings") == 1:
        text = re.sub(r"^import warnings\n", "", text, count=1, flags=re.MULTILINE)
    return text


def _pydantic_outputs(tree: ast.Module) -> list[ast.ClassDef]:
    """Classes deriving from pydantic's BaseModel with arbitrary_types_allowed: Cog's old workaround."""
    from_pydantic = any(isinstance(n, ast.ImportFrom) and n.module == "pydantic" and
                        any(a.name == "BaseModel" for a in n.names) for n in tree.body)
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {ast.unparse(b) for b in node.bases}
        pydantic_base = ("BaseModel" in bases and from_pydantic) or "pydantic.BaseModel" in bases
        if pydantic_base and "arbitrary_types_allowed" in ast.unparse(node):
            found.append(node)
    return found


def check_pydantic_basemodel(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Python", "Pydantic BaseModel workaround")
    for path in project.python_files():
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError:
            continue
        for cls in _pydantic_outputs(tree):
            result.findings.append(Finding(
                ERROR, f"{cls.name} inherits from pydantic.BaseModel with arbitrary_types_allowed; "
                       f"use cog.BaseModel instead", project.rel(path), cls.lineno,
                remediation="Replace pydantic.BaseModel with cog.BaseModel and remove "
                            "ConfigDict(arbitrary_types_allowed=True)"))
    if fix and result.findings:
        for rel in {f.file for f in result.findings}:
            path = project.directory / rel
            path.write_text(_to_cog_basemodel(path.read_text()))
        result.fixed = True
    return result


def _to_cog_basemodel(text: str) -> str:
    text = re.sub(r"^\s*model_config\s*=\s*ConfigDict\(\s*arbitrary_types_allowed\s*=\s*True\s*\)\s*\n", "", text,
                  flags=re.MULTILINE)
    text = re.sub(r"^\s*class Config:\s*\n\s+arbitrary_types_allowed\s*=\s*True\s*\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"^from pydantic import [^\n]*\n", "", text, flags=re.MULTILINE)
    text = text.replace("pydantic.BaseModel", "BaseModel")
    m = re.search(r"^from cog import ([^\n(]+)$", text, re.MULTILINE)
    if m and "BaseModel" not in m.group(1).split(", "):
        text = text[:m.end(1)] + ", BaseModel" + text[m.end(1):]
    elif not m:
        text = "from cog import BaseModel\n" + text
    return text


# --- predict: -> run: ---------------------------------------------------------------------

_LEGACY = re.compile(r"\b(BasePredictor|class Predictor\b|def predict\()")


def check_predict_to_run(project: Project, fix: bool) -> CheckResult:
    result = CheckResult("Config", "Deprecated predict interface names")
    raw = project.raw or {}
    if not isinstance(raw.get("predict"), str) or raw.get("run"):
        return result
    result.findings.append(Finding(WARNING, "predict in cog.yaml is deprecated; use run with run.py:Runner",
                                   "cog.yaml", remediation="Run cog doctor --fix to migrate predict: to run:"))
    source = project.directory / "predict.py"
    if source.is_file() and _LEGACY.search(source.read_text()):
        result.findings.append(Finding(WARNING, "predict.py uses deprecated Predictor/BasePredictor/predict() names",
                                       "predict.py",
                                       remediation="Run cog doctor --fix to migrate to Runner/BaseRunner/run()"))
    if fix:
        result.error = _migrate_to_run(project, raw["predict"])
        result.fixed = result.error is None
    return result


def _migrate_to_run(project: Project, ref: str) -> str | None:
    if ref != "predict.py:Predictor":
        return "Manual migration required: automatic migration only supports predict.py:Predictor"
    source, target = project.directory / "predict.py", project.directory / "run.py"
    if not source.is_file():
        return "cannot migrate predict.py to run.py because predict.py was not found"
    if target.exists():
        return "cannot migrate predict.py to run.py because run.py already exists"
    text = source.read_text()
    text = re.sub(r"\bBasePredictor\b", "BaseRunner", text)
    text = re.sub(r"\bclass Predictor\b", "class Runner", text)
    text = re.sub(r"\bdef predict\(", "def run(", text)
    target.write_text(text)
    source.unlink()
    config = project.directory / "cog.yaml"
    config.write_text(re.sub(r"""^predict:\s*["']?predict\.py:Predictor["']?\s*$""", 'run: "run.py:Runner"',
                             config.read_text(), count=1, flags=re.MULTILINE))
    return None


CHECKS: list[Callable[[Project, bool], CheckResult]] = [
    check_config_parse, check_config_deprecated, check_predict_ref, check_predict_to_run,
    check_deprecated_imports, check_pydantic_basemodel,
]


def run(directory: Path, fix: bool) -> list[CheckResult]:
    project = Project.load(directory)
    results = []
    for check in CHECKS:
        results.append(check(project, fix))
        if fix and results[-1].fixed:
            project = Project.load(directory)  # later checks see the fixed files
    return results
